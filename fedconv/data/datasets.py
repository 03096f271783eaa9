"""Real image datasets as uint8 NCHW arrays, parsed once and memory-mapped afterwards.

Every loader returns an :class:`ImageDataset`; clients and the server only ever see
that record, so adding a dataset means adding one ``_load_*`` function and one YAML.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedconv import atomic
from fedconv.checks import Checks

DEBIAN_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# Official .gz checksums (the ones torchvision and the dataset authors publish).
DOWNLOADS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {
        "base_url": "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
    "mnist": {
        "base_url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "cifar10": {
        "base_url": "https://www.cs.toronto.edu/~kriz/",
        "md5": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    },
}

NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "digits": 10}
DATASETS = tuple(NUM_CLASSES)


def declared_shape(dataset_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) as the ``dataset`` group declares them."""
    return int(dataset_cfg["channels"]), int(dataset_cfg["height"]), int(dataset_cfg["width"])
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST_BATCH = "test_batch"


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or unknown; the message says what to do."""


@dataclass(frozen=True)
class ImageDataset:
    """Train/test images (uint8, N x C x H x W), int64 labels and train-set statistics."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


# --------------------------------------------------------------------------- IDX


MAX_DECOMPRESSED = 4 << 30  # an image set's IDX payload; a gzip that inflates past this is refused


def _open_maybe_gz(path: Path) -> bytes:
    """The file's bytes (inflated for ``.gz``, in bounded chunks: a small file can claim
    to inflate to any size)."""
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        out = bytearray()
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                out += chunk
                if len(out) > MAX_DECOMPRESSED:
                    raise DatasetError(f"{path}: inflates past {MAX_DECOMPRESSED >> 30} GiB; not an image set's IDX file")
        return bytes(out)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"cannot read {path}: {exc} (truncated or not a gzip file?)") from exc


def parse_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse an IDX file (uint8 payload) and validate its header against its length."""
    data = _open_maybe_gz(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: file too short to be an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or ndim != expected_ndim:
        magic = int.from_bytes(data[:4], "big")
        want = 0x0800 | expected_ndim
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x{want:08x}: "
            f"unsigned bytes, {expected_ndim} dimension(s))"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)  # Python ints: dimensions whose product overflows 64 bits cannot wrap
    if len(data) != expected:
        raise DatasetError(
            f"{path}: wrong length {len(data)} bytes for dimensions {dims} "
            f"(expected {expected}); the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def idx_name(split: str, what: str, ndim: int) -> str:
    """The IDX file stem for a split ("train", "t10k") of images or labels."""
    return f"{split}-{what}-idx{ndim}-ubyte"


def find_idx(directory: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``directory`` (both forms are in use)."""
    return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)


def encode_idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080N, the N big-endian dimensions, the data."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return (0x0800 | array.ndim).to_bytes(4, "big") + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in .gz (reproducibly: no mtime)."""
    data = encode_idx(array)
    atomic.write_bytes(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    found = {key: path for key, stem in IDX_FILES.items() if (path := find_idx(directory, stem)) is not None}
    return found if len(found) == len(IDX_FILES) else None


def _load_idx_dir(name: str, files: dict[str, Path], num_classes: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images = parse_idx(files[f"{split}_x"], 3)
        labels = parse_idx(files[f"{split}_y"], 1).astype(np.int64)
        if len(images) != len(labels):
            raise DatasetError(
                f"{files[f'{split}_y']}: {len(labels)} labels for {len(images)} images "
                f"in {files[f'{split}_x']}"
            )
        if labels.size and labels.max() >= num_classes:
            raise DatasetError(
                f"{files[f'{split}_y']}: label {int(labels.max())} out of range "
                f"0..{num_classes - 1} for {name}"
            )
        arrays[f"{split}_x"] = images[:, None, :, :]
        arrays[f"{split}_y"] = labels
    return arrays


# ------------------------------------------------------------------------- CIFAR


class _CifarUnpickler(pickle.Unpickler):
    """Unpickle CIFAR batches without executing arbitrary code: only numpy arrays allowed."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.limit = len(data)  # no array in the file can hold more bytes than the file itself

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        found = super().find_class(module, name)
        if name != "_reconstruct":
            return found
        limit = self.limit

        def bounded(subtype: Any, shape: Any, dtype: Any) -> Any:  # numpy allocates shape x dtype here
            dims = shape if isinstance(shape, tuple) else (shape,)
            if not all(isinstance(d, int) and d >= 0 for d in dims):
                raise pickle.UnpicklingError(f"array shape {shape!r} is not a shape")
            if math.prod(dims) * np.dtype(dtype).itemsize > limit:
                raise pickle.UnpicklingError(f"asks for an array of shape {shape!r}, larger than the file's {limit} bytes")
            return found(subtype, shape, dtype)

        return bounded


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(path.read_bytes()).load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError, MemoryError,
            pickle.UnpicklingError) as exc:
        raise DatasetError(f"{path}: not a valid CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetError(
            f"{path}: CIFAR-10 batch has data shape {data.shape} and {len(labels)} labels "
            "(expected N x 3072 and N labels)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DatasetError(f"{path}: label out of range 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _find_cifar_dir(directory: Path) -> Path | None:
    for candidate in (directory / CIFAR_DIR, directory):
        if all((candidate / b).is_file() for b in [*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH]):
            return candidate
    return None


def _load_cifar_dir(directory: Path) -> dict[str, np.ndarray]:
    parts = [_read_cifar_batch(directory / b) for b in CIFAR_TRAIN_BATCHES]
    test_x, test_y = _read_cifar_batch(directory / CIFAR_TEST_BATCH)
    return {
        "train_x": np.concatenate([p[0] for p in parts]),
        "train_y": np.concatenate([p[1] for p in parts]),
        "test_x": test_x,
        "test_y": test_y,
    }


# ------------------------------------------------------------------------ digits


DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # inside the installed sklearn package


def _digits_file() -> Path:
    """scikit-learn's own copy of the UCI digits (1,797 rows: 64 pixels in 0..16, then the
    label), found without importing scikit-learn: ``import sklearn`` alone costs about 1.3 s
    in every process that loads digits (the driver and each Ray worker), more than the rest
    of loading. ``sklearn.datasets.load_digits`` reads this same file;
    tests/test_datasets.py::test_digits_are_scikit_learns_own checks the two agree."""
    import importlib.util

    from fedconv.optional import MissingExtra, missing_extra_message

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(str(missing_extra_message("sklearn", "the digits dataset (scikit-learn's)")), name="sklearn")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*DIGITS_FILE)
    if not path.is_file():
        raise DatasetError(f"dataset.name=digits: {path} is missing from scikit-learn's install; reinstall scikit-learn")
    return path


def _load_digits(test_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    with gzip.open(_digits_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    images = np.clip(np.rint(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    order = np.random.default_rng(split_seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return {
        "train_x": images[train][:, None],
        "train_y": labels[train],
        "test_x": images[test][:, None],
        "test_y": labels[test],
    }


# ------------------------------------------------------------------ search, cache


def _search_dirs(name: str, data_dir: str) -> list[Path]:
    dirs: list[Path] = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get("FEDCONV_DATA")
    if env:
        dirs += [Path(env) / name, Path(env) / name.replace("_", "-"), Path(env)]
    if name in DEBIAN_DIRS:
        dirs.append(DEBIAN_DIRS[name])
    return list(dict.fromkeys(dirs))


def cache_root(cache_dir: str = "") -> Path:
    """Where parsed arrays are cached: config, then FEDCONV_CACHE, then ~/.cache/fedconv."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("FEDCONV_CACHE", Path.home() / ".cache" / "fedconv"))


def _fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha1()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the training images scaled to [0, 1], in chunks."""
    c = x.shape[1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, len(x), 8192):
        chunk = np.asarray(x[start : start + 8192], dtype=np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += (chunk**2).sum(axis=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _write_cache(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """Publish the parsed arrays as one folder (another process may publish the same one
    first: its copy is identical)."""
    with atomic.publishing_dir(target) as tmp:
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr))
        mean, std = _channel_stats(arrays["train_x"])
        (tmp / "stats.json").write_text(json.dumps({"mean": mean, "std": std}))


def _read_cache(name: str, target: Path) -> ImageDataset:
    arrays = {k: np.load(target / f"{k}.npy", mmap_mode="r") for k in IDX_FILES}
    stats = json.loads((target / "stats.json").read_text())
    return ImageDataset(
        name=name,
        num_classes=NUM_CLASSES[name],
        mean=tuple(stats["mean"]),
        std=tuple(stats["std"]),
        **arrays,
    )


def _cached(name: str, sources: list[Path], cache_dir: str, parse) -> ImageDataset:
    target = cache_root(cache_dir) / f"{name}-{_fingerprint(sources)}"
    if not (target / "stats.json").is_file():
        _write_cache(target, parse())
    return _read_cache(name, target)


# ---------------------------------------------------------------------- download


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(name: str, dest: Path) -> Path:
    """Fetch a dataset's official files into ``dest`` and verify their MD5 checksums."""
    spec = DOWNLOADS[name]
    dest.mkdir(parents=True, exist_ok=True)
    for filename, md5 in spec["md5"].items():
        target = dest / filename
        if target.is_file() and _md5(target) == md5:
            continue
        with atomic.replacing(target) as tmp:  # a failed or corrupt download leaves nothing
            try:
                with urllib.request.urlopen(spec["base_url"] + filename, timeout=60) as r:
                    tmp.write_bytes(r.read())
            except OSError as exc:
                raise DatasetError(f"download of {filename} for {name} failed: {exc}") from exc
            if _md5(tmp) != md5:
                raise DatasetError(f"download of {filename} for {name} failed its MD5 check")
    if name == "cifar10":
        with tarfile.open(dest / "cifar-10-python.tar.gz") as tar:
            tar.extractall(dest, filter="data")
    return dest


def _missing(name: str, looked: list[Path]) -> DatasetError:
    where = ", ".join(str(p) for p in looked) or "(no directory configured)"
    hints = ["set dataset.data_dir=<dir> or the FEDCONV_DATA environment variable"]
    if name == "fashion_mnist":
        hints.insert(0, "install the Debian package: apt-get install -y dataset-fashion-mnist")
    if name in DOWNLOADS:
        hints.append("or allow a verified download with dataset.download=true (needs internet)")
    return DatasetError(f"dataset '{name}' not found; looked in: {where}. To get it: " + "; ".join(hints))


# -------------------------------------------------------------------------- entry


def load_dataset(cfg: Mapping[str, Any]) -> ImageDataset:
    """Load the dataset a ``dataset`` config group describes (see ``conf/dataset``)."""
    name = str(cfg["name"])
    if name not in NUM_CLASSES:
        raise DatasetError(
            f"dataset.name: unknown dataset '{name}'; allowed: {', '.join(sorted(NUM_CLASSES))}"
        )
    cache_dir = str(cfg.get("cache_dir") or "")
    if name == "digits":
        frac, seed = float(cfg["test_fraction"]), int(cfg["split_seed"])
        arrays = _load_digits(frac, seed)
        mean, std = _channel_stats(arrays["train_x"])
        return ImageDataset(name=name, num_classes=10, mean=mean, std=std, **arrays)

    looked = _search_dirs(name, str(cfg.get("data_dir") or ""))
    if cfg.get("download"):
        looked.append(cache_root(cache_dir) / "downloads" / name)
    for directory in looked:
        if cfg.get("download") and directory == looked[-1]:
            download(name, directory)
        if name == "cifar10":
            found = _find_cifar_dir(directory)
            if found is not None:
                sources = [found / b for b in [*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH]]
                return _cached(name, sources, cache_dir, functools.partial(_load_cifar_dir, found))
        else:
            files = _find_idx_files(directory)
            if files is not None:
                return _cached(
                    name,
                    list(files.values()),
                    cache_dir,
                    functools.partial(_load_idx_dir, name, files, NUM_CLASSES[name]),
                )
    raise _missing(name, looked)


def config_problems(c: Checks) -> None:
    """The ``dataset`` group (:func:`fedconv.validation.validate` runs every group's check)."""
    c.one_of("dataset.name", DATASETS)
    for key in ("dataset.augment", "dataset.download"):
        c.boolean(key)
    for key in ("dataset.channels", "dataset.height", "dataset.width"):
        c.in_range(key, 1, 4096, integer=True)
    c.in_range("dataset.num_classes", 2, 100_000, integer=True)
    for key in ("dataset.data_dir", "dataset.cache_dir"):
        if c.has(key):
            c.text(key)
    if c.has("dataset.test_fraction"):  # digits: its own train/test split
        c.in_range("dataset.test_fraction", 0, 1, lo_open=True, hi_open=True)
    if c.has("dataset.split_seed"):
        c.in_range("dataset.split_seed", 0, 2**32 - 1, integer=True)
