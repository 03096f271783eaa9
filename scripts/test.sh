#!/usr/bin/env bash
# README command 2: set everything up, then run the test suite (real Flower, Ray and data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --tests
PY="${FEDCONV_VENV:-.venv}/bin/python"
echo "[lint] ruff check . && mypy (fedconv/)"
"$PY" -m ruff check .
"$PY" -m mypy
echo "[docs] mkdocs build --strict (every link, anchor and API reference resolves)"
SITE=$(mktemp -d)
"$PY" -m mkdocs build --strict --quiet --site-dir "$SITE"
rm -rf "$SITE"
# every property-based test draws its full count of examples here (a quarter in the inner loop)
export FEDCONV_TEST_DRAWS=full
exec "$PY" -m pytest "$@"
