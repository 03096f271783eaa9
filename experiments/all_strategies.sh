#!/usr/bin/env bash
# Every strategy of the comparison on the default config (Fashion-MNIST, 20 clients,
# Dirichlet 0.5, 10 per round), 10 rounds, then one report against FedAvg. Resumable: the
# sweep folder is fixed, so re-running skips completed jobs. Extra arguments are Hydra
# overrides for every job (e.g. seed=0,1,2 for intervals). Run from the repo root in the venv.
set -euo pipefail
root=results/sweeps/all_strategies
python -m fedconv.simulate -m name=all_strategies server.rounds=10 \
  strategy=fedavg,fedavgm,fedadam,fedyogi,fedadagrad,fedmedian,fedtrimmedavg,krum,qfedavg,fedprox \
  "hydra.sweep.dir=$root" "$@"
python -m fedconv.runs.report "$root" --by strategy.name --baseline strategy.name=fedavg --out "$root/report"
