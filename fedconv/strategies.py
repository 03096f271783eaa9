"""Flower's FedAvg/FedProx plus what they lack: seeded cohorts by partition id and a ledger.

Aggregation is Flower's own. The mixin only (1) picks each round's cohort by partition id
from the seed, (2) sends the round's learning rate (and partial-work orders to stragglers),
(3) rejects replies that fail :mod:`fedconv.reply_checks` before Flower averages them,
(4) counts the bytes of the arrays each message really carries, and (5) collects
per-round and per-client metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from fedconv.checks import Checks
from fedconv.faults import straggler_plan
from fedconv.reply_checks import array_spec, reply_problem

TRAIN_SALT, EVAL_SALT = 0, 1


STRATEGIES = ("fedavg", "fedprox")
STRAGGLER_POLICIES = ("drop", "aggregate")


def message_array_bytes(message: Message) -> int:
    """Bytes of all arrays a message carries, as serialised in it."""
    if message.has_error():
        return 0
    return sum(len(a.data) for rec in message.content.array_records.values() for a in rec.values())


def short_reason(reason: str | None) -> str:
    """The client's own exception message out of Flower's wrapped Ray traceback."""
    reason = reason or "(no reason given)"
    marker = "occurred. Message: "
    if marker in reason:
        return "ClientApp raised: " + reason.rsplit(marker, 1)[1].strip().splitlines()[0].rstrip("'>")
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return lines[-1] if lines else reason


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
    """What one round did: cohort, replies, bytes and metrics.

    Every sampled client ends in exactly one of: ok (aggregated), failed (crashed or no
    reply within the round timeout), rejected (reply failed :func:`reply_problem`) or
    dropped (a straggler whose partial work the strategy's policy discards).
    """

    server_round: int
    started: float
    lr: float = float("nan")
    clients_sampled: int = 0
    clients_ok: int = 0
    clients_failed: int = 0
    clients_rejected: int = 0
    clients_dropped: int = 0
    stragglers: dict[int, tuple[int, float]] = field(default_factory=dict)
    skipped: bool = False
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


@dataclass(frozen=True)
class RoundPolicy:
    """How the server treats faults: stragglers, and how many good replies a round needs."""

    straggler_fraction: float = 0.0
    local_epochs: int = 1
    stragglers: str = "drop"  # drop | aggregate
    min_train_replies: int = 1


class LedgerMixin:
    """Seeded cohorts, per-round learning rate, reply checks and measured communication for any FedAvg."""

    def setup_ledger(
        self,
        *,
        node_to_pid: Mapping[int, int] | None = None,
        pool: list[int] | None = None,
        num_partitions: int | None = None,
        seed: int,
        train_per_round: int,
        eval_per_round: int,
        lr_for_round: Callable[[int], float],
        policy: RoundPolicy = RoundPolicy(),
        partition_sizes: Mapping[int, int] | None = None,
    ) -> None:
        """Either ``node_to_pid`` (each node owns one partition: devices, ``per_client``) or a
        ``pool`` of node ids and ``num_partitions`` (any node trains the partition its message
        names; the cohort's partitions are dealt to the pool in order every phase)."""
        if (node_to_pid is None) == (pool is None) or (pool is None) != (num_partitions is None):
            raise ValueError("setup_ledger: pass either node_to_pid, or pool and num_partitions")
        self.pool = list(pool) if pool is not None else None
        self.node_to_pid = dict(node_to_pid or {})
        self.pid_to_node = {pid: node for node, pid in self.node_to_pid.items()}
        self.num_partitions = len(self.node_to_pid) if num_partitions is None else int(num_partitions)
        if self.pool is not None and max(train_per_round, eval_per_round) > len(self.pool):
            raise ValueError(f"a node pool of {len(self.pool)} cannot serve cohorts of {max(train_per_round, eval_per_round)}")
        self.seed = seed
        self.train_per_round = train_per_round
        self.eval_per_round = eval_per_round
        self.lr_for_round = lr_for_round
        self.policy = policy
        self.partition_sizes = dict(partition_sizes or {})
        self.current: RoundRecord | None = None
        self._sent_spec: dict[str, tuple[tuple[int, ...], str]] = {}
        self._train_cohort: list[int] = []

    def _cohort(self, server_round: int, salt: int, k: int) -> list[int]:
        """This phase's nodes; in a pool, also which partition each of them serves."""
        pids = sample_cohort(self.seed, server_round, salt, self.num_partitions, k)
        if self.pool is not None:
            self.node_to_pid = dict(zip(self.pool, pids, strict=False))  # the pool may exceed this phase's cohort
            self.pid_to_node = {pid: node for node, pid in self.node_to_pid.items()}
        return [self.pid_to_node[p] for p in pids]

    def _name_partitions(self, messages: list[Message]) -> list[Message]:
        """In a pool, tell each node which partition it trains or evaluates on."""
        if self.pool is None:
            return messages
        return [self._with_config(m, partition_id=self.node_to_pid[m.metadata.dst_node_id]) for m in messages]

    def _pid(self, message: Message) -> int:
        return self.node_to_pid.get(message.metadata.src_node_id, -1)

    def _record_clients(self, server_round: int, phase: str, replies: list[Message], status: str = "ok") -> None:
        """Per-client rows for client_metrics.csv (phase: train or evaluate)."""
        prefix = "train" if phase == "train" else "eval"
        assert self.current is not None
        for m in replies:
            metrics: Mapping[str, Any] = next(iter(m.content.metric_records.values()), {})
            self.current.client_rows.append(
                {
                    "round": server_round,
                    "phase": phase,
                    "partition_id": self._pid(m),
                    "num_examples": metrics.get("num-examples"),
                    "loss": metrics.get(f"{prefix}_loss"),
                    "accuracy": metrics.get(f"{prefix}_accuracy"),
                    "status": status,
                }
            )

    def _with_config(self, message: Message, **values: Any) -> Message:
        """A copy of a message whose ConfigRecord also carries ``values`` (arrays are shared)."""
        key = self.configrecord_key  # type: ignore[attr-defined]  # set by the Flower strategy mixed in
        content = RecordDict(dict(message.content.items()))
        config = ConfigRecord(dict(message.content.config_records[key]))
        for name, value in values.items():
            config[name.replace("_", "-")] = value
        content[key] = config
        return Message(content=content, message_type=message.metadata.message_type, dst_node_id=message.metadata.dst_node_id)

    def _as_straggler(self, message: Message, epochs: int, step_fraction: float) -> Message:
        """A copy of a train message that tells its client to do partial work."""
        return self._with_config(message, local_epochs=epochs, step_fraction=step_fraction)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        record = RoundRecord(server_round=server_round, started=time.perf_counter())
        self.current = record
        record.lr = float(self.lr_for_round(server_round))
        config["lr"] = record.lr
        nodes = self._cohort(server_round, TRAIN_SALT, self.train_per_round)
        self._train_cohort = [self.node_to_pid[n] for n in nodes]
        self._sent_spec = array_spec(arrays)
        messages = self._name_partitions(list(super().configure_train(server_round, arrays, config, CohortGrid(grid, nodes))))  # type: ignore[misc]  # a mixin: super() is the Flower strategy
        p = self.policy
        record.stragglers = straggler_plan(self.seed, server_round, self._train_cohort, p.straggler_fraction, p.local_epochs)
        for i, m in enumerate(messages):
            plan = record.stragglers.get(self.node_to_pid.get(m.metadata.dst_node_id, -1))
            if plan is not None:
                messages[i] = self._as_straggler(m, *plan)
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
        record.bytes_up = sum(message_array_bytes(m) for m in replies)
        answered = {self._pid(m) for m in replies}
        record.failures += [f"partition {self._pid(m)}: {short_reason(m.error.reason)}" for m in replies if m.has_error()]
        record.failures += [f"partition {p}: no reply within the round timeout" for p in self._train_cohort if p not in answered]
        accepted, rejected, dropped = [], [], []
        for m in (m for m in replies if not m.has_error()):
            pid = self._pid(m)
            problem = reply_problem(m, self._sent_spec, self.partition_sizes.get(pid))
            if problem is not None:
                rejected.append(m)
                record.failures.append(f"partition {pid}: reply rejected: {problem}")
            elif pid in record.stragglers and self.policy.stragglers == "drop":
                dropped.append(m)
            else:
                accepted.append(m)
        record.clients_rejected, record.clients_dropped = len(rejected), len(dropped)
        record.clients_ok = len(accepted)
        record.clients_failed = record.clients_sampled - len(accepted) - len(rejected) - len(dropped)
        self._record_clients(server_round, "train", accepted)
        self._record_clients(server_round, "train", dropped, status="dropped")
        self._record_clients(server_round, "train", rejected, status="rejected")
        if len(accepted) < self.policy.min_train_replies:
            record.skipped = True
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]  # a mixin: super() is the Flower strategy
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
        messages = self._name_partitions(list(super().configure_evaluate(server_round, arrays, config, cohort)))  # type: ignore[misc]  # a mixin: super() is the Flower strategy
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
        if not ok:
            return None
        metrics = super().aggregate_evaluate(server_round, ok)  # type: ignore[misc]  # a mixin: super() is the Flower strategy
        if metrics is not None:
            record.fed_loss = float(metrics["eval_loss"])
            record.fed_accuracy = float(metrics["eval_accuracy"])
        return metrics


class LoggedFedAvg(LedgerMixin, FedAvg):
    """Flower's FedAvg with fedconv's cohorts and ledger."""


class LoggedFedProx(LedgerMixin, FedProx):
    """Flower's FedProx with fedconv's cohorts and ledger (clients add the proximal term)."""


def make_strategy(strategy_cfg: Mapping[str, Any]) -> LoggedFedAvg | LoggedFedProx:
    """Build the configured Flower strategy. Cohort sizes are the ledger's (an evaluation
    cohort of 0 turns federated evaluation off), so Flower is told to take every node of
    the cohort view it is handed."""
    common: dict[str, Any] = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1,
                                  min_evaluate_nodes=1, min_available_nodes=1)
    name = strategy_cfg["name"]
    if name == "fedavg":
        return LoggedFedAvg(**common)
    if name == "fedprox":
        return LoggedFedProx(proximal_mu=float(strategy_cfg["mu"]), **common)
    raise ValueError(f"strategy.name: unknown '{name}'; allowed: {', '.join(STRATEGIES)}")


def config_problems(c: Checks) -> None:
    """The ``strategy`` group."""
    c.one_of("strategy.name", STRATEGIES)
    if c.get("strategy.name") == "fedprox":
        c.in_range("strategy.mu", 0)
    if c.has("strategy.stragglers"):
        c.one_of("strategy.stragglers", STRAGGLER_POLICIES)
