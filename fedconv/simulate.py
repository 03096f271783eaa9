"""``python -m fedconv.simulate [overrides] [-m sweeps]``: a Flower simulation on Ray.

Hydra composes and sweeps; this module validates the config, fixes the run directory,
flattens the config into Flower's run config and hands it to :mod:`fedconv.simulation.runtime`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedconv.config import (
    EXIT_BAD_CONFIG,
    ConfigError,
    config_errors_exit_2,
    plain,
    register_resolvers,
    to_run_config,
    unknown_keys,
)
from fedconv.runs import run_dir, timeline, tracking
from fedconv.sections import Client, Server, Simulation, cohort_sizes, virtual_nodes, with_legacy_defaults
from fedconv.simulation import ray_session, resume, sweep_progress
from fedconv.validation import validate

register_resolvers()

_TASK_STARTED = False  # set when a job starts; a Hydra exit before that is a config error
_JOBS_STARTED = 0  # jobs this process has begun (a sweep runs them one after another)
_BAD_INPUT_JOBS: list[str] = []  # sweep jobs of this process refused for their config or data
_HELD_JOBS: list[str] = []  # sweep jobs skipped because another process writes their run dir
_FAILED_JOBS: list[str] = []  # sweep jobs that ran and did not complete


def _write_failure(out: Path, cfg: dict[str, Any], status: str, error: str) -> None:
    """Make sure a run that did not complete never looks like it did. A disk that is full
    (or gone) at this point loses only this note: say so in one line, keep the rest."""
    path = out / run_dir.SUMMARY
    try:
        try:
            summary = run_dir.read_summary(path) if path.exists() else None
        except run_dir.RunDirError:
            summary = None  # a damaged summary is rewritten from what rounds.csv holds
        if summary is None:  # the ServerApp never wrote one: say what rounds.csv holds, so the two agree
            try:
                done = run_dir.complete_rounds(out / run_dir.ROUNDS, Server.of(cfg).rounds)
            except run_dir.RunDirError:
                done = 0
            summary = {"seed": cfg.get("seed"), "rounds_completed": done}
        if summary.get("status") != "completed" or status == "interrupted":
            summary.update(status=status, error=error)
            run_dir.write_json(path, summary)
    except OSError as exc:
        print(f"error: could not record the run's {status} status in {path} ({exc.strerror or exc}); "
              f"the rounds, rows and checkpoint already in {out} are intact", file=sys.stderr)


def resolve(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The plain, validated config this run will use (output dir and threads filled in)."""
    resolved = plain(cfg)
    validate(resolved)
    resolved["output_dir"] = str(out)
    tracking.absolute_tracking_uri(resolved)
    if Client.of(resolved).threads == 0:  # a virtual client uses exactly its CPU budget
        resolved["client"]["threads"] = max(1, int(Simulation.of(resolved).client_resources.num_cpus))
    return resolved


def check_inputs(resolved: dict[str, Any], resume_from: Path | None = None) -> None:
    """Load the data, make the partitions and build the model before Ray starts, so a
    missing file or an impossible partition fails in one line (and, on resume, every file
    of the run dir is checked against the others and against this config:
    :mod:`fedconv.simulation.resume`). The ServerApp runs in this process, so this also warms its caches."""
    from fedconv import algorithms
    from fedconv.data.datasets import declared_shape
    from fedconv.learning import task
    from fedconv.runs import checkpoint
    from fedconv.simulation import resources

    ds = task.dataset(resolved)
    declared = declared_shape(resolved["dataset"])
    if ds.input_shape != declared:
        raise ConfigError(f"dataset: files hold {ds.input_shape} images but the config declares {declared}")
    resources.check(resolved, ds.input_shape, ds.num_classes)  # before a model too large for memory is built
    task.partitions(resolved, Simulation.of(resolved).num_clients)
    model = task.initial_model(resolved, ds)
    algorithms.model_problems(resolved, model)
    if resume_from is not None:
        ckpt = checkpoint.load(resume_from / run_dir.CHECKPOINT)
        resume.check_checkpoint(resume_from, resolved, ckpt, model)
        resume.check_summary(resume_from, resolved, ckpt.server_round)
        resume.check_rows(resume_from, ckpt.server_round, Server.of(resolved).rounds)


def _results_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config minus what cannot change a run's numbers: ``resume``, where the run dir
    lives (``output_dir``: a sweep folder that was moved or copied is the same sweep), and
    how virtual nodes are laid out (``simulation.nodes``: a pool and one node per client
    give the same run, and runs saved before the option existed do not have it). No
    compression either way, and a key of :data:`~fedconv.sections.LEGACY_DEFAULTS` at the value
    it had before it existed, are the same as a config saved before they existed."""
    cfg = with_legacy_defaults(cfg)
    out = {**{k: v for k, v in cfg.items() if k not in ("logger", "objective")}, "resume": "", "output_dir": ""}
    out["simulation"] = {k: v for k, v in cfg.get("simulation", {}).items() if k != "nodes"}
    if all(d.get("codec", "none") == "none" for d in (out.get("compression") or {}).values()):
        out.pop("compression", None)
    return out


def _checkpoint_round(out: Path) -> int:
    from fedconv.runs import checkpoint

    return checkpoint.load(out / run_dir.CHECKPOINT).server_round


def prepare(cfg: DictConfig, out: Path, choices: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], str]:
    """The validated config of this job and what to do: "new", "resume" or "skip". Reads
    only: nothing in ``out`` changes here.

    ``resume=<run dir>`` continues that run with its saved config (and the overrides in
    :data:`fedconv.simulation.resume.RESUME_OVERRIDES`; any other is refused). Otherwise a run dir that
    already holds a run of the same config (a sweep re-run) is skipped when it completed and
    continued from its checkpoint when it did not; one with a different config is refused.
    """
    if cfg.resume:
        resolved = resume.resume_config(cfg, out, overrides)
        if not (out / run_dir.CHECKPOINT).exists():
            if run_dir.existing_run(out) == "completed":  # runs saved before checkpoints existed
                return resolved, "skip"
            raise ConfigError(f"resume={out}: no {run_dir.CHECKPOINT} (the run never completed a round)")
        last = _checkpoint_round(out)
        if run_dir.existing_run(out) == "completed" and last == Server.of(resolved).rounds:
            return resolved, "skip"
        return resolved, "resume"
    problems = unknown_keys(plain(cfg, resolve=False), choices)
    try:
        resolved = resolve(cfg, out)
    except ConfigError as exc:
        problems += str(exc).splitlines()
    if problems:
        raise ConfigError("\n".join(problems))
    existing = run_dir.existing_run(out)
    if existing == "none":
        return resolved, "new"
    saved = resume.saved_config(out, key="output_dir")
    if _results_config(saved) != _results_config(resolved):
        raise ConfigError(
            f"output_dir={out}: holds a {'completed' if existing == 'completed' else 'unfinished'} run with a "
            "different config; choose another name=... (or hydra.sweep.dir=..., output_dir=...)"
        )
    if existing == "completed":
        return resolved, "skip"
    if (out / run_dir.CHECKPOINT).exists():
        return resolved, "resume"
    return resolved, "new"  # died before round 1 ended: run() clears its rows once the inputs pass


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """What a job's input can be refused with (imported late: they bring torch)."""
    from fedconv.data.datasets import DatasetError
    from fedconv.data.partitioning import PartitionError
    from fedconv.learning.models import ModelConfigError
    from fedconv.runs.checkpoint import CheckpointError

    return ConfigError, DatasetError, PartitionError, ModelConfigError, CheckpointError, run_dir.RunDirError


@dataclass
class Job:
    """Where one job of this command writes, and its entry in a sweep's index."""

    out: Path
    multirun: bool
    sweep_dir: Path | None
    entry: dict[str, Any]

    def index(self, **fields: Any) -> None:
        if self.sweep_dir is not None:
            run_dir.update_sweep_index(self.sweep_dir, {**self.entry, **fields})


def _hold(cfg: DictConfig, job: Job) -> run_dir.RunLock | None:
    """Take the run dir for this process (None: a ``resume=`` that names no folder, which
    :func:`prepare` refuses). Raises :class:`~fedconv.runs.run_dir.RunDirHeld` naming the holder."""
    if cfg.resume and not job.out.is_dir():
        return None
    try:
        return run_dir.hold(job.out)
    except OSError as exc:
        key = "resume" if cfg.resume else "output_dir"
        raise ConfigError(f"{key}={job.out}: cannot write there ({exc.strerror or exc}); choose a writable folder") from None


def job_dir(cfg: DictConfig, default: str) -> Path:
    """The folder this job writes: ``resume=`` (a run to continue), else ``output_dir=``, else
    Hydra's run dir. Read before anything else, so a value that is no folder name (``resume=nan``
    reaches here as a float) is refused in one line (exit 2) rather than failing in ``Path``."""
    from fedconv.checks import Checks

    c = Checks({"resume": cfg.get("resume"), "output_dir": cfg.get("output_dir")})
    for key in ("resume", "output_dir"):
        c.text(key)
    if c.problems:
        raise ConfigError("\n".join(c.problems))
    return Path(str(cfg.resume or cfg.output_dir or default)).resolve()


def _refused(job: Job, exc: Exception) -> dict[str, Any]:
    """A job whose input was refused: one line; exit 2, or in a sweep on to the next job."""
    ray_session.end_job(keep=job.multirun)  # Ray is fine: the sweep's next job may use it
    if not isinstance(exc, run_dir.RunDirHeld):
        run_dir.discard_if_empty(job.out)
    prefix = "config error" if isinstance(exc, ConfigError) else "error"
    if isinstance(exc, run_dir.RunDirHeld) and job.multirun:
        print(f"skipping {exc}", file=sys.stderr)
        _HELD_JOBS.append(str(job.out))
        sweep_progress.job_outcome("skipped")
        return {"status": "held", "error": str(exc)}  # the holder owns the job's sweep.json entry
    print(f"{prefix}: {exc}", file=sys.stderr)
    if not job.multirun:
        sys.exit(EXIT_BAD_CONFIG)
    # One job's bad input must not end the sweep: say so, record it, go on with the next
    # job; the sweep exits 2 at the end (cli) when Hydra ran its jobs in this process.
    _BAD_INPUT_JOBS.append(str(job.out))
    sweep_progress.job_outcome("failed")
    job.index(status="bad_input", error=f"{prefix}: {exc}")
    return {"status": "bad_input", "error": f"{prefix}: {exc}"}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or continue, or skip when completed) one simulation job; returns its summary.
    The run dir is this process's for the job's life (:func:`fedconv.runs.run_dir.hold`)."""
    global _TASK_STARTED, _JOBS_STARTED
    _TASK_STARTED = True
    # From here on an exception Hydra catches (a sweeper's, after its jobs) reaches cli()
    # as itself, which says it in one line; before, Hydra's own config errors stay Hydra's.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    timeline.begin(from_process_start=_JOBS_STARTED == 0)
    _JOBS_STARTED += 1
    hc = HydraConfig.get()
    try:
        out, not_a_folder = job_dir(cfg, hc.runtime.output_dir), None
    except ConfigError as exc:
        out, not_a_folder = Path(hc.runtime.output_dir).resolve(), exc
    multirun = hc.mode == RunMode.MULTIRUN
    job = Job(out, multirun, Path(hc.sweep.dir).resolve() if multirun else None,
              {"job": hc.job.num if multirun else 0, "overrides": list(hc.overrides.task), "run_dir": str(out)})
    if not_a_folder is not None:
        return _refused(job, not_a_folder)
    if cfg.resume:  # Hydra made a fresh run dir for this command; the run lives elsewhere
        run_dir.discard_if_empty(Path(hc.runtime.output_dir))
    lock = None
    try:
        try:
            lock = _hold(cfg, job)
            resolved, action = prepare(cfg, job.out, dict(hc.runtime.choices), list(hc.overrides.task))
            if action == "skip":
                return _skip(job)
            timeline.mark("config")
            check_inputs(resolved, job.out if action == "resume" else None)
            timeline.mark("inputs")
            if Simulation.of(resolved).ray.address:
                _attach(resolved)
        except _bad_input_errors() as exc:
            return _refused(job, exc)
        if lock is not None:
            lock.claim()
        return _execute(job, resolved, action)
    finally:
        if lock is not None:
            lock.release()


def _attach(resolved: dict[str, Any]) -> None:
    """Attach to the Ray cluster the config names and check that a client fits on its nodes
    (a local Ray was checked against this machine in :func:`check_inputs`)."""
    from fedconv.simulation import resources, runtime

    backend = runtime.backend_config(Simulation.of(resolved), bool(resolved["verbose"]))
    ray_session.start(backend["init_args"], preload=ray_session.preload_workers(backend))
    resources.check_cluster(resolved)


def _skip(job: Job) -> dict[str, Any]:
    sweep_progress.job_outcome("skipped")
    print(f"skipping {job.out}: it holds a completed run of this config", flush=True)
    summary = run_dir.read_summary(job.out / run_dir.SUMMARY)
    job.index(status="completed", final_central_accuracy=summary.get("final_central_accuracy"))
    return summary


def _open_run_dir(job: Job, resolved: dict[str, Any], action: str) -> None:
    """Clear what a run that died before round 1 left (a new run), write the config (on
    resume: where the run lives now, and its rounds), mark the job running."""
    if action == "new":
        for name in (run_dir.ROUNDS, run_dir.CLIENTS, run_dir.UPDATES, run_dir.PAIRS, run_dir.SUMMARY):
            (job.out / name).unlink(missing_ok=True)
    run_dir.write_config(job.out, resolved)
    job.index(status="running")
    print(f"fedconv run -> {job.out}" + (" (resuming from its checkpoint)" if action == "resume" else ""), flush=True)


def _execute(job: Job, resolved: dict[str, Any], action: str) -> dict[str, Any]:
    """Start Ray, write the config, run the rounds; record how the run ended."""
    from fedconv.federation import stopping
    from fedconv.simulation import runtime

    out, resuming = job.out, action == "resume"
    backend = runtime.backend_config(Simulation.of(resolved), bool(resolved["verbose"]))
    # bad input was refused before Ray starts; Ray's processes now start (and its workers
    # import torch) while this process imports Flower's simulation engine
    ray_session.start(backend["init_args"], background=True, preload=ray_session.preload_workers(backend))
    _open_run_dir(job, resolved, action)
    started = time.perf_counter()
    status, error = "failed", ""
    keep_ray = job.multirun and not runtime.in_ray_worker()
    stopping.run_started()
    try:
        runtime.run_simulation(
            to_run_config({**resolved, "resume": str(out) if resuming else ""}),
            virtual_nodes(resolved),
            backend,
            bool(resolved["verbose"]),
            max_actors=max(cohort_sizes(resolved)),
            keep_actors=keep_ray,
        )
        summary_path = out / run_dir.SUMMARY
        if summary_path.exists():
            status = run_dir.read_summary(summary_path).get("status", "failed")
        if stopping.requested() and status != "completed":  # the ServerApp kept its rounds
            status, error = "interrupted", stopping.reason()
        elif not summary_path.exists():
            raise FileNotFoundError(f"the ServerApp wrote no {summary_path}")
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except Exception as exc:  # the run failed; record it and (in a sweep) go on
        error = f"{type(exc).__name__}: {exc}"
        print(f"run failed: {error}", file=sys.stderr)
    finally:
        summary = _ended(job, resolved, status, error, keep_ray, started)
    if stopping.requested():  # end the sweep too; the entry point exits 128 + signal
        raise KeyboardInterrupt(stopping.reason())
    if status != "completed":
        if not job.multirun:
            sys.exit(1)
        _FAILED_JOBS.append(str(out))
    return summary


def _ended(job: Job, resolved: dict[str, Any], status: str, error: str, keep_ray: bool, started: float) -> dict[str, Any]:
    """Record how a job ended (summary.json, sweep.json) and let Ray go or stay."""
    from fedconv.federation import stopping

    sweep_progress.job_outcome(status)
    stopping.run_ended()
    # the next job of a sweep run in this process reuses Ray and the actors of one that completed
    ray_session.end_job(keep=keep_ray and status == "completed")
    if status != "completed":
        _write_failure(job.out, resolved, status, error)
    try:
        summary = run_dir.read_summary(job.out / run_dir.SUMMARY)
    except run_dir.RunDirError:
        summary = {"status": status, "error": error}
    # job_seconds: this command's time for the job (Ray start-up and shutdown included; on
    # resume, this invocation only); summary.json's wall_seconds is the rounds'.
    try:
        job.index(status=summary.get("status"), final_central_accuracy=summary.get("final_central_accuracy"),
                  job_seconds=round(time.perf_counter() - started, 2))
    except OSError as exc:
        print(f"error: could not update {run_dir.SWEEP_INDEX} ({exc.strerror or exc})", file=sys.stderr)
    return summary


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """One job; returns its ``objective`` (what Hydra's Optuna sweeper optimizes)."""
    summary = run(cfg)
    value = summary.get(str(cfg.get("objective") or "final_central_accuracy"))
    return float(value) if value is not None else None


def cli() -> None:
    """Entry point. Exit status: 0 every job completed; 1 a run (or a sweep's job) ran and
    did not complete; 2 bad input (config, data, files, a run dir another process writes);
    128 + the signal number when stopped (130 Ctrl-C, 143 SIGTERM).

    Ctrl-C or SIGTERM (a batch scheduler's stop) ends a run as interrupted: the clients'
    in-flight updates finish, the completed rounds and the checkpoint stay, summary.json
    says ``interrupted``, ``resume=<run dir>`` continues it (:mod:`fedconv.federation.stopping`)."""
    from fedconv.federation import stopping

    stopping.install_handlers()
    try:
        config_errors_exit_2(main, lambda: _TASK_STARTED)
        code = sweep_exit_code()
    except KeyboardInterrupt:
        stopping.quit_now()
    except SystemExit as exc:
        code = exit_status(exc)
        if code == 0 and _JOBS_STARTED:  # a sweep whose every job ran: its own outcome
            code = sweep_exit_code()
    except Exception as exc:  # a sweeper (Optuna) failing after its jobs were refused or failed
        if not (_BAD_INPUT_JOBS or _FAILED_JOBS or _HELD_JOBS):
            raise
        print(f"error: the sweeper stopped after the job failures above ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        code = sweep_exit_code()
    stopping.finish(code)


def exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def sweep_exit_code() -> int:
    """A sweep's exit status: 2 when a job's input was refused (or another process held its
    run dir), 1 when a job ran and did not complete, 0 when every job completed."""
    if _BAD_INPUT_JOBS:
        print(f"{len(_BAD_INPUT_JOBS)} sweep job(s) refused for their config or data (see above): "
              + ", ".join(_BAD_INPUT_JOBS), file=sys.stderr)
    if _HELD_JOBS:
        print(f"{len(_HELD_JOBS)} sweep job(s) skipped: another process writes their run dir: "
              + ", ".join(_HELD_JOBS), file=sys.stderr)
    if _FAILED_JOBS:
        print(f"{len(_FAILED_JOBS)} sweep job(s) did not complete (see their summary.json): "
              + ", ".join(_FAILED_JOBS), file=sys.stderr)
    if _BAD_INPUT_JOBS or _HELD_JOBS:
        return EXIT_BAD_CONFIG
    return 1 if _FAILED_JOBS else 0


if __name__ == "__main__":
    cli()
