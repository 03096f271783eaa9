#!/usr/bin/env bash
# Update compression on the default config (Fashion-MNIST, 20 clients, Dirichlet 0.5, 10 per
# round, FedAvg, 20 rounds), one job per codec preset (conf/compression), then one report
# against the uncompressed run: accuracy vs cumulative MB and MB to the target accuracy per
# codec. Resumable: the sweep folder is fixed, so re-running skips completed jobs and resumes
# unfinished ones. Run from the repo root in the venv.
#   bash experiments/compression.sh                           # every preset
#   CODECS=none,int8,topk bash experiments/compression.sh     # some of them
#   bash experiments/compression.sh seed=0,1,2                # extra overrides for every job
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
root=${COMPRESSION_ROOT:-results/sweeps/compression}
codecs=${CODECS:-none,fp16,bf16,int8,int8_both,int4,topk,randk,qsgd}
"$PY" -m fedconv.simulate -m name=compression "compression=$codecs" "hydra.sweep.dir=$root" "$@"
"$PY" -m fedconv.runs.report "$root" --by compression.downlink.codec compression.uplink.codec \
  --baseline compression.uplink.codec=none --out "$root/report"
