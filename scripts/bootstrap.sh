#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine (Python >= 3.11, no GPU):
# a virtual environment in .venv, the CPU build of torch, fedconv with all its extras
# (editable), and the real Fashion-MNIST from Debian when it is not present.
# --tests (scripts/test.sh): also the test tools and Debian's Chromium (the browser test).
set -euo pipefail
cd "$(dirname "$0")/.."
TESTS=""
if [ "${1:-}" = "--tests" ]; then TESTS=1; fi
EXTRAS="all"
if [ -n "$TESTS" ]; then EXTRAS="all,test"; fi

PYTHON=${PYTHON:-python3}
VENV=${FEDCONV_VENV:-.venv}
TORCH_SPEC=${FEDCONV_TORCH:-torch==2.13.0}
FMNIST_DIR=/usr/share/datasets/fashion-mnist

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# torch first, pinned: a bare 'torch' requirement would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC (CPU)"
  "${PIP[@]}" install -q "$TORCH_SPEC"
fi

echo "[setup] installing fedconv[$EXTRAS]"
"${PIP[@]}" install -q -e ".[$EXTRAS]"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
APT_UPDATED=""
apt_install() {  # apt_install PACKAGE WHY: Debian's package, once per machine
  if ! command -v apt-get >/dev/null 2>&1; then
    return 1
  fi
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq || true
    APT_UPDATED=1
  fi
  echo "[setup] installing Debian package $1 ($2)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
}

if [ -z "${FEDCONV_DATA:-}" ] && [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  apt_install dataset-fashion-mnist "the real Fashion-MNIST" \
    || echo "[setup] warning: no apt-get; put Fashion-MNIST's IDX files in a folder and set FEDCONV_DATA" >&2
fi
if [ -n "$TESTS" ] && ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium "renders report.html in the browser test" \
    || echo "[setup] warning: chromium not installed; tests/test_report_browser.py will skip" >&2
fi
echo "[setup] ready: $("$VENV/bin/python" -c 'import fedconv, torch, flwr; print("fedconv", fedconv.__version__, "| torch", torch.__version__, "| flwr", flwr.__version__)')"
