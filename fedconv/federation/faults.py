"""Injected faults (``conf/faults``): crashes, slow clients, stragglers and corrupted replies.

Every decision is a pure function of (seed, round, partition id), so a faulty run is as
repeatable as a clean one, and a resumed run injects the same faults as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from fedconv.checks import Checks

CORRUPT_MODES = ("nan", "inf", "shape", "dtype", "names", "num_examples", "signflip", "scale")
POISON_MODES = ("signflip", "scale")  # finite, well-formed: they pass the reply checks

CRASH_SALT, STRAGGLER_SALT = 11, 12


class InjectedCrash(RuntimeError):
    """A client crash injected by ``faults.dropout`` (the server sees an error reply)."""


def partition_ids(text: Any) -> set[int]:
    """Parse ``"0,3, 5"`` (or a single int) into partition ids."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a comma-separated list of partition ids")
    if isinstance(text, int):
        return {text}
    parts = [p.strip() for p in str(text or "").split(",") if p.strip()]
    try:
        return {int(p) for p in parts}
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of partition ids") from None


def crashes(seed: int, server_round: int, pid: int, probability: float) -> bool:
    """Whether this client crashes in this round (``faults.dropout``)."""
    if probability <= 0:
        return False
    return bool(np.random.default_rng([seed, server_round, pid, CRASH_SALT]).random() < probability)


def straggler_plan(
    seed: int, server_round: int, cohort: Iterable[int], fraction: float, epochs: int
) -> dict[int, tuple[int, float]]:
    """Which partitions of the cohort straggle this round, and how much work each does.

    Returns ``{pid: (local_epochs, step_fraction)}``: with E > 1 a straggler runs a uniform
    number of epochs in [1, E]; with E = 1 it runs a uniform fraction in (0, 1) of its steps.
    """
    cohort = sorted(cohort)
    count = int(round(fraction * len(cohort)))
    if count == 0:
        return {}
    rng = np.random.default_rng([seed, server_round, STRAGGLER_SALT])
    chosen = sorted(int(p) for p in rng.choice(cohort, size=count, replace=False))
    plan: dict[int, tuple[int, float]] = {}
    for pid in chosen:
        if epochs > 1:
            plan[pid] = (int(rng.integers(1, epochs + 1)), 1.0)
        else:
            plan[pid] = (1, float(rng.uniform(0.05, 1.0)))
    return plan


def corrupt_state(
    state: Mapping[str, torch.Tensor], mode: str, *, received: Mapping[str, torch.Tensor] | None = None,
    parameters: Iterable[str] = (), factor: float = 1.0,
) -> dict[str, torch.Tensor]:
    """A broken copy of a client's weights, as a buggy or malicious client would send.

    The poisoning modes change the client's *update* u = w - w_received of its trainable
    ``parameters`` and stay finite and well-formed, so only the aggregation rule can resist
    them: ``signflip`` sends w_received - u, ``scale`` sends w_received + factor * u.
    BatchNorm's running statistics are sent honestly (a negated variance would be caught)."""
    out = {k: v.clone() for k, v in state.items()}
    if mode in POISON_MODES:
        if received is None:
            raise ValueError(f"faults.corrupt_mode={mode}: the received weights are needed")
        k = -1.0 if mode == "signflip" else factor
        for name in parameters:
            out[name] = received[name] + k * (out[name] - received[name])
        return out
    first = next(k for k, v in out.items() if v.is_floating_point())
    if mode == "nan":
        out[first].view(-1)[0] = math.nan
    elif mode == "inf":
        out[first].view(-1)[0] = math.inf
    elif mode == "shape":
        out[first] = out[first].reshape(-1)[:-1].clone()
    elif mode == "dtype":
        out[first] = out[first].double()
    elif mode == "names":
        out[f"{first}_renamed"] = out.pop(first)
    elif mode != "num_examples":
        raise ValueError(f"faults.corrupt_mode: unknown '{mode}'; allowed: {', '.join(CORRUPT_MODES)}")
    return out


def corrupt_num_examples(num_examples: int, mode: str) -> int:
    """``num_examples`` mode reports an absurd count (a weight that would swamp everyone else)."""
    return 10**12 if mode == "num_examples" else num_examples


def config_problems(c: Checks) -> None:
    """The ``faults`` group."""
    if not c.has("faults"):
        return
    c.in_range("faults.dropout", 0, 1)
    c.in_range("faults.straggler_fraction", 0, 1)
    c.one_of("faults.corrupt_mode", CORRUPT_MODES)
    c.in_range("faults.slow_seconds", 0)
    c.number("faults.scale_factor")
    n = c.get("simulation.num_clients")
    for key in ("faults.corrupt_partitions", "faults.slow_partitions"):
        try:
            ids = partition_ids(c.get(key))
        except ValueError:
            c.fail(key, 'must be comma-separated partition ids, e.g. "0,3"')
            continue
        bad = sorted(i for i in ids if i < 0 or (isinstance(n, int) and i >= n))
        if bad:
            c.fail(key, f"partition ids must be in [0, simulation.num_clients={n}), got {bad}")
