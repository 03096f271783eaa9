"""Every algorithm's aggregation on hand-built replies, against its paper's formula computed
here independently; server state through a real checkpoint file; wire-derived reply checks."""

from __future__ import annotations

import functools
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_strategies import FakeGrid, task_identity  # noqa: F401  (autouse fixture)

from fedconv import algorithms
from fedconv.algorithms.base import MODEL, Algorithm, Wire
from fedconv.config import compose
from fedconv.federation.cohorts import Cohorts, Phase
from fedconv.federation.rounds import FederatedRounds
from fedconv.runs import checkpoint
from fedconv.wire.channel import spec_of
from fedconv.wire.reply_checks import reply_problem


@pytest.fixture(autouse=True)
def frozen_heap():
    """Flower's q-FedAvg and Bulyan call gc.collect() per reply; with the test session's heap
    frozen (out of the collector's reach) that costs microseconds, not a fifth of a second."""
    gc.freeze()
    yield
    gc.unfreeze()


NODES = [101, 102, 103, 104, 105, 106, 107]
COUNTS = [10, 20, 30, 40, 50, 60, 70]


def driver(cfg: dict, buffers: tuple[str, ...] = (), n: int = len(NODES)) -> FederatedRounds:
    cohorts = Cohorts.owned({node: i for i, node in enumerate(NODES[:n])}, seed=0, train_per_round=n, eval_per_round=0)
    return FederatedRounds(algorithms.get(cfg["name"]), cfg, cohorts, lambda r: 0.1, buffer_names=buffers)


@functools.cache
def _shipped(name: str) -> dict:
    return compose([f"strategy={name}"])["strategy"]


def strategy_cfg(name: str, **overrides: object) -> dict:
    """The shipped conf/strategy/<name>.yaml, composed as a run would."""
    return {**_shipped(name), **overrides}


def play(strategy: FederatedRounds, server_round: int, x: dict[str, np.ndarray], clients: list[dict[str, np.ndarray]],
         losses: list[float] | None = None, controls: list[dict[str, np.ndarray]] | None = None,
         nova_a: list[float] | None = None) -> dict[str, np.ndarray]:
    """One training round: partition i replies ``clients[i]`` with COUNTS[i] examples (and,
    where the wire asks for them, ``controls[i]`` as its Δc_i and ``nova_a[i]`` as its a_i;
    by default a fixed function of the client's model and of i)."""
    sent = ArrayRecord({k: Array(v) for k, v in x.items()})
    msgs = strategy.configure_train(server_round, sent, ConfigRecord({}), FakeGrid(NODES))
    replies = []
    for m in msgs:
        pid = Phase.pid_of(m)
        metrics = {"train_loss": 9.0, "train_accuracy": 0.5, "num-examples": COUNTS[pid], "steps": 3,
                   "global_loss": (losses or [1.0] * len(NODES))[pid],
                   "nova_a": (nova_a or [3.0 + i for i in range(len(NODES))])[pid]}
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in clients[pid].items()}),
                              "metrics": MetricRecord(metrics)})
        if "control" in strategy.algorithm.wire.arrays:
            dc = controls[pid] if controls else {k: (0.5 * v - 0.1 * pid).astype(np.float32) for k, v in clients[pid].items()}
            content["control"] = ArrayRecord({k: Array(v) for k, v in dc.items()})
        replies.append(Message(content, reply_to=m))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    assert arrays is not None, strategy.current.failures
    return {k: a.numpy() for k, a in arrays.items()}


def models(seed: int, n: int = len(NODES), scale: float = 0.1) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    x = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    clients = [{k: (v + scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in x.items()} for _ in range(n)]
    return x, clients


def weighted_mean(clients: list[dict[str, np.ndarray]], key: str, counts: list[int] = COUNTS) -> np.ndarray:
    stack = np.stack([c[key].astype(np.float64) for c in clients])
    w = np.asarray(counts[: len(clients)], dtype=np.float64)
    return np.tensordot(w / w.sum(), stack, axes=1)


def test_fedavgm_is_server_momentum_on_the_pseudo_gradient() -> None:
    strategy = driver(strategy_cfg("fedavgm", server_lr=0.5, server_momentum=0.9))
    x, clients = models(0)
    x_ref = {k: v.astype(np.float64) for k, v in x.items()}
    v: dict[str, np.ndarray] = {}
    for r in (1, 2, 3):
        clients = [{k: c[k] + np.float32(0.05 * r) for k in c} for c in clients]
        got = play(strategy, r, x, clients)
        for k in x_ref:
            g = x_ref[k] - weighted_mean(clients, k)
            v[k] = g if r == 1 else 0.9 * v[k] + g
            x_ref[k] = x_ref[k] - 0.5 * v[k]
            np.testing.assert_allclose(got[k], x_ref[k], rtol=1e-5, atol=1e-6)
        x = got


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimisers_follow_reddi_et_al(name: str) -> None:
    cfg = strategy_cfg(name, server_lr=0.05)
    b1, b2, eta, tau = cfg.get("beta_1", 0.0), cfg.get("beta_2", 0.0), 0.05, cfg["tau"]
    assert tau == 1e-3 and (name == "fedadagrad" or (b1, b2) == (0.9, 0.99))  # the shipped defaults
    strategy = driver(cfg)
    x, clients = models(1)
    ref = {k: v.astype(np.float64) for k, v in x.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(v) for k, v in ref.items()}
    for t in (1, 2, 3):
        clients = [{k: c[k] - np.float32(0.02 * t) for k in c} for c in clients]
        got = play(strategy, t, x, clients)
        for k in ref:
            delta = weighted_mean(clients, k) - ref[k]
            m[k] = b1 * m[k] + (1 - b1) * delta
            if name == "fedadam":
                v[k] = b2 * v[k] + (1 - b2) * delta**2
                step = eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))  # Flower's bias correction
            elif name == "fedyogi":
                v[k] = v[k] - (1 - b2) * delta**2 * np.sign(v[k] - delta**2)
                step = eta
            else:
                v[k] = v[k] + delta**2
                step = eta
            ref[k] = ref[k] + step * m[k] / (np.sqrt(v[k]) + tau)
            assert got[k].dtype == np.float32  # the global model keeps its dtype
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6)
        x = got


def test_fedmedian_is_the_coordinate_median() -> None:
    x, clients = models(2)
    got = play(driver(strategy_cfg("fedmedian")), 1, x, clients)
    for k in x:
        np.testing.assert_allclose(got[k], np.median(np.stack([c[k] for c in clients]), axis=0), rtol=1e-6)


def test_fedtrimmedavg_drops_beta_of_each_tail() -> None:
    x, clients = models(3)
    got = play(driver(strategy_cfg("fedtrimmedavg", beta=0.2)), 1, x, clients)  # 7 replies: 1 cut at each end
    for k in x:
        ordered = np.sort(np.stack([c[k] for c in clients]), axis=0)
        np.testing.assert_allclose(got[k], ordered[1:-1].mean(axis=0), rtol=1e-6)


def krum_scores(clients: list[dict[str, np.ndarray]], f: int) -> np.ndarray:
    flat = np.stack([np.concatenate([c[k].ravel() for k in ("w", "b")]).astype(np.float64) for c in clients])
    n = len(flat)
    scores = []
    for i in range(n):
        d = sorted(float(((flat[i] - flat[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.asarray(scores)


def poisoned(seed: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    x, clients = models(seed)
    clients[4] = {k: v + 10.0 for k, v in clients[4].items()}  # far from every honest client
    return x, clients


def test_krum_takes_the_client_closest_to_its_neighbours() -> None:
    x, clients = poisoned(4)
    got = play(driver(strategy_cfg("krum", num_malicious_nodes=1)), 1, x, clients)
    best = int(np.argmin(krum_scores(clients, 1)))
    assert best != 4
    for k in x:
        np.testing.assert_array_equal(got[k], clients[best][k])


def test_multikrum_averages_the_best_by_krum_score() -> None:
    x, clients = poisoned(5)
    got = play(driver(strategy_cfg("multikrum", num_malicious_nodes=1, num_nodes_to_select=3)), 1, x, clients)
    chosen = sorted(np.argsort(krum_scores(clients, 1))[:3].tolist())
    assert 4 not in chosen
    for k in x:
        expected = weighted_mean([clients[i] for i in chosen], k, [COUNTS[i] for i in chosen])
        np.testing.assert_allclose(got[k], expected, rtol=1e-5)


def test_bulyan_averages_the_values_closest_to_the_median_of_krum_selected() -> None:
    x, clients = poisoned(6)
    f = 1
    got = play(driver(strategy_cfg("bulyan", num_malicious_nodes=f)), 1, x, clients)
    theta = len(clients) - 2 * f
    beta = theta - 2 * f
    selected = [clients[i] for i in np.argsort(krum_scores(clients, f))[:theta]]
    for k in x:
        stack = np.stack([c[k] for c in selected])
        med = np.median(stack, axis=0)
        closest = np.take_along_axis(stack, np.argsort(np.abs(stack - med), axis=0)[:beta], axis=0)
        np.testing.assert_allclose(got[k], closest.mean(axis=0), rtol=1e-5)


def test_qfedavg_weights_clients_by_their_loss_of_the_global_model() -> None:
    q, lr = 0.5, 0.1
    x, clients = models(7)
    losses = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    got = play(driver(strategy_cfg("qfedavg", q=q, client_lr=lr)), 1, x, clients, losses)
    L = 1 / lr
    deltas, hs = [], []
    for c, F in zip(clients, losses, strict=True):
        dw = {k: L * (x[k].astype(np.float64) - c[k]) for k in x}
        norm = sum(float((d**2).sum()) for d in dw.values())
        deltas.append({k: F**q * d for k, d in dw.items()})
        hs.append(q * F ** (q - 1) * norm + L * F**q)
    for k in x:
        np.testing.assert_allclose(got[k], x[k] - sum(d[k] for d in deltas) / sum(hs), rtol=1e-5, atol=1e-6)


def test_server_optimisers_leave_batchnorm_statistics_to_the_weighted_mean() -> None:
    """FedAdam's moments cover the parameters only; a median covers the statistics too."""
    x, clients = models(8)
    x["bn.running_var"] = np.ones(4, np.float32)
    for i, c in enumerate(clients):
        c["bn.running_var"] = np.full(4, 1.0 + i, np.float32)
    adam = driver(strategy_cfg("fedadam"), buffers=("bn.running_var",))
    got = play(adam, 1, x, clients)
    np.testing.assert_allclose(got["bn.running_var"], weighted_mean(clients, "bn.running_var"), rtol=1e-6)
    assert set(adam.strategy.m_t) == {"w", "b"}  # type: ignore[attr-defined]
    median = driver(strategy_cfg("fedmedian"), buffers=("bn.running_var",))
    np.testing.assert_allclose(play(median, 1, x, clients)["bn.running_var"], np.full(4, 4.0))


STATEFUL = {"fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "feddyn"}


@pytest.mark.parametrize("name", sorted(algorithms.ALGORITHMS))
def test_server_state_survives_a_checkpoint_exactly(name: str, tmp_path: Path) -> None:
    """Round 3 after a restore from round 2's checkpoint file equals round 3 uninterrupted."""
    rounds = [models(10 + r) for r in range(3)]
    whole = driver(strategy_cfg(name))
    x = rounds[0][0]
    for r, (_, clients) in enumerate(rounds[:2], start=1):
        x = play(whole, r, x, clients)
    tensors, layout = whole.state()
    assert bool(tensors) == (name in STATEFUL), sorted(tensors)
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path, 2, {k: torch.from_numpy(v) for k, v in x.items()}, {"algorithm": layout}, algorithm_state=tensors)
    ckpt = checkpoint.load(path)
    resumed = driver(strategy_cfg(name))
    resumed.restore(ckpt.algorithm_state, ckpt.state["algorithm"])
    fresh = driver(strategy_cfg(name))  # what resuming without the state would do
    x_ckpt = {k: ckpt.weights[k].numpy() for k in x}  # the model's order, as the ServerApp sends it
    clients = rounds[2][1]
    want = play(whole, 3, x, clients)
    got = play(resumed, 3, x_ckpt, clients)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    after, after_resumed = whole.state()[0], resumed.state()[0]
    for k in after:
        np.testing.assert_array_equal(after_resumed[k], after[k])
    if name in STATEFUL:  # the model or the state it carries on (SCAFFOLD's c) would differ without it
        stateless = play(fresh, 3, x_ckpt, clients)
        after_fresh = fresh.state()[0]
        assert (any(not np.array_equal(stateless[k], want[k]) for k in want)
                or any(not np.array_equal(after_fresh[k], after[k]) for k in after)), "the state made no difference"


def test_the_wire_declaration_decides_what_a_valid_reply_is() -> None:
    """An algorithm that sends a second model-shaped record needs no edit to the checks."""
    sent = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    spec = {MODEL: spec_of(sent)}
    wire = Wire(arrays={"arrays": MODEL, "control": MODEL}, metrics=("num-examples", "c"), finite=("c",))

    def reply(records: dict[str, np.ndarray], metrics: dict) -> Message:
        from flwr.app import MessageType

        to = Message(RecordDict({"arrays": sent}), dst_node_id=1, message_type=MessageType.TRAIN)
        content = RecordDict({k: ArrayRecord({"w": Array(v)}) for k, v in records.items()})
        content["metrics"] = MetricRecord(metrics)
        return Message(content, reply_to=to)

    ok = np.ones(3, np.float32)
    assert reply_problem(reply({"arrays": ok, "control": ok}, {"num-examples": 5, "c": 1.0}), wire, spec, 10) is None
    assert "control" in str(reply_problem(reply({"arrays": ok}, {"num-examples": 5, "c": 1.0}), wire, spec, 10))
    assert "lack ['c']" in str(reply_problem(reply({"arrays": ok, "control": ok}, {"num-examples": 5}), wire, spec, 10))
    nan = reply({"arrays": ok, "control": ok}, {"num-examples": 5, "c": float("nan")})
    assert "'c'=nan is not a finite number" in str(reply_problem(nan, wire, spec, 10))
    bad = reply({"arrays": ok, "control": np.ones(3, np.float64)}, {"num-examples": 5, "c": 1.0})
    assert "expected float32" in str(reply_problem(bad, wire, spec, 10))
    assert isinstance(algorithms.get("qfedavg"), Algorithm) and "global_loss" in algorithms.get("qfedavg").wire.finite


def test_pool_phases_are_pure_functions_of_the_round() -> None:
    cohorts = Cohorts.pooled([7, 8, 9], 20, seed=3, train_per_round=3, eval_per_round=2)
    train = cohorts.phase(5, train=True)
    cohorts.phase(5, train=False)
    cohorts.phase(6, train=True)
    assert cohorts.phase(5, train=True) == train and sorted(train.pids) == sorted(set(train.pids))


@pytest.mark.parametrize("name", ["fedavg", "scaffold"])
def test_a_pool_smaller_than_the_cohort_serves_several_partitions_a_node_with_the_same_result(name: str) -> None:
    """`flwr run .`'s two SuperNodes and a cohort of seven: each node gets a message per
    partition it serves (named in its config and group id), replies are matched to partitions
    by the group id they carry back, and the round equals the one seven nodes serve."""
    x, clients = models(4)
    results = {}
    for pool in (NODES, [201, 202]):
        cohorts = Cohorts.pooled(pool, len(NODES), seed=0, train_per_round=len(NODES), eval_per_round=0)
        strategy = FederatedRounds(algorithms.get(name), strategy_cfg(name), cohorts, lambda r: 0.1)
        sent = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in x.items()}), ConfigRecord({}),
                                        FakeGrid(pool))
        assert [m.metadata.dst_node_id for m in sent] == [pool[i % len(pool)] for i in range(len(NODES))]
        assert [m.content.config_records["config"]["partition-id"] for m in sent] == list(range(len(NODES)))
        assert [Phase.pid_of(m) for m in sent] == list(range(len(NODES)))
        strategy.current = None
        results[len(pool)] = (play(strategy, 1, x, clients), strategy.current)
    (seven, by_seven), (two, by_two) = results[len(NODES)], results[2]
    assert seven.keys() == two.keys() and all(np.array_equal(seven[k], two[k]) for k in seven)
    assert by_seven.client_rows == by_two.client_rows and by_two.clients_ok == len(NODES)
    assert [r["partition_id"] for r in by_two.client_rows] == list(range(len(NODES)))


@pytest.mark.parametrize("mode,factor", [("signflip", -1.0), ("scale", 5.0)])
def test_poisoned_updates_are_finite_and_well_formed(mode: str, factor: float) -> None:
    from fedconv.federation.faults import corrupt_state

    received = {"conv.weight": torch.zeros(2, 2), "bn.running_var": torch.ones(2)}
    trained = {"conv.weight": torch.full((2, 2), 0.3), "bn.running_var": torch.full((2,), 2.0)}
    out = corrupt_state(trained, mode, received=received, parameters={"conv.weight"}, factor=5.0)
    torch.testing.assert_close(out["conv.weight"], torch.full((2, 2), 0.3 * factor))
    torch.testing.assert_close(out["bn.running_var"], trained["bn.running_var"])  # statistics stay honest
    assert all(torch.isfinite(v).all() and v.dtype == trained[k].dtype for k, v in out.items())


@pytest.mark.parametrize("name", sorted(algorithms.ALGORITHMS))
def test_the_aggregate_does_not_depend_on_reply_order(name: str) -> None:
    """Replies arrive in completion order; every rule sees them in partition order, so the
    same seed gives the same rounds.csv whichever client finishes first."""
    x, clients = models(20)
    results = []
    for order in (lambda ms: ms, lambda ms: ms[::-1], lambda ms: ms[3:] + ms[:3]):
        strategy = driver(strategy_cfg(name))
        sent = ArrayRecord({k: Array(v) for k, v in x.items()})
        msgs = strategy.configure_train(1, sent, ConfigRecord({}), FakeGrid(NODES))
        replies = []
        for m in msgs:
            pid = Phase.pid_of(m)
            metrics = {"train_loss": 1.0 + pid, "train_accuracy": 0.5, "num-examples": COUNTS[pid], "steps": 3,
                       "global_loss": 1.0 + pid, "nova_a": 2.0 + pid}
            arrays = {k: Array(v) for k, v in reversed(list(clients[pid].items()))}  # any array order, too
            content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
            if "control" in strategy.algorithm.wire.arrays:
                content["control"] = ArrayRecord({k: Array(-v) for k, v in reversed(list(clients[pid].items()))})
            replies.append(Message(content, reply_to=m))
        arrays, metrics = strategy.aggregate_train(1, order(replies))
        results.append(({k: a.numpy() for k, a in arrays.items()}, dict(metrics)))
    for got, metrics in results[1:]:
        assert list(got) == list(results[0][0]) and metrics == results[0][1]
        for k in got:
            np.testing.assert_array_equal(got[k], results[0][0][k])
