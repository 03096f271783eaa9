"""Where a run's start-up goes: seconds from the start of the command (or, for the later jobs
of a sweep run in one process, of the job) to each milestone before round 1.

The marks go into summary.json (``startup_seconds``) and the benchmark's start-up breakdown,
so "start-up" is measured by the run itself rather than guessed from outside. Beside them,
what ran the job's clients (:func:`record_runtime`: Ray's node and the actors a sweep's job
took over), set by the simulation layer and read by the ServerApp, which never imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

_origin: float | None = None
_marks: dict[str, float] = {}
_runtime: dict[str, dict[str, Any]] = {}


def _process_start() -> float:
    """This process's start on the ``time.monotonic`` clock (Linux: from /proc), else now."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of proc(5), counted after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # CLOCK_MONOTONIC and /proc/uptime both count from boot (suspend aside)
        age = uptime - started_ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def begin(from_process_start: bool) -> None:
    """Start a job's timeline: from the process's start for the first job, else from now."""
    global _origin
    _origin = _process_start() if from_process_start else time.monotonic()
    _marks.clear()
    _runtime.clear()


def mark(name: str) -> None:
    """Record the first time ``name`` is reached (a no-op outside a timed job)."""
    if _origin is not None and name not in _marks:
        _marks[name] = round(time.monotonic() - _origin, 3)


def marks() -> dict[str, float]:
    return dict(_marks)


def record_runtime(name: str, facts: Mapping[str, Any]) -> None:
    """What runs this job's clients (``name="ray"``: :func:`fedconv.simulation.ray_session.describe`)."""
    _runtime[name] = dict(facts)


def runtime(name: str) -> dict[str, Any]:
    """The facts recorded under ``name``; empty where nothing recorded them (a deployed ServerApp)."""
    return dict(_runtime.get(name, {}))


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere 0)."""
    return max(0.0, time.monotonic() - _process_start())
