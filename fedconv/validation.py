"""A whole config checked: every group by the module that owns its vocabulary, the keys no
group owns (the run's identity, ``server``, ``simulation``), and the checks across groups
(cohorts against the federation).

Layering: this module sits above the group modules (datasets, models, partitioning,
algorithms, training, faults, compression, tracking) and imports them; they import
:mod:`fedconv.config` and :mod:`fedconv.checks` below them, never this module. The entry
points (simulate, resume, deploy, partition statistics, device data) call :func:`validate`.
The group modules are imported when a config is first checked, not with this module: they
bring torch and Flower (about 3 s), which ``simulate`` imports while Ray starts beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedconv.checks import Checks
from fedconv.config import (
    FED_EVAL_MODES,
    NODE_MODES,
    OBJECTIVES,
    ConfigError,
    clients_per_round,
    flatten,
)


def config_problems(c: Checks) -> None:
    """The keys no group module owns: the run's identity, the federation (``server``, ``simulation``)
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
    c.one_of("server.fed_eval", FED_EVAL_MODES)
    c.in_range("server.min_train_clients", 1, integer=True)
    c.in_range("server.min_evaluate_clients", 0, integer=True)
    c.in_range("server.eval_every", 1, integer=True)
    c.in_range("server.eval_batch_size", 1, integer=True)
    c.in_range("server.round_timeout", 0, lo_open=True)
    c.in_range("server.connect_timeout", 0, lo_open=True)
    c.in_range("server.min_train_replies", 1, integer=True)
    c.in_range("simulation.num_clients", 1, integer=True)
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
    from fedconv import algorithms
    from fedconv.data import datasets, partitioning
    from fedconv.federation import faults
    from fedconv.learning import models, training
    from fedconv.runs import tracking
    from fedconv.wire import compression

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
