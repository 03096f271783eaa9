"""Export: the four artifacts load back and predict like the PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedconv.config import compose
from fedconv.edge.export import export, main
from fedconv.learning import task
from fedconv.learning.models import transmitted_state
from fedconv.learning.training import train_local
from fedconv.runs import run_dir
from fedconv.sections import Client

# one worker trains the module's run once (pytest-xdist would otherwise train it on both)
pytestmark = pytest.mark.xdist_group("export")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose model was trained centrally on digits (a few seconds)."""
    run = tmp_path_factory.mktemp("run")
    cfg = compose(["dataset=digits"])
    ds = task.dataset(cfg)
    model = task.initial_model(cfg, ds)
    train_local(model, ds.train_x, ds.train_y, task.normalizer(cfg, ds, train=True), Client.of(cfg),
                lr=0.05, epochs=5, seed=0)
    run_dir.write_config(run, cfg)
    run_dir.save_weights(run / run_dir.WEIGHTS, transmitted_state(model))
    return run


def test_artifacts_predict_like_the_pytorch_model(trained_run: Path) -> None:
    report = export(trained_run, trained_run / "export", runs=200)
    rows = report["artifacts"]
    float_acc = rows["pytorch-float"]["accuracy"]
    assert float_acc > 0.9
    assert rows["torchscript"]["agreement_with_float"] == 1.0
    assert rows["onnx"]["agreement_with_float"] >= 0.997  # fp32 kernels may flip a near tie
    for name in ("int8-dynamic", "int8-static"):
        assert abs(rows[name]["accuracy"] - float_acc) <= 0.01, (name, rows[name]["accuracy"], float_acc)
    for name in ("torchscript", "onnx", "int8-dynamic", "int8-static"):
        r = rows[name]
        file = trained_run / "export" / r["file"]
        assert r["size_mb"] == pytest.approx(file.stat().st_size / 1e6)
        assert 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
    assert rows["int8-static"]["size_mb"] < rows["torchscript"]["size_mb"]
    saved = json.loads((trained_run / "export" / "export.json").read_text())
    assert saved["latency_runs"] == 200 and saved["threads"] == 1


def test_missing_run_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "config.yaml: missing" in capsys.readouterr().err


def test_too_few_latency_runs_are_refused(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(trained_run), "--runs", "50", "--out", str(trained_run / "x")]) == 2
    assert "--runs=50" in capsys.readouterr().err


@pytest.mark.slow
def test_the_console_shows_the_table_only(trained_run: Path) -> None:
    """The exporter's progress lines and torch's warnings stay off the user's console."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "fedconv.edge.export", str(trained_run), "--out", str(trained_run / "cli")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("twoconv on digits") and lines[1].startswith("artifact")
    assert [line.split()[0] for line in lines[2:7]] == ["pytorch-float", "torchscript", "onnx", "int8-dynamic", "int8-static"]
    assert lines[7:] == [f"-> {trained_run / 'cli' / 'export.json'}"]
