"""Hydra composition, validation, and the flat run config the Flower apps read.

Hydra lives here and in the entry points only. The apps see a flat ``key.sub -> scalar``
mapping (Flower's ``context.run_config``), made by :func:`to_run_config` and turned back
into nested dicts by :func:`from_run_config`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

CONF_DIR = Path(os.environ.get("FEDCONV_CONF", Path(__file__).resolve().parent.parent / "conf"))

DATASETS = ("fashion_mnist", "mnist", "cifar10", "digits")
PARTITIONS = ("iid", "dirichlet", "pathological", "shards", "quantity")
STRATEGIES = ("fedavg", "fedprox")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "step", "cosine")
CLASS_ASSIGNMENTS = ("random", "deterministic", "first-deterministic")
SIZE_DISTRIBUTIONS = ("power_law", "dirichlet")
STRAGGLER_POLICIES = ("drop", "aggregate")
CORRUPT_MODES = ("nan", "inf", "shape", "dtype", "names", "num_examples")

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


def to_run_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Flatten a nested config into Flower's run config (scalars only; ``None`` -> "")."""
    flat: dict[str, Scalar] = {}
    for key, value in cfg.items():
        if key == "hydra":
            continue
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(to_run_config(value, f"{full}."))
        elif isinstance(value, (list, tuple)):
            raise ConfigError(f"{full}: lists cannot travel in a Flower run config; use scalars")
        else:
            flat[full] = "" if value is None else value
    return flat


def from_run_config(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_run_config`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


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
    reference = compose(overrides, config_name)
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


def cohort_sizes(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(train, evaluate) clients per round; 0 evaluation clients when federated evaluation is off."""
    n, server = int(cfg["simulation"]["num_clients"]), cfg["server"]
    train = clients_per_round(n, float(server["fraction_train"]), int(server["min_train_clients"]))
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
    "simulation.nodes", "simulation.ray.address", "simulation.ray.num_cpus", "simulation.ray.include_dashboard",
    "server.connect_timeout",
})


def inert_keys(cfg: Mapping[str, Any]) -> set[str]:
    """Dotted keys whose value cannot change this run's numbers: the execution keys, and the
    options of a mechanism the config leaves off (straggler handling without stragglers, a
    step schedule's gamma under a cosine one, ...). A report warns only about the others."""
    def get(path: str) -> Any:
        node: Any = cfg
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    inert = set(EXECUTION_KEYS)
    if not get("faults.straggler_fraction"):
        inert.add("strategy.stragglers")
    if not str(get("faults.corrupt_partitions") or "").strip():
        inert.add("faults.corrupt_mode")
    if not str(get("faults.slow_partitions") or "").strip():
        inert.add("faults.slow_seconds")
    if get("server.lr_schedule") != "step":
        inert |= {"server.lr_step_size", "server.lr_gamma"}
    if get("server.lr_schedule") != "cosine":
        inert.add("server.lr_min")
    if get("client.optimizer") != "sgd":
        inert.add("client.momentum")
    if get("model.name") != "twoconv_se":
        inert.add("model.se_reduction")
    return inert


def _problems(cfg: Mapping[str, Any]) -> list[str]:
    from fedconv.models import ACTIVATIONS, HEADS, MODEL_NAMES, POOLS, TWOCONV_VARIANTS

    out: list[str] = []

    def get(path: str) -> Any:
        node: Any = cfg
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def need(path: str, ok: bool, allowed: str) -> None:
        if not ok:
            out.append(f"{path}={get(path)!r}: must be {allowed}")

    def number(path: str) -> float | None:
        v = get(path)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            out.append(f"{path}={v!r}: must be a number")
            return None
        return float(v)

    def in_range(path: str, lo: float, hi: float, lo_open: bool, hi_open: bool, integer: bool = False) -> None:
        v = number(path)
        if v is None:
            return
        if integer and not float(v).is_integer():
            out.append(f"{path}={get(path)!r}: must be an integer")
            return
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        hi_s = "inf" if math.isinf(hi) else f"{hi:g}"
        need(path, ok, f"in {lb}{lo:g}, {hi_s}{rb}")

    def one_of(path: str, allowed: tuple[str, ...]) -> None:
        need(path, get(path) in allowed, f"one of {', '.join(allowed)}")

    def boolean(path: str) -> None:
        if get(path) is not None:
            need(path, isinstance(get(path), bool), "true or false")

    def id_list(path: str) -> None:
        from fedconv.faults import partition_ids

        try:
            ids = partition_ids(get(path))
        except ValueError:
            out.append(f"{path}={get(path)!r}: must be comma-separated partition ids, e.g. \"0,3\"")
            return
        n = get("simulation.num_clients")
        bad = sorted(i for i in ids if i < 0 or (isinstance(n, int) and i >= n))
        if bad:
            out.append(f"{path}={get(path)!r}: partition ids must be in [0, simulation.num_clients={n}), got {bad}")

    inf = math.inf
    one_of("dataset.name", DATASETS)
    one_of("model.name", MODEL_NAMES)
    one_of("partition.name", PARTITIONS)
    one_of("strategy.name", STRATEGIES)
    in_range("seed", 0, 2**32 - 1, False, False, integer=True)

    if get("model.name") in TWOCONV_VARIANTS:
        one_of("model.activation", ACTIVATIONS)
        one_of("model.pool", POOLS)
        one_of("model.head", HEADS)
        for key in ("filters1", "filters2", "dense_units", "dense_layers", "se_reduction"):
            in_range(f"model.{key}", 1, inf, False, True, integer=True)
        in_range("model.kernel_size", 1, 15, False, False, integer=True)
        if isinstance(get("model.kernel_size"), int) and get("model.kernel_size") % 2 == 0:
            out.append(f"model.kernel_size={get('model.kernel_size')}: must be odd ('same' padding)")
        in_range("model.dropout", 0, 1, False, True)

    part = get("partition.name")
    in_range("partition.test_fraction", 0, 1, False, True)
    if part == "dirichlet":
        in_range("partition.alpha", 0, inf, True, True)
        in_range("partition.min_partition_size", 0, inf, False, True, integer=True)
    elif part == "pathological":
        in_range("partition.k", 1, inf, False, True, integer=True)
        one_of("partition.class_assignment", CLASS_ASSIGNMENTS)
    elif part == "shards":
        in_range("partition.shards_per_client", 1, inf, False, True, integer=True)
    elif part == "quantity":
        one_of("partition.distribution", SIZE_DISTRIBUTIONS)
        in_range("partition.exponent", 0, inf, True, True)
        in_range("partition.beta", 0, inf, True, True)
        in_range("partition.min_partition_size", 1, inf, False, True, integer=True)

    if get("strategy.name") == "fedprox":
        in_range("strategy.mu", 0, inf, False, True)
    if get("strategy.stragglers") is not None:
        one_of("strategy.stragglers", STRAGGLER_POLICIES)
    for key in ("verbose", "dataset.augment", "dataset.download", "model.batch_norm", "client.noop",
                "partition.allow_empty", "partition.self_balancing", "simulation.ray.include_dashboard"):
        boolean(key)
    if get("faults") is not None:
        in_range("faults.dropout", 0, 1, False, False)
        in_range("faults.straggler_fraction", 0, 1, False, False)
        one_of("faults.corrupt_mode", CORRUPT_MODES)
        in_range("faults.slow_seconds", 0, inf, False, True)
        id_list("faults.corrupt_partitions")
        id_list("faults.slow_partitions")

    in_range("client.epochs", 1, inf, False, True, integer=True)
    in_range("client.batch_size", 1, inf, False, True, integer=True)
    one_of("client.optimizer", OPTIMIZERS)
    in_range("client.lr", 0, inf, True, True)
    in_range("client.momentum", 0, 1, False, True)
    in_range("client.weight_decay", 0, inf, False, True)
    in_range("client.threads", 0, 1024, False, False, integer=True)
    if get("client.max_steps") is not None:
        in_range("client.max_steps", 0, inf, False, True, integer=True)

    in_range("server.rounds", 1, inf, False, True, integer=True)
    in_range("server.fraction_train", 0, 1, True, False)
    in_range("server.fraction_evaluate", 0, 1, False, False)
    in_range("server.min_train_clients", 1, inf, False, True, integer=True)
    in_range("server.min_evaluate_clients", 0, inf, False, True, integer=True)
    in_range("server.eval_every", 1, inf, False, True, integer=True)
    in_range("server.eval_batch_size", 1, inf, False, True, integer=True)
    one_of("server.lr_schedule", LR_SCHEDULES)
    in_range("server.lr_step_size", 1, inf, False, True, integer=True)
    in_range("server.lr_gamma", 0, 1, True, False)
    in_range("server.lr_min", 0, inf, False, True)
    in_range("server.round_timeout", 0, inf, True, True)
    if get("server.connect_timeout") is not None:
        in_range("server.connect_timeout", 0, inf, True, True)
    if get("server.min_train_replies") is not None:
        in_range("server.min_train_replies", 1, inf, False, True, integer=True)

    in_range("simulation.num_clients", 1, inf, False, True, integer=True)
    if get("simulation.nodes") is not None:
        one_of("simulation.nodes", NODE_MODES)
    in_range("simulation.client_resources.num_cpus", 0, inf, True, True)
    in_range("simulation.client_resources.num_gpus", 0, inf, False, True)

    n = get("simulation.num_clients")
    if isinstance(n, int) and not out:
        train_k = clients_per_round(n, get("server.fraction_train"), get("server.min_train_clients"))
        if train_k > n:
            out.append(
                f"server.min_train_clients={get('server.min_train_clients')}: "
                f"{train_k} clients per round but simulation.num_clients={n}; must be <= {n}"
            )
        replies = get("server.min_train_replies")
        if isinstance(replies, int) and replies > min(train_k, n):
            out.append(
                f"server.min_train_replies={replies}: must be <= the {min(train_k, n)} clients sampled per round"
            )
        eval_k = clients_per_round(n, get("server.fraction_evaluate"), get("server.min_evaluate_clients"))
        if get("server.fraction_evaluate") > 0 and eval_k > n:
            out.append(
                f"server.min_evaluate_clients={get('server.min_evaluate_clients')}: "
                f"{eval_k} clients per round but simulation.num_clients={n}; must be <= {n}"
            )
        if get("server.fraction_evaluate") > 0 and get("partition.test_fraction") == 0:
            out.append(
                "partition.test_fraction=0: must be in (0, 1) while server.fraction_evaluate > 0 "
                "(clients evaluate on their held-out split); or set server.fraction_evaluate=0"
            )
        if part == "pathological" and get("partition.k") > get("dataset.num_classes"):
            out.append(
                f"partition.k={get('partition.k')}: must be <= dataset.num_classes="
                f"{get('dataset.num_classes')}"
            )
    return out


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every invalid value, one per line."""
    problems = _problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
