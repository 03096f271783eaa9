"""Non-IID client partitions, made by Flower Datasets' partitioners over the training labels.

``make_partitions`` returns, per client, the indices of its local training set and of its
local held-out split (for federated evaluation). The same seed always gives the same
mapping. ``fedconv partitions`` (:mod:`fedconv.partition_stats`) prints and saves
partition statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedconv import atomic
from fedconv.checks import Checks

PARTITIONS = ("iid", "dirichlet", "pathological", "shards", "quantity")
CLASS_ASSIGNMENTS = ("random", "deterministic", "first-deterministic")
SIZE_DISTRIBUTIONS = ("power_law", "dirichlet")


class PartitionError(ValueError):
    """The requested partition cannot be made; the message names the key to change."""


@dataclass(frozen=True)
class Partitions:
    """Per-client training and held-out indices into the dataset's training arrays."""

    train: list[np.ndarray]
    test: list[np.ndarray]

    @property
    def num_clients(self) -> int:
        return len(self.train)

    def client_indices(self, cid: int) -> np.ndarray:
        return np.concatenate([self.train[cid], self.test[cid]])


def _label_dataset(labels: np.ndarray, seed: int, shuffle: bool):
    from fedconv.optional import require

    dataset_class = require("datasets", "making partitions (Flower Datasets)").Dataset
    ds = dataset_class.from_dict({"label": labels.astype(np.int64), "idx": np.arange(len(labels))})
    return ds.shuffle(seed=seed) if shuffle else ds


def _quantity_sizes(cfg: Mapping[str, Any], n_items: int, num_clients: int, seed: int) -> list[int]:
    """Client sizes for quantity skew, each at least ``min_partition_size``, summing to N."""
    minimum = int(cfg["min_partition_size"])
    if minimum * num_clients > n_items:
        raise PartitionError(
            f"partition.min_partition_size={minimum}: {num_clients} clients x {minimum} "
            f"exceeds the {n_items} training examples"
        )
    if cfg["distribution"] == "power_law":
        weights = (np.arange(num_clients) + 1.0) ** -float(cfg["exponent"])
        weights = np.random.default_rng(seed).permutation(weights)
    else:
        weights = np.random.default_rng(seed).dirichlet([float(cfg["beta"])] * num_clients)
    spare = n_items - minimum * num_clients
    sizes = minimum + np.floor(weights / weights.sum() * spare).astype(int)
    sizes[np.argmax(weights)] += n_items - int(sizes.sum())
    return sizes.tolist()


def _partitioner(cfg: Mapping[str, Any], labels: np.ndarray, num_clients: int, seed: int):
    from fedconv.optional import require

    fp = require("flwr_datasets.partitioner", "making partitions (Flower Datasets)")

    name = cfg["name"]
    if name == "iid":
        return fp.IidPartitioner(num_clients), True
    if name == "dirichlet":
        return fp.DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=float(cfg["alpha"]),
            min_partition_size=int(cfg["min_partition_size"]),
            self_balancing=bool(cfg["self_balancing"]),
            seed=seed,
        ), False
    if name == "pathological":
        return fp.PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=int(cfg["k"]),
            class_assignment_mode=str(cfg["class_assignment"]),
            seed=seed,
        ), False
    if name == "shards":
        per_client = int(cfg["shards_per_client"])
        shard_size = len(labels) // (per_client * num_clients)
        if shard_size < 1:
            raise PartitionError(
                f"partition.shards_per_client={per_client}: {per_client * num_clients} shards "
                f"for {len(labels)} examples leaves empty shards"
            )
        return fp.ShardPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_shards_per_partition=per_client,
            shard_size=shard_size,
            seed=seed,
        ), False
    if name == "quantity":
        return fp.SizePartitioner(_quantity_sizes(cfg, len(labels), num_clients, seed)), True
    raise PartitionError(
        f"partition.name: unknown '{name}'; allowed: iid, dirichlet, pathological, shards, quantity"
    )


def split_held_out(indices: np.ndarray, fraction: float, seed: int, cid: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, held-out), reproducibly per client."""
    order = np.random.default_rng([seed, cid]).permutation(indices)
    n_test = min(int(round(len(order) * fraction)), max(len(order) - 1, 0))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def save_partitions(path: Path, parts: Partitions) -> None:
    """Store partitions as four flat arrays (no pickle), atomically."""
    def flat(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        sizes = np.array([len(x) for x in lists], dtype=np.int64)
        values = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        return values.astype(np.int64), np.concatenate([[0], np.cumsum(sizes)])

    train, train_off = flat(parts.train)
    test, test_off = flat(parts.test)
    with atomic.replacing(path) as tmp:
        np.savez(tmp, train=train, train_offsets=train_off, test=test, test_offsets=test_off)


def load_partitions(path: Path) -> Partitions:
    with np.load(path, allow_pickle=False) as f:
        def split(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
            return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

        return Partitions(train=split(f["train"], f["train_offsets"]), test=split(f["test"], f["test_offsets"]))


def make_partitions(labels: np.ndarray, cfg: Mapping[str, Any], num_clients: int, seed: int) -> Partitions:
    """Partition training labels into ``num_clients`` clients with the configured scheme."""
    labels = np.asarray(labels)
    if num_clients > len(labels):
        raise PartitionError(
            f"simulation.num_clients={num_clients}: more clients than the {len(labels)} training examples"
        )
    partitioner, shuffle = _partitioner(cfg, labels, num_clients, seed)
    partitioner.dataset = _label_dataset(labels, seed, shuffle)
    parts: list[np.ndarray] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Dirichlet retry warnings; failure raises below
        try:
            for cid in range(num_clients):
                # the column as one Arrow array: a plain ["idx"] reads it back one row at a time (7x slower)
                column = partitioner.load_partition(cid).with_format("arrow")["idx"]
                parts.append(np.asarray(column.to_numpy(), dtype=np.int64))
        except ValueError as exc:
            raise PartitionError(_explain(cfg, num_clients, exc)) from exc
    empty = [cid for cid, p in enumerate(parts) if len(p) == 0]
    if empty and not cfg["allow_empty"]:
        raise PartitionError(
            f"partition.name={cfg['name']}: {len(empty)} of {num_clients} clients got no data "
            f"(first: client {empty[0]}); use fewer clients, a less extreme setting, or "
            "partition.allow_empty=true (an empty client then fails every round it is sampled)"
        )
    fraction = float(cfg["test_fraction"])
    splits = [split_held_out(p, fraction, seed, cid) for cid, p in enumerate(parts)]
    return Partitions(train=[s[0] for s in splits], test=[s[1] for s in splits])


def _explain(cfg: Mapping[str, Any], num_clients: int, exc: Exception) -> str:
    if cfg["name"] == "dirichlet":
        return (
            f"partition.alpha={cfg['alpha']} with {num_clients} clients: could not give every "
            f"client partition.min_partition_size={cfg['min_partition_size']} examples in 10 "
            "Dirichlet draws; raise partition.alpha, lower partition.min_partition_size or use "
            f"fewer clients ({exc})"
        )
    return f"partition.name={cfg['name']} with {num_clients} clients failed: {exc}"


# ------------------------------------------------------------------------ statistics


def label_histograms(labels: np.ndarray, parts: Partitions, num_classes: int) -> np.ndarray:
    """clients x classes matrix of example counts (training + held-out)."""
    labels = np.asarray(labels)
    return np.stack(
        [np.bincount(labels[parts.client_indices(c)], minlength=num_classes) for c in range(parts.num_clients)]
    )


def mean_label_entropy(hist: np.ndarray) -> float:
    """Mean Shannon entropy (bits) of the clients' label distributions: lower = more skewed."""
    p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    return float(ent.mean())


def partition_record(labels: np.ndarray, parts: Partitions, num_classes: int) -> dict[str, Any]:
    """JSON-ready description: per-client counts and label histograms, plus summary stats."""
    return histogram_record(label_histograms(labels, parts, num_classes), [len(t) for t in parts.train],
                            [len(t) for t in parts.test])


def histogram_record(hist: np.ndarray, num_train: list[int], num_test: list[int]) -> dict[str, Any]:
    """:func:`partition_record` from per-client label histograms (training + held-out)
    and the two counts."""
    sizes = hist.sum(axis=1)
    return {
        "num_clients": int(hist.shape[0]),
        "num_classes": int(hist.shape[1]),
        "summary": {
            "size_min": int(sizes.min()),
            "size_median": float(np.median(sizes)),
            "size_max": int(sizes.max()),
            "labels_per_client_mean": float((hist > 0).sum(axis=1).mean()),
            "label_entropy_mean_bits": mean_label_entropy(hist),
        },
        "clients": [
            {
                "partition_id": cid,
                "num_train": int(num_train[cid]),
                "num_test": int(num_test[cid]),
                "label_histogram": hist[cid].tolist(),
            }
            for cid in range(hist.shape[0])
        ],
    }


def save_heatmap(record: Mapping[str, Any], path: Path, title: str) -> None:
    """Clients x labels heatmap of example counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.array([c["label_histogram"] for c in record["clients"]])
    width = max(6.0, min(20.0, 0.12 * hist.shape[0] + 2))
    fig, ax = plt.subplots(figsize=(width, 3.6))
    im = ax.imshow(hist.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("label")
    ax.set_yticks(range(hist.shape[1]))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="examples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def config_problems(c: Checks) -> None:
    """The ``partition`` group."""
    name = c.get("partition.name")
    c.one_of("partition.name", PARTITIONS)
    c.in_range("partition.test_fraction", 0, 1, hi_open=True)
    for key in ("partition.allow_empty", "partition.self_balancing"):
        c.boolean(key)
    if name == "dirichlet":
        c.in_range("partition.alpha", 0, lo_open=True)
        c.in_range("partition.min_partition_size", 0, integer=True)
    elif name == "pathological":
        c.in_range("partition.k", 1, integer=True)
        c.one_of("partition.class_assignment", CLASS_ASSIGNMENTS)
        k, classes = c.get("partition.k"), c.get("dataset.num_classes")
        if isinstance(k, int) and isinstance(classes, int) and k > classes:
            c.fail("partition.k", f"must be <= dataset.num_classes={classes}")
    elif name == "shards":
        c.in_range("partition.shards_per_client", 1, integer=True)
    elif name == "quantity":
        c.one_of("partition.distribution", SIZE_DISTRIBUTIONS)
        c.in_range("partition.exponent", 0, lo_open=True)
        c.in_range("partition.beta", 0, lo_open=True)
        c.in_range("partition.min_partition_size", 1, integer=True)
