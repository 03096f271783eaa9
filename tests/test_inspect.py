"""Views of a run's model (fedconv inspect): the filters are the first convolution's weights,
the feature maps each block's output, computed here by running the blocks directly; bad
input is one line and exit 2 with nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedconv import inspect_run
from fedconv.config import compose
from fedconv.insight import views
from fedconv.learning import task
from fedconv.learning.models import build_model, transmitted_state
from fedconv.runs import run_dir

PNG = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path: Path, overrides: list[str]) -> Path:
    """A completed run's files: its config, final weights (the initial model) and class report."""
    run = tmp_path / "run"
    cfg = {**compose(["dataset=digits", *overrides]), "output_dir": str(run)}
    ds = task.dataset(cfg)
    run.mkdir()
    run_dir.write_config(run, cfg)
    run_dir.save_weights(run / run_dir.WEIGHTS, transmitted_state(task.initial_model(cfg, ds)))
    run_dir.write_json(run / run_dir.CLASS_REPORT, {"confusion_matrix": np.eye(10, dtype=int).tolist()})
    return run


def test_inspect_writes_filters_feature_maps_per_class_and_the_confusion_matrix(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path, [])
    assert inspect_run.main([str(run)]) == 0
    written = sorted(p.name for p in (run / "inspect").iterdir())
    assert written == sorted(["filters.png", "confusion_matrix.png", *[f"feature_maps_class{k}.png" for k in range(10)]])
    assert all((run / "inspect" / name).read_bytes().startswith(PNG) for name in written)
    assert "12 images" in capsys.readouterr().out


def test_the_views_are_the_models_own_weights_and_block_outputs() -> None:
    cfg = compose(["dataset=digits"])
    model = build_model(cfg["model"], (1, 8, 8), 10, seed=0)
    np.testing.assert_array_equal(views.first_filters(model), model.state_dict()["block1.0.weight"].numpy())
    x = torch.randn(2, 1, 8, 8)
    maps = views.feature_maps(model, x)
    model.eval()
    with torch.no_grad():
        block1 = model.block1(x)
        block2 = model.act2(model.bn2(model.conv2(block1)))
    np.testing.assert_allclose(maps["block 1"], block1.numpy(), rtol=1e-6)
    np.testing.assert_allclose(maps["block 2"], block2.numpy(), rtol=1e-6)
    assert model.training is False  # restored as it was: eval (set above)

    niid = build_model(compose(["model=niid_cnn", "dataset=digits"])["model"], (1, 28, 28), 10, seed=0)
    niid.train()
    maps = views.feature_maps(niid, torch.randn(1, 1, 28, 28))
    convs = [m for m in niid.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [v.shape[1] for v in maps.values()] == [c.out_channels for c in convs[:2]] and niid.training


@pytest.mark.parametrize("damage,message", [
    ("no_dir", r"^error: .*/missing: no such run directory$"),
    ("no_weights", r"^error: .*model\.safetensors: missing; inspect views a completed run's final model$"),
    ("out_is_file", r"^error: --out .*: is a file$"),
    ("weights_of_another_model", r"^error: .*model\.safetensors: does not fit the run's model"),
])
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path: Path, capsys, damage: str, message: str) -> None:
    run = _run(tmp_path, ["model.filters1=8"] if damage == "weights_of_another_model" else [])
    out = tmp_path / "views"
    args = [str(run), "--out", str(out)]
    if damage == "no_dir":
        args[0] = str(tmp_path / "missing")
    elif damage == "no_weights":
        (run / run_dir.WEIGHTS).unlink()
    elif damage == "out_is_file":
        out.write_text("a file")
    elif damage == "weights_of_another_model":
        run_dir.write_config(run, {**compose(["dataset=digits"]), "output_dir": str(run)})  # 32 filters, weights of 8
    assert inspect_run.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert __import__("re").match(message, err), err
    assert out.is_file() if damage == "out_is_file" else not out.exists()
