"""A federated round around any algorithm's Flower strategy.

The pieces are separate and built once from plain data: the seeded cohorts
(:mod:`fedconv.federation.cohorts`), the :class:`RoundPolicy` (stragglers, replies a round needs), the
reply checks (:mod:`fedconv.wire.reply_checks`, from the algorithm's wire declaration) and the
ledger (:mod:`fedconv.wire.ledger`). :class:`FederatedRounds` only passes messages between them
and Flower's strategy, which aggregates exactly as Flower wrote it: fedconv hands it the
cohort's nodes, and the replies that passed the checks, in partition order.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedconv import records
from fedconv.algorithms.base import (
    EVAL_NUM_EXAMPLES,
    MODEL,
    PARAMETERS,
    Algorithm,
    restore_strategy_state,
    strategy_state,
)
from fedconv.federation.client_state import STATE_ROUND, partitions_keep_state
from fedconv.federation.cohorts import CohortGrid, Cohorts, Phase, group_of
from fedconv.federation.faults import straggler_plan
from fedconv.insight.drift import round_geometry
from fedconv.wire.channel import Channel, spec_of
from fedconv.wire.compression import Link, PayloadError, Spec
from fedconv.wire.ledger import RoundRecord, message_array_bytes, short_reason
from fedconv.wire.reply_checks import reply_problem


@dataclass(frozen=True)
class RoundPolicy:
    """How the server treats faults: stragglers, and how many good replies a round needs."""

    straggler_fraction: float = 0.0
    local_epochs: int = 1
    stragglers: str = "drop"  # drop | aggregate
    min_train_replies: int = 1


@dataclass
class RoundState:
    """What the round engine holds from configuring a phase to aggregating its replies: the
    whole global model (local arrays included), the spec of what was sent and of each array
    kind a wire declaration may name, the sent model as the uplink's reference and the arrays
    its codec encodes, and each phase's cohort (node -> partition)."""

    specs: dict[str, Spec]
    global_model: ArrayRecord = field(default_factory=ArrayRecord)
    sent_spec: Spec = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    up_names: frozenset[str] = frozenset()
    train: Phase | None = None
    evaluate: Phase | None = None


class FederatedRounds:
    """Train and evaluate phases of each round for one algorithm (the four calls of Flower's
    ``Strategy`` loop, so :func:`fedconv.federation.server_app.run_rounds` drives any algorithm).

    ``buffer_names`` are the model's non-parameter arrays (BatchNorm running statistics);
    the algorithm's ``buffers`` rule says whether its strategy sees them.

    For an algorithm with client state, ``client_rounds`` maps each partition to its last
    round whose update was aggregated; every message names that version (``state-round``),
    and the checkpoint keeps the map (:mod:`fedconv.federation.client_state`).

    ``local_names`` are arrays that stay on the clients: messages carry the rest, and the
    global model keeps the server's own copy of them.

    ``link`` compresses what travels (:mod:`fedconv.wire.compression`): the model down, each
    client's update up, which is decoded onto the server's exact model before the reply
    checks, so the strategy sees whole models; the ledger counts the compressed arrays. Its
    error feedback is client state, versioned as an algorithm's.

    With ``evaluate_with_train`` (``server.fed_eval=with_train``) the training clients
    evaluate the model they received before training and reply with both; the round's
    federated metrics come from those replies and there is no evaluate phase.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        strategy_cfg: Mapping[str, Any],
        cohorts: Cohorts,
        lr_for_round: Callable[[int], float],
        policy: RoundPolicy = RoundPolicy(),
        partition_sizes: Mapping[int, int] | None = None,
        buffer_names: Iterable[str] = (),
        local_names: Iterable[str] = (),
        link: Link | None = None,
        evaluate_with_train: bool = False,
        initial: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.strategy = algorithm.make_strategy({**strategy_cfg, "num_partitions": cohorts.num_partitions})
        self.cohorts = cohorts
        self.lr_for_round = lr_for_round
        self.policy = policy
        self.partition_sizes = dict(partition_sizes or {})
        self.model_buffers = frozenset(buffer_names)
        self.buffer_names = self.model_buffers if algorithm.buffers == "mean" else frozenset()
        self.client_rounds: dict[int, int] = {}
        self.link = link or Link()
        self.evaluate_with_train = evaluate_with_train
        self.stateful = partitions_keep_state(algorithm, self.link)  # a partition keeps state between rounds
        self.local_names = frozenset(local_names)  # never sent (FedBN's BatchNorm layers)
        self.current: RoundRecord | None = None
        self.initial = dict(initial or {})  # the initial model's parameters: the distance travelled from them
        self.geometry_seconds = 0.0  # what measuring the updates' geometry has cost this process
        self.round = RoundState(specs=self._specs_of({}))  # this round's, between configure and aggregate
        self._arrays_key = str(getattr(self.strategy, "arrayrecord_key", "arrays"))
        self._config_key = str(getattr(self.strategy, "configrecord_key", "config"))

    # ------------------------------------------------------------------ state

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The round-to-round state (named arrays + JSON layout) for the checkpoint: the
        strategy's, and which version of each partition's client state is current."""
        tensors, layout = strategy_state(self.strategy, self.algorithm.state_attributes)
        if self.stateful:
            layout = {**layout, "client_rounds": {str(k): v for k, v in sorted(self.client_rounds.items())}}
        return tensors, layout

    def restore(self, tensors: Mapping[str, np.ndarray], layout: Mapping[str, Any]) -> None:
        layout = dict(layout)
        self.client_rounds = {int(k): int(v) for k, v in layout.pop("client_rounds", {}).items()}
        restore_strategy_state(self.strategy, tensors, layout)

    # ------------------------------------------------------------------ messages

    def _messages(self, sent: list[Message], arrays: ArrayRecord, phase: Phase,
                  orders: Mapping[int, Mapping[str, Any]] | None = None) -> list[Message]:
        """The strategy's message (the same for every node: the algorithms' strategies send one
        content to all) copied for each slot of the phase: the model as it travels, and a
        ConfigRecord that also names the partition (in a pool) and any orders for it."""
        if not sent:
            return []
        template = sent[0]
        return [self._message(template, arrays, node, pid, phase.names_partitions, (orders or {}).get(pid, {}))
                for node, pid in phase.slots]

    def _message(self, template: Message, arrays: ArrayRecord, node: int, pid: int, names_partition: bool,
                 orders: Mapping[str, Any]) -> Message:
        content = RecordDict(dict(template.content.items()))
        content[self._arrays_key] = arrays
        values = ConfigRecord(dict(template.content.config_records[self._config_key]))
        if names_partition:
            values["partition-id"] = pid
        if self.stateful:
            values[STATE_ROUND] = self.client_rounds.get(pid, 0)
        for name, value in orders.items():
            values[name.replace("_", "-")] = value
        content[self._config_key] = values
        return Message(content=content, message_type=template.metadata.message_type, dst_node_id=node,
                       group_id=group_of(pid))

    def _shared(self, arrays: ArrayRecord) -> ArrayRecord:
        """What travels: the model without the arrays that stay on the clients."""
        if not self.local_names:
            return arrays
        return ArrayRecord({k: a for k, a in arrays.items() if k not in self.local_names})

    def _downlink(self, arrays: ArrayRecord, key: tuple[int, ...]) -> ArrayRecord:
        """The model as it travels down: encoded by the downlink codec, or as it is."""
        if not self.link.down.active:
            return arrays
        channel = Channel.of(self.link.down, spec_of(arrays), self.model_buffers, key)
        return channel.send({k: a.numpy() for k, a in arrays.items()})[0]

    def _decoded(self, reply: Message, pid: int, server_round: int) -> tuple[Message, str | None]:
        """The reply with its model record decoded onto the sent model (uplink codec), or the
        reply as it came and why its payload cannot be decoded."""
        if not self.link.up.active or self._arrays_key not in reply.content.array_records:
            return reply, None
        channel = Channel(self.link.up, self.round.sent_spec, self.link.up_key(server_round, pid), self.round.up_names)
        try:
            model = channel.receive(reply.content.array_records[self._arrays_key], reference=self.round.reference)
        except PayloadError as exc:
            return reply, f"compressed update: {exc}"
        content = RecordDict(dict(reply.content.items()))
        content[self._arrays_key] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in model.items()})
        decoded = copy.copy(reply)
        decoded.content = content
        return decoded, None

    def _strategy_view(self, arrays: ArrayRecord) -> ArrayRecord:
        """What the strategy aggregates: the model without the buffers it must not touch."""
        if not self.buffer_names:
            return arrays
        return ArrayRecord({k: a for k, a in arrays.items() if k not in self.buffer_names})

    def _specs_of(self, sent: Spec) -> dict[str, Spec]:
        """Each array kind of a wire declaration -> the names, shapes and dtypes it means."""
        return {MODEL: sent, PARAMETERS: {k: v for k, v in sent.items() if k not in self.model_buffers}}

    def _for_strategy(self, reply: Message) -> Message:
        """The reply as Flower's strategies expect it: the model's ArrayRecord (without the
        buffers kept from the strategy), any other ArrayRecord the wire declares, and the
        MetricRecord. Fresh records, so a strategy that pops arrays (FedTrimmedAvg) leaves the
        ledger's reply intact, with the arrays in the order the server sent them, whatever
        order the client used."""
        specs = self.round.specs
        # In the order sent: FedAvgM and q-FedAvg pair a reply's arrays with the model's by position.
        names = {record: [k for k in specs[kind] if record != self._arrays_key or k not in self.buffer_names]
                 for record, kind in self.algorithm.wire.arrays.items()}
        got = reply.content.array_records
        view = RecordDict({**{record: ArrayRecord({k: got[record][k] for k in keys}) for record, keys in names.items()},
                           "metrics": next(iter(reply.content.metric_records.values()))})
        shown = copy.copy(reply)  # same metadata (Flower logs the sender), other content
        shown.content = view
        return shown

    # ------------------------------------------------------------------ train

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        record = RoundRecord(server_round=server_round, started=time.perf_counter())
        self.current = record
        record.lr = float(self.lr_for_round(server_round))
        config["lr"] = record.lr
        phase = self.round.train = self.cohorts.phase(server_round, train=True)
        self.round.global_model, arrays = arrays, self._shared(arrays)
        self.round.sent_spec = spec_of(arrays)
        self.round.specs = self._specs_of(self.round.sent_spec)  # once per round, not per reply
        self.round.reference = {k: a.numpy() for k, a in arrays.items()} if self.link.up.active else {}
        self.round.up_names = Channel.of(self.link.up, self.round.sent_spec, self.model_buffers).names
        wire = self._downlink(arrays, self.link.down_key(server_round))
        sent = list(self.strategy.configure_train(server_round, self._strategy_view(arrays), config,
                                                  _cohort_grid(grid, phase)))
        p = self.policy
        record.stragglers = straggler_plan(self.cohorts.seed, server_round, phase.pids, p.straggler_fraction,
                                           p.local_epochs)
        orders = {pid: {"local_epochs": epochs, "step_fraction": fraction}
                  for pid, (epochs, fraction) in record.stragglers.items()}
        messages = self._messages(sent, wire, phase, orders)
        record.clients_sampled = len(messages)
        record.bytes_down = sum(message_array_bytes(m) for m in messages)
        record.bytes_down_raw = record.bytes_down + len(messages) * (_record_bytes(arrays) - _record_bytes(wire))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record, phase = self.current, self.round.train
        assert record is not None and phase is not None
        # Reply order is completion order; aggregate in partition order so runs are repeatable.
        replies = sorted(replies, key=Phase.pid_of)
        accepted, rejected, dropped = self._triage(server_round, record, phase, replies)
        record.add_clients("train", accepted, Phase.pid_of)
        record.add_clients("train", dropped, Phase.pid_of, status="dropped")
        record.add_clients("train", rejected, Phase.pid_of, status="rejected")
        if self.evaluate_with_train:  # updates dropped as stragglers still evaluated the received model
            self._evaluated_before_training(record, accepted + dropped)
        if len(accepted) < self.policy.min_train_replies:
            record.skipped = True
            return None, None
        arrays, metrics = self._aggregated(server_round, accepted)
        if arrays is None:  # the rule could not aggregate these replies (Bulyan: too few)
            record.skipped = True
            return None, None
        if self.stateful:  # these partitions' new states are now the current ones
            self.client_rounds.update({Phase.pid_of(m): server_round for m in accepted})
        self._measure_updates(record, accepted, arrays)
        if metrics is not None:
            record.train_loss = records.number(metrics, "train_loss")
            record.train_accuracy = records.number(metrics, "train_accuracy")
        return arrays, metrics

    def _measure_updates(self, record: RoundRecord, accepted: list[Message], new: ArrayRecord) -> None:
        """The geometry of the aggregated updates (:mod:`fedconv.insight.drift`) over the
        parameters sent (BatchNorm statistics and local arrays left out), into the record."""
        started = time.perf_counter()
        names = [k for k in self.round.sent_spec if k not in self.model_buffers]
        replies = {Phase.pid_of(m): {k: m.content.array_records[self._arrays_key][k].numpy() for k in names}
                   for m in accepted}
        geometry = round_geometry(record.server_round, {k: self.round.global_model[k].numpy() for k in names}, replies,
                                  {k: new[k].numpy() for k in names}, names, self.initial or None)
        record.update_summary, record.update_rows, record.update_pairs = geometry.summary, geometry.rows, geometry.pairs
        self.geometry_seconds += time.perf_counter() - started

    def _triage(self, server_round: int, record: RoundRecord, phase: Phase,
                replies: list[Message]) -> tuple[list[Message], list[Message], list[Message]]:
        """Each reply decoded and checked: (accepted, rejected, dropped stragglers); failures,
        missing replies and bytes go into the round's record."""
        record.bytes_up = sum(message_array_bytes(m) for m in replies)
        answered = {Phase.pid_of(m) for m in replies}
        record.failures += [f"partition {Phase.pid_of(m)}: {short_reason(m.error.reason)}"
                            for m in replies if m.has_error()]
        record.failures += [f"partition {p}: no reply within the round timeout" for p in phase.pids if p not in answered]
        accepted, rejected, dropped = [], [], []
        record.bytes_up_raw = 0
        for m in (m for m in replies if not m.has_error()):
            pid = Phase.pid_of(m)
            m, problem = self._decoded(m, pid, server_round)
            record.bytes_up_raw += message_array_bytes(m)
            if problem is None:
                problem = reply_problem(m, self.algorithm.wire, self.round.specs, self.partition_sizes.get(pid))
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
        return accepted, rejected, dropped

    def _aggregated(self, server_round: int, accepted: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's strategy on the accepted replies, completed to the whole model as sent
        (BatchNorm buffers averaged where the algorithm says, local arrays from the server's copy)."""
        arrays, metrics = self.strategy.aggregate_train(server_round, [self._for_strategy(m) for m in accepted])
        if arrays is None:
            return None, metrics
        if self.buffer_names:
            buffers = aggregate_arrayrecords([_only(m, self._arrays_key, self.buffer_names) for m in accepted], "num-examples")
            arrays = ArrayRecord({k: (arrays[k] if k in arrays else buffers[k]) for k in self.round.sent_spec})
        arrays = _as_sent(arrays, self.round.sent_spec)
        if self.local_names:  # the global model keeps the server's copy of what stays local
            arrays = ArrayRecord({k: (arrays[k] if k in arrays else self.round.global_model[k]) for k in self.round.global_model})
        return arrays, metrics

    @staticmethod
    def _evaluated_before_training(record: RoundRecord, replies: list[Message]) -> None:
        """The federated metrics of a ``with_train`` round: each reply's evaluation of the
        received model, weighted by its held-out examples (replies without one are left out)."""
        rows = []
        for m in replies:
            metrics = next(iter(m.content.metric_records.values()))
            values = [v for k in (EVAL_NUM_EXAMPLES, "eval_loss", "eval_accuracy")
                      if isinstance(v := metrics.get(k), int | float) and np.isfinite(v)]
            if len(values) == 3 and values[0] > 0:
                rows.append((Phase.pid_of(m), *(float(v) for v in values)))
        record.eval_clients_sampled, record.eval_clients_ok = record.clients_sampled, len(rows)
        record.client_rows += [{"round": record.server_round, "phase": "evaluate", "partition_id": pid,
                                "num_examples": int(n), "loss": loss, "accuracy": acc, "status": "ok"}
                               for pid, n, loss, acc in rows]
        if rows:
            n = np.array([r[1] for r in rows])
            record.fed_loss = float(np.dot(n, [r[2] for r in rows]) / n.sum())
            record.fed_accuracy = float(np.dot(n, [r[3] for r in rows]) / n.sum())

    # ------------------------------------------------------------------ evaluate

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        if self.cohorts.eval_per_round == 0:
            return []
        phase = self.round.evaluate = self.cohorts.phase(server_round, train=False)
        arrays = self._shared(arrays)
        sent = list(self.strategy.configure_evaluate(server_round, arrays, config, _cohort_grid(grid, phase)))
        wire = self._downlink(arrays, self.link.down_key(server_round, evaluate=True))
        messages = self._messages(sent, wire, phase)
        if self.current is not None:
            self.current.eval_clients_sampled = len(messages)
            self.current.bytes_eval_down = sum(message_array_bytes(m) for m in messages)
            self.current.bytes_eval_down_raw = (self.current.bytes_eval_down
                                                + len(messages) * (_record_bytes(arrays) - _record_bytes(wire)))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        record, phase = self.current, self.round.evaluate
        assert record is not None and phase is not None
        replies = sorted(replies, key=Phase.pid_of)
        ok = [m for m in replies if not m.has_error()]
        record.eval_clients_ok = len(ok)
        record.add_clients("evaluate", ok, Phase.pid_of)
        if not ok:
            return None
        metrics = self.strategy.aggregate_evaluate(server_round, ok)
        if metrics is not None:
            record.fed_loss = records.number(metrics, "eval_loss")
            record.fed_accuracy = records.number(metrics, "eval_accuracy")
        return metrics


def _as_sent(arrays: ArrayRecord, spec: Mapping[str, tuple[tuple[int, ...], str]]) -> ArrayRecord:
    """The aggregate in the global model's own dtypes. Some of Flower's rules compute in
    float64 (FedAdam's bias correction and q-FedAvg's weights are numpy float64 scalars);
    a float64 model would double every later message and fail the clients' float32 replies."""
    if all(str(a.dtype) == spec[k][1] for k, a in arrays.items()):
        return arrays
    return ArrayRecord({k: Array(np.asarray(a.numpy(), dtype=spec[k][1])) for k, a in arrays.items()})


def _record_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


def _cohort_grid(grid: Grid, phase: Phase) -> Grid:
    return cast(Grid, CohortGrid(grid, phase.nodes))  # a view: the Grid's API, fewer nodes


def _only(reply: Message, key: str, names: frozenset[str]) -> RecordDict:
    """The reply's ``names`` arrays and its metrics, for Flower's weighted mean."""
    arrays = reply.content.array_records[key]
    return RecordDict({key: ArrayRecord({k: a for k, a in arrays.items() if k in names}),
                       "metrics": next(iter(reply.content.metric_records.values()))})
