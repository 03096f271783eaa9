"""fedconv.atomic: a failed write leaves the old file (or nothing), never half of one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedconv import atomic


def test_a_write_replaces_the_file_with_its_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "summary.json"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o644
    atomic.write_bytes(tmp_path / "key", b"secret", mode=0o600)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["key", "sub", "summary.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.safetensors"
    target.write_bytes(b"round 3")
    with pytest.raises(RuntimeError, match="disk full"), atomic.replacing(target) as tmp:
        tmp.write_bytes(b"half of round")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"round 3" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_the_temp_keeps_the_suffix_numpy_expects(tmp_path: Path) -> None:
    target = tmp_path / "partitions.npz"
    with atomic.replacing(target) as tmp:
        np.savez(tmp, a=np.arange(3))  # np.savez appends .npz to a name without it
    with np.load(target) as f:
        assert f["a"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["partitions.npz"]


def test_a_folder_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "digits-abc"
    with pytest.raises(ValueError), atomic.publishing_dir(target) as tmp:
        (tmp / "train_x.npy").write_bytes(b"x")
        raise ValueError("parse failed")
    assert not target.exists() and list((tmp_path / "cache").iterdir()) == []
    with atomic.publishing_dir(target) as tmp:
        (tmp / "stats.json").write_text("first")
    with atomic.publishing_dir(target) as tmp:  # another process got there first: keep its copy
        (tmp / "stats.json").write_text("second")
    assert (target / "stats.json").read_text() == "first"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["digits-abc"]
