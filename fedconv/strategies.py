"""Flower's FedAvg/FedProx plus what they lack: seeded cohorts by partition id and a ledger.

Aggregation is Flower's own. The mixin only (1) picks each round's cohort by partition id
from the seed, (2) sends the round's learning rate, (3) counts the bytes of the arrays
each message really carries, and (4) collects per-round and per-client metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

TRAIN_SALT, EVAL_SALT = 0, 1


def message_array_bytes(message: Message) -> int:
    """Bytes of all arrays a message carries, as serialised in it."""
    if message.has_error():
        return 0
    return sum(len(a.data) for rec in message.content.array_records.values() for a in rec.values())


def sample_cohort(seed: int, server_round: int, salt: int, num_clients: int, k: int) -> list[int]:
    """The partition ids of one round's cohort: a pure function of seed and round."""
    rng = np.random.default_rng([seed, server_round, salt])
    return sorted(int(i) for i in rng.choice(num_clients, size=min(k, num_clients), replace=False))


class CohortGrid:
    """A view of the Grid whose only nodes are this round's cohort.

    Flower's strategies sample ``sample_size`` nodes out of ``grid.get_node_ids()``; with the
    cohort as the whole population they take exactly the cohort.
    """

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass
class RoundRecord:
    """What one round did: cohort, replies, bytes and metrics."""

    server_round: int
    started: float
    lr: float = float("nan")
    clients_sampled: int = 0
    clients_ok: int = 0
    clients_failed: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    bytes_eval_down: int = 0
    eval_clients_sampled: int = 0
    eval_clients_ok: int = 0
    train_loss: float | None = None
    train_accuracy: float | None = None
    fed_loss: float | None = None
    fed_accuracy: float | None = None
    client_rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class LedgerMixin:
    """Seeded cohorts, per-round learning rate and measured communication for any FedAvg."""

    def setup_ledger(
        self,
        *,
        node_to_pid: Mapping[int, int],
        seed: int,
        train_per_round: int,
        eval_per_round: int,
        lr_for_round: Callable[[int], float],
    ) -> None:
        self.node_to_pid = dict(node_to_pid)
        self.pid_to_node = {pid: node for node, pid in self.node_to_pid.items()}
        self.seed = seed
        self.train_per_round = train_per_round
        self.eval_per_round = eval_per_round
        self.lr_for_round = lr_for_round
        self.current: RoundRecord | None = None

    def _cohort(self, server_round: int, salt: int, k: int) -> list[int]:
        pids = sample_cohort(self.seed, server_round, salt, len(self.pid_to_node), k)
        return [self.pid_to_node[p] for p in pids]

    def _pid(self, message: Message) -> int:
        return self.node_to_pid.get(message.metadata.src_node_id, -1)

    def _record_clients(self, server_round: int, phase: str, replies: list[Message]) -> None:
        """Per-client rows for client_metrics.csv (phase: train or evaluate)."""
        prefix = "train" if phase == "train" else "eval"
        assert self.current is not None
        for m in replies:
            metrics = next(iter(m.content.metric_records.values()))
            self.current.client_rows.append(
                {
                    "round": server_round,
                    "phase": phase,
                    "partition_id": self._pid(m),
                    "num_examples": int(metrics["num-examples"]),
                    "loss": float(metrics[f"{prefix}_loss"]),
                    "accuracy": float(metrics[f"{prefix}_accuracy"]),
                }
            )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = RoundRecord(server_round=server_round, started=time.perf_counter())
        self.current = record
        record.lr = float(self.lr_for_round(server_round))
        config["lr"] = record.lr
        cohort = CohortGrid(grid, self._cohort(server_round, TRAIN_SALT, self.train_per_round))
        messages = list(super().configure_train(server_round, arrays, config, cohort))  # type: ignore[misc]
        record.clients_sampled = len(messages)
        record.bytes_down = sum(message_array_bytes(m) for m in messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record = self.current
        assert record is not None
        # Reply order is completion order; aggregate in partition order so runs are repeatable.
        replies = sorted(replies, key=self._pid)
        ok = [m for m in replies if not m.has_error()]
        record.clients_ok = len(ok)
        record.clients_failed = record.clients_sampled - len(ok)
        record.bytes_up = sum(message_array_bytes(m) for m in replies)
        record.failures += [f"partition {self._pid(m)}: {m.error.reason}" for m in replies if m.has_error()]
        self._record_clients(server_round, "train", ok)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if metrics is not None:
            record.train_loss = float(metrics["train_loss"])
            record.train_accuracy = float(metrics["train_accuracy"])
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.eval_per_round == 0:
            return []
        cohort = CohortGrid(grid, self._cohort(server_round, EVAL_SALT, self.eval_per_round))
        messages = list(super().configure_evaluate(server_round, arrays, config, cohort))  # type: ignore[misc]
        if self.current is not None:
            self.current.eval_clients_sampled = len(messages)
            self.current.bytes_eval_down = sum(message_array_bytes(m) for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        record = self.current
        assert record is not None
        replies = sorted(replies, key=self._pid)
        ok = [m for m in replies if not m.has_error()]
        record.eval_clients_ok = len(ok)
        self._record_clients(server_round, "evaluate", ok)
        metrics = super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]
        if metrics is not None:
            record.fed_loss = float(metrics["eval_loss"])
            record.fed_accuracy = float(metrics["eval_accuracy"])
        return metrics


class LoggedFedAvg(LedgerMixin, FedAvg):
    """Flower's FedAvg with fedconv's cohorts and ledger."""


class LoggedFedProx(LedgerMixin, FedProx):
    """Flower's FedProx with fedconv's cohorts and ledger (clients add the proximal term)."""


def make_strategy(strategy_cfg: Mapping[str, Any], fraction_evaluate: float) -> FedAvg:
    """Build the configured Flower strategy. Cohort sizes are the ledger's, so Flower
    is told to take every node of the cohort view it is handed."""
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0 if fraction_evaluate > 0 else 0.0,
        min_train_nodes=1,
        min_evaluate_nodes=1 if fraction_evaluate > 0 else 0,
        min_available_nodes=1,
    )
    name = strategy_cfg["name"]
    if name == "fedavg":
        return LoggedFedAvg(**common)
    if name == "fedprox":
        return LoggedFedProx(proximal_mu=float(strategy_cfg["mu"]), **common)
    raise ValueError(f"strategy.name: unknown '{name}'; allowed: fedavg, fedprox")
