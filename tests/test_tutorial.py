"""examples/tutorial.ipynb executes top to bottom in a real Jupyter kernel (nbclient and
ipykernel, the ``notebook`` extra) on every suite run, so the tutorial never rots: its run is
real (``api.run`` -> ``python -m fedconv.simulate`` with Ray), its plots are drawn, and what it
prints is what the run directory holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "tutorial.ipynb"
nbformat = pytest.importorskip("nbformat", reason="the notebook extra (scripts/bootstrap.sh --tests installs it)")
nbclient = pytest.importorskip("nbclient", reason="the notebook extra (scripts/bootstrap.sh --tests installs it)")


def test_the_committed_notebook_has_no_outputs() -> None:
    """Outputs belong to whoever runs it: a committed one would go stale and bloat the diff."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow  # a kernel and a real six-round federation (about 30 s)
def test_the_tutorial_notebook_runs_and_shows_its_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCONV_TUTORIAL_DIR", str(tmp_path / "run"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(pictures) == 3  # the curves, the filters, the feature maps
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 6
    assert f"final accuracy {summary['final_central_accuracy']:.4f}" in text
    assert re.search(r"the model says \d \(true label 3\)", text)
