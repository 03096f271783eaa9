#!/usr/bin/env bash
# The report page as headless Chromium renders it, at a laptop's and a phone's width: the
# client-drift sweep's report (bash experiments/client_drift.sh first), cut to its "Client
# drift" + "Data" sections and its "Final models" section. Chromium lays the whole page out
# (a window as tall as the page); the cut is where the page says each section starts.
#   bash experiments/report_screenshots.sh   # -> experiments/reports/img/report_page_*.png
set -euo pipefail
cd "$(dirname "$0")/.."
root=${DRIFT_ROOT:-results/sweeps/client_drift}
python -m fedconv.runs.report "$root" --out "$root/report" > /dev/null
python - "$root/report/report.html" experiments/reports/img <<'PY'
import html, json, re, subprocess, sys, tempfile
from pathlib import Path
from PIL import Image

page, img = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
PROBE = """<script>window.addEventListener('load', () => { const o = document.createElement('pre');
o.id = 'probe'; o.hidden = true; o.textContent = JSON.stringify({height: document.documentElement.scrollHeight,
tops: Object.fromEntries([...document.querySelectorAll('h2[id]')].map(h => [h.id, h.getBoundingClientRect().top]))});
document.body.appendChild(o); });</script>"""
FRAME = """<!doctype html><html><body><iframe id="f" style="width:{width}px;height:900px;border:0" srcdoc="{page}">
</iframe><script>document.getElementById('f').addEventListener('load', () => {{ const o = document.createElement('pre');
o.id = 'seen'; o.textContent = document.getElementById('f').contentDocument.getElementById('probe').textContent;
document.body.appendChild(o); }});</script></body></html>"""
chromium = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]

def shoot(width, sections, name):
    with tempfile.TemporaryDirectory() as tmp:
        # laid out in a frame of the width: Chromium's own window is at least 500 px wide
        probed = Path(tmp) / "probe.html"
        probed.write_text(FRAME.format(width=width, page=html.escape(page.read_text() + PROBE, quote=True)))
        dom = subprocess.run([*chromium, "--window-size=1400,1000", "--dump-dom", probed.as_uri()],
                             capture_output=True, text=True, check=True).stdout
        seen = json.loads(html.unescape(re.search(r'<pre id="seen">(.*?)</pre>', dom, re.S).group(1)))
        shot = Path(tmp) / "page.png"
        subprocess.run([*chromium, f"--window-size={width},{seen['height']}", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, check=True)
        ids = sorted(seen["tops"], key=seen["tops"].get)
        top = int(seen["tops"][sections[0]]) - 10
        after = ids.index(sections[-1]) + 1
        bottom = int(seen["tops"][ids[after]]) - 10 if after < len(ids) else seen["height"]
        Image.open(shot).crop((0, top, width, bottom)).save(img / name, optimize=True)
        print(f"{page} at {width} px, {' + '.join(sections)} -> {img / name}")

shoot(1366, ["s-client-drift", "s-data"], "report_page_laptop_drift.png")
shoot(1366, ["s-final-models"], "report_page_laptop_models.png")
shoot(390, ["s-client-drift"], "report_page_phone_drift.png")
PY
