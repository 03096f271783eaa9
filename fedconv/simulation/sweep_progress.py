"""Progress of a sweep run by Hydra's basic launcher (one job after another in this process):
after each job one line with job j/M, how many completed, were skipped (already complete)
and failed, and the time left, estimated from the jobs that ran (skipped ones cost seconds).

A Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``). Under a launcher that runs
jobs in other processes (Ray, submitit) the launcher's own lines say what runs where, and
this callback stays silent: a job there cannot know how its siblings fared.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

_outcome: str | None = None  # what simulate.run says of the job that just ended


def job_outcome(outcome: str) -> None:
    """Called by the job: ``completed``, ``skipped``, ``failed`` or ``interrupted``."""
    global _outcome
    _outcome = outcome


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs this sweep has: the Optuna sweeper's ``n_trials``, or the product of
    the sweep overrides' choices (Hydra's basic sweeper's own expansion)."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    if sweeper is not None and "n_trials" in sweeper:
        return int(sweeper.n_trials)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = list(OmegaConf.select(config, "hydra.overrides.task") or [])
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    except Exception:  # noqa: BLE001 - progress is a courtesy; Hydra reports bad overrides itself
        return None
    return sum(len(batch) for batch in batches)


def eta(seconds: list[float], remaining: int) -> str:
    if not seconds or remaining <= 0:
        return "-"
    left = int(round(sum(seconds) / len(seconds) * remaining))
    return f"{left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"{left // 60}m{left % 60:02d}s"


class SweepProgress(Callback):
    def __init__(self) -> None:
        self.total: int | None = None
        self.active = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        self.active = launcher.endswith("BasicLauncher")
        self.total = sweep_size(config)
        self.counts = {"completed": 0, "skipped": 0, "failed": 0}
        self.ran: list[float] = []
        self.done = 0

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _outcome
        _outcome = None
        self.started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        outcome = _outcome or "failed"
        key = outcome if outcome in self.counts else "failed"
        self.counts[key] += 1
        self.done += 1
        if outcome != "skipped":
            self.ran.append(time.perf_counter() - self.started)
        total = self.total if self.total and self.total >= self.done else None
        left = eta(self.ran, total - self.done) if total else "-"
        print(f"[sweep] job {self.done}/{total or '?'} {outcome}: {self.counts['completed']} completed, "
              f"{self.counts['skipped']} skipped, {self.counts['failed']} failed; ETA {left}",
              file=sys.stdout, flush=True)
