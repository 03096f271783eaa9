"""Shared helpers: small real-format dataset files written by the tests themselves, and
running ``python -m fedconv.simulate`` as a user would."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedconv import datasets

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 IDX file with fedconv's own writer (its bytes are pinned against a
    hand-written file in test_datasets.py::test_idx_writer_bytes)."""
    if gz:
        path = path.with_name(path.name + ".gz")
    datasets.write_idx(path, array)
    return path


def write_idx_dataset(directory: Path, n_train: int = 60, n_test: int = 20, seed: int = 0, gz: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(directory / name, arr, gz=gz)
    return arrays


def write_cifar_dataset(directory: Path, per_batch: int = 20, seed: int = 0) -> dict:
    """Write the CIFAR-10 python-pickle batches layout (cifar-10-batches-py/)."""
    rng = np.random.default_rng(seed)
    root = directory / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        with (root / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, f)
        written[name] = (data, labels)
    return written


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


def require_fashion_mnist() -> None:
    """CI installs the real data (scripts/bootstrap.sh); there its absence is a failure."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST missing in CI: bootstrap should have installed dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")


ROOT = Path(__file__).resolve().parent.parent


def simulate(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m fedconv.simulate`` in a subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fedconv.simulate", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def rows(run: Path, name: str = "rounds.csv") -> list[dict[str, str]]:
    """A run directory's CSV file as a list of rows."""
    with (run / name).open() as f:
        return list(csv.DictReader(f))


LEAN_BOARD_LACKS = ("hydra", "omegaconf", "ray", "matplotlib", "sklearn", "scipy", "flwr_datasets", "datasets",
                    "pandas", "pyarrow")


def lean_board_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """A SuperNode environment that sees this venv's packages without the ones a lean board
    install (``pip install fedconv``) lacks: a folder of links to every other top-level entry
    of site-packages replaces site-packages on the path (a sitecustomize on PYTHONPATH, which
    every ClientApp process the SuperNode starts inherits), so those modules are absent as on
    a board, and a board path that imports one fails its message."""
    import site

    real = Path(site.getsitepackages()[0])
    lean = tmp_path / "lean-board"
    (lean / "site").mkdir(parents=True, exist_ok=True)
    for entry in real.iterdir():
        if entry.name.removesuffix(".py") not in LEAN_BOARD_LACKS and entry.suffix != ".pth":
            (lean / "site" / entry.name).symlink_to(entry)
    (lean / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path[:] = [{str(lean / 'site')!r} if p == {str(real)!r} else p for p in sys.path]\n")
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(lean), env.get("PYTHONPATH", "")) if p)
    return env
