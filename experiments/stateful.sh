#!/usr/bin/env bash
# The four stateful algorithms next to FedAvg on the default config (Fashion-MNIST, 20 clients,
# Dirichlet 0.5, 10 per round), 20 rounds, then one report against FedAvg. Resumable: the sweep
# folder is fixed, so re-running skips completed jobs. Extra arguments are Hydra overrides for
# every job (e.g. seed=0,1,2 for intervals). Run from the repo root in the venv.
set -euo pipefail
root=results/sweeps/stateful
python -m fedconv.simulate -m name=stateful server.rounds=20 \
  strategy=fedavg,scaffold,fednova,feddyn,fedbn \
  "hydra.sweep.dir=$root" "$@"
python -m fedconv.runs.report "$root" --by strategy.name --baseline strategy.name=fedavg --out "$root/report"
