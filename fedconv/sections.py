"""Typed views of the config sections several layers read: ``server``, ``client``,
``simulation`` and ``faults``.

Each section is a frozen dataclass whose fields are its YAML keys (``conf/server/default.yaml``,
``conf/client/default.yaml``, ``conf/simulation/default.yaml``, ``conf/faults/none.yaml``),
typed, with **no defaults**: a default is written once, in ``conf/``. ``Server.of(cfg)`` reads
the section out of a whole config (composed, resumed, or Flower's run config turned back into
nested dicts) after :mod:`fedconv.validation` has checked its values; a missing key is a
:class:`~fedconv.config.ConfigError` naming it.

A run saved by an older fedconv may lack keys added since; :data:`LEGACY_DEFAULTS` holds, for
each such key, the value the code used before the key existed, and :func:`with_legacy_defaults`
completes such a config when it is read back (resume, export), so an old run resumes as it ran.

Core layer: imports :mod:`fedconv.config` only.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from fedconv.config import ConfigError, assign, clients_per_round, flatten, lookup

S = TypeVar("S")

# keys added after the first release, with the value a run had before its key existed
LEGACY_DEFAULTS: dict[str, Any] = {
    "server.fed_eval": "separate",
    "server.eval_precision": "fp32",
    "server.connect_timeout": 600,
    "server.min_train_replies": 1,
    "client.max_steps": 0,
    "client.noop": False,
    "client.precision": "fp32",
    "client.compile": False,
    "simulation.nodes": "per_client",  # the pool came later: a node per client was the only mode
    "simulation.client_state_dir": "",
    "faults.dropout": 0.0,
    "faults.straggler_fraction": 0.0,
    "faults.corrupt_partitions": "",
    "faults.corrupt_mode": "nan",
    "faults.slow_partitions": "",
    "faults.slow_seconds": 0.0,
    "faults.scale_factor": 10.0,
    "strategy.stragglers": "drop",
    "partition.allow_empty": False,
}


def with_legacy_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a saved config with every key of :data:`LEGACY_DEFAULTS` it lacks filled in."""
    out = copy.deepcopy(dict(cfg))
    for key, value in LEGACY_DEFAULTS.items():
        if lookup(out, key) is None:
            assign(out, key, value)
    return out


def _read(cls: type[S], section: Any, where: str) -> S:
    """``section`` (a mapping) as ``cls``: each field converted to its declared type; a nested
    dataclass field read from the sub-mapping of the same name."""
    fields = dataclasses.fields(cast(Any, cls))  # every S here is a dataclass
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}={section!r}: must be a group of keys ({', '.join(f.name for f in fields)})")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in fields:
        kind = hints[field.name]
        if field.name not in section:
            group = where.split(".")[0]
            raise ConfigError(f"{where}.{field.name}: missing; conf/{group}/ declares it (a config not composed from conf/?)")
        raw = section[field.name]
        if dataclasses.is_dataclass(kind):
            values[field.name] = _read(cast(type, kind), raw, f"{where}.{field.name}")
        else:
            values[field.name] = kind("" if raw is None else raw) if kind is str else kind(raw)
    return cls(**values)


@dataclass(frozen=True)
class Server:
    """``conf/server/default.yaml``: rounds, cohorts, evaluation, the lr schedule, time limits."""

    rounds: int
    fraction_train: float
    fraction_evaluate: float
    fed_eval: str
    min_train_clients: int
    min_evaluate_clients: int
    eval_every: int
    eval_batch_size: int
    eval_precision: str
    lr_schedule: str
    lr_step_size: int
    lr_gamma: float
    lr_min: float
    round_timeout: float
    connect_timeout: float
    min_train_replies: int

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Server:
        return _read(cls, cfg.get("server"), "server")

    @property
    def with_train_eval(self) -> bool:
        """Training clients evaluate the received model in their train reply (no evaluate phase)."""
        return self.fed_eval == "with_train"


@dataclass(frozen=True)
class Client:
    """``conf/client/default.yaml``: local training on each client."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    threads: int
    max_steps: int
    precision: str
    compile: bool
    noop: bool

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Client:
        return _read(cls, cfg.get("client"), "client")


@dataclass(frozen=True)
class ClientResources:
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class RaySettings:
    address: str
    num_cpus: int
    include_dashboard: bool


@dataclass(frozen=True)
class Simulation:
    """``conf/simulation/default.yaml``: the simulated federation and its Ray."""

    num_clients: int
    nodes: str
    client_resources: ClientResources
    ray: RaySettings
    client_state_dir: str

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Simulation:
        return _read(cls, cfg.get("simulation"), "simulation")


@dataclass(frozen=True)
class Faults:
    """``conf/faults/none.yaml``: injected client faults (all off by default)."""

    dropout: float
    straggler_fraction: float
    corrupt_partitions: str
    corrupt_mode: str
    slow_partitions: str
    slow_seconds: float
    scale_factor: float

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Faults:
        return _read(cls, cfg.get("faults"), "faults")


def cohort_sizes(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(train, evaluate) clients per round; 0 evaluation clients when federated evaluation is
    off or done by the training clients (``server.fed_eval=with_train``)."""
    server, n = Server.of(cfg), Simulation.of(cfg).num_clients
    train = clients_per_round(n, server.fraction_train, server.min_train_clients)
    if server.with_train_eval or server.fraction_evaluate <= 0:
        return train, 0
    return train, clients_per_round(n, server.fraction_evaluate, server.min_evaluate_clients)


def virtual_nodes(cfg: Mapping[str, Any]) -> int:
    """How many virtual SuperNodes a simulation registers: one per client (``per_client``) or,
    for a ``pool``, just enough to serve the largest cohort (Flower's simulation engine scans
    every registered node for messages ten times a second, so 10,000 idle nodes cost time)."""
    sim = Simulation.of(cfg)
    return sim.num_clients if sim.nodes == "per_client" else min(sim.num_clients, max(cohort_sizes(cfg)))


def declared_keys() -> set[str]:
    """Every dotted key the sections declare (tests: each is a key of the composed config)."""
    keys: set[str] = set()
    for name, cls in (("server", Server), ("client", Client), ("simulation", Simulation), ("faults", Faults)):
        keys |= {f"{name}.{k}" for k in flatten(_skeleton(cls))}
    return keys


def _skeleton(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: _skeleton(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None
            for f in dataclasses.fields(cls)}
