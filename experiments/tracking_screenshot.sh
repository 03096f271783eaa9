#!/usr/bin/env bash
# The user guide's "Tracking" picture (docs/guide.md): a three-seed sweep of the default config (8 rounds) logged
# to MLflow, MLflow's own UI served on 127.0.0.1, and headless Chromium's screenshot of its
# compare page for the sweep's child runs (seed against final central accuracy, the runs'
# details and params). Re-runnable: the sweep skips completed jobs; the server is stopped at the end.
# Then the same sweep's HTML report (python -m fedconv.runs.report) rendered by Chromium.
#   bash experiments/tracking_screenshot.sh   # -> docs/img/mlflow_sweep.png, docs/img/report_page.png
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
root=${TRACKING_ROOT:-results/sweeps/tracking_demo}
port=${MLFLOW_PORT:-5055}
out=${OUT:-docs/img/mlflow_sweep.png}
"$PY" -m fedconv.simulate -m name=tracking_demo server.rounds=8 seed=0,1,2 logger.mlflow=true \
  logger.tensorboard=true "logger.mlflow_tracking_uri=$root/mlruns" "hydra.sweep.dir=$root/sweep"
store="sqlite:///$(realpath "$root/mlruns")/mlflow.db"
mlflow_bin="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/mlflow"
"$mlflow_bin" ui --backend-store-uri "$store" --host 127.0.0.1 --port "$port" > "$root/mlflow_ui.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; pkill -f "mlflow.server" 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 1
done
query=$("$PY" - "$store" "$root" <<'PY'
import json, sys, urllib.parse
from mlflow.tracking import MlflowClient
store, root = sys.argv[1], sys.argv[2]
client = MlflowClient(store)
experiment = client.get_experiment_by_name("tracking_demo").experiment_id
parent = json.load(open(f"{root}/sweep/tracking.json"))["mlflow"]["run_id"]
runs = [r.info.run_id for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")]
print("runs=" + urllib.parse.quote(json.dumps(runs)) + "&experiments=" + urllib.parse.quote(json.dumps([experiment])))
PY
)
url="http://127.0.0.1:$port/#/compare-runs?$query"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,1300 \
  --virtual-time-budget=20000 --screenshot="$out" "$url" 2>/dev/null
echo "screenshot of $url -> $out"
"$PY" -m fedconv.runs.report "$root/sweep" --out "$root/report"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,1400 \
  --virtual-time-budget=5000 --screenshot=docs/img/report_page.png "file://$(realpath "$root/report/report.html")" 2>/dev/null
echo "screenshot of $root/report/report.html -> docs/img/report_page.png"
