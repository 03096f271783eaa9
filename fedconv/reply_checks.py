"""Checks a training reply must pass before it may touch the global model.

Flower's strategies check that replies agree with each other; they do not check that a
reply agrees with the model that was sent, nor that its numbers are finite. One NaN or one
client claiming 10^12 examples would otherwise poison the weighted mean for everyone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, Message

NUM_EXAMPLES = "num-examples"


def array_spec(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of the arrays the server sent."""
    return {name: (tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def reply_problem(
    reply: Message, spec: Mapping[str, tuple[tuple[int, ...], str]], max_examples: int | None
) -> str | None:
    """Why this train reply must be rejected, or None when it is sound."""
    content = reply.content
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, got {len(content.array_records)}"
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    arrays = next(iter(content.array_records.values()))
    names = set(arrays.keys())
    if names != set(spec):
        missing, extra = sorted(set(spec) - names), sorted(names - set(spec))
        return f"array names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, array in arrays.items():
        shape, dtype = spec[name]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            return f"array '{name}' is {array.dtype}{list(array.shape)}, expected {dtype}{list(shape)}"
        values = array.numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            return f"array '{name}' holds {bad} non-finite value(s) (NaN/Inf)"
    metrics = next(iter(content.metric_records.values()))
    if NUM_EXAMPLES not in metrics:
        return f"metrics lack '{NUM_EXAMPLES}'"
    n = metrics[NUM_EXAMPLES]
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0 or n != int(n):
        return f"'{NUM_EXAMPLES}'={n!r} is not a positive integer"
    if max_examples is not None and n > max_examples:
        return f"'{NUM_EXAMPLES}'={int(n)} exceeds the {max_examples} examples this client holds"
    return None
