"""Every aggregation algorithm fedconv runs, by the name ``strategy=<name>`` selects.

Adding one: a module here that defines an :class:`~fedconv.algorithms.base.Algorithm`, a
line in :data:`ALGORITHMS`, and ``conf/strategy/<name>.yaml`` (docs/algorithms.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedconv.algorithms import fedavg, fedavgm, fedbn, feddyn, fednova, fedopt, fedprox, qfedavg, robust, scaffold
from fedconv.algorithms.base import Algorithm
from fedconv.checks import Checks

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        fedavg.ALGORITHM,
        fedprox.ALGORITHM,
        fedavgm.ALGORITHM,
        fedopt.FEDADAM,
        fedopt.FEDYOGI,
        fedopt.FEDADAGRAD,
        robust.FEDMEDIAN,
        robust.FEDTRIMMEDAVG,
        robust.KRUM,
        robust.MULTIKRUM,
        robust.BULYAN,
        qfedavg.ALGORITHM,
        scaffold.ALGORITHM,
        fednova.ALGORITHM,
        feddyn.ALGORITHM,
        fedbn.ALGORITHM,
    )
}
STRATEGIES = tuple(ALGORITHMS)
STRAGGLER_POLICIES = ("drop", "aggregate")


def get(name: str) -> Algorithm:
    """The algorithm called ``name``; a ValueError naming the allowed ones otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"strategy.name: unknown '{name}'; allowed: {', '.join(STRATEGIES)}") from None


def config_problems(c: Checks) -> None:
    """The ``strategy`` group: the name, the straggler policy, then the algorithm's own keys
    (some checked against the training cohort's size, e.g. Krum's f)."""
    from fedconv.sections import cohort_sizes

    c.one_of("strategy.name", STRATEGIES)
    c.one_of("strategy.stragglers", STRAGGLER_POLICIES)
    name = c.get("strategy.name")
    if name not in ALGORITHMS:
        return
    try:
        cohort = cohort_sizes(c.cfg)[0]
    except (KeyError, TypeError, ValueError):
        cohort = 0  # the server group is broken; its own checks say how
    ALGORITHMS[name].config_problems(c, cohort)


def model_problems(cfg: Mapping[str, Any], model: Any) -> None:
    """The chosen algorithm's precondition on the model actually built (FedBN needs
    BatchNorm layers), not on a config key that may not say: a ConfigError naming the key."""
    from fedconv.config import ConfigError

    problem = get(str(cfg["strategy"]["name"])).model_problem(cfg, model)
    if problem:
        raise ConfigError(problem)
