"""``python -m fedconv.simulate [overrides] [-m sweeps]``: a Flower simulation on Ray.

Hydra composes and sweeps; this module validates the config, fixes the run directory,
flattens the config into Flower's run config and hands it to :mod:`fedconv.runtime`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedconv import ray_session, run_dir, sweep_progress, timeline, tracking
from fedconv.config import (
    EXIT_BAD_CONFIG,
    ConfigError,
    assign,
    cohort_sizes,
    config_errors_exit_2,
    plain,
    register_resolvers,
    to_run_config,
    unknown_keys,
    validate,
    virtual_nodes,
)

register_resolvers()

_TASK_STARTED = False  # set when a job starts; a Hydra exit before that is a config error
_JOBS_STARTED = 0  # jobs this process has begun (a sweep runs them one after another)
_BAD_INPUT_JOBS: list[str] = []  # sweep jobs of this process refused for their config or data


def _write_failure(out: Path, cfg: dict[str, Any], status: str, error: str) -> None:
    """Make sure a run that did not complete never looks like it did."""
    path = out / run_dir.SUMMARY
    if path.exists():
        summary = json.loads(path.read_text())
    else:  # the ServerApp never wrote one: say what rounds.csv holds, so the two agree
        done = run_dir.complete_rounds(out / run_dir.ROUNDS, int(cfg["server"]["rounds"]))
        summary = {"seed": cfg.get("seed"), "rounds_completed": done}
    if summary.get("status") != "completed" or status == "interrupted":
        summary.update(status=status, error=error)
        run_dir.write_json(path, summary)


def resolve(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The plain, validated config this run will use (output dir and threads filled in)."""
    resolved = plain(cfg)
    validate(resolved)
    resolved["output_dir"] = str(out)
    tracking.absolute_tracking_uri(resolved)
    client = resolved["client"]
    if int(client["threads"]) == 0:  # a virtual client uses exactly its CPU budget
        client["threads"] = max(1, int(resolved["simulation"]["client_resources"]["num_cpus"]))
    return resolved


def check_inputs(resolved: dict[str, Any], resume_from: Path | None = None) -> None:
    """Load the data, make the partitions and build the model before Ray starts, so a
    missing file or an impossible partition fails in one line (and, on resume, a checkpoint
    that does not fit the model). The ServerApp runs in this process, so this also warms
    its caches."""
    from fedconv import checkpoint, task
    from fedconv.datasets import declared_shape

    ds = task.dataset(resolved)
    declared = declared_shape(resolved["dataset"])
    if ds.input_shape != declared:
        raise ConfigError(f"dataset: files hold {ds.input_shape} images but the config declares {declared}")
    task.partitions(resolved, int(resolved["simulation"]["num_clients"]))
    model = task.initial_model(resolved, ds)
    if resume_from is not None:
        path = resume_from / run_dir.CHECKPOINT
        weights = checkpoint.load(path).weights
        try:
            task.load_global(model, weights)
        except (ValueError, RuntimeError) as exc:
            raise checkpoint.CheckpointError(f"{path}: does not fit the run's model ({exc})") from exc


def _saved_config(out: Path) -> dict[str, Any]:
    path = out / run_dir.CONFIG
    if not path.is_file():
        raise ConfigError(f"resume={out}: no {run_dir.CONFIG} there; resume takes the run dir of an earlier run")
    return plain(path)


# Keys added after runs were saved without them, with the value that means "as before".
ADDED_KEYS = {"client.precision": "fp32", "client.compile": False, "server.eval_precision": "fp32",
              "server.fed_eval": "separate"}


def _results_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config minus what cannot change a run's numbers: ``resume``, where the run dir
    lives (``output_dir``: a sweep folder that was moved or copied is the same sweep), and
    how virtual nodes are laid out (``simulation.nodes``: a pool and one node per client
    give the same run, and runs saved before the option existed do not have it). No
    compression either way, and any of :data:`ADDED_KEYS` at its default, are the same as a
    config saved before they existed."""
    out = {**{k: v for k, v in cfg.items() if k not in ("logger", "objective")}, "resume": "", "output_dir": ""}
    out["simulation"] = {k: v for k, v in cfg.get("simulation", {}).items() if k != "nodes"}
    if all(d.get("codec", "none") == "none" for d in (out.get("compression") or {}).values()):
        out.pop("compression", None)
    for key, default in ADDED_KEYS.items():  # a key at its default is the same as a key not there yet
        group, leaf = key.split(".")
        if group in out and out[group].get(leaf, default) == default:
            out[group] = {k: v for k, v in out[group].items() if k != leaf}
    return out


# What ``resume=`` may change: where and how the rest of the run executes, and how many
# rounds it has (extending a run); never a value that the completed rounds depended on.
RESUME_OVERRIDES = (
    "server.rounds", "server.round_timeout", "server.connect_timeout", "verbose", "simulation.nodes",
    "simulation.ray.address", "simulation.ray.num_cpus", "simulation.ray.include_dashboard", "logger.tensorboard",
    "logger.mlflow", "logger.mlflow_tracking_uri", "logger.wandb", "objective",
)


def _override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def _resume_config(cfg: DictConfig, out: Path, overrides: list[str]) -> dict[str, Any]:
    """The saved config of the run in ``out``, rooted at ``out`` (a run dir that was moved or
    copied continues where it is now, never where it was made), with the allowed overrides."""
    from fedconv.output_check import unwritable

    if not out.is_dir():
        raise ConfigError(f"resume={out}: no such run directory")
    if reason := unwritable(out):
        raise ConfigError(f"resume={out}: cannot write there ({reason}); copy the run dir somewhere writable")
    resolved = _saved_config(out)
    resolved.update(output_dir=str(out), resume="")
    keys = [k for k in map(_override_key, overrides) if k != "resume" and not k.startswith("hydra.")]
    refused = [k for k in keys if k not in RESUME_OVERRIDES]
    if refused:
        raise ConfigError(
            f"resume={out}: {', '.join(refused)} cannot change when a run resumes (its rounds so far used the "
            f"saved value); allowed: {', '.join(RESUME_OVERRIDES)}; start a new run for another config"
        )
    saved_rounds = int(resolved["server"]["rounds"])
    for key in keys:
        assign(resolved, key, OmegaConf.select(cfg, key))
    validate(resolved)
    rounds = resolved["server"]["rounds"]
    if rounds != saved_rounds and resolved["server"]["lr_schedule"] == "cosine":
        raise ConfigError(
            f"server.rounds={rounds}: cannot change on resume with server.lr_schedule=cosine (the schedule spans "
            f"all {saved_rounds} rounds, so the rounds already run would have had other learning rates)"
        )
    return resolved


def resume_checkpoint(out: Path, rounds: int) -> int:
    """Check, reading only, that ``out`` can continue: its checkpoint loads and its rounds.csv
    holds every round up to it. Returns the checkpoint's round."""
    from fedconv import checkpoint

    ckpt = checkpoint.load(out / run_dir.CHECKPOINT)
    done = run_dir.complete_rounds(out / run_dir.ROUNDS, ckpt.server_round)
    if done < ckpt.server_round:
        raise checkpoint.CheckpointError(
            f"{out / run_dir.ROUNDS} holds {done} complete rounds but {run_dir.CHECKPOINT} is of round {ckpt.server_round}"
        )
    if rounds < ckpt.server_round:
        raise ConfigError(f"server.rounds={rounds}: must be >= the {ckpt.server_round} rounds this run completed")
    return ckpt.server_round


def prepare(cfg: DictConfig, out: Path, choices: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], str]:
    """The validated config of this job and what to do: "new", "resume" or "skip".

    ``resume=<run dir>`` continues that run with its saved config (and the overrides in
    :data:`RESUME_OVERRIDES`; any other is refused). Otherwise a run dir that already holds a
    run of the same config (a sweep re-run) is skipped when it completed and continued from
    its checkpoint when it did not; one with a different config is refused.
    """
    if cfg.resume:
        resolved = _resume_config(cfg, out, overrides)
        if not (out / run_dir.CHECKPOINT).exists():
            if run_dir.existing_run(out) == "completed":  # runs saved before checkpoints existed
                return resolved, "skip"
            raise ConfigError(f"resume={out}: no {run_dir.CHECKPOINT} (the run never completed a round)")
        last = resume_checkpoint(out, int(resolved["server"]["rounds"]))
        if run_dir.existing_run(out) == "completed" and last == int(resolved["server"]["rounds"]):
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
    saved = _saved_config(out)
    if _results_config(saved) != _results_config(resolved):
        raise ConfigError(
            f"output_dir={out}: holds a {'completed' if existing == 'completed' else 'unfinished'} run with a "
            "different config; choose another name=... (or hydra.sweep.dir=..., output_dir=...)"
        )
    if existing == "completed":
        return resolved, "skip"
    if (out / run_dir.CHECKPOINT).exists():
        resume_checkpoint(out, int(resolved["server"]["rounds"]))
        return resolved, "resume"
    for name in (run_dir.ROUNDS, run_dir.CLIENTS, run_dir.SUMMARY):  # died before round 1 ended
        (out / name).unlink(missing_ok=True)
    return resolved, "new"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or continue, or skip when completed) one simulation job; returns its summary."""
    global _TASK_STARTED, _JOBS_STARTED
    _TASK_STARTED = True
    timeline.begin(from_process_start=_JOBS_STARTED == 0)
    _JOBS_STARTED += 1
    from fedconv import runtime, stopping
    from fedconv.checkpoint import CheckpointError
    from fedconv.datasets import DatasetError
    from fedconv.models import ModelConfigError
    from fedconv.partitioning import PartitionError

    hc = HydraConfig.get()
    out = Path(cfg.resume or cfg.output_dir or hc.runtime.output_dir).resolve()
    multirun = hc.mode == RunMode.MULTIRUN
    job = {"job": hc.job.num if multirun else 0, "overrides": list(hc.overrides.task), "run_dir": str(out)}
    sweep_dir = Path(hc.sweep.dir).resolve() if multirun else None
    if cfg.resume:  # Hydra made a fresh run dir for this command; the run lives elsewhere
        run_dir.discard_if_empty(Path(hc.runtime.output_dir))
    try:
        resolved, action = prepare(cfg, out, dict(hc.runtime.choices), list(hc.overrides.task))
        if action != "skip":
            timeline.mark("config")
            check_inputs(resolved, out if action == "resume" else None)
            timeline.mark("inputs")
            backend = runtime.backend_config(resolved["simulation"], bool(resolved["verbose"]))
            # bad input is refused before Ray starts; Ray's processes then start (and its workers
            # import torch) while this process imports Flower's simulation engine
            ray_session.start(backend["init_args"], background=True, preload=ray_session.preload_workers(backend))
    except (ConfigError, DatasetError, PartitionError, ModelConfigError, CheckpointError) as exc:
        ray_session.end_job(keep=multirun)  # Ray is fine: the sweep's next job may use it
        run_dir.discard_if_empty(out)
        prefix = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"{prefix}: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(EXIT_BAD_CONFIG)
        # One job's bad input must not end the sweep: say so, record it, go on with the next
        # job; the sweep exits 2 at the end (cli) when Hydra ran its jobs in this process.
        _BAD_INPUT_JOBS.append(str(out))
        sweep_progress.job_outcome("failed")
        if sweep_dir is not None:
            run_dir.update_sweep_index(sweep_dir, {**job, "status": "bad_input", "error": f"{prefix}: {exc}"})
        return {"status": "bad_input", "error": f"{prefix}: {exc}"}
    if action == "skip":
        sweep_progress.job_outcome("skipped")
        print(f"skipping {out}: it holds a completed run of this config", flush=True)
        summary = json.loads((out / run_dir.SUMMARY).read_text())
        if sweep_dir is not None:
            run_dir.update_sweep_index(sweep_dir, {**job, "status": "completed",
                                                   "final_central_accuracy": summary.get("final_central_accuracy")})
        return summary
    resuming = action == "resume"
    out.mkdir(parents=True, exist_ok=True)
    run_dir.write_config(out, resolved)  # on resume: where the run lives now, and its rounds
    if sweep_dir is not None:
        run_dir.update_sweep_index(sweep_dir, {**job, "status": "running"})
    print(f"fedconv run -> {out}" + (" (resuming from its checkpoint)" if resuming else ""), flush=True)
    started = time.perf_counter()
    status, error = "failed", ""
    keep_ray = multirun and not runtime.in_ray_worker()
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
            status = json.loads(summary_path.read_text())["status"]
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
        sweep_progress.job_outcome(status)
        stopping.run_ended()
        # the next job of a sweep run in this process reuses Ray and the actors of one that completed
        ray_session.end_job(keep=keep_ray and status == "completed")
        if status != "completed":
            _write_failure(out, resolved, status, error)
        summary = json.loads((out / run_dir.SUMMARY).read_text())
        if sweep_dir is not None:
            run_dir.update_sweep_index(
                sweep_dir,
                {
                    **job,
                    "status": summary.get("status"),
                    "final_central_accuracy": summary.get("final_central_accuracy"),
                    # this command's time for the job (Ray start-up and shutdown included; on
                    # resume, this invocation only); summary.json's wall_seconds is the rounds'.
                    "job_seconds": round(time.perf_counter() - started, 2),
                },
            )
    if stopping.requested():  # end the sweep too; the entry point exits 128 + signal
        raise KeyboardInterrupt(stopping.reason())
    if status != "completed" and not multirun:
        sys.exit(1)
    return summary


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """One job; returns its ``objective`` (what Hydra's Optuna sweeper optimizes)."""
    summary = run(cfg)
    value = summary.get(str(cfg.get("objective") or "final_central_accuracy"))
    return float(value) if value is not None else None


def cli() -> None:
    """Entry point. Ctrl-C or SIGTERM (a batch scheduler's stop) ends a run as interrupted:
    the clients' in-flight updates finish, the completed rounds and the checkpoint stay,
    summary.json says ``interrupted``, ``resume=<run dir>`` continues it, and the exit status
    is 128 + the signal number (:mod:`fedconv.stopping`)."""
    from fedconv import stopping

    stopping.install_handlers()
    try:
        config_errors_exit_2(main, lambda: _TASK_STARTED)
    except KeyboardInterrupt:
        stopping.quit_now()
    if _BAD_INPUT_JOBS:
        print(f"{len(_BAD_INPUT_JOBS)} sweep job(s) refused for their config or data (see above): "
              + ", ".join(_BAD_INPUT_JOBS), file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)


if __name__ == "__main__":
    cli()
