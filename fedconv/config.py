"""Hydra composition, the config's vocabulary shared by every layer (node modes, cohort rule,
dotted-key helpers, :class:`ConfigError`), and the flat run config the Flower apps read.

Typed views of the sections several layers read (``server``, ``client``, ``simulation``,
``faults``), cohort sizes and node counts are in :mod:`fedconv.sections`, just above.

The bottom of the package's layers: it imports no other fedconv module, so every group
module may import it. Checking a whole config (every group's owner asked in turn) sits
above the groups, in :mod:`fedconv.validation`.

Hydra lives here and in the entry points only. The apps see a flat ``key.sub -> scalar``
mapping (Flower's ``context.run_config``), made by :func:`to_run_config` and turned back
into nested dicts by :func:`from_run_config`.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
    """Inverse of :func:`to_run_config`.

    A run config fedconv composed (``simulate``, ``deploy``: ``output_dir`` set) comes back as
    it is. One that ``flwr run .`` made (pyproject's defaults with the user's ``--run-config``
    values; ``output_dir`` empty) is composed as the command line would compose it
    (:func:`flwr_run_config`), so ``"dataset.name"="digits"`` means ``dataset=digits``.
    """
    nested = _nested(flat)
    if nested.get("output_dir", None) != "":
        return nested
    return copy.deepcopy(flwr_run_config(tuple(sorted(flat.items()))))


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        assign(nested, key, value)
    return nested


NAMED_GROUPS = ("dataset", "model", "partition", "strategy")  # groups whose option is their ``name``


@functools.lru_cache(maxsize=8)
def flwr_run_config(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """What ``python -m fedconv.simulate`` would compose for a ``flwr run`` run config: a
    ``<group>.name`` that differs from the default chooses that group's option (its other
    keys then come from the option's file), and every other value that differs from the
    default overrides as ``key=value`` does. Cached: each ClientApp call reads it."""
    flat = dict(items)
    defaults = to_run_config(_reference((), "config"))
    names = {g: flat[f"{g}.name"] for g in NAMED_GROUPS if f"{g}.name" in flat and flat[f"{g}.name"] != defaults[f"{g}.name"]}
    groups = [g for g, n in names.items() if (CONF_DIR / g / f"{n}.yaml").is_file()]
    chosen = [f"{g}={names[g]}" for g in groups]
    known = defaults.keys() | to_run_config(_reference(tuple(chosen), "config")).keys()
    unknown = sorted(k for k in flat if k not in known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: no such key (the keys are pyproject.toml's [tool.flwr.app.config])")
    chosen_names = {f"{g}.name" for g in groups}
    overrides = chosen + [f"{k}={json.dumps(v)}" for k, v in flat.items()
                          if k not in chosen_names and (k not in defaults or defaults[k] != v)]
    return _nested(to_run_config(compose(overrides)))


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
