"""Per-process caches shared by the ClientApp and ServerApp (Flower's ``task.py`` role).

A Ray worker runs many virtual clients; it loads the dataset once (memory-mapped), makes
the partitions once, and builds the model once, then reuses them for every client call.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from fedconv import __version__
from fedconv.data.datasets import ImageDataset, cache_root, load_dataset
from fedconv.data.partitioning import Partitions, load_partitions, make_partitions, save_partitions
from fedconv.learning.models import build_model, transmitted_state

__all__ = [
    "ImageDataset", "Partitions", "dataset", "partitions", "reusable_model", "initial_model", "normalizer",
    "load_global", "train_partition",
]
from fedconv.learning.training import Normalizer, TrainHook, TrainResult, train_local
from fedconv.sections import Client


def _key(cfg: Mapping[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True)


@lru_cache(maxsize=2)
def _dataset(key: str) -> ImageDataset:
    return load_dataset(json.loads(key))


def dataset(cfg: Mapping[str, Any]) -> ImageDataset:
    """The run's dataset, loaded once per process."""
    return _dataset(_key(cfg["dataset"]))


@lru_cache(maxsize=4)
def _partitions(dataset_key: str, partition_key: str, num_clients: int, seed: int) -> Partitions:
    """Made once per machine: a SuperNode runs every message in a fresh process, and
    partitioning (Flower Datasets and its imports) costs seconds there; loading costs ms."""
    ds = _dataset(dataset_key)
    labels = np.asarray(ds.train_y)
    digest = hashlib.sha1(
        json.dumps([__version__, dataset_key, partition_key, num_clients, seed]).encode() + labels.tobytes()
    ).hexdigest()[:20]
    path = cache_root(str(json.loads(dataset_key).get("cache_dir") or "")) / "partitions" / f"{digest}.npz"
    try:
        return load_partitions(path)
    except (OSError, ValueError, KeyError):
        pass
    parts = make_partitions(labels, json.loads(partition_key), num_clients, seed)
    try:
        save_partitions(path, parts)
    except OSError:  # a read-only cache only costs time
        pass
    return parts


def partitions(cfg: Mapping[str, Any], num_clients: int) -> Partitions:
    """The run's client partitions, made once per process."""
    return _partitions(_key(cfg["dataset"]), _key(cfg["partition"]), num_clients, int(cfg["seed"]))


@lru_cache(maxsize=4)
def _model(model_key: str, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return build_model(json.loads(model_key), shape, num_classes, seed=0)


def reusable_model(cfg: Mapping[str, Any], ds: ImageDataset) -> nn.Module:
    """A model instance to load global weights into (built once per process)."""
    return _model(_key(cfg["model"]), ds.input_shape, ds.num_classes)


def initial_model(cfg: Mapping[str, Any], ds: ImageDataset) -> nn.Module:
    """The seeded initial global model."""
    return build_model(cfg["model"], ds.input_shape, ds.num_classes, seed=int(cfg["seed"]))


def normalizer(cfg: Mapping[str, Any], ds: ImageDataset, train: bool) -> Normalizer:
    return Normalizer.from_stats(ds.mean, ds.std, augment=train and bool(cfg["dataset"].get("augment")))


def load_global(model: nn.Module, state: Mapping[str, torch.Tensor], local: frozenset[str] = frozenset()) -> None:
    """Load exactly the transmitted state (everything but BatchNorm's batch counters and
    the ``local`` arrays a client keeps to itself)."""
    expected = set(transmitted_state(model)) - local
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"global weights do not match the model: missing {missing}, unexpected {extra}")
    model.load_state_dict(dict(state), strict=False)


def train_partition(
    cfg: Mapping[str, Any], ds: ImageDataset, model: nn.Module, idx: np.ndarray,
    *, server_round: int, pid: int, lr: float, hook: TrainHook | None = None,
    epochs: int | None = None, step_fraction: float = 1.0,
) -> TrainResult:
    """One client's local round, seeded from (seed, round, partition id) so any process
    that replays it (a Ray worker, the benchmark's plain-PyTorch limit) gets the same result.

    ``epochs`` and ``step_fraction`` shrink the work of a straggler (default: the full
    ``client.epochs``)."""
    seed = int(np.random.default_rng([int(cfg["seed"]), server_round, pid]).integers(2**31))
    torch.manual_seed(seed)  # dropout masks
    client = Client.of(cfg)
    epochs = client.epochs if epochs is None else epochs
    max_steps = client.max_steps or None  # a constrained board's budget
    if step_fraction < 1.0:
        steps_per_epoch = math.ceil(len(idx) / client.batch_size)
        budget = max(1, math.ceil(step_fraction * steps_per_epoch * epochs))
        max_steps = min(budget, max_steps) if max_steps else budget
    return train_local(
        model, ds.train_x[idx], ds.train_y[idx], normalizer(cfg, ds, train=True), client,
        lr=lr, epochs=epochs, hook=hook, seed=seed, max_steps=max_steps,
    )
