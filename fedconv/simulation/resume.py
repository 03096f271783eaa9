"""What ``resume=`` (and a sweep re-run) reads from a run dir, and the checks that make it
safe to continue: every file parses, and the files agree with one another and with the
config that continues them (checkpoint <-> config <-> summary <-> rows: strategy and its
hyper-parameters, the algorithm's state layout, the model's shapes, the seed, the rounds).

Everything here only reads; :mod:`fedconv.simulate` calls it before Ray starts and before
anything in the run dir is written, so a run dir that cannot continue is refused in one
line naming the file, untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedconv.config import ConfigError, assign, plain
from fedconv.runs import run_dir
from fedconv.runs.checkpoint import Checkpoint, CheckpointError
from fedconv.sections import Server, with_legacy_defaults
from fedconv.validation import validate

# What ``resume=`` may change: where and how the rest of the run executes, and how many
# rounds it has (extending a run); never a value that the completed rounds depended on.
RESUME_OVERRIDES = (
    "server.rounds", "server.round_timeout", "server.connect_timeout", "verbose", "simulation.nodes",
    "simulation.ray.address", "simulation.ray.num_cpus", "simulation.ray.include_dashboard", "logger.tensorboard",
    "logger.mlflow", "logger.mlflow_tracking_uri", "logger.wandb", "objective",
)
REQUIRED_GROUPS = ("dataset", "model", "partition", "strategy", "client", "server", "simulation")


def saved_config(out: Path, key: str = "resume") -> dict[str, Any]:
    """The config.yaml of the run in ``out``; one line naming the file when it is missing,
    not YAML, or not a run's config. ``key`` is the option the user gave (``resume`` or
    ``output_dir``), so the message names what they typed."""
    path = out / run_dir.CONFIG
    if not path.is_file():
        raise ConfigError(f"{key}={out}: no {run_dir.CONFIG} there; resume takes the run dir of an earlier run")
    try:
        cfg = plain(path)
    except Exception as exc:  # OmegaConf/YAML raise many types; all mean "not a config"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise run_dir.RunDirError(f"{path}: not a fedconv config ({first})") from None
    missing = [g for g in REQUIRED_GROUPS if not isinstance(cfg.get(g), dict)]
    if missing:
        raise run_dir.RunDirError(f"{path}: not a fedconv config (no {', '.join(missing)} group)")
    return with_legacy_defaults(cfg)  # a run saved before a key existed ran with its legacy value


def _override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def resume_config(cfg: DictConfig, out: Path, overrides: list[str]) -> dict[str, Any]:
    """The saved config of the run in ``out``, rooted at ``out`` (a run dir that was moved or
    copied continues where it is now, never where it was made), with the allowed overrides."""
    from fedconv.simulation.output_check import unwritable

    if not out.is_dir():
        raise ConfigError(f"resume={out}: no such run directory")
    if reason := unwritable(out):
        raise ConfigError(f"resume={out}: cannot write there ({reason}); copy the run dir somewhere writable")
    resolved = saved_config(out)
    resolved.update(output_dir=str(out), resume="")
    keys = [k for k in map(_override_key, overrides) if k != "resume" and not k.startswith("hydra.")]
    refused = [k for k in keys if k not in RESUME_OVERRIDES]
    if refused:
        raise ConfigError(
            f"resume={out}: {', '.join(refused)} cannot change when a run resumes (its rounds so far used the "
            f"saved value); allowed: {', '.join(RESUME_OVERRIDES)}; start a new run for another config"
        )
    saved_rounds = resolved["server"].get("rounds")
    for key in keys:
        assign(resolved, key, OmegaConf.select(cfg, key))
    try:
        validate(resolved)
    except ConfigError as exc:
        raise ConfigError(f"{out / run_dir.CONFIG}: {'; '.join(str(exc).splitlines())}") from None
    server = Server.of(resolved)
    rounds = server.rounds
    if rounds != saved_rounds and server.lr_schedule == "cosine":
        raise ConfigError(
            f"server.rounds={rounds}: cannot change on resume with server.lr_schedule=cosine (the schedule spans "
            f"all {saved_rounds} rounds, so the rounds already run would have had other learning rates)"
        )
    return resolved


def _disagree(path: Path, what: str, saved: Any, config: Any, key: str) -> CheckpointError:
    return CheckpointError(f"{path}: written by a run with {what} {saved!r}, but {key} says {config!r}; "
                           "this checkpoint is from another run")


def check_checkpoint(out: Path, cfg: Mapping[str, Any], ckpt: Checkpoint, model: Any) -> None:
    """The checkpoint against the config that continues it: strategy and its keys, seed,
    the model's weights, and the algorithm's state layout and shapes."""
    from fedconv.learning import task

    path = out / run_dir.CHECKPOINT
    try:
        _check_identity(path, cfg, ckpt.state)
        try:
            task.load_global(model, ckpt.weights)
        except (ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: does not fit the run's model ({exc})") from None
        _check_layout(path, cfg, ckpt, model)
    except CheckpointError:
        raise
    except (TypeError, AttributeError, ValueError, KeyError) as exc:  # state JSON of the wrong shape
        raise CheckpointError(f"{path}: its bookkeeping is not a fedconv checkpoint's ({type(exc).__name__}: {exc})") from None


def _check_identity(path: Path, cfg: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    saved_strategy, strategy = dict(state.get("strategy") or {}), dict(cfg["strategy"])
    if saved_strategy.get("name") != strategy["name"]:
        raise _disagree(path, "strategy", saved_strategy.get("name"), strategy["name"], f"{run_dir.CONFIG} strategy.name")
    for key in sorted(set(saved_strategy) & set(strategy)):
        if saved_strategy[key] != strategy[key]:
            raise _disagree(path, f"strategy.{key}", saved_strategy[key], strategy[key], f"{run_dir.CONFIG} strategy.{key}")
    if "seed" in state and int(state["seed"]) != int(cfg["seed"]):
        raise _disagree(path, "seed", state["seed"], cfg["seed"], f"{run_dir.CONFIG} seed")


def _check_layout(path: Path, cfg: Mapping[str, Any], ckpt: Checkpoint, model: Any) -> None:
    """The server state the checkpoint holds is exactly what this algorithm keeps, shaped like the model."""
    from fedconv import algorithms
    from fedconv.federation import client_state
    from fedconv.learning.models import transmitted_state
    from fedconv.wire import compression

    name = cfg["strategy"]["name"]
    algorithm = algorithms.get(name)
    layout = dict(ckpt.state.get("algorithm") or {})
    has_rounds = "client_rounds" in layout
    layout.pop("client_rounds", None)
    stateful = client_state.partitions_keep_state(algorithm, compression.Link.from_config(cfg))
    if set(layout) != set(algorithm.state_attributes) or has_rounds != stateful:
        saved = sorted(layout) + (["client_rounds"] if has_rounds else [])
        kept = sorted(algorithm.state_attributes) + (["client_rounds"] if stateful else [])
        raise CheckpointError(f"{path}: holds server state {saved} but {name} with this config's "
                              f"compression keeps {kept}; this checkpoint is from another algorithm's run")
    shapes = {k: tuple(v.shape) for k, v in transmitted_state(model).items()}
    for array_name, array in ckpt.algorithm_state.items():
        attr, _, key = array_name.partition("/")
        spec = layout.get(attr, {})
        if spec.get("kind") in (None, "none") or key not in spec.get("keys", []):
            raise CheckpointError(f"{path}: server state array {array_name} is not in the saved layout")
        if key in shapes and tuple(array.shape) != shapes[key]:
            raise CheckpointError(f"{path}: server state {array_name} has shape {tuple(array.shape)}, the model's "
                                  f"{key} has {shapes[key]}")
    for attr, spec in layout.items():
        missing = [k for k in spec.get("keys", []) if f"{attr}/{k}" not in ckpt.algorithm_state]
        if spec.get("kind") not in ("none", None) and missing:
            raise CheckpointError(f"{path}: server state {attr} lacks its arrays {missing[:3]}")


def check_summary(out: Path, cfg: Mapping[str, Any], ckpt_round: int) -> None:
    """summary.json (when there is one) against the config and the checkpoint."""
    path = out / run_dir.SUMMARY
    if not path.exists():
        return
    summary = run_dir.read_summary(path)
    if summary.get("status") not in (*run_dir.STATUSES, None):
        raise run_dir.RunDirError(f"{path}: status {summary.get('status')!r} is not one of {', '.join(run_dir.STATUSES)}")
    if summary.get("seed") is not None and summary["seed"] != cfg["seed"]:
        raise run_dir.RunDirError(f"{path}: says seed {summary['seed']!r}, {run_dir.CONFIG} says {cfg['seed']!r}; "
                                  "the files are from different runs")
    done = summary.get("rounds_completed")
    if done is not None and (not isinstance(done, int) or done < 0 or done > ckpt_round):
        raise run_dir.RunDirError(f"{path}: says {done!r} rounds completed but {run_dir.CHECKPOINT} is of round "
                                  f"{ckpt_round}; the files are from different runs")


def check_rows(out: Path, ckpt_round: int, rounds: int) -> None:
    """rounds.csv holds every round up to the checkpoint; the run can reach ``rounds``."""
    done = run_dir.complete_rounds(out / run_dir.ROUNDS, ckpt_round)
    if done < ckpt_round:
        raise CheckpointError(
            f"{out / run_dir.ROUNDS} holds {done} complete rounds but {run_dir.CHECKPOINT} is of round {ckpt_round}"
        )
    if rounds < ckpt_round:
        raise ConfigError(f"server.rounds={rounds}: must be >= the {ckpt_round} rounds this run completed")
