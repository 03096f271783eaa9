#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine (Python >= 3.11, no GPU):
# a virtual environment in .venv, the CPU build of torch, fedconv with all its extras and the
# test tools (editable), and the real Fashion-MNIST from Debian when it is not present.
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "[setup] installing fedconv[all,test]"
"${PIP[@]}" install -q -e ".[all,test]"

if [ -z "${FEDCONV_DATA:-}" ] && [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    echo "[setup] installing Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] warning: no apt-get; put Fashion-MNIST's IDX files in a folder and set FEDCONV_DATA" >&2
  fi
fi
echo "[setup] ready: $("$VENV/bin/python" -c 'import fedconv, torch, flwr; print("fedconv", fedconv.__version__, "| torch", torch.__version__, "| flwr", flwr.__version__)')"
