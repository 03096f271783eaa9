"""The vocabulary of config checks: each module checks its own group with these.

A :class:`Checks` holds the whole config (a check may read another group, e.g. partition
ids against ``simulation.num_clients``) and collects one line per problem, naming the key,
the value and what is allowed. :func:`fedconv.validation.validate` runs every group's check
and reports all problems at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

INF = math.inf


class Checks:
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.problems: list[str] = []
        self.seen: set[str] = set()  # every key a check looked at (tests: every declared key is checked)

    def get(self, key: str) -> Any:
        from fedconv.config import lookup

        self.seen.add(key)
        return lookup(self.cfg, key)

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def fail(self, key: str, why: str) -> None:
        self.problems.append(f"{key}={self.get(key)!r}: {why}")

    def need(self, key: str, ok: bool, allowed: str) -> None:
        if not ok:
            self.fail(key, f"must be {allowed}")

    def number(self, key: str) -> float | None:
        """A finite number (NaN and infinities are never a setting), or None after a problem."""
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, "must be a number")
            return None
        if not math.isfinite(value):
            self.fail(key, "must be a finite number")
            return None
        return float(value)

    def text(self, key: str) -> None:
        """A free-form string (a path, a name, a URI): anything but a number, a list or a group."""
        value = self.get(key)
        ok = value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        self.need(key, ok, "a string")

    def in_range(self, key: str, lo: float, hi: float = INF, *, lo_open: bool = False, hi_open: bool | None = None,
                 integer: bool = False) -> None:
        """``key`` in the interval; ``hi_open`` defaults to open for an infinite bound."""
        value = self.number(key)
        if value is None:
            return
        if integer and not value.is_integer():
            self.fail(key, "must be an integer")
            return
        hi_open = math.isinf(hi) if hi_open is None else hi_open
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        hi_text = "inf" if math.isinf(hi) else f"{hi:g}"
        self.need(key, ok, f"in {'(' if lo_open else '['}{lo:g}, {hi_text}{')' if hi_open else ']'}")

    def one_of(self, key: str, allowed: tuple[str, ...]) -> None:
        self.need(key, self.get(key) in allowed, f"one of {', '.join(allowed)}")

    def boolean(self, key: str) -> None:
        if self.has(key):
            self.need(key, isinstance(self.get(key), bool), "true or false")
