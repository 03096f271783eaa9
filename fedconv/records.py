"""Typed reads of Flower's records.

A ConfigRecord or MetricRecord value may be any type Flower can carry (numbers, strings,
bytes, lists); these helpers name the type a key must hold and say which key held what
instead, so a malformed message fails with a sentence rather than a TypeError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def number(record: Mapping[str, Any], key: str, default: float | None = None) -> float:
    """``record[key]`` as a float (``default`` when absent and given)."""
    if key not in record and default is not None:
        return float(default)
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"'{key}'={value!r}: expected a number")
    return float(value)


def integer(record: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """``record[key]`` as an int; a float value must be integral."""
    value = number(record, key, default)
    if not value.is_integer():
        raise TypeError(f"'{key}'={value!r}: expected an integer")
    return int(value)


def integers(record: Mapping[str, Any], key: str) -> list[int]:
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise TypeError(f"'{key}': expected a list of integers")
    return [int(v) for v in value]
