#!/usr/bin/env bash
# NIID-Bench on Fashion-MNIST: FedAvg and FedProx (mu 0.01) x IID, Dir(0.5), #C=3, #C=2, as one
# Hydra sweep per partition into stable folders, so re-running the script skips completed jobs
# and resumes unfinished ones from their checkpoints. Then the table of ours vs published.
#   bash experiments/niid_bench_fmnist/run.sh                  # seed 0, the whole grid
#   SEEDS=0,1,2 bash experiments/niid_bench_fmnist/run.sh      # more seeds
#   CELLS="iid dir0.5" bash experiments/niid_bench_fmnist/run.sh strategy.mu=0.1   # extra overrides
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
ROOT=${NIID_ROOT:-results/sweeps/niid_bench_fmnist}
SEEDS=${SEEDS:-0}
CELLS=${CELLS:-"iid dir0.5 c3 c2"}

partition_of() {
  case "$1" in
    iid) echo "partition=iid" ;;
    dir0.5) echo "partition=dirichlet partition.alpha=0.5 partition.min_partition_size=10 partition.self_balancing=true" ;;
    c3) echo "partition=pathological partition.k=3 partition.class_assignment=first-deterministic" ;;
    c2) echo "partition=pathological partition.k=2 partition.class_assignment=first-deterministic" ;;
    *) echo "unknown cell $1 (iid, dir0.5, c3, c2)" >&2; exit 2 ;;
  esac
}

for cell in $CELLS; do
  # shellcheck disable=SC2046
  "$PY" -m fedconv.simulate -m +experiment=niid_bench_fmnist strategy=fedavg,fedprox "seed=$SEEDS" \
    $(partition_of "$cell") "$@" "hydra.sweep.dir=$ROOT/$cell"
  "$PY" -m fedconv.report "$ROOT/$cell" --out "$ROOT/$cell/report" >/dev/null
done
"$PY" experiments/niid_bench_fmnist/table.py "$ROOT"
