"""One direction of the wire for one message: what the server and the client each do with
the model record, built on both sides from what both know.

Both sides build the same :class:`Channel` from the direction's codec, the spec of the arrays
that travel (names, shapes and dtypes, in the model's order: :func:`spec_of`), the model's
BatchNorm buffers and the message's random key, so they agree on which arrays are encoded
and how long each payload is without any of it on the wire:

==========  ===========================================  ==========================================
direction   sender                                       receiver
==========  ===========================================  ==========================================
downlink    server: ``send(model)``                      client: ``receive(record)``
uplink      client: ``send(trained, received, residual)``  server: ``receive(record, sent)``
==========  ===========================================  ==========================================

Without a codec the arrays travel as they are and neither side builds a channel. Written
here because Flower's records carry arrays, not codecs; the codecs are
:mod:`fedconv.wire.compression`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedconv.wire.compression import (
    PAYLOAD,
    Codec,
    PayloadError,
    Spec,
    compress_update,
    decode_arrays,
    encode_arrays,
    encoded_names,
)


def spec_of(arrays: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype name) of a record's arrays, numpy arrays or torch tensors alike,
    in their order: the one description of what travels, for the codecs and the reply checks."""
    return {name: (tuple(a.shape), str(a.dtype).removeprefix("torch.")) for name, a in arrays.items()}


@dataclass(frozen=True)
class Channel:
    """A codec applied to one message's arrays: ``names`` are the ones it encodes, the others
    travel raw (:func:`fedconv.wire.compression.encoded_names`); ``key`` seeds its draws."""

    codec: Codec
    spec: Spec
    key: tuple[int, ...] = ()
    names: frozenset[str] = field(default=frozenset())

    @classmethod
    def of(cls, codec: Codec, spec: Spec, buffers: frozenset[str] | set[str], key: tuple[int, ...] = ()) -> Channel:
        return cls(codec, dict(spec), key, encoded_names(spec, buffers, codec))

    def send(self, arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray] | None = None,
             residual: Mapping[str, np.ndarray] | None = None) -> tuple[ArrayRecord, dict[str, np.ndarray]]:
        """The record that travels: ``arrays`` encoded (the downlink's model), or their update
        on ``reference`` plus the error-feedback ``residual`` (the uplink); and the new residual."""
        new_residual: dict[str, np.ndarray] = {}
        if reference is None:
            payload = encode_arrays(arrays, self.spec, self.codec, self.names, self.key)
        else:
            payload, new_residual = compress_update(arrays, reference, self.spec, self.codec, self.names, self.key,
                                                    residual)
        return ArrayRecord({PAYLOAD: Array(payload)}), new_residual

    def receive(self, record: ArrayRecord, reference: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The arrays a record stands for (each encoded update added to ``reference``);
        :class:`~fedconv.wire.compression.PayloadError` naming what is wrong with it."""
        if list(record.keys()) != [PAYLOAD]:
            raise PayloadError(f"expected the one array '{PAYLOAD}', got {list(record.keys())[:3]}")
        return decode_arrays(record[PAYLOAD].numpy(), self.spec, self.codec, self.names, self.key, reference)
