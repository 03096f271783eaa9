#!/usr/bin/env bash
# README command 1: set everything up, then run the default simulation on Fashion-MNIST.
# Extra arguments are Hydra overrides, e.g.  bash scripts/run-default.sh strategy=fedprox
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec "${FEDCONV_VENV:-.venv}/bin/python" -m fedconv.simulate "$@"
