"""Compression of the arrays on the wire: casts, quantization, sparsification, QSGD.

Each direction has its own codec (``compression.downlink`` / ``compression.uplink``):

=========  ===========================================================  ==========  =========
codec      what one tensor's payload holds                               applies to  direction
=========  ===========================================================  ==========  =========
fp16       IEEE half floats, 2 bytes each                                value       both
bf16       bfloat16 (round to nearest even), 2 bytes each                value       both
int8/int4  affine: per group ``lo`` and ``scale`` (bf16), then codes     value       both
           in [0, 2^b − 1] (int4: two per byte); a group is the whole
           tensor or one output channel (dim 0 of a ≥ 2-D tensor);
           rounding to nearest (error ≤ scale/2) or stochastic
           (unbiased, seeded); ``lo`` is rounded down and ``scale`` up,
           so the grid still covers [min, max]
topk       the k = ⌈fraction·n⌉ largest magnitudes: k fp32 values, then  update      uplink
           their positions as a bitmap (⌈n/8⌉ bytes) or as sorted
           uint16/uint32 indices, whichever is smaller for this n and k
randk      k values at positions drawn from a generator both sides       update      uplink
           seed alike (run seed, round, partition, tensor): no index
           bytes; scaled by n/k (unbiased) unless error feedback is on
qsgd       Alistarh et al. 2017: per bucket of ``bucket`` elements its   update      uplink
           L2 norm (fp32), then each element as a signed level in
           [−s, s] (int8), stochastically rounded so E[q] = v
=========  ===========================================================  ==========  =========

The downlink carries the global model itself (a client of the node pool may not hold the
previous model, so there is no delta it could apply); the uplink carries the *update*: the
client subtracts the model it received (as decoded) from its trained model and encodes the
difference, and the server adds the decoded difference to its own exact global model. The
strategy therefore sees whole models, as without compression, so every algorithm works with
every codec and lossy downlink error never accumulates in the global model.

Error feedback (``uplink.error_feedback``, Seide et al. 2014, Stich et al. 2018): the client
encodes update + residual, and keeps residual ← (update + residual) − decoded in its client
state, by partition id (:mod:`fedconv.federation.client_state`), so it survives the node pool and resume.

A compressed record travels as **one** uint8 array (:data:`PAYLOAD`): the payloads, and the
raw bytes of the tensors sent raw, back to back in the model's order. Every length follows
from the tensor's shape and the codec's options, so nothing but the bytes travels, and one
serialisation header replaces one per tensor (on a 38k-parameter model with 14 tensors the
headers alone are 1.2 % of the fp32 message, 4 % of an int8 one).

A tensor is sent raw (its own dtype, as without compression) when it is a BatchNorm running
statistic (not an update of anything a gradient moves), not float32, or has fewer than
``min_size`` elements, where a codec's per-tensor overhead outweighs its savings. Which
tensors are encoded follows from the model and the config alone, so both sides agree on it.

Written here because Flower ships only byte-counting mods; the layouts above are fedconv's.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fedconv.checks import Checks

GRANULARITIES = ("channel", "tensor")
ROUNDINGS = ("nearest", "stochastic")
DOWN, UP, EVAL_DOWN = 0, 1, 2  # directions, part of every random key
SERVER = -1  # the "partition" of downlink keys
F32 = np.dtype("<f4")


class PayloadError(ValueError):
    """A compressed array cannot be decoded: wrong length, indices out of range, a NaN scale."""


@dataclass(frozen=True)
class Codec:
    """One direction's codec and its options (``conf/compression``)."""

    codec: str = "none"
    granularity: str = "channel"  # int8/int4
    rounding: str = "nearest"  # int8/int4
    fraction: float = 0.1  # topk/randk
    levels: int = 16  # qsgd: s
    bucket: int = 512  # qsgd
    error_feedback: bool = False  # uplink only
    min_size: int = 256  # tensors with fewer elements travel raw

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Codec:
        cfg = cfg or {}
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

    @property
    def active(self) -> bool:
        return self.codec != "none"

    # ------------------------------------------------------------------ one tensor

    @property
    def kind(self) -> CodecKind:
        if self.codec not in KINDS:
            raise ValueError(f"codec '{self.codec}' has no payload")
        return KINDS[self.codec]

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``x`` (float32) as the uint8 payload of this codec."""
        return self.kind.encode(self, np.ascontiguousarray(x, dtype=F32), rng)

    def decode(self, payload: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """The float32 tensor of ``shape`` a payload stands for; :class:`PayloadError` when
        the payload cannot be one (``rng``: the encoder's, for randk's positions)."""
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise PayloadError(f"payload is {payload.dtype}{list(payload.shape)}, expected a 1-D uint8 array")
        if self.codec not in KINDS:
            raise PayloadError(f"codec '{self.codec}' decodes nothing")
        _expect_length(payload, self.payload_bytes(shape))  # every codec's length follows from the shape
        return self.kind.decode(self, payload, shape, rng)

    def payload_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of one tensor's payload: a function of the shape and the options only, so
        the receiver splits a record's payloads without any length on the wire."""
        return self.kind.payload_bytes(self, shape)

    # ------------------------------------------------------------------ fp16 / bf16

    def _encode_half(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _bytes(x.astype("<f2") if self.codec == "fp16" else _to_bf16(x, "nearest"))

    def _decode_half(self, payload: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        out = payload.view("<f2").astype(F32) if self.codec == "fp16" else _from_bf16(payload.view("<u2"))
        return _finite(out, "values").reshape(shape)

    # ------------------------------------------------------------------ int8 / int4

    @property
    def bits(self) -> int:
        return 4 if self.codec == "int4" else 8

    def groups(self, shape: tuple[int, ...]) -> int:
        """Groups with their own ``lo`` and ``scale``: output channels, or the whole tensor."""
        return shape[0] if self.granularity == "channel" and len(shape) >= 2 else 1

    def affine_params(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per group, as bfloat16 bits: ``lo`` (the minimum rounded down) and ``scale`` (the
        step between codes, rounded up), so the codes' grid covers [min, max] and rounding to
        the nearest code errs by at most scale/2 (0 for a constant group)."""
        rows = x.reshape(self.groups(x.shape), -1).astype(np.float64)
        lo = _to_bf16(rows.min(axis=1).astype(F32), "down")
        step = (rows.max(axis=1) - _from_bf16(lo)) / (2**self.bits - 1)
        step32 = step.astype(F32)
        step32 = np.where(step32 < step, np.nextafter(step32, np.float32(np.inf)), step32)
        return lo, _to_bf16(step32, "up")

    def _encode_affine(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = self.groups(x.shape)
        lo_bits, scale_bits = self.affine_params(x)
        lo, scale = _from_bf16(lo_bits).astype(np.float64), _from_bf16(scale_bits).astype(np.float64)
        rows = x.reshape(g, -1).astype(np.float64)
        t = (rows - lo[:, None]) / np.where(scale > 0, scale, 1.0)[:, None]
        t = np.floor(t + rng.random(t.shape)) if self.rounding == "stochastic" else np.rint(t)
        q = np.clip(t, 0, 2**self.bits - 1).astype(np.uint8).reshape(-1)
        if self.bits == 4:
            q = _pack_nibbles(q)
        return np.concatenate([_bytes(lo_bits), _bytes(scale_bits), q])

    def _affine_bytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        return 4 * self.groups(shape) + (n if self.bits == 8 else (n + 1) // 2)

    def _decode_affine(self, payload: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        g, n = self.groups(shape), math.prod(shape)
        lo = _finite(_from_bf16(payload[: 2 * g].view("<u2")), "lo")
        scale = _finite(_from_bf16(payload[2 * g : 4 * g].view("<u2")), "scale")
        if (scale < 0).any():
            raise PayloadError("negative scale")
        q = payload[4 * g :]
        if self.bits == 4:
            q = _unpack_nibbles(q, n)
        rows = q.reshape(g, -1).astype(np.float64) * scale.astype(np.float64)[:, None] + lo.astype(np.float64)[:, None]
        return rows.astype(F32).reshape(shape)

    # ------------------------------------------------------------------ top-k / rand-k

    def k(self, n: int) -> int:
        return min(n, max(1, math.ceil(self.fraction * n)))

    def _random_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.choice(n, size=self.k(n), replace=False))

    def _topk_bytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        return 4 * self.k(n) + position_bytes(n, self.k(n))

    def _encode_topk(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flat = x.reshape(-1)
        k = self.k(flat.size)
        idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
        return np.concatenate([_bytes(flat[idx]), _encode_positions(idx, flat.size)])

    def _decode_topk(self, payload: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        n = math.prod(shape)
        k = self.k(n)
        values = _finite(payload[: 4 * k].view(F32), "values")
        idx = _decode_positions(payload[4 * k :], n, k)
        out = np.zeros(n, dtype=F32)
        out[idx] = values
        return out.reshape(shape)

    def _encode_randk(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        idx = self._random_indices(x.size, rng)
        values = x.reshape(-1)[idx] * (1.0 if self.error_feedback else x.size / len(idx))
        return _bytes(values.astype(F32))

    def _decode_randk(self, payload: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        n = math.prod(shape)
        out = np.zeros(n, dtype=F32)
        out[self._random_indices(n, rng)] = _finite(payload.view(F32), "values")
        return out.reshape(shape)

    # ------------------------------------------------------------------ QSGD

    def _qsgd_bytes(self, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        return 4 * -(-n // self.bucket) + n

    def _encode_qsgd(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flat, s, d = x.reshape(-1).astype(np.float64), self.levels, self.bucket
        b = -(-flat.size // d)
        padded = np.zeros(b * d)
        padded[: flat.size] = flat
        buckets = padded.reshape(b, d)
        norms = np.linalg.norm(buckets, axis=1).astype(F32)
        safe = np.where(norms > 0, norms, 1.0).astype(np.float64)[:, None]
        r = np.abs(buckets) / safe * s
        level = np.floor(r)
        level += rng.random(r.shape) < (r - level)  # up with probability r − ⌊r⌋: unbiased
        signed = (np.sign(buckets) * np.minimum(level, s)).reshape(-1)[: flat.size]
        return np.concatenate([_bytes(norms), signed.astype(np.int8).view(np.uint8)])

    def _decode_qsgd(self, payload: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        n, s, d = math.prod(shape), self.levels, self.bucket
        b = -(-n // d)
        norms = _finite(payload[: 4 * b].view(F32), "norms")
        if (norms < 0).any():
            raise PayloadError("negative norm")
        level = payload[4 * b :].view(np.int8).astype(np.float64)
        if np.abs(level).max(initial=0) > s:
            raise PayloadError(f"levels outside [-{s}, {s}]")
        padded = np.zeros(b * d)
        padded[:n] = level
        values = padded.reshape(b, d) * norms.astype(np.float64)[:, None] / s
        return values.reshape(-1)[:n].astype(F32).reshape(shape)


@dataclass(frozen=True)
class CodecKind:
    """One codec: what it applies to (the model's ``value`` or a client's ``update``, uplink
    only), the :class:`Codec` options it reads (the others are inert for it), and its three
    functions. Adding a codec is one entry of :data:`KINDS` and its options in ``conf/compression``."""

    applies_to: str
    options: tuple[str, ...]
    encode: Callable[[Codec, np.ndarray, np.random.Generator], np.ndarray]
    decode: Callable[[Codec, np.ndarray, tuple[int, ...], np.random.Generator], np.ndarray]
    payload_bytes: Callable[[Codec, tuple[int, ...]], int]


def _two_bytes_each(codec: Codec, shape: tuple[int, ...]) -> int:
    return 2 * math.prod(shape)


def _four_bytes_per_kept(codec: Codec, shape: tuple[int, ...]) -> int:
    return 4 * codec.k(math.prod(shape))


AFFINE_OPTIONS = ("granularity", "rounding")
KINDS: dict[str, CodecKind] = {
    "fp16": CodecKind("value", (), Codec._encode_half, Codec._decode_half, _two_bytes_each),
    "bf16": CodecKind("value", (), Codec._encode_half, Codec._decode_half, _two_bytes_each),
    "int8": CodecKind("value", AFFINE_OPTIONS, Codec._encode_affine, Codec._decode_affine, Codec._affine_bytes),
    "int4": CodecKind("value", AFFINE_OPTIONS, Codec._encode_affine, Codec._decode_affine, Codec._affine_bytes),
    "topk": CodecKind("update", ("fraction",), Codec._encode_topk, Codec._decode_topk, Codec._topk_bytes),
    "randk": CodecKind("update", ("fraction",), Codec._encode_randk, Codec._decode_randk, _four_bytes_per_kept),
    "qsgd": CodecKind("update", ("levels", "bucket"), Codec._encode_qsgd, Codec._decode_qsgd, Codec._qsgd_bytes),
}
VALUE_CODECS = ("none", *(name for name, kind in KINDS.items() if kind.applies_to == "value"))
UPDATE_CODECS = tuple(name for name, kind in KINDS.items() if kind.applies_to == "update")
CODECS = VALUE_CODECS + UPDATE_CODECS
CODEC_OPTIONS = ("granularity", "rounding", "fraction", "levels", "bucket")  # each read by some codec


# ------------------------------------------------------------------ positions (top-k)

def position_bytes(n: int, k: int) -> int:
    """Bytes of k positions among n: a bitmap or sorted uint16/uint32 indices, the smaller."""
    return min(-(-n // 8), k * (2 if n <= 2**16 else 4))


def _uses_bitmap(n: int, k: int) -> bool:
    return -(-n // 8) <= k * (2 if n <= 2**16 else 4)


def _encode_positions(idx: np.ndarray, n: int) -> np.ndarray:
    if _uses_bitmap(n, len(idx)):
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        return np.packbits(mask, bitorder="little")
    return _bytes(idx.astype("<u2" if n <= 2**16 else "<u4"))


def _decode_positions(payload: np.ndarray, n: int, k: int) -> np.ndarray:
    if _uses_bitmap(n, k):
        bits = np.unpackbits(payload, bitorder="little")
        if bits[n:].any():
            raise PayloadError(f"bitmap marks positions beyond the tensor's {n} elements")
        idx = np.flatnonzero(bits[:n])
        if len(idx) != k:
            raise PayloadError(f"bitmap marks {len(idx)} positions, expected {k}")
        return idx
    idx = payload.view("<u2" if n <= 2**16 else "<u4").astype(np.int64)
    if idx.size and (idx.max() >= n or (np.diff(idx) <= 0).any()):
        raise PayloadError(f"indices not strictly increasing in [0, {n})")
    return idx


# ------------------------------------------------------------------ helpers

def _bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _expect_length(payload: np.ndarray, n: int) -> None:
    if payload.size != n:
        raise PayloadError(f"payload has {payload.size} bytes, expected {n}")


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise PayloadError(f"{int((~np.isfinite(values)).sum())} non-finite {what}")
    return values


def _to_bf16(x: np.ndarray, mode: str) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16): to ``nearest`` (ties to even), or rounded ``down``
    (toward −inf) or ``up`` (toward +inf)."""
    u = np.ascontiguousarray(x, dtype=F32).view("<u4").astype(np.uint64)
    if mode == "nearest":
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    inexact = (u & 0xFFFF) != 0
    negative = (u >> 31) == 1
    away = inexact & (negative if mode == "down" else ~negative)  # one step up in magnitude
    return ((u >> 16) + away).astype("<u2")


def _from_bf16(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits).astype(np.uint32) << 16).view(F32)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    if q.size % 2:
        q = np.append(q, np.uint8(0))
    return (q[0::2] | (q[1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(2 * packed.size, dtype=np.uint8)
    out[0::2], out[1::2] = packed & 0x0F, packed >> 4
    if 2 * packed.size > n and out[n:].any():
        raise PayloadError("padding nibble is not zero")
    return out[:n]


def rng_for(key: tuple[int, ...], name: str) -> np.random.Generator:
    """The generator of one tensor in one message: ``key`` is (run seed, direction, round,
    partition); the tensor's name makes each tensor's draws independent."""
    return np.random.default_rng([*(k & 0xFFFFFFFF for k in key), zlib.crc32(name.encode())])


# ------------------------------------------------------------------ records

Spec = Mapping[str, tuple[tuple[int, ...], str]]
PAYLOAD = "compressed"  # the one array of a compressed model record


def encoded_names(spec: Spec, buffers: frozenset[str] | set[str], codec: Codec) -> frozenset[str]:
    """The arrays this codec encodes (see the module docstring); the rest travel raw."""
    if not codec.active:
        return frozenset()
    return frozenset(name for name, (shape, dtype) in spec.items()
                     if name not in buffers and dtype == "float32" and math.prod(shape) >= codec.min_size)


def _part_bytes(spec: Spec, codec: Codec, names: frozenset[str]) -> list[tuple[str, int]]:
    return [(name, codec.payload_bytes(shape) if name in names else math.prod(shape) * np.dtype(dtype).itemsize)
            for name, (shape, dtype) in spec.items()]


def pack(parts: Mapping[str, np.ndarray], spec: Spec, names: frozenset[str]) -> np.ndarray:
    """One record's arrays as the single uint8 array that travels (:data:`PAYLOAD`): the
    payload of each of ``names``, the raw little-endian bytes of the others, in ``spec``'s
    order. One array, one serialisation header, whatever the number of tensors."""
    return np.concatenate([parts[name] if name in names
                           else _bytes(np.asarray(parts[name], dtype=np.dtype(spec[name][1]).newbyteorder("<")))
                           for name in spec])


def encode_arrays(arrays: Mapping[str, np.ndarray], spec: Spec, codec: Codec, names: frozenset[str],
                  key: tuple[int, ...]) -> np.ndarray:
    """The downlink's payload: ``names`` encoded, the others raw, packed (:func:`pack`)."""
    return pack({name: codec.encode(v, rng_for(key, name)) if name in names else v for name, v in arrays.items()},
                spec, names)


def decode_arrays(payload: np.ndarray, spec: Spec, codec: Codec, names: frozenset[str],
                  key: tuple[int, ...], reference: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack` and the codec: name -> array in ``spec``'s order, each encoded
    one added to ``reference`` when given (an update). :class:`PayloadError` naming the array
    when the payload cannot be what the sender's spec says."""
    payload = np.asarray(payload)
    if payload.dtype != np.uint8 or payload.ndim != 1:
        raise PayloadError(f"payload is {payload.dtype}{list(payload.shape)}, expected a 1-D uint8 array")
    parts = _part_bytes(spec, codec, names)
    expected = sum(n for _, n in parts)
    if payload.size != expected:
        raise PayloadError(f"payload has {payload.size} bytes, expected {expected} for this model and codec")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, size in parts:
        chunk, offset = payload[offset : offset + size], offset + size
        shape, dtype = spec[name]
        if name not in names:
            out[name] = chunk.view(np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
            continue
        try:
            x = codec.decode(chunk, shape, rng_for(key, name))
        except PayloadError as exc:
            raise PayloadError(f"array '{name}' ({codec.codec}): {exc}") from None
        out[name] = x if reference is None else (reference[name] + x).astype(F32)
    return out


def compress_update(trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], spec: Spec,
                    codec: Codec, names: frozenset[str], key: tuple[int, ...],
                    residual: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Client side of the uplink: the payload of ``trained − received`` (+ the error-feedback
    residual) for ``names``, the other arrays raw; and the new residual ``(update + residual)
    − decoded`` (empty without error feedback). With top-k the sent values and the residual
    have disjoint supports, so sent + new residual equals update + old residual exactly."""
    parts: dict[str, np.ndarray] = {}
    new_residual: dict[str, np.ndarray] = {}
    for name, value in trained.items():
        if name not in names:
            parts[name] = value
            continue
        update = np.asarray(value, dtype=F32) - received[name]
        if codec.error_feedback and residual is not None and name in residual:
            update = update + residual[name]
        parts[name] = codec.encode(update, rng_for(key, name))
        if codec.error_feedback:
            new_residual[name] = update - codec.decode(parts[name], update.shape, rng_for(key, name))
    return pack(parts, spec, names), new_residual


@dataclass(frozen=True)
class Link:
    """Both directions' codecs of a run, and the run seed that keys their random draws."""

    down: Codec = Codec()
    up: Codec = Codec()
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Link:
        comp = cfg.get("compression") or {}
        return cls(Codec.from_config(comp.get("downlink")), Codec.from_config(comp.get("uplink")), int(cfg["seed"]))

    @property
    def active(self) -> bool:
        return self.down.active or self.up.active

    def down_key(self, server_round: int, evaluate: bool = False) -> tuple[int, ...]:
        return (self.seed, EVAL_DOWN if evaluate else DOWN, server_round, SERVER)

    def up_key(self, server_round: int, pid: int) -> tuple[int, ...]:
        return (self.seed, UP, server_round, pid)


# ------------------------------------------------------------------ config

def config_problems(c: Checks) -> None:
    """The ``compression`` group (absent in configs saved before it existed: no compression)."""
    if not c.has("compression"):
        return
    for direction, allowed in (("downlink", VALUE_CODECS), ("uplink", CODECS)):
        p = f"compression.{direction}"
        codec = c.get(f"{p}.codec")
        if direction == "downlink" and codec in UPDATE_CODECS:
            c.fail(f"{p}.codec", f"{codec} is defined on updates, and the downlink sends the model itself (a client "
                                 f"of the node pool may not hold the previous one); one of {', '.join(VALUE_CODECS)}")
            continue
        c.one_of(f"{p}.codec", allowed)
        c.one_of(f"{p}.granularity", GRANULARITIES)
        c.one_of(f"{p}.rounding", ROUNDINGS)
        c.in_range(f"{p}.fraction", 0, 1, lo_open=True)
        c.in_range(f"{p}.levels", 1, 127, integer=True)
        c.in_range(f"{p}.bucket", 1, integer=True)
        c.in_range(f"{p}.min_size", 0, integer=True)
        c.boolean(f"{p}.error_feedback")
    if c.get("compression.downlink.error_feedback") is True:
        c.fail("compression.downlink.error_feedback", "must be false: error feedback is the uplink's (a client residual)")
    if c.get("compression.uplink.error_feedback") is True and c.get("compression.uplink.codec") == "none":
        c.fail("compression.uplink.error_feedback", "needs a lossy compression.uplink.codec")
    active = any(c.get(f"compression.{d}.codec") not in (None, "none") for d in ("downlink", "uplink"))
    if active and c.get("client.noop") is True:
        c.fail("client.noop", "must be false with compression (a no-op client echoes the downlink's payload)")


def inert_keys(cfg: Mapping[str, Any]) -> set[str]:
    """Options of a codec that does not use them (for reports' warnings)."""
    from fedconv.config import lookup

    inert: set[str] = set()
    for d in ("downlink", "uplink"):
        codec = lookup(cfg, f"compression.{d}.codec")
        used = KINDS[codec].options if codec in KINDS else ()
        inert |= {f"compression.{d}.{option}" for option in CODEC_OPTIONS if option not in used}
        if codec not in KINDS:
            inert |= {f"compression.{d}.min_size", f"compression.{d}.error_feedback"}
    return inert
