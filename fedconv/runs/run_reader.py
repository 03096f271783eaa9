"""Reading a run directory back, strictly: every file parsed, every number checked against the others.

A report must never print a number it cannot stand behind. A run whose files disagree (a
rounds.csv cut mid-line, a summary that says 30 rounds over 15 rows, bytes that go down)
is read as *damaged*, with the reason, never as a shorter or different run. The writer
side of the contract is :mod:`fedconv.runs.run_dir`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedconv.config import lookup
from fedconv.runs import run_dir

REQUIRED_ROUND_COLUMNS = run_dir.ROUND_COLUMNS[:14]  # the contract's columns; extras may follow
IN_PROGRESS = "in progress"
DAMAGED = "damaged"


class DamagedRun(ValueError):
    """A run directory's files are unreadable or contradict each other."""


@dataclass
class Run:
    """One run directory, parsed; ``problem`` says why it is damaged (then nothing else is trusted)."""

    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, float | None]]
    summary: dict[str, Any] | None
    clients: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)  # client_updates.csv: the updates' geometry
    pairs: list[dict[str, Any]] = field(default_factory=list)  # client_pairs.csv: cosines of pairs of updates

    @property
    def status(self) -> str:
        """completed / failed / interrupted (summary.json), in progress (none yet), or damaged."""
        if self.problem:
            return DAMAGED
        return str(self.summary.get("status")) if self.summary else IN_PROGRESS

    def get(self, key: str) -> Any:
        return lookup(self.config, key)

    def series(self, column: str) -> list[tuple[int, float]]:
        return [(int(r["round"] or 0), v) for r in self.rounds if (v := r.get(column)) is not None]

    def final_client_accuracies(self) -> list[float]:
        evals = [r for r in self.clients if r["phase"] == "evaluate" and r["accuracy"] is not None]
        if not evals:
            return []
        last = max(int(r["round"]) for r in evals)
        return [float(r["accuracy"]) for r in evals if int(r["round"]) == last]


def read_run(path: Path) -> Run:
    """Parse and cross-check a run directory; a damaged one comes back with ``problem`` set."""
    config: dict[str, Any] = {}
    try:
        config = _read_config(path)
        rounds = _read_table(path / run_dir.ROUNDS, REQUIRED_ROUND_COLUMNS, text_columns=run_dir.ROUND_TEXT_COLUMNS)
        clients = _read_table(path / run_dir.CLIENTS, run_dir.CLIENT_REQUIRED, text_columns=("phase", "status"))
        summary = _read_summary(path / run_dir.SUMMARY)
        _check_rounds(rounds)
        if summary is not None:
            _check_summary(summary, rounds, config)
        _check_clients(clients, len(rounds))
        updates = _read_table(path / run_dir.UPDATES, run_dir.UPDATE_COLUMNS, text_columns=("layer",))
        pairs = _read_table(path / run_dir.PAIRS, run_dir.PAIR_COLUMNS, text_columns=())
    except DamagedRun as exc:
        return Run(path=path, config=config, rounds=[], summary=None, problem=str(exc))
    return Run(path=path, config=config, rounds=rounds, summary=summary, clients=clients, updates=updates,
               pairs=pairs)


def _read_config(path: Path) -> dict[str, Any]:
    file = path / run_dir.CONFIG
    if not file.is_file():
        raise DamagedRun(f"no {run_dir.CONFIG}")
    try:
        config = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DamagedRun(f"{run_dir.CONFIG} unreadable ({type(exc).__name__})") from exc
    if not isinstance(config, dict):
        raise DamagedRun(f"{run_dir.CONFIG} is not a mapping of keys")
    missing = [g for g in ("dataset", "model", "strategy", "server") if not isinstance(config.get(g), dict)]
    if missing or isinstance(config.get("seed"), bool) or not isinstance(config.get("seed"), int):
        what = f"no {', '.join(missing)} group" if missing else f"seed {config.get('seed')!r} is not an integer"
        raise DamagedRun(f"{run_dir.CONFIG} is cut short or not a run's config ({what})")
    return config


def _read_summary(file: Path) -> dict[str, Any] | None:
    if not file.exists():
        return None
    try:
        summary = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedRun(f"{run_dir.SUMMARY} unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(summary, dict) or summary.get("status") not in run_dir.STATUSES:
        status = summary.get("status") if isinstance(summary, dict) else None
        raise DamagedRun(f"{run_dir.SUMMARY}: status {status!r} is none of {', '.join(run_dir.STATUSES)}")
    return summary


def _read_table(file: Path, required: list[str], text_columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every row complete, every cell a number (or empty) except ``text_columns``."""
    if not file.exists():
        return []
    try:
        with file.open(newline="") as f:
            text = f.read()
        lines = list(csv.reader(text.splitlines(keepends=True)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DamagedRun(f"{file.name} unreadable ({type(exc).__name__}: {exc})") from exc
    if not lines:
        raise DamagedRun(f"{file.name} is empty (no header)")
    if not text.endswith("\n"):  # every row is written whole, newline included
        raise DamagedRun(f"{file.name} ends mid-line (line {len(lines)} cut short)")
    header, body = lines[0], lines[1:]
    missing = [c for c in required if c not in header]
    if missing:
        raise DamagedRun(f"{file.name}: header lacks {', '.join(missing)}")
    rows = []
    for number, cells in enumerate(body, start=2):
        if len(cells) != len(header):
            raise DamagedRun(f"{file.name} line {number}: {len(cells)} of {len(header)} cells (cut short?)")
        row: dict[str, Any] = {}
        for column, cell in zip(header, cells, strict=True):
            if column in text_columns:
                row[column] = cell
                continue
            try:
                value = float(cell) if cell != "" else None
            except ValueError:
                raise DamagedRun(f"{file.name} line {number}: {column}={cell!r} is not a number") from None
            if value is not None and not math.isfinite(value):
                raise DamagedRun(f"{file.name} line {number}: {column}={cell!r} is not finite")
            row[column] = value
        rows.append(row)
    return rows


def _check_rounds(rounds: list[dict[str, Any]]) -> None:
    previous_bytes = 0.0
    for i, row in enumerate(rounds, start=1):
        if row["round"] != i:
            raise DamagedRun(f"{run_dir.ROUNDS}: row {i} is round {_num(row['round'])} (rounds must run 1, 2, ...)")
        acc = row.get("central_accuracy")
        if acc is not None and not 0 <= acc <= 1:
            raise DamagedRun(f"{run_dir.ROUNDS} round {i}: central_accuracy={acc} is outside [0, 1]")
        cum = row.get("bytes_total_cum")
        if cum is None or cum < previous_bytes:
            raise DamagedRun(f"{run_dir.ROUNDS} round {i}: bytes_total_cum={_num(cum)} "
                             f"below the previous round's {_num(previous_bytes)}")
        previous_bytes = cum


def _check_summary(summary: dict[str, Any], rounds: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """What summary.json says must be what rounds.csv shows (keys absent from older runs are skipped)."""
    where = f"{run_dir.SUMMARY} vs {run_dir.ROUNDS}"
    done = summary.get("rounds_completed")
    if done is not None and done != len(rounds):
        raise DamagedRun(f"{where}: {done} rounds completed but {len(rounds)} rows")
    planned = summary.get("rounds_planned", (config.get("server") or {}).get("rounds"))
    if summary["status"] == "completed" and planned is not None and len(rounds) != planned:
        raise DamagedRun(f"{where}: completed with {planned} rounds planned but {len(rounds)} rows")
    evaluated = [r for r in rounds if r.get("central_accuracy") is not None]
    last = evaluated[-1] if evaluated else None
    for key, expected in (
        ("final_central_accuracy", last["central_accuracy"] if last else None),
        ("final_round", last["round"] if last else None),
        ("best_central_accuracy", max((r["central_accuracy"] for r in evaluated), default=None)),
        ("bytes_total", rounds[-1]["bytes_total_cum"] if rounds else None),
    ):
        if key in summary and not _same(summary[key], expected):
            raise DamagedRun(f"{where}: {key} is {_num(summary[key])} in the summary, {_num(expected)} in the rows")


def _check_clients(clients: list[dict[str, Any]], num_rounds: int) -> None:
    for row in clients:
        if row["round"] is None or not 1 <= row["round"] <= num_rounds:
            raise DamagedRun(f"{run_dir.CLIENTS}: a row of round {_num(row['round'])}, "
                             f"but {run_dir.ROUNDS} has rounds 1..{num_rounds}")


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
