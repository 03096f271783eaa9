"""The round driver: Flower's aggregation on hand-built replies, cohorts, reply checks, byte counting."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedconv import algorithms
from fedconv.federation.cohorts import Cohorts, Phase, sample_cohort
from fedconv.federation.rounds import FederatedRounds, RoundPolicy
from fedconv.wire.ledger import message_array_bytes


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1


class FakeGrid:
    """Only what a strategy asks a Grid for while configuring a round."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def ledgered(strategy_cfg: dict, nodes: list[int], per_round: int, seed: int = 0, policy: RoundPolicy | None = None,
             sizes: dict[int, int] | None = None, buffers: tuple[str, ...] = ()) -> FederatedRounds:
    """The driver over nodes that own partitions 0..n-1 (as devices do)."""
    cohorts = Cohorts.owned({n: i for i, n in enumerate(nodes)}, seed=seed, train_per_round=per_round,
                            eval_per_round=per_round)
    return FederatedRounds(algorithms.get(strategy_cfg["name"]), strategy_cfg, cohorts, lambda r: 0.1 / r,
                           policy=policy or RoundPolicy(), partition_sizes=sizes, buffer_names=buffers)


def pid(strategy: FederatedRounds, m: Message) -> int:
    assert strategy.round.train is not None
    return Phase.pid_of(m)


def reply(to: Message, arrays: dict[str, np.ndarray], n: int, loss: float = 1.0) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"train_loss": loss, "train_accuracy": 0.5, "num-examples": n, "steps": 1}),
        }
    )
    return Message(content, reply_to=to)


def test_fedavg_aggregate_is_the_example_weighted_mean() -> None:
    nodes = [101, 202, 303]
    strategy = ledgered({"name": "fedavg"}, nodes, 3)
    start = ArrayRecord({"w": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord({}), FakeGrid(nodes)))
    rng = np.random.default_rng(0)
    weights = {m.metadata.dst_node_id: {"w": rng.normal(size=(2, 3)).astype(np.float32),
                                        "b": rng.normal(size=3).astype(np.float32)} for m in msgs}
    counts = {101: 10, 202: 30, 303: 60}
    replies = [reply(m, weights[m.metadata.dst_node_id], counts[m.metadata.dst_node_id]) for m in msgs]
    arrays, metrics = strategy.aggregate_train(1, replies)
    total = sum(counts.values())
    for key in ("w", "b"):
        expected = sum(weights[n][key] * counts[n] for n in nodes) / total
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-6)
    assert strategy.current.clients_ok == 3 and strategy.current.clients_failed == 0
    assert strategy.current.bytes_up == sum(message_array_bytes(r) for r in replies)


def test_configure_train_takes_the_seeded_cohort_and_sends_lr_and_mu() -> None:
    nodes = list(range(1000, 1020))
    strategy = ledgered({"name": "fedprox", "mu": 0.3}, nodes, 5, seed=4)
    arrays = ArrayRecord({"w": Array(np.ones(100, np.float32))})
    msgs = list(strategy.configure_train(2, arrays, ConfigRecord({}), FakeGrid(nodes)))
    pids = sorted(pid(strategy, m) for m in msgs)
    assert pids == sample_cohort(4, 2, 0, 20, 5)
    cfg = msgs[0].content["config"]
    assert cfg["lr"] == pytest.approx(0.05) and cfg["proximal-mu"] == pytest.approx(0.3) and cfg["server-round"] == 2
    assert strategy.current.bytes_down == 5 * len(Array(np.ones(100, np.float32)).data)


def test_cohorts_depend_only_on_seed_and_round() -> None:
    assert sample_cohort(0, 3, 0, 100, 10) == sample_cohort(0, 3, 0, 100, 10)
    assert sample_cohort(0, 3, 0, 100, 10) != sample_cohort(1, 3, 0, 100, 10)
    assert sample_cohort(0, 3, 0, 100, 10) != sample_cohort(0, 4, 0, 100, 10)
    assert len(set(sample_cohort(0, 1, 0, 100, 10))) == 10


def test_failed_replies_are_counted_and_excluded() -> None:
    from flwr.app import Error

    nodes = [1, 2, 3]
    strategy = ledgered({"name": "fedavg"}, nodes, 3)
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord({}), FakeGrid(nodes)))
    replies = [reply(m, {"w": np.full(2, float(m.metadata.dst_node_id), np.float32)}, 10) for m in msgs[:2]]
    replies.append(Message(Error(code=0, reason="boom"), reply_to=msgs[2]))
    arrays, _ = strategy.aggregate_train(1, replies)
    ok_nodes = [m.metadata.dst_node_id for m in msgs[:2]]
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(2, np.mean(ok_nodes)))
    assert strategy.current.clients_ok == 2 and strategy.current.clients_failed == 1
    assert "boom" in strategy.current.failures[0]


def test_message_bytes_are_the_serialised_array_bytes() -> None:
    arr = np.zeros((10, 10), np.float32)
    msg = Message(RecordDict({"a": ArrayRecord({"x": Array(arr), "y": Array(arr)})}), dst_node_id=5,
                  message_type=MessageType.TRAIN)
    per_array = len(Array(arr).data)
    assert per_array >= arr.nbytes and per_array - arr.nbytes <= 128  # raw bytes + .npy header
    assert message_array_bytes(msg) == 2 * per_array


def _model_state() -> dict:
    from fedconv.learning.models import build_model, transmitted_state

    return transmitted_state(build_model({"name": "twoconv", "filters1": 4, "filters2": 8, "kernel_size": 3,
                                          "batch_norm": True, "activation": "relu", "pool": "max", "head": "gap",
                                          "dense_units": 16, "dense_layers": 1, "dropout": 0.0, "se_reduction": 4},
                                         (1, 8, 8), 10))


@pytest.mark.parametrize("mode", ["nan", "inf", "shape", "dtype", "names", "num_examples"])
def test_corrupt_replies_are_rejected_before_aggregation(mode: str) -> None:
    """Each corruption a faulty client can inject (fedconv.federation.faults) is caught by the server's checks."""
    from fedconv.federation.faults import corrupt_num_examples, corrupt_state

    nodes = [11, 22, 33]
    strategy = ledgered({"name": "fedavg"}, nodes, 3, sizes={0: 50, 1: 50, 2: 50})
    state = _model_state()
    msgs = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({}), FakeGrid(nodes)))
    good = {k: (v.numpy() + 1.0).astype(v.numpy().dtype) for k, v in state.items()}
    replies = []
    for m in msgs:
        if pid(strategy, m) == 1:
            bad = {k: v.numpy() for k, v in corrupt_state(state, mode).items()}
            replies.append(reply(m, bad, corrupt_num_examples(50, mode)))
        else:
            replies.append(reply(m, good, 50))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.current.clients_rejected == 1 and strategy.current.clients_ok == 2
    assert strategy.current.clients_failed == 0
    assert any(f.startswith("partition 1: reply rejected") for f in strategy.current.failures)
    for k, v in arrays.items():
        assert np.isfinite(v.numpy()).all()
        np.testing.assert_allclose(v.numpy(), good[k], rtol=1e-6)


@pytest.mark.parametrize("n", [0, -5, 2.5, float("nan"), 51])
def test_absurd_example_counts_are_rejected(n: float) -> None:
    nodes = [1, 2]
    strategy = ledgered({"name": "fedavg"}, nodes, 2, sizes={0: 50, 1: 50})
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord({}), FakeGrid(nodes)))
    replies = [reply(msgs[0], {"w": np.ones(2, np.float32)}, 50), reply(msgs[1], {"w": np.full(2, 9.0, np.float32)}, n)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), np.ones(2))
    assert strategy.current.clients_rejected == 1 and "num-examples" in strategy.current.failures[0]


def test_too_few_valid_replies_skip_the_round() -> None:
    nodes = [1, 2, 3]
    strategy = ledgered({"name": "fedavg"}, nodes, 3, policy=RoundPolicy(min_train_replies=2))
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    msgs = list(strategy.configure_train(1, start, ConfigRecord({}), FakeGrid(nodes)))
    arrays, metrics = strategy.aggregate_train(1, [reply(msgs[0], {"w": np.ones(2, np.float32)}, 10)])
    assert arrays is None and metrics is None and strategy.current.skipped
    assert strategy.current.clients_ok == 1 and strategy.current.clients_failed == 2
    assert sum("no reply within the round timeout" in f for f in strategy.current.failures) == 2


@pytest.mark.parametrize("policy,aggregated", [("drop", 3), ("aggregate", 6)])
def test_stragglers_get_partial_work_and_the_policy_decides(policy: str, aggregated: int) -> None:
    from fedconv.federation.faults import straggler_plan

    nodes = list(range(500, 506))
    strategy = ledgered({"name": "fedavg"}, nodes, 6, seed=3,
                        policy=RoundPolicy(straggler_fraction=0.5, local_epochs=5, stragglers=policy))
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    msgs = list(strategy.configure_train(4, start, ConfigRecord({}), FakeGrid(nodes)))
    plan = straggler_plan(3, 4, range(6), 0.5, 5)
    assert len(plan) == 3 and all(1 <= e <= 5 for e, _ in plan.values())
    for m in msgs:
        p = pid(strategy, m)
        cfg = m.content["config"]
        if p in plan:
            assert cfg["local-epochs"] == plan[p][0] and cfg["lr"] == pytest.approx(0.1 / 4)
        else:
            assert "local-epochs" not in cfg
    replies = [reply(m, {"w": np.ones(2, np.float32)}, 10) for m in msgs]
    strategy.aggregate_train(4, replies)
    assert strategy.current.clients_ok == aggregated
    assert strategy.current.clients_dropped == 6 - aggregated


def test_straggler_plan_with_one_epoch_cuts_steps() -> None:
    from fedconv.federation.faults import straggler_plan

    plan = straggler_plan(0, 1, range(10), 0.3, 1)
    assert len(plan) == 3
    assert all(e == 1 and 0 < f < 1 for e, f in plan.values())
    assert plan == straggler_plan(0, 1, range(10), 0.3, 1) != straggler_plan(0, 2, range(10), 0.3, 1)
