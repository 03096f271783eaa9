#!/usr/bin/env bash
# The default config (Fashion-MNIST, 20 clients, 10 per round, 20 rounds, seed 0) with the
# clients' training and the central evaluation in fp32 (the default) and under bfloat16
# autocast (client.precision=bf16 server.eval_precision=bf16): REPS runs of each, in turn,
# then the median wall time (process start to exit), median rounds time and the final
# accuracy of each. Run on an otherwise idle machine, from the repo root in the venv.
#   bash experiments/precision.sh            # 3 runs each
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
reps=${REPS:-3}
root=${PRECISION_ROOT:-results/runs/precision_bench}
rm -rf "$root"
mkdir -p "$root"
for rep in $(seq 1 "$reps"); do
  for precision in fp32 bf16; do
    start=$(date +%s%N)
    "$PY" -m fedconv.simulate name=precision_bench "client.precision=$precision" \
      "server.eval_precision=$precision" "hydra.run.dir=$root/$precision-$rep" > "$root/$precision-$rep.log" 2>&1
    end=$(date +%s%N)
    echo "$precision $rep $(( (end - start) / 1000000 ))" | tee -a "$root/times.txt"
  done
done
"$PY" - "$root" <<'PY'
import json, statistics, sys
from pathlib import Path
root = Path(sys.argv[1])
runs = {}
for line in (root / "times.txt").read_text().splitlines():
    precision, rep, ms = line.split()
    s = json.loads((root / f"{precision}-{rep}" / "summary.json").read_text())
    runs.setdefault(precision, []).append((int(ms) / 1000, s["wall_seconds"], s["final_central_accuracy"]))
for precision, r in runs.items():
    print(f"{precision}: wall median {statistics.median(x[0] for x in r):.1f} s, rounds median "
          f"{statistics.median(x[1] for x in r):.1f} s, final accuracy {[round(x[2], 4) for x in r]}")
PY
