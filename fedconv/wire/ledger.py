"""What each round did, measured from the messages themselves: cohort outcome, bytes, metrics.

Bytes are those of the arrays each message really carries as serialised by Flower (header
included), never a formula, so any algorithm's wire format is counted as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message


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


@dataclass
class RoundRecord:
    """What one round did: cohort, replies, bytes and metrics.

    Every sampled client ends in exactly one of: ok (aggregated), failed (crashed or no
    reply within the round timeout), rejected (reply failed the reply checks) or dropped
    (a straggler whose partial work the straggler policy discards).
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
    bytes_down_raw: int = 0  # what the same messages would carry uncompressed (fedconv.wire.compression)
    bytes_up_raw: int = 0
    bytes_eval_down_raw: int = 0
    eval_clients_sampled: int = 0
    eval_clients_ok: int = 0
    train_loss: float | None = None
    train_accuracy: float | None = None
    fed_loss: float | None = None
    fed_accuracy: float | None = None
    client_rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    update_summary: dict[str, float | None] = field(default_factory=dict)  # fedconv.insight.drift, for rounds.csv
    update_rows: list[dict[str, Any]] = field(default_factory=list)  # and for client_updates.csv
    update_pairs: list[dict[str, Any]] = field(default_factory=list)  # and for client_pairs.csv

    def add_clients(self, phase: str, replies: list[Message], pid_of: Callable[[Message], int], status: str = "ok") -> None:
        """Per-client rows for client_metrics.csv (phase: train or evaluate); ``pid_of`` says
        which partition a reply answers."""
        prefix = "train" if phase == "train" else "eval"
        for m in replies:
            metrics: Mapping[str, Any] = next(iter(m.content.metric_records.values()), {})
            self.client_rows.append(
                {
                    "round": self.server_round,
                    "phase": phase,
                    "partition_id": pid_of(m),
                    "num_examples": metrics.get("num-examples"),
                    "loss": metrics.get(f"{prefix}_loss"),
                    "accuracy": metrics.get(f"{prefix}_accuracy"),
                    "status": status,
                    "work_seconds": metrics.get("work-seconds"),
                    "process_seconds": metrics.get("process-seconds"),
                    "warm_worker": metrics.get("warm-worker"),
                }
            )
