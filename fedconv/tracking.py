"""Tracking sinks: the rounds of a run in the tools researchers watch, fed from the same
per-round row as rounds.csv (one place), after it is written.

- ``logger.tensorboard=true``: event files in ``<run dir>/tensorboard`` (``tensorboard
  --logdir results/``): every numeric rounds.csv column as a scalar with ``step=round``
  (grouped as accuracy/, loss/, bytes/, clients/, time/), the resolved config as text, the
  partition's label histogram (clients x classes, each row normalised) as an image, and the
  summary as text at the end. A resumed run writes to the same folder and purges the events
  of the rounds it redoes, so no step appears twice.

A sink that fails (disk full, a missing package) is reported once on stderr and dropped; the
run, rounds.csv and the other sinks go on. Written here as glue only: TensorBoard's
``SummaryWriter`` (through ``torch.utils.tensorboard``) does the writing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SINKS = ("tensorboard",)
GROUPS = {"accuracy": "accuracy", "loss": "loss", "bytes": "bytes", "clients": "clients", "seconds": "time",
          "compression": "bytes", "lr": "train", "stragglers": "clients", "round_skipped": "clients"}


def scalar_name(column: str) -> str:
    """A rounds.csv column as a TensorBoard tag: ``central_accuracy`` -> ``accuracy/central_accuracy``."""
    for marker, group in GROUPS.items():
        if marker in column:
            return f"{group}/{column}"
    return f"train/{column}"


class TensorBoardSink:
    name = "tensorboard"

    def __init__(self, out: Path, cfg: Mapping[str, Any], first_round: int,
                 label_histogram: np.ndarray | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=first_round if first_round > 1 else None)
        if first_round == 1:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(dict(cfg), sort_keys=False) + "\n```", 0)
            if label_histogram is not None and label_histogram.size:
                self.writer.add_image("partition/label_histogram", heatmap(label_histogram), 0, dataformats="HW")

    def round(self, row: Mapping[str, Any]) -> None:
        step = int(row["round"])
        for column, value in row.items():
            if column != "round" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_name(column), value, step)
        self.writer.flush()

    def end(self, summary: Mapping[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(dict(summary), indent=1, default=str) + "\n```",
                             int(summary.get("rounds_completed") or 0))
        self.writer.close()


def heatmap(hist: np.ndarray, cell: int = 8) -> np.ndarray:
    """Clients x classes counts as a grey image (each client's row normalised to its largest
    class), every cell ``cell`` pixels wide, so 20 clients and 10 classes are visible."""
    h = np.asarray(hist, dtype=np.float64)
    rows = h / np.maximum(h.max(axis=1, keepdims=True), 1)
    return np.kron(rows, np.ones((cell, cell))).astype(np.float32)


class Tracking:
    """Every configured sink; each call goes to each sink, and a failing sink is dropped."""

    def __init__(self, sinks: list[TensorBoardSink]) -> None:
        self.sinks = sinks

    @classmethod
    def for_run(cls, cfg: Mapping[str, Any], out: Path, first_round: int,
                label_histogram: np.ndarray | None = None) -> Tracking:
        sinks = []
        if (cfg.get("logger") or {}).get("tensorboard"):
            try:
                sinks.append(TensorBoardSink(out, cfg, first_round, label_histogram))
            except Exception as exc:  # noqa: BLE001 - a tracking tool must never take the run down
                _report("tensorboard", exc)
        return cls(sinks)

    def round(self, row: Mapping[str, Any]) -> None:
        self._each("round", row)

    def end(self, summary: Mapping[str, Any]) -> None:
        self._each("end", summary)

    def _each(self, method: str, arg: Mapping[str, Any]) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(arg)
            except Exception as exc:  # noqa: BLE001 - a tracking tool must never take the run down
                _report(sink.name, exc)
                self.sinks.remove(sink)


def _report(name: str, exc: Exception) -> None:
    print(f"fedconv: logger.{name} failed ({type(exc).__name__}: {exc}); the run goes on without it "
          "(rounds.csv is unaffected)", file=sys.stderr, flush=True)


def config_problems(c: Any) -> None:
    """The ``logger`` group: one true/false per sink."""
    logger = c.get("logger")
    if logger is None:
        return
    if not isinstance(logger, Mapping):
        c.fail("logger", f"must be a group of true/false keys ({', '.join(SINKS)})")
        return
    for name in logger:
        if name not in SINKS:
            c.fail(f"logger.{name}", f"unknown sink; one of {', '.join(SINKS)}")
        else:
            c.boolean(f"logger.{name}")
