#!/usr/bin/env bash
# The default config (Fashion-MNIST, 20 clients, 10 per round, 20 rounds, seed 0) along three
# numeric paths of the clients' training and the central evaluation:
#   fp32      the default;
#   bf16      client.precision=bf16 server.eval_precision=bf16 (bfloat16 autocast);
#   compiled  client.compile=true (torch.compile of the training step, fp32).
# REPS runs of each, in turn, then per path the median wall time (process start to exit), the
# median rounds time and the final accuracies. The compiled path's first run starts from an
# empty inductor cache (its compile cost, once per worker process, cold); later runs find the
# cache on disk. Run on an otherwise idle machine, from the repo root in the venv.
#   bash experiments/precision.sh                      # 3 runs each
#   VARIANTS="fp32 compiled" REPS=1 bash experiments/precision.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
reps=${REPS:-3}
variants=${VARIANTS:-fp32 bf16 compiled}
root=${PRECISION_ROOT:-results/runs/precision_bench}
rm -rf "$root"
mkdir -p "$root"
export TORCHINDUCTOR_CACHE_DIR="$(cd "$root" && pwd)/inductor-cache"
for rep in $(seq 1 "$reps"); do
  for variant in $variants; do
    case $variant in
      fp32) args=() ;;
      bf16) args=(client.precision=bf16 server.eval_precision=bf16) ;;
      compiled) args=(client.compile=true) ;;
      *) echo "unknown variant $variant (fp32 | bf16 | compiled)" >&2; exit 2 ;;
    esac
    start=$(date +%s%N)
    "$PY" -m fedconv.simulate name=precision_bench "${args[@]}" "hydra.run.dir=$root/$variant-$rep" \
      > "$root/$variant-$rep.log" 2>&1
    end=$(date +%s%N)
    echo "$variant $rep $(( (end - start) / 1000000 ))" | tee -a "$root/times.txt"
  done
done
"$PY" - "$root" <<'PY'
import json, statistics, sys
from pathlib import Path
root = Path(sys.argv[1])
runs = {}
for line in (root / "times.txt").read_text().splitlines():
    variant, rep, ms = line.split()
    s = json.loads((root / f"{variant}-{rep}" / "summary.json").read_text())
    runs.setdefault(variant, []).append((int(ms) / 1000, s["wall_seconds"], s["final_central_accuracy"]))
for variant, r in runs.items():
    print(f"{variant}: wall {[round(x[0], 1) for x in r]} median {statistics.median(x[0] for x in r):.1f} s, "
          f"rounds median {statistics.median(x[1] for x in r):.1f} s, final accuracy {[round(x[2], 4) for x in r]}")
PY
