#!/usr/bin/env bash
# Client drift on strongly non-IID data: FedAvg vs FedProx (mu 0.01) vs SCAFFOLD on
# Fashion-MNIST, Dirichlet alpha 0.1, 3 seeds, one sweep (one Ray, warm actors), then one
# report with the drift plot (client_drift_vs_round). Resumable: re-running skips completed
# jobs and continues an interrupted one. Extra arguments are Hydra overrides for every job.
# Run from the repository root inside the venv.
set -euo pipefail
root=${DRIFT_ROOT:-results/sweeps/client_drift}
python -m fedconv.simulate -m name=client_drift strategy=fedavg,fedprox,scaffold seed=0,1,2 \
  partition.alpha=0.1 "hydra.sweep.dir=$root" "$@"
python -m fedconv.runs.report "$root" --out "$root/report"
