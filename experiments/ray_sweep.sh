#!/usr/bin/env bash
# A sweep's wall time: Hydra's default launcher (one job after another, each with its own
# local Ray) vs hydra/launcher=ray_cluster (the jobs at once on one local Ray cluster, each
# job's clients reserved as a placement group). The job: the default config (Fashion-MNIST,
# 20 clients, 20 rounds) with 1 training and 1 evaluating client per round and 1 CPU per
# client, 4 seeds. Each repetition writes fresh sweep folders; prints one line per sweep and
# the median of each. Run on an otherwise idle machine, from the repo root in the venv.
#   bash experiments/ray_sweep.sh                 # 3 repetitions, 4 jobs, 2 CPUs
#   REPS=1 SEEDS=0,1,2,3,4,5,6,7 CPUS=8 bash experiments/ray_sweep.sh
#   SEEDS=0,1,2,3,4,5,6,7,8,9,10,11 bash experiments/ray_sweep.sh dataset=digits   # + overrides
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
reps=${REPS:-3}
seeds=${SEEDS:-0,1,2,3}
cpus=${CPUS:-2}
root=${RAY_SWEEP_ROOT:-results/sweeps/ray_sweep_bench}
job=(name=ray_sweep_bench server.fraction_train=0.05 server.min_train_clients=1 server.fraction_evaluate=0.05
     server.min_evaluate_clients=1 simulation.client_resources.num_cpus=1 "simulation.ray.num_cpus=$cpus"
     "seed=$seeds" "$@")
rm -rf "$root"
mkdir -p "$root"
for rep in $(seq 1 "$reps"); do
  for launcher in basic ray_cluster; do
    extra=()
    if [ "$launcher" = ray_cluster ]; then
      extra=(hydra/launcher=ray_cluster "hydra.launcher.ray.init.num_cpus=$cpus")
    fi
    start=$(date +%s%N)
    "$PY" -m fedconv.simulate -m "${job[@]}" "${extra[@]}" "hydra.sweep.dir=$root/$launcher-$rep" \
      > "$root/$launcher-$rep.log" 2>&1
    end=$(date +%s%N)
    echo "$launcher $rep $(( (end - start) / 1000000 ))" | tee -a "$root/times.txt"
  done
done
"$PY" - "$root/times.txt" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    launcher, _, ms = line.split()
    times.setdefault(launcher, []).append(int(ms) / 1000)
med = {k: statistics.median(v) for k, v in times.items()}
for k, v in med.items():
    print(f"{k}: median {v:.1f} s over {len(times[k])} sweeps {times[k]}")
print(f"speed-up basic/ray_cluster: {med['basic'] / med['ray_cluster']:.2f}x")
PY
