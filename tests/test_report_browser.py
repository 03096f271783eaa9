"""report.html as a person sees it: rendered by headless Chromium (Debian's ``chromium``,
which scripts/bootstrap.sh --tests installs) at a laptop's and a phone's width: every plot
decoded and on the page, plots side by side where the width allows and one a row on a phone,
the page never wider than the window, and nothing fetched from the network."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_report import add_insight_files, make_run

from fedconv.runs.report import main as report_main

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
PROBE = """
<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(img => {
    const box = img.getBoundingClientRect(), style = getComputedStyle(img);
    return {name: img.dataset.name, title: img.alt,
            decoded: img.complete && img.naturalWidth > 0 && img.naturalHeight > 0,
            left: box.left, top: box.top, width: box.width, height: box.height,
            shown: style.display !== 'none' && style.visibility !== 'hidden' && Number(style.opacity) > 0};
  });
  const fetched = performance.getEntriesByType('resource').map(e => e.name);
  const out = document.createElement('pre');
  out.id = 'fedconv-probe';
  out.hidden = true;  // the probe's own long line must not widen the page it measures
  out.textContent = JSON.stringify({images, fetched, width: document.documentElement.scrollWidth,
                                    window: window.innerWidth});
  document.body.appendChild(out);
});
</script>
"""


LAPTOP, PHONE = 1366, 390


# Chromium's window is at least 500 pixels wide: the page is shown in a frame of the width.
FRAME = """<!doctype html><html><body style="margin:0">
<iframe id="shown" style="width:{width}px;height:3000px;border:0" srcdoc="{page}"></iframe>
<script>
document.getElementById('shown').addEventListener('load', () => {{
  const probe = document.getElementById('shown').contentDocument.getElementById('fedconv-probe');
  const out = document.createElement('pre');
  out.id = 'fedconv-probe';
  out.textContent = probe ? probe.textContent : 'null';
  document.body.appendChild(out);
}});
</script></body></html>"""


def render(page_html: str, width: int, tmp_path: Path) -> dict:
    """Show ``page_html`` (with the probe) ``width`` pixels wide in headless Chromium, every
    host name unresolvable, and return what the probe saw once it had loaded."""
    page = tmp_path / f"frame{width}.html"
    page.write_text(FRAME.format(width=width, page=html.escape(page_html + PROBE, quote=True)))
    proc = subprocess.run(
        [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--window-size=1400,3000", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="fedconv-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow  # a Chromium process of its own, twice
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/bootstrap.sh --tests installs it)")
def test_the_html_report_fits_a_laptop_and_a_phone_and_fetches_nothing(tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "0", strategy="fedavg", seed=0, accs=[0.5, 0.7, 0.8], client_accs=[0.6, 0.8, 0.9])
    make_run(tmp_path / "runs" / "1", strategy="fedprox", mu=0.1, seed=0, accs=[0.4, 0.5, 0.6], mb_per_round=3.0)
    for run in ("0", "1"):
        add_insight_files(tmp_path / "runs" / run, {(3, 0, 1): 0.5, (3, 0, 2): 0.1, (3, 1, 2): -0.2},
                          [[9, 1, 0], [0, 5, 5], [2, 2, 2]], np.random.default_rng(0).normal(size=(8, 1, 3, 3)),
                          [[4, 1, 0], [0, 3, 2], [1, 0, 4]])
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing to fetch, on its face
    pngs = sorted(p.stem for p in out.glob("*.png"))
    assert len(pngs) == 8  # four curves, the similarity and partition heatmaps, two final models
    for width in (LAPTOP, PHONE):
        seen = render(text, width, tmp_path)
        assert sorted(img["name"] for img in seen["images"]) == pngs
        assert seen["width"] <= seen["window"] == width  # the page never scrolls sideways (the table may)
        for img in seen["images"]:
            assert img["decoded"] and img["shown"] and img["title"], img
            assert 200 <= img["width"] and img["left"] >= 0 and img["left"] + img["width"] <= width, img
        tops = [round(img["top"]) for img in seen["images"]]
        side_by_side = len(tops) - len(set(tops))
        if width == LAPTOP:
            assert side_by_side >= 3, tops  # two a row: curves, heatmaps, models pair up
        else:
            assert side_by_side == 0 and all(img["width"] >= width * 0.8 for img in seen["images"]), seen["images"]
        assert seen["fetched"] == []  # the plots are data: URLs; no script, style or font is loaded
