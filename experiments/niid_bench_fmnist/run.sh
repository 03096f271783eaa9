#!/usr/bin/env bash
# NIID-Bench on Fashion-MNIST: FedAvg, FedProx (mu 0.01), SCAFFOLD and FedNova x IID, Dir(0.5),
# #C=3, #C=2, as one Hydra sweep per partition into stable folders, so re-running the script
# skips completed jobs and resumes unfinished ones from their checkpoints. Then the table of
# ours vs published.
#   bash experiments/niid_bench_fmnist/run.sh                  # seed 0, the whole grid
#   SEEDS=0,1,2 bash experiments/niid_bench_fmnist/run.sh      # more seeds
#   CELLS="iid dir0.5" bash experiments/niid_bench_fmnist/run.sh strategy.mu=0.1   # extra overrides
#   CELLS=c3 STRATEGIES=fedprox SEEDS=1,2 bash experiments/niid_bench_fmnist/run.sh  # one strategy
#   CELLS="dir0.5 c3" STRATEGIES=scaffold,fednova bash experiments/niid_bench_fmnist/run.sh  # the stateful two
#   CELLS="iid dir0.5" STRATEGIES=fedavg,fedprox MODELS=twoconv,twoconv_dw bash experiments/niid_bench_fmnist/run.sh  # part 2
#   CELLS=central bash experiments/niid_bench_fmnist/run.sh   # canonical 2conv on all 60k images
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
ROOT=${NIID_ROOT:-results/sweeps/niid_bench_fmnist}
SEEDS=${SEEDS:-0}
CELLS=${CELLS:-"iid dir0.5 c3 c2"}
STRATEGIES=${STRATEGIES:-fedavg,fedprox,scaffold,fednova}
MODELS=${MODELS:-}   # empty: the preset's niid_cnn (job folders then carry no model= part)

partition_of() {
  case "$1" in
    iid) echo "partition=iid" ;;
    dir0.5) echo "partition=dirichlet partition.alpha=0.5 partition.min_partition_size=10 partition.self_balancing=true" ;;
    c3) echo "partition=pathological partition.k=3 partition.class_assignment=first-deterministic" ;;
    c2) echo "partition=pathological partition.k=2 partition.class_assignment=first-deterministic" ;;
    *) echo "unknown cell $1 (iid, dir0.5, c3, c2, central)" >&2; exit 2 ;;
  esac
}

models=()
if [ -n "$MODELS" ]; then models=("model=$MODELS"); fi
for cell in $CELLS; do
  if [ "$cell" = central ]; then
    "$PY" -m fedconv.simulate -m +experiment=niid_bench_fmnist_central "seed=$SEEDS" "$@" \
      "hydra.sweep.dir=$ROOT/$cell"
  else
    # shellcheck disable=SC2046
    "$PY" -m fedconv.simulate -m +experiment=niid_bench_fmnist "strategy=$STRATEGIES" "seed=$SEEDS" \
      "${models[@]}" $(partition_of "$cell") "$@" "hydra.sweep.dir=$ROOT/$cell"
  fi
  "$PY" -m fedconv.runs.report "$ROOT/$cell" --by model.name strategy.name strategy.mu --out "$ROOT/$cell/report" >/dev/null
done
"$PY" experiments/niid_bench_fmnist/table.py "$ROOT"
