"""A board's own data (``data-dir`` in its SuperNode's ``--node-config``).

A device folder holds either IDX files (``train-images-idx3-ubyte[.gz]`` and
``train-labels-idx1-ubyte[.gz]``, optionally ``t10k-*`` as the local held-out split; colour
images use ``idx4`` files, N x C x H x W) or one sub-folder per class (``0/``, ``1/``, ... or
class names, sorted) of PNG/JPEG images, which are converted to the dataset's channels and
size. ``meta.json`` (written by the export tool) carries the whole dataset's normalisation
statistics, so a board normalises exactly like the server; without it the device's own
statistics are used. The operator's tool that writes one such folder per board:
:mod:`fedconv.edge.board_data` (``fedconv device-data``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedconv.data.datasets import DatasetError, ImageDataset, _channel_stats, find_idx, idx_name, parse_idx
from fedconv.data.partitioning import split_held_out

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm")


def _read_idx_split(directory: Path, split: str, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    ndim = 3 if channels == 1 else 4
    images = find_idx(directory, idx_name(split, "images", ndim))
    labels = find_idx(directory, idx_name(split, "labels", 1))
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = idx_name(split, "images" if images is None else "labels", ndim if images is None else 1)
        raise DatasetError(f"{directory}: {missing}[.gz] is missing (IDX images and labels come in pairs)")
    x, y = parse_idx(images, ndim), parse_idx(labels, 1)
    if len(x) != len(y):
        raise DatasetError(f"{images}: {len(x)} images but {labels} holds {len(y)} labels")
    return (x[:, None] if ndim == 3 else x), y.astype(np.int64)


def _read_class_folders(directory: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    from PIL import Image

    classes = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        return None
    numeric = all(p.name.isdigit() for p in classes)
    c, h, w = shape
    xs, ys = [], []
    for rank, folder in enumerate(classes):
        label = int(folder.name) if numeric else rank
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("L" if c == 1 else "RGB").resize((w, h)), dtype=np.uint8)
            except OSError as exc:
                raise DatasetError(f"{path}: not a readable image ({exc})") from exc
            xs.append(arr[None] if c == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DatasetError(f"{directory}: class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


@dataclass(frozen=True)
class DeviceData:
    """A device's own data: what it trains on (an :class:`ImageDataset` whose test set is
    empty: the central test set lives with the server) and its held-out split (the ``t10k``
    files, or ``test_fraction`` of the training data)."""

    ds: ImageDataset
    held_x: np.ndarray
    held_y: np.ndarray


@lru_cache(maxsize=2)
def load_device_data(
    data_dir: str, shape: tuple[int, int, int], num_classes: int, test_fraction: float, seed: int, pid: int
) -> DeviceData:
    """Read and check a device's data folder."""
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DatasetError(f"data-dir {directory}: no such folder on this device")
    train = _read_idx_split(directory, "train", shape[0]) or _read_class_folders(directory, shape)
    if train is None:
        raise DatasetError(
            f"data-dir {directory}: found neither IDX files ({idx_name('train', 'images', 3 if shape[0] == 1 else 4)}"
            "[.gz], ...) nor one folder per class of images"
        )
    x, y = train
    test = _read_idx_split(directory, "t10k", shape[0])
    if test is None:
        keep, held = split_held_out(np.arange(len(y)), test_fraction, seed, pid)
        test, (x, y) = (x[held], y[held]), (x[keep], y[keep])
    for images, labels in ((x, y), test):
        if tuple(images.shape[1:]) != shape:
            raise DatasetError(f"data-dir {directory}: images are {tuple(images.shape[1:])}, the run expects {shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(f"data-dir {directory}: labels must be in [0, {num_classes}), found {int(labels.max())}")
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
    else:
        mean, std = _channel_stats(x)
    ds = ImageDataset(name=f"device:{directory}", train_x=x, train_y=y, test_x=x[:0], test_y=y[:0],
                      num_classes=num_classes, mean=mean, std=std)
    return DeviceData(ds, held_x=test[0], held_y=test[1])
