"""The run-directory contract: every run, simulated or real, writes these files.

config.yaml, rounds.csv (appended each round, so a live run can be read), summary.json,
partition.json, client_metrics.csv, model.safetensors and checkpoint.safetensors (neither
is ever unpickled on load).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fedconv import atomic

ROUND_COLUMNS = [
    "round",
    "central_accuracy",
    "central_loss",
    "fed_accuracy",
    "fed_loss",
    "train_loss",
    "clients_sampled",
    "clients_ok",
    "clients_failed",
    "bytes_down",
    "bytes_up",
    "bytes_total_cum",
    "round_seconds",
    "elapsed_seconds",
    # fedconv extras
    "train_accuracy",
    "lr",
    "central_top5",
    "eval_clients_sampled",
    "eval_clients_ok",
    "bytes_eval_down",
    "fed_accuracy_p10",
    "fed_accuracy_min",
    "clients_rejected",
    "clients_dropped",
    "stragglers",
    "round_skipped",
    "fed_cohort",  # evaluate: the evaluate phase's clients on the new model; train: the training clients
    "fed_model_round",  # on the model they received (fed_eval=with_train): the global model after this round
    "compression_down",  # bytes sent / bytes the same arrays take uncompressed (train + eval downlink)
    "compression_up",
    # the aggregated updates' geometry (fedconv.insight.drift); per client in client_updates.csv
    "update_norm_mean",
    "update_cosine_to_aggregate",
    "update_pairwise_cosine",
    "aggregate_step_norm",
    "distance_from_init",
]
ROUND_TEXT_COLUMNS = ("fed_cohort",)  # every other rounds.csv cell is a number or empty
CLIENT_REQUIRED = ["round", "phase", "partition_id", "num_examples", "loss", "accuracy", "status"]
# What a deployed message cost on its board (fedconv.edge.board_app); empty in simulation and in
# runs written before these columns existed.
CLIENT_COSTS = ["work_seconds", "process_seconds", "warm_worker"]
CLIENT_COLUMNS = CLIENT_REQUIRED + CLIENT_COSTS
# one row per aggregated client and layer ("model": the whole model) a round
UPDATE_COLUMNS = ["round", "partition_id", "layer", "norm", "cosine_to_aggregate"]
# one row per pair of aggregated clients that entered a round's pairwise cosine
PAIR_COLUMNS = ["round", "partition_a", "partition_b", "cosine"]

CONFIG = "config.yaml"
ROUNDS = "rounds.csv"
SUMMARY = "summary.json"
PARTITION = "partition.json"
CLIENTS = "client_metrics.csv"
UPDATES = "client_updates.csv"
PAIRS = "client_pairs.csv"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CLASS_REPORT = "classification.json"
STATUSES = ("completed", "failed", "interrupted")
LOCK = ".run.lock"  # held (flock) by the one process that writes this run dir, for the run's life
BOOKKEEPING = (".hydra", LOCK)  # what a run dir holds that is not a result


class RunDirError(ValueError):
    """A run dir's file is unreadable or disagrees with the others; the message names the file."""


class RunDirHeld(RunDirError):
    """Another process writes this run dir now."""


@dataclass
class RunLock:
    """The one writer's hold on a run dir: an exclusive ``flock`` on ``.run.lock`` that the
    OS drops when the process dies (however it dies), so a crash never leaves a stale lock.
    A command that is refused before its run starts leaves the folder as it found it (a
    lock file it had to create goes again); one that runs writes who holds it
    (:meth:`claim`) for the next one to see."""

    path: Path
    file: IO[str]
    created: bool
    claimed: bool = False

    def claim(self) -> None:
        """Record the holder (pid, host, start time, command) in the lock file."""
        import os
        import socket
        import sys
        import time

        self.file.seek(0)
        self.file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {' '.join(sys.argv)[:300]}\n")
        self.file.flush()
        self.claimed = True

    def release(self) -> None:
        if self.file.closed:
            return
        if self.created and not self.claimed:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _holder(path: Path) -> str:
    """Who holds the lock: the process the kernel names (``/proc/locks``, this host), else
    what the holder wrote in the file."""
    import os

    try:
        inode = os.stat(path).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) == inode:
                pid = int(fields[4])
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return f"pid {pid}: {' '.join(command.split())[:300]}"  # one line, whatever the arguments hold
    except (OSError, ValueError, IndexError):
        pass
    try:
        return " ".join(path.read_text().split()) or "another process"
    except OSError:
        return "another process"


def hold(out: Path) -> RunLock:
    """Take ``out`` for this process (creating the folder for a new run); :class:`RunDirHeld`
    naming the holder when another process has it. Nothing else in ``out`` is touched."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    created = not path.exists()
    f = open(path, "a+")  # noqa: SIM115 - held until release(); never truncated before the lock is ours
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunDirHeld(f"{out}: another fedconv process writes this run dir ({_holder(path)}); "
                         "wait for it to end, or stop it") from None
    return RunLock(path, f, created)


def read_summary(path: Path) -> dict[str, Any]:
    """summary.json as a dict; :class:`RunDirError` naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable ({type(exc).__name__}: {exc}); "
                          "the run dir is damaged: restore the file or start a new run") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def discard_if_empty(out: Path) -> None:
    """Remove a run dir that holds nothing but Hydra's bookkeeping (no fake results)."""
    import shutil

    if out.is_dir() and all(p.name in BOOKKEEPING or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def existing_run(out: Path) -> str:
    """What ``out`` holds already: "none", a "completed" run, or a "partial" one."""
    summary = out / SUMMARY
    if summary.exists() and read_summary(summary).get("status") == "completed":
        return "completed"
    if any((out / name).exists() for name in (SUMMARY, ROUNDS, CHECKPOINT)):
        return "partial"
    return "none"


SWEEP_INDEX = "sweep.json"
SWEEP_LOCK = ".sweep.lock"


def read_sweep_index(sweep_dir: Path) -> dict[str, Any]:
    """A sweep's index with every job's ``run_dir`` under ``sweep_dir`` as given: the index
    records absolute paths, and a sweep folder that was moved or copied must read (and
    update) its own run dirs, never the original's."""
    path = sweep_dir / SWEEP_INDEX
    if not path.exists():
        return {"sweep_dir": str(sweep_dir), "jobs": []}
    index = json.loads(path.read_text())
    recorded = Path(index.get("sweep_dir") or sweep_dir)
    for job in index["jobs"]:
        run = Path(job["run_dir"])
        if run.is_absolute() and run.is_relative_to(recorded):
            job["run_dir"] = str(sweep_dir / run.relative_to(recorded))
        elif not run.is_absolute():
            job["run_dir"] = str(sweep_dir / run)
    index["sweep_dir"] = str(sweep_dir)
    return index


@contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep's index lock: jobs of a sweep that run at once (Hydra's Ray or submitit
    launchers, Optuna trials in parallel, two sweeps into one folder) read-modify-write
    ``sweep.json`` one at a time, so no entry is lost. A POSIX record lock (``fcntl.lockf``)
    on ``.sweep.lock``: it also holds across machines on an NFS share (SLURM), and the OS
    drops it when a job dies."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / SWEEP_LOCK, "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def update_sweep_index(sweep_dir: Path, entry: dict[str, Any]) -> None:
    """Record one job in sweep.json: one entry per run dir with its overrides, job number and
    status, under :func:`sweep_lock`.

    Keyed by run dir, not job number: a later sweep into the same folder (more seeds, one
    strategy) numbers its jobs from 0 again and must not replace the earlier jobs' entries.
    """
    with sweep_lock(sweep_dir):
        index = read_sweep_index(sweep_dir)
        dirs = [j["run_dir"] for j in index["jobs"]]
        if entry["run_dir"] in dirs:
            index["jobs"][dirs.index(entry["run_dir"])] = entry
        else:
            index["jobs"].append(entry)
        write_json(sweep_dir / SWEEP_INDEX, index)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path: Path, obj: Any) -> None:
    atomic.write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def write_config(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    from omegaconf import OmegaConf

    atomic.write_text(run_dir / CONFIG, OmegaConf.to_yaml(OmegaConf.create(dict(cfg))))


def _cell(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def append_row(path: Path, columns: list[str], row: Mapping[str, Any]) -> None:
    """Append one CSV row (writing the header first); empty cells for missing values."""
    append_rows(path, columns, [row])


def append_rows(path: Path, columns: list[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Append CSV rows in one write (the header first in a new file)."""
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(columns)
        writer.writerows([[_cell(row.get(c)) for c in columns] for row in rows])
        f.flush()


def _typed(value: str) -> Any:
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _complete_rows(path: Path, last_round: int, unique: bool = True) -> list[dict[str, str]]:
    """The rows of rounds <= ``last_round`` that have every cell (a crash mid-write leaves a
    short last line)."""
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if None not in r.values() and None not in r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    kept = [r for r in rows if r.get("round", "").isdigit() and int(r["round"]) <= last_round]
    seen: set[str] = set()
    for r in kept if unique else ():
        if r["round"] in seen:
            raise RunDirError(f"{path}: holds round {r['round']} twice (two processes wrote this run); "
                              "it cannot continue: start a new run")
        seen.add(r["round"])
    return kept


def complete_rounds(path: Path, last_round: int) -> int:
    """How many distinct rounds <= ``last_round`` rounds.csv holds complete rows of."""
    return len({r["round"] for r in _complete_rows(path, last_round)})


def truncate_rows(path: Path, columns: list[str], last_round: int) -> list[dict[str, Any]]:
    """Keep the complete rows of rounds <= ``last_round`` (a resumed run redoes the rest);
    returns them with numbers parsed."""
    if not path.exists():
        return []
    kept = _complete_rows(path, last_round, unique=columns == ROUND_COLUMNS)
    buf = io.StringIO()
    writer = csv.writer(buf)  # the same dialect as append_row
    writer.writerow(columns)
    writer.writerows([[r.get(c, "") for c in columns] for r in kept])
    atomic.write_text(path, buf.getvalue())
    return [{k: _typed(v) for k, v in r.items()} for r in kept]


def save_weights(path: Path, state: Mapping[str, Any]) -> None:
    """Save a state dict as safetensors (loading it runs no code)."""
    import torch
    from safetensors.torch import save_file

    tensors = {k: torch.as_tensor(v).contiguous() for k, v in state.items()}
    with atomic.replacing(path) as tmp:
        save_file(tensors, str(tmp))


def load_weights(path: Path) -> dict[str, Any]:
    """A safetensors state dict; :class:`RunDirError` naming the file when it is not one."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a bad header or length
        raise RunDirError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None
