"""A board's own data folder: written by the export tool, read by the ClientApp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedconv.config import compose
from fedconv.data.datasets import DatasetError
from fedconv.data.device_data import load_device_data
from fedconv.edge.board_data import export_partitions, main
from fedconv.learning import task

OVERRIDES = ["dataset=digits", "simulation.num_clients=3"]


def test_exported_folders_hold_exactly_each_partition(tmp_path: Path) -> None:
    cfg = compose(OVERRIDES)
    folders = export_partitions(cfg, tmp_path)
    ds, parts = task.dataset(cfg), task.partitions(cfg, 3)
    assert [f.name for f in folders] == ["device-0", "device-1", "device-2"]
    for pid, folder in enumerate(folders):
        local = load_device_data(str(folder), (1, 8, 8), 10, 0.1, 0, pid)
        np.testing.assert_array_equal(local.ds.train_x, ds.train_x[parts.train[pid]])
        np.testing.assert_array_equal(local.ds.train_y, ds.train_y[parts.train[pid]])
        np.testing.assert_array_equal(local.held_y, ds.train_y[parts.test[pid]])
        assert len(local.ds.test_y) == 0  # the central test set is the server's
        assert local.ds.mean == pytest.approx(ds.mean) and local.ds.std == pytest.approx(ds.std)  # from meta.json
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["num_train"] == len(parts.train[pid]) and f"partition-id={pid}" in meta["node_config"]


def test_class_folders_of_images_are_read_and_resized(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in (0, 3):
        (tmp_path / str(label)).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / str(label) / f"{i}.png")
    (tmp_path / "3" / "notes.txt").write_text("not an image")
    local = load_device_data(str(tmp_path), (1, 8, 8), 10, 0.2, 0, 0)
    assert local.ds.train_x.shape[1:] == (1, 8, 8) and local.ds.train_x.dtype == np.uint8
    assert len(local.ds.train_y) + len(local.held_y) == 10
    assert set(np.concatenate([local.ds.train_y, local.held_y]).tolist()) == {0, 3}


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: None, "found neither IDX files"),
        (lambda d: (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03"), "train-labels-idx1-ubyte[.gz] is missing"),
    ],
)
def test_bad_device_folders_name_the_folder(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_device_data(str(tmp_path), (1, 8, 8), 10, 0.1, 0, 0)
    assert message in str(err.value) and str(tmp_path) in str(err.value)


def test_labels_beyond_the_run_are_refused(tmp_path: Path) -> None:
    cfg = compose(OVERRIDES)
    export_partitions(cfg, tmp_path)
    with pytest.raises(DatasetError, match="labels must be in \\[0, 5\\)"):
        load_device_data(str(tmp_path / "device-0"), (1, 8, 8), 5, 0.1, 0, 0)


def test_cli_writes_folders_and_rejects_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "out"), *OVERRIDES]) == 0
    assert "device-2" in capsys.readouterr().out
    assert main([str(tmp_path / "bad"), "dataset=digits", "simulation.num_clients=0"]) == 2
    assert "simulation.num_clients=0" in capsys.readouterr().err
