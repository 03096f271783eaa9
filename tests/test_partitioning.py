"""Partitioners: coverage, label skew, determinism, extremes, and the statistics command."""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require_fashion_mnist
from fedconv.config import compose
from fedconv.data.datasets import load_dataset
from fedconv.data.partitioning import (
    PartitionError,
    label_histograms,
    make_partitions,
    mean_label_entropy,
)
from fedconv.partition_stats import main

LABELS = np.repeat(np.arange(10), 500)  # 5,000 examples, 500 per class
np.random.default_rng(0).shuffle(LABELS)


@functools.cache
def _partition_group(name: str) -> dict:
    return compose([f"partition={name}"])["partition"]


def pcfg(name: str, **kw: object) -> dict:
    """The ``partition=<name>`` group as composed (once per name), with ``kw`` set."""
    return {**copy.deepcopy(_partition_group(name)), **kw}


def all_indices(parts) -> np.ndarray:
    return np.concatenate([parts.client_indices(c) for c in range(parts.num_clients)])


@pytest.mark.parametrize("name", ["iid", "dirichlet", "pathological", "shards", "quantity"])
def test_partitions_are_disjoint_and_cover_the_training_set(name: str) -> None:
    parts = make_partitions(LABELS, pcfg(name), 20, seed=0)
    idx = all_indices(parts)
    assert len(idx) == len(np.unique(idx)), "a training example went to two clients"
    assert np.array_equal(np.sort(idx), np.arange(len(LABELS)))


def test_held_out_split_fraction_and_disjointness() -> None:
    parts = make_partitions(LABELS, pcfg("iid", test_fraction=0.1), 10, seed=0)
    for c in range(10):
        assert len(parts.test[c]) == 50 and len(parts.train[c]) == 450
        assert not set(parts.train[c]) & set(parts.test[c])


def test_pathological_two_labels_per_client() -> None:
    parts = make_partitions(LABELS, pcfg("pathological", k=2), 30, seed=1)
    hist = label_histograms(LABELS, parts, 10)
    assert ((hist > 0).sum(axis=1) == 2).all()


def test_pathological_first_deterministic_first_label_is_client_mod_classes() -> None:
    parts = make_partitions(LABELS, pcfg("pathological", k=3, class_assignment="first-deterministic"), 10, seed=0)
    hist = label_histograms(LABELS, parts, 10)
    for c in range(10):
        assert hist[c, c % 10] > 0 and (hist[c] > 0).sum() == 3


def test_lower_dirichlet_alpha_means_lower_label_entropy() -> None:
    entropies = [
        mean_label_entropy(label_histograms(LABELS, make_partitions(LABELS, pcfg("dirichlet", alpha=a), 20, 0), 10))
        for a in (0.1, 0.5, 100.0)
    ]
    assert entropies[0] < entropies[1] < entropies[2]
    assert entropies[2] > 3.2  # close to log2(10) = 3.32 bits: near-IID


def test_same_seed_same_mapping_different_seed_differs() -> None:
    for name in ("iid", "dirichlet", "pathological", "shards", "quantity"):
        a = make_partitions(LABELS, pcfg(name), 10, seed=5)
        b = make_partitions(LABELS, pcfg(name), 10, seed=5)
        c = make_partitions(LABELS, pcfg(name), 10, seed=6)
        assert all(np.array_equal(a.train[i], b.train[i]) and np.array_equal(a.test[i], b.test[i]) for i in range(10))
        assert any(not np.array_equal(a.client_indices(i), c.client_indices(i)) for i in range(10)), name


def test_quantity_skew_sizes_vary_labels_iid() -> None:
    parts = make_partitions(LABELS, pcfg("quantity", distribution="power_law", exponent=1.0), 10, 0)
    sizes = np.array([len(parts.client_indices(c)) for c in range(10)])
    assert sizes.max() > 5 * sizes.min() and sizes.min() >= 10
    hist = label_histograms(LABELS, parts, 10)
    assert mean_label_entropy(hist[sizes > 200]) > 3.0


def test_extreme_dirichlet_fails_fast_with_a_clear_message() -> None:
    labels = np.repeat(np.arange(10), 6000)
    t0 = time.perf_counter()
    with pytest.raises(PartitionError, match=r"partition.alpha=0.01 with 1000 clients.*min_partition_size"):
        make_partitions(labels, pcfg("dirichlet", alpha=0.01), 1000, seed=0)
    assert time.perf_counter() - t0 < 30


def test_extreme_dirichlet_without_minimum_names_the_empty_clients() -> None:
    """Flower Datasets' Dirichlet with alpha 0.01 over 1,000 clients and no minimum leaves
    about half the clients empty (seed 0: 508): fedconv refuses that, naming the count and the
    way out, unless empty clients are allowed explicitly."""
    labels = np.repeat(np.arange(10), 6000)
    with pytest.raises(PartitionError, match=r"508 of 1000 clients got no data \(first: client 0\).*allow_empty=true"):
        make_partitions(labels, pcfg("dirichlet", alpha=0.01, min_partition_size=0), 1000, seed=0)


def test_more_clients_than_examples() -> None:
    with pytest.raises(PartitionError, match="simulation.num_clients=20000"):
        make_partitions(LABELS, pcfg("iid"), 20000, seed=0)


def test_shards_on_fashion_mnist_give_100_clients_of_600() -> None:
    require_fashion_mnist()
    ds = load_dataset(compose([])["dataset"])
    parts = make_partitions(np.asarray(ds.train_y), pcfg("shards"), 100, seed=0)
    sizes = [len(parts.client_indices(c)) for c in range(100)]
    assert sizes == [600] * 100
    hist = label_histograms(np.asarray(ds.train_y), parts, 10)
    assert ((hist > 0).sum(axis=1) <= 2).all()


def test_statistics_command_writes_json_and_heatmap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--out", str(tmp_path), "dataset=digits", "partition.alpha=0.1,100", "simulation.num_clients=10"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "partition.alpha=0.1" in out and "partition.alpha=100" in out
    runs = sorted(tmp_path.iterdir())
    assert len(runs) == 2
    for run in runs:
        record = json.loads((run / "partition.json").read_text())
        assert record["num_clients"] == 10 and len(record["clients"]) == 10
        assert sum(sum(c["label_histogram"]) for c in record["clients"]) == 1438
        assert (run / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_allow_empty_keeps_clients_without_data() -> None:
    cfg = pcfg("dirichlet", alpha=0.01, min_partition_size=0)
    with pytest.raises(PartitionError, match="allow_empty"):
        make_partitions(LABELS, cfg, 200, seed=0)
    parts = make_partitions(LABELS, {**cfg, "allow_empty": True}, 200, seed=0)
    sizes = [len(parts.client_indices(c)) for c in range(200)]
    assert 0 in sizes and sum(sizes) == len(LABELS)
