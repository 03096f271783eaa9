#!/usr/bin/env bash
# FedAvg vs FedProx (mu 0.01, 0.1) x Dirichlet alpha 0.1 / 1.0 x 2 seeds on Fashion-MNIST,
# then one report over both sweeps. Extra arguments are Hydra overrides for every job
# (e.g. server.rounds=10). Run from the repository root inside the venv.
set -euo pipefail
stamp=$(date +%Y-%m-%d_%H-%M-%S)
root=results/sweeps/strategy_comparison/$stamp
python -m fedconv.simulate -m name=strategy_comparison strategy=fedavg \
  partition.alpha=0.1,1.0 seed=0,1 "hydra.sweep.dir=$root/fedavg" "$@"
python -m fedconv.simulate -m name=strategy_comparison strategy=fedprox strategy.mu=0.01,0.1 \
  partition.alpha=0.1,1.0 seed=0,1 "hydra.sweep.dir=$root/fedprox" "$@"
python -m fedconv.runs.report "$root/fedavg" "$root/fedprox" --facet partition.alpha --out "$root/report"
