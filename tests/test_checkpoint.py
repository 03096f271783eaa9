"""Checkpoints: atomic, round-tripped exactly, and never unpickled."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from fedconv.runs import checkpoint


def test_round_trip_is_exact(tmp_path: Path) -> None:
    weights = {"a.weight": torch.randn(3, 4), "b.bias": torch.randn(5)}
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path, 7, weights, {"bytes_total": 123, "strategy": {"name": "fedprox", "mu": 0.1}})
    ckpt = checkpoint.load(path)
    assert ckpt.server_round == 7 and ckpt.state["bytes_total"] == 123 and ckpt.state["strategy"]["mu"] == 0.1
    assert set(ckpt.weights) == set(weights)
    for k, v in weights.items():
        assert torch.equal(ckpt.weights[k], v)
    assert torch.equal(ckpt.torch_rng, torch.get_rng_state())
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no temp file left


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_in_place_of_a_checkpoint_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(pickle.dumps(exploit))
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.safetensors"):
        checkpoint.load(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_name_the_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path, 1, {"w": torch.zeros(100)}, {})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(path)
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(checkpoint.CheckpointError, match="not a fedconv checkpoint"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "absent.safetensors")
