"""Client drift: the geometry of a round's updates, against the same quantities computed by
hand in the test (plain Python loops over the saved replies), in the round engine and alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_algorithms import COUNTS, driver, models, play, strategy_cfg, weighted_mean
from test_strategies import task_identity  # noqa: F401  (autouse fixture: Flower's run ids)

from fedconv.insight.drift import MODEL, PAIRS_OF, mean_pairwise_cosine, round_geometry


def _vector(arrays: dict[str, np.ndarray], names: list[str]) -> list[float]:
    return [float(v) for n in names for v in np.asarray(arrays[n], dtype=np.float64).ravel()]


def _norm(a: list[float]) -> float:
    return math.sqrt(sum(v * v for v in a))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


def test_the_round_engine_records_each_updates_norm_and_cosines_as_computed_by_hand() -> None:
    """FedAvg over seven clients: per client ||u_i|| and cos(u_i, d) for the model and each
    layer, the round's means, the mean over the 21 pairs, ||d|| (d = the weighted mean of the
    u_i, FedAvg's step) and the distance from the initial model."""
    x, clients = models(3)
    strategy = driver(strategy_cfg("fedavg"))
    strategy.initial = {k: v - 0.5 for k, v in x.items()}  # a model two rounds back, say
    new = play(strategy, 1, x, clients)
    record = strategy.current
    assert record is not None
    names = ["b", "w"]
    updates = [[c - s for c, s in zip(_vector(cl, names), _vector(x, names), strict=True)] for cl in clients]
    step = [n - s for n, s in zip(_vector(new, names), _vector(x, names), strict=True)]
    fedavg_step = {k: weighted_mean(clients, k, COUNTS) - x[k] for k in names}
    assert _norm(step) == pytest.approx(_norm(_vector(fedavg_step, names)), rel=1e-5)

    s = record.update_summary
    assert s["update_norm_mean"] == pytest.approx(sum(map(_norm, updates)) / 7)
    assert s["update_cosine_to_aggregate"] == pytest.approx(sum(_cos(u, step) for u in updates) / 7)
    pairs = [_cos(updates[i], updates[j]) for i in range(7) for j in range(i + 1, 7)]
    assert len(pairs) == 21 and s["update_pairwise_cosine"] == pytest.approx(sum(pairs) / 21)
    by_pair = {(p["round"], p["partition_a"], p["partition_b"]): p["cosine"] for p in record.update_pairs}
    assert by_pair == pytest.approx({(1, i, j): _cos(updates[i], updates[j]) for i in range(7) for j in range(i + 1, 7)})
    assert s["aggregate_step_norm"] == pytest.approx(_norm(step))
    assert s["distance_from_init"] == pytest.approx(_norm([n - s0 for n, s0 in zip(
        _vector(new, names), _vector(strategy.initial, names), strict=True)]))

    rows = {(r["partition_id"], r["layer"]): r for r in record.update_rows}
    assert len(rows) == len(record.update_rows) == 7 * 3  # the model, layer "b", layer "w"
    for pid, u in enumerate(updates):
        assert rows[pid, MODEL]["norm"] == pytest.approx(_norm(u))
        assert rows[pid, MODEL]["cosine_to_aggregate"] == pytest.approx(_cos(u, step))
        w_part, w_step = u[4:], step[4:]  # names sorted: b (4 values), then w (12)
        assert rows[pid, "w"]["norm"] == pytest.approx(_norm(w_part))
        assert rows[pid, "w"]["cosine_to_aggregate"] == pytest.approx(_cos(w_part, w_step))
        assert rows[pid, "b"]["norm"] == pytest.approx(_norm(u[:4]))


def test_a_rejected_reply_is_not_measured() -> None:
    """Only aggregated updates count: a NaN reply is rejected and absent from the rows."""
    x, clients = models(4)
    clients[2] = {k: np.full_like(v, np.nan) for k, v in clients[2].items()}
    strategy = driver(strategy_cfg("fedavg"))
    play(strategy, 1, x, clients)
    record = strategy.current
    assert record is not None and record.clients_rejected == 1
    assert sorted({r["partition_id"] for r in record.update_rows}) == [0, 1, 3, 4, 5, 6]
    assert record.update_summary["distance_from_init"] is None  # no initial model given
    assert all(math.isfinite(v) for v in record.update_summary.values() if v is not None)


def test_a_zero_update_has_no_direction() -> None:
    sent = {"w": np.ones(3)}
    replies = {0: {"w": np.ones(3)}, 1: {"w": np.array([2.0, 1.0, 1.0])}, 2: {"w": np.array([1.0, 2.0, 1.0])}}
    g = round_geometry(5, sent, replies, {"w": np.array([1.5, 1.5, 1.0])}, ["w"])
    model_rows = {r["partition_id"]: r for r in g.rows if r["layer"] == MODEL}
    assert model_rows[0]["norm"] == 0.0 and model_rows[0]["cosine_to_aggregate"] is None
    assert model_rows[1]["cosine_to_aggregate"] == pytest.approx(1 / math.sqrt(2))
    assert g.summary["update_pairwise_cosine"] == pytest.approx(0.0)  # (1,0,0) and (0,1,0); the zero update left out
    assert g.pairs == [{"round": 5, "partition_a": 1, "partition_b": 2, "cosine": pytest.approx(0.0)}]
    assert g.summary["update_cosine_to_aggregate"] == pytest.approx(1 / math.sqrt(2))


def test_a_large_cohorts_pairwise_mean_is_sampled_and_close_to_the_whole() -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(size=200)
    updates = shared + rng.normal(size=(3 * PAIRS_OF, 200))  # every pair at about cos 0.5
    unit = [u / np.linalg.norm(u) for u in updates]
    whole = [float(unit[i] @ unit[j]) for i in range(len(unit)) for j in range(i + 1, len(unit))]
    sampled = mean_pairwise_cosine(updates, server_round=7)
    assert sampled is not None and sampled == mean_pairwise_cosine(updates, server_round=7)  # seeded by the round
    assert sampled != pytest.approx(sum(whole) / len(whole), abs=1e-9)  # a sample, not every pair
    assert sampled == pytest.approx(sum(whole) / len(whole), abs=0.02)
    exact = mean_pairwise_cosine(updates[:PAIRS_OF], server_round=7)
    few = [float(unit[i] @ unit[j]) for i in range(PAIRS_OF) for j in range(i + 1, PAIRS_OF)]
    assert exact == pytest.approx(sum(few) / len(few))
