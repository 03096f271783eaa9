#!/usr/bin/env bash
# The report page as headless Chromium renders it, at a laptop's and a phone's width: the
# client-drift sweep's report (bash experiments/client_drift.sh first), opened at its
# "Client drift" and "Final models" sections.
#   bash experiments/report_screenshots.sh   # -> experiments/reports/img/report_page_*.png
set -euo pipefail
cd "$(dirname "$0")/.."
root=${DRIFT_ROOT:-results/sweeps/client_drift}
img=experiments/reports/img
python -m fedconv.runs.report "$root" --out "$root/report" > /dev/null
page="file://$(realpath "$root/report/report.html")"
shot() {  # width height anchor output
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size="$1,$2" \
    --virtual-time-budget=5000 --screenshot="$img/$4" "$page#$3" 2>/dev/null
  echo "$page#$3 at $1x$2 -> $img/$4"
}
shot 1366 1500 s-client-drift report_page_laptop_drift.png
shot 1366 1100 s-final-models report_page_laptop_models.png
shot 390 1700 s-client-drift report_page_phone_drift.png
