"""Checks a training reply must pass before it may touch the global model.

Flower's strategies check that replies agree with each other; they do not check that a
reply agrees with the model that was sent, nor that its numbers are finite. One NaN or one
client claiming 10^12 examples would otherwise poison the aggregate for everyone. What a
valid reply holds comes from the algorithm's :class:`~fedconv.algorithms.base.Wire`: the
ArrayRecords it names (each like the sent model, or like its trainable parameters), and the
metrics it requires.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, Message

from fedconv.algorithms.base import NUM_EXAMPLES, Wire
from fedconv.wire.compression import Spec as ArraySpec  # what fedconv.wire.channel.spec_of describes


def _arrays_problem(record_name: str, arrays: ArrayRecord, spec: ArraySpec) -> str | None:
    names = set(arrays.keys())
    if names != set(spec):
        missing, extra = sorted(set(spec) - names), sorted(names - set(spec))
        return f"'{record_name}' array names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, array in arrays.items():
        shape, dtype = spec[name]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            return f"array '{name}' is {array.dtype}{list(array.shape)}, expected {dtype}{list(shape)}"
        values = array.numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            return f"array '{name}' holds {bad} non-finite value(s) (NaN/Inf)"
    return None


def reply_problem(reply: Message, wire: Wire, specs: Mapping[str, ArraySpec], max_examples: int | None) -> str | None:
    """Why this train reply must be rejected, or None when it is sound. ``specs`` maps each
    array kind of the wire (:data:`~fedconv.algorithms.base.MODEL`, ...) to what the server sent."""
    content = reply.content
    got = set(content.array_records)
    if got != set(wire.arrays):
        return f"expected ArrayRecord(s) {sorted(wire.arrays)}, got {sorted(got)}"
    for record_name, kind in wire.arrays.items():
        problem = _arrays_problem(record_name, content.array_records[record_name], specs[kind])
        if problem is not None:
            return problem
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    missing = [k for k in wire.metrics if k not in metrics]
    if missing:
        return f"metrics lack {missing}"
    for key in wire.finite:
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"metric '{key}'={value!r} is not a finite number"
    n = metrics[NUM_EXAMPLES]
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n <= 0 or n != int(n):
        return f"'{NUM_EXAMPLES}'={n!r} is not a positive integer"
    if max_examples is not None and n > max_examples:
        return f"'{NUM_EXAMPLES}'={int(n)} exceeds the {max_examples} examples this client holds"
    return None
