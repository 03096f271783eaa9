"""Hydra composition, validation, and the flat run config the Flower apps read.

Hydra lives here and in the entry points only. The apps see a flat ``key.sub -> scalar``
mapping (Flower's ``context.run_config``), made by :func:`to_run_config` and turned back
into nested dicts by :func:`from_run_config`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedconv.checks import Checks

CONF_DIR = Path(os.environ.get("FEDCONV_CONF", Path(__file__).resolve().parent.parent / "conf"))

Scalar = bool | int | float | str
EXIT_BAD_CONFIG = 2  # every config error, ours or Hydra's


def config_errors_exit_2(hydra_main: Callable[[], Any], task_started: Callable[[], bool]) -> None:
    """Run a ``@hydra.main`` entry point so that Hydra's own config errors (unknown key or
    option, bad override syntax), which it reports with exit 1 before the task starts,
    exit 2 like fedconv's."""
    import sys

    try:
        hydra_main()
    except SystemExit as exc:
        if exc.code == 1 and not task_started():
            sys.exit(EXIT_BAD_CONFIG)
        raise


def job_dirname(override_dirname: str) -> str:
    """A sweep job's folder: its overrides (Hydra's ``override_dirname``), or a hash of them
    when that is too long for a file name (sweep.json lists each job's overrides), so the
    same command always finds the same folders."""
    import hashlib

    if not override_dirname:
        return "defaults"
    if len(override_dirname) <= 100:
        return override_dirname
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
    return f"job-{digest}"


def register_resolvers() -> None:
    """``${fedconv_job_dir:...}`` for ``hydra.sweep.subdir`` (must exist before Hydra composes)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("fedconv_job_dir"):
        OmegaConf.register_new_resolver("fedconv_job_dir", job_dirname)


class ConfigError(ValueError):
    """One or more config values are invalid; each line names the key and what is allowed."""


def plain(cfg: Any, resolve: bool = True) -> dict[str, Any]:
    """An OmegaConf config, or a YAML file of one, as plain nested dicts."""
    from omegaconf import OmegaConf

    if isinstance(cfg, Path):
        cfg = OmegaConf.load(cfg)
    out = OmegaConf.to_container(cfg, resolve=resolve)
    if not isinstance(out, dict):
        raise ConfigError(f"expected a mapping of config keys, got {type(out).__name__}")
    return {str(k): v for k, v in out.items()}


def compose(overrides: list[str] | None = None, config_name: str = "config") -> dict[str, Any]:
    """Compose ``conf/`` with command-line style overrides into a plain resolved dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
        return plain(cfg)
    except Exception as exc:  # Hydra/OmegaConf raise many types; all mean "bad config"
        raise ConfigError(str(exc).strip().splitlines()[0]) from exc
    finally:
        GlobalHydra.instance().clear()


def lookup(cfg: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key (``server.rounds``), or None where any part is missing."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def assign(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set the value at a dotted key, making the groups on the way."""
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested groups -> one ``dotted.key -> value`` mapping (Hydra's own ``hydra`` group left out)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if key == "hydra" and not prefix:
            continue
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_run_config(cfg: Mapping[str, Any]) -> dict[str, Scalar]:
    """Flatten a nested config into Flower's run config (scalars only; ``None`` -> "")."""
    flat = flatten(cfg)
    lists = [key for key, value in flat.items() if isinstance(value, (list, tuple))]
    if lists:
        raise ConfigError(f"{lists[0]}: lists cannot travel in a Flower run config; use scalars")
    return {key: "" if value is None else value for key, value in flat.items()}


def from_run_config(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_run_config`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        assign(nested, key, value)
    return nested


@functools.lru_cache(maxsize=64)
def _reference(overrides: tuple[str, ...], config_name: str) -> dict[str, Any]:
    """The composition of these group choices (a sweep's jobs share a few): read-only."""
    return compose(list(overrides), config_name)


def unknown_keys(cfg: Mapping[str, Any], choices: Mapping[str, Any], config_name: str = "config") -> list[str]:
    """Keys that no config file declares (``+client.foo=1`` slips past Hydra's struct check).

    The reference is the same composition without the user's value overrides: the chosen
    group options only (``choices`` is Hydra's ``runtime.choices``).
    """
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    overrides = [
        f"{group}={option}" if group in cfg else f"+{group}={option}"
        for group, option in choices.items()
        if group in groups and option is not None
    ]
    reference = _reference(tuple(overrides), config_name)
    problems: list[str] = []

    def walk(node: Mapping[str, Any], ref: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key not in ref:
                known = ", ".join(sorted(str(k) for k in ref))
                problems.append(f"{path}={value!r}: unknown key; known keys{' in ' + prefix[:-1] if prefix else ''}: {known}")
            elif isinstance(ref[key], Mapping) and not isinstance(value, Mapping):
                problems.append(f"{path}={value!r}: must be a group of keys ({', '.join(sorted(ref[key]))})")
            elif isinstance(value, Mapping) and isinstance(ref[key], Mapping):
                walk(value, ref[key], f"{path}.")

    walk(cfg, reference, "")
    return problems


def clients_per_round(num_clients: int, fraction: float, minimum: int) -> int:
    """Cohort size: Flower's rule, ``max(int(n * fraction), minimum)``."""
    return max(int(num_clients * fraction), minimum)


NODE_MODES = ("pool", "per_client")


FED_EVAL_MODES = ("separate", "with_train")
# summary.json numbers a sweep job may return to Hydra's sweeper (``objective``)
OBJECTIVES = ("final_central_accuracy", "best_central_accuracy", "final_central_loss", "bytes_total",
              "wall_seconds")


def with_train_eval(cfg: Mapping[str, Any]) -> bool:
    """Do training clients evaluate the received model in their train reply (no evaluate phase)?"""
    return cfg["server"].get("fed_eval", "separate") == "with_train"


def cohort_sizes(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(train, evaluate) clients per round; 0 evaluation clients when federated evaluation is
    off or done by the training clients (``server.fed_eval=with_train``)."""
    n, server = int(cfg["simulation"]["num_clients"]), cfg["server"]
    train = clients_per_round(n, float(server["fraction_train"]), int(server["min_train_clients"]))
    if with_train_eval(cfg):
        return train, 0
    fraction_eval = float(server["fraction_evaluate"])
    evaluate = clients_per_round(n, fraction_eval, int(server["min_evaluate_clients"])) if fraction_eval > 0 else 0
    return train, evaluate


def virtual_nodes(cfg: Mapping[str, Any]) -> int:
    """How many virtual SuperNodes a simulation registers: one per client (``per_client``) or,
    for a ``pool``, just enough to serve the largest cohort (Flower's simulation engine scans
    every registered node for messages ten times a second, so 10,000 idle nodes cost time)."""
    n = int(cfg["simulation"]["num_clients"])
    if cfg["simulation"].get("nodes", "per_client") == "per_client":
        return n
    return min(n, max(cohort_sizes(cfg)))


# Keys that say where or how a run executes, never what it computes.
EXECUTION_KEYS = frozenset({
    "name", "output_dir", "resume", "verbose", "dataset.data_dir", "dataset.cache_dir", "dataset.download",
    "simulation.nodes", "simulation.client_state_dir", "simulation.ray.address", "simulation.ray.num_cpus",
    "simulation.ray.include_dashboard", "server.connect_timeout", "logger.tensorboard",
})


def inert_keys(cfg: Mapping[str, Any]) -> set[str]:
    """Dotted keys whose value cannot change this run's numbers: the execution keys, and the
    options of a mechanism the config leaves off (straggler handling without stragglers, a
    step schedule's gamma under a cosine one, ...). A report warns only about the others."""
    def get(key: str) -> Any:
        return lookup(cfg, key)

    inert = set(EXECUTION_KEYS)
    if not get("faults.straggler_fraction"):
        inert.add("strategy.stragglers")
    if not str(get("faults.corrupt_partitions") or "").strip():
        inert |= {"faults.corrupt_mode", "faults.scale_factor"}
    elif get("faults.corrupt_mode") != "scale":
        inert.add("faults.scale_factor")
    if not str(get("faults.slow_partitions") or "").strip():
        inert.add("faults.slow_seconds")
    if get("server.fed_eval") == "with_train":
        inert |= {"server.fraction_evaluate", "server.min_evaluate_clients"}
    if get("server.lr_schedule") != "step":
        inert |= {"server.lr_step_size", "server.lr_gamma"}
    if get("server.lr_schedule") != "cosine":
        inert.add("server.lr_min")
    if get("client.optimizer") != "sgd":
        inert.add("client.momentum")
    if get("model.name") != "twoconv_se":
        inert.add("model.se_reduction")
    from fedconv.compression import inert_keys as codec_inert_keys

    return inert | codec_inert_keys(cfg)


def config_problems(c: Checks) -> None:
    """What config.py owns: the run's identity, the federation (``server``, ``simulation``)
    and the checks across groups; the other groups are checked by their own modules."""
    c.in_range("seed", 0, 2**32 - 1, integer=True)
    c.boolean("verbose")
    for key in ("name", "output_dir", "resume", "simulation.client_state_dir"):
        if c.has(key):
            c.text(key)
    if c.has("simulation.ray.address"):
        c.text("simulation.ray.address")
    if c.has("simulation.ray.num_cpus"):
        c.in_range("simulation.ray.num_cpus", 0, integer=True)
    if c.has("objective"):
        c.one_of("objective", OBJECTIVES)
    c.in_range("server.rounds", 1, integer=True)
    c.in_range("server.fraction_train", 0, 1, lo_open=True)
    c.in_range("server.fraction_evaluate", 0, 1)
    if c.has("server.fed_eval"):
        c.one_of("server.fed_eval", FED_EVAL_MODES)
    c.in_range("server.min_train_clients", 1, integer=True)
    c.in_range("server.min_evaluate_clients", 0, integer=True)
    c.in_range("server.eval_every", 1, integer=True)
    c.in_range("server.eval_batch_size", 1, integer=True)
    c.in_range("server.round_timeout", 0, lo_open=True)
    if c.has("server.connect_timeout"):
        c.in_range("server.connect_timeout", 0, lo_open=True)
    if c.has("server.min_train_replies"):
        c.in_range("server.min_train_replies", 1, integer=True)
    c.in_range("simulation.num_clients", 1, integer=True)
    if c.has("simulation.nodes"):
        c.one_of("simulation.nodes", NODE_MODES)
    c.in_range("simulation.client_resources.num_cpus", 0, lo_open=True)
    c.in_range("simulation.client_resources.num_gpus", 0)
    c.boolean("simulation.ray.include_dashboard")


def _cohort_problems(c: Checks) -> None:
    """Cohorts against the federation's size (only once every value is valid on its own)."""
    n, fraction_eval = c.get("simulation.num_clients"), c.get("server.fraction_evaluate")
    train_k = clients_per_round(n, c.get("server.fraction_train"), c.get("server.min_train_clients"))
    if train_k > n:
        c.fail("server.min_train_clients", f"{train_k} clients per round but simulation.num_clients={n}; must be <= {n}")
    replies = c.get("server.min_train_replies")
    if isinstance(replies, int) and replies > min(train_k, n):
        c.fail("server.min_train_replies", f"must be <= the {min(train_k, n)} clients sampled per round")
    eval_k = clients_per_round(n, fraction_eval, c.get("server.min_evaluate_clients"))
    if fraction_eval > 0 and eval_k > n:
        c.fail("server.min_evaluate_clients", f"{eval_k} clients per round but simulation.num_clients={n}; must be <= {n}")
    if c.get("server.fed_eval") == "with_train" and c.get("partition.test_fraction") == 0:
        c.problems.append("partition.test_fraction=0: must be in (0, 1) with server.fed_eval=with_train "
                          "(training clients evaluate on their held-out split); or set server.fed_eval=separate")
    elif fraction_eval > 0 and c.get("partition.test_fraction") == 0:
        c.problems.append(
            "partition.test_fraction=0: must be in (0, 1) while server.fraction_evaluate > 0 "
            "(clients evaluate on their held-out split); or set server.fraction_evaluate=0"
        )


def checked(cfg: Mapping[str, Any]) -> Checks:
    """Every group checked by the module that owns it; the :class:`Checks` that did it
    (its ``seen`` keys say which keys a check read)."""
    import math

    from fedconv import algorithms, compression, datasets, faults, models, partitioning, tracking, training

    c = Checks(cfg)
    for key, value in flatten(cfg).items():  # NaN and infinities are never a setting, whatever the key
        if isinstance(value, float) and not math.isfinite(value):
            c.problems.append(f"{key}={value!r}: must be a finite number")
    if c.problems:
        return c
    for check in (datasets.config_problems, models.config_problems, partitioning.config_problems,
                  algorithms.config_problems, training.config_problems, faults.config_problems,
                  compression.config_problems, tracking.config_problems, config_problems):
        check(c)
    if not c.problems:
        _cohort_problems(c)
    return c


def problems(cfg: Mapping[str, Any]) -> list[str]:
    """Every invalid value, one line each."""
    return checked(cfg).problems


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every invalid value, one per line."""
    found = problems(cfg)
    if found:
        raise ConfigError("\n".join(found))
