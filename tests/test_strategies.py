"""The strategy glue: Flower's aggregation on hand-built replies, cohorts, byte counting."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedconv.strategies import LoggedFedAvg, LoggedFedProx, make_strategy, message_array_bytes, sample_cohort


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1


class FakeGrid:
    """Only what a strategy asks a Grid for while configuring a round."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def ledgered(strategy, nodes: list[int], per_round: int, seed: int = 0):
    strategy.setup_ledger(
        node_to_pid={n: i for i, n in enumerate(nodes)}, seed=seed,
        train_per_round=per_round, eval_per_round=per_round, lr_for_round=lambda r: 0.1 / r,
    )
    return strategy


def reply(to: Message, arrays: dict[str, np.ndarray], n: int, loss: float = 1.0) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"train_loss": loss, "train_accuracy": 0.5, "num-examples": n}),
        }
    )
    return Message(content, reply_to=to)


def test_fedavg_aggregate_is_the_example_weighted_mean() -> None:
    nodes = [101, 202, 303]
    strategy = ledgered(make_strategy({"name": "fedavg"}, 0.0), nodes, 3)
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
    strategy = ledgered(make_strategy({"name": "fedprox", "mu": 0.3}, 0.5), nodes, 5, seed=4)
    assert isinstance(strategy, LoggedFedProx)
    arrays = ArrayRecord({"w": Array(np.ones(100, np.float32))})
    msgs = list(strategy.configure_train(2, arrays, ConfigRecord({}), FakeGrid(nodes)))
    pids = sorted(strategy.node_to_pid[m.metadata.dst_node_id] for m in msgs)
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
    strategy = ledgered(LoggedFedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1), nodes, 3)
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
