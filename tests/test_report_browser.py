"""report.html as a person sees it: rendered by headless Chromium (Debian's ``chromium``,
which scripts/bootstrap.sh --tests installs), every plot decoded and on the page, and nothing
fetched from the network."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_run

from fedconv.runs.report import main as report_main

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
PROBE = """
<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(img => {
    const box = img.getBoundingClientRect(), style = getComputedStyle(img);
    return {alt: img.alt, decoded: img.complete && img.naturalWidth > 0 && img.naturalHeight > 0,
            width: box.width, height: box.height,
            shown: style.display !== 'none' && style.visibility !== 'hidden' && Number(style.opacity) > 0};
  });
  const fetched = performance.getEntriesByType('resource').map(e => e.name);
  const out = document.createElement('pre');
  out.id = 'fedconv-probe';
  out.textContent = JSON.stringify({images, fetched, width: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});
</script>
"""


def render(page: Path) -> dict:
    """Load ``page`` in headless Chromium with every host name unresolvable, and return what
    the probe saw once it had loaded."""
    proc = subprocess.run(
        [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--window-size=1280,2000", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="fedconv-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.mark.slow  # a Chromium process of its own
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/bootstrap.sh --tests installs it)")
def test_the_html_report_shows_every_plot_and_fetches_nothing(tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "0", strategy="fedavg", seed=0, accs=[0.5, 0.7, 0.8], client_accs=[0.6, 0.8, 0.9])
    make_run(tmp_path / "runs" / "1", strategy="fedprox", mu=0.1, seed=0, accs=[0.4, 0.5, 0.6], mb_per_round=3.0)
    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing to fetch, on its face
    pngs = sorted(p.stem for p in out.glob("*.png"))
    assert len(pngs) >= 3
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    seen = render(page)
    assert sorted(img["alt"] for img in seen["images"]) == pngs
    for img in seen["images"]:
        assert img["decoded"] and img["shown"], img
        assert 200 <= img["width"] <= 1280 and img["height"] >= 100, img  # laid out, within the window
    assert seen["fetched"] == []  # the plots are data: URLs; no script, style or font is loaded
