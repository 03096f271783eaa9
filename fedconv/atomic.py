"""Atomic writes: a reader (or a crash) never sees half a file or half a folder.

Every file fedconv writes that something reads back (run dirs, checkpoints, caches, keys)
goes through here: written to a temporary name beside its target, flushed to disk (fsync),
renamed over the target in one step, and removed again if anything fails on the way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it gets ``mode``, is
    fsynced and replaces ``path``; on any error it is removed. The temporary file is created
    0600 and keeps the target's suffix (``np.save`` and friends append theirs otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    with replacing(path, mode) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    with replacing(path, mode) as tmp:
        tmp.write_text(text)


@contextmanager
def publishing_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` to fill; on success its files are fsynced
    and it is renamed to ``target`` (a folder someone else published first is kept, and
    ours dropped); on any error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(target.parent)


def unwritable(path: Path) -> str | None:
    """Why ``path`` cannot hold a run dir, or None when it can. Creates nothing that stays."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    first_new = missing[-1] if missing else None  # the top folder this check creates
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
    return None
