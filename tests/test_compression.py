"""The codecs of fedconv.wire.compression against bounds computed here, their wire format, the
server's handling of compressed replies, and the config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_algorithms import COUNTS, NODES, strategy_cfg
from test_strategies import FakeGrid, task_identity  # noqa: F401  (autouse fixture)

from fedconv import algorithms
from fedconv.config import ConfigError, compose
from fedconv.federation.cohorts import Cohorts, Phase
from fedconv.federation.rounds import FederatedRounds
from fedconv.validation import validate
from fedconv.wire.compression import (
    PAYLOAD,
    Codec,
    Link,
    PayloadError,
    compress_update,
    decode_arrays,
    encode_arrays,
    encoded_names,
    position_bytes,
    rng_for,
)


def channels(seed: int = 0, shape: tuple[int, ...] = (16, 8, 3, 3)) -> np.ndarray:
    """Output channels of very different ranges and offsets, as a layer's update has."""
    rng = np.random.default_rng(seed)
    spread = 10.0 ** rng.uniform(-4, 0, size=(shape[0],) + (1,) * (len(shape) - 1))
    offset = rng.normal(size=spread.shape) * spread
    return (offset + spread * rng.normal(size=shape)).astype(np.float32)


def roundtrip(codec: Codec, x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    payload = codec.encode(x, np.random.default_rng(seed))
    assert payload.dtype == np.uint8 and payload.size == codec.payload_bytes(x.shape)
    return payload, codec.decode(payload, x.shape, np.random.default_rng(seed))


# ------------------------------------------------------------------ casts


def test_fp16_and_bf16_are_the_casts() -> None:
    x = channels(1)
    _, fp16 = roundtrip(Codec("fp16"), x)
    np.testing.assert_array_equal(fp16, x.astype(np.float16).astype(np.float32))
    _, bf16 = roundtrip(Codec("bf16"), x)
    rel = np.abs(bf16 - x) / np.abs(x)
    assert rel.max() <= 2.0**-8 * (1 + 1e-6)  # 7 stored mantissa bits, round to nearest: half a step
    assert np.all(np.abs(bf16.view(np.uint32)) & 0xFFFF == 0)


# ------------------------------------------------------------------ int8 / int4


@pytest.mark.parametrize("codec", ["int8", "int4"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_affine_quantization_errs_by_at_most_half_a_step(codec: str, granularity: str) -> None:
    c = Codec(codec, granularity=granularity)
    x = channels(2)
    payload, y = roundtrip(c, x)
    g = x.shape[0] if granularity == "channel" else 1
    rows_x, rows_y = x.reshape(g, -1).astype(np.float64), y.reshape(g, -1).astype(np.float64)
    levels = 2 ** (4 if codec == "int4" else 8) - 1
    scale = (payload[2 * g : 4 * g].view("<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    lo, hi = rows_x.min(axis=1), rows_x.max(axis=1)
    # The step sent covers [min, max] and exceeds the exact (max − min)/levels by bfloat16's rounding only.
    assert np.all(scale * levels >= hi - lo)
    assert np.all(scale <= ((hi - lo) + np.abs(lo) / 128) / levels * (1 + 2.0**-7) + 1e-30)
    err = np.abs(rows_y - rows_x).max(axis=1)
    assert np.all(err <= scale / 2 + 1e-6 * np.abs(rows_x).max(axis=1)), (err / scale).max()
    if granularity == "channel":  # channels of tiny range keep their precision
        tensor = Codec(codec, granularity="tensor")
        _, coarse = roundtrip(tensor, x)
        assert np.abs(coarse - x).max(axis=(1, 2, 3)).min() > err.min()


def test_affine_quantization_keeps_a_constant_channel_exactly_up_to_bfloat16() -> None:
    x = np.full((4, 10), 0.5, dtype=np.float32)
    x[1] = np.linspace(-1, 1, 10)
    _, y = roundtrip(Codec("int8"), x)
    np.testing.assert_array_equal(y[0], x[0])
    assert np.abs(y[1] - x[1]).max() <= 2 / 255 / 2 * 1.01


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased(codec: str) -> None:
    c = Codec(codec, granularity="tensor", rounding="stochastic")
    x = channels(3, shape=(2, 50))
    n = 3000
    mean = np.mean([roundtrip(c, x, seed)[1] for seed in range(n)], axis=0, dtype=np.float64)
    payload, _ = roundtrip(c, x)
    scale = float((payload[2:4].view("<u2").astype(np.uint32) << 16).view(np.float32)[0])
    # Each draw errs by at most one step and has variance <= scale²/4: 6 standard errors.
    assert np.abs(mean - x).max() <= 6 * scale / 2 / math.sqrt(n)
    nearest = Codec(codec, granularity="tensor")
    assert np.abs(roundtrip(nearest, x)[1] - x).max() <= scale / 2 * 1.001  # the nearest code, for comparison


def test_int4_packs_two_codes_per_byte() -> None:
    x = channels(4, shape=(3, 7))  # 7 codes per channel, 21 in all: an odd count
    assert Codec("int4").payload_bytes(x.shape) == 4 * 3 + 11
    payload, y = roundtrip(Codec("int4"), x)
    bad = payload.copy()
    bad[-1] |= 0xF0  # the padding nibble
    with pytest.raises(PayloadError, match="padding"):
        Codec("int4").decode(bad, x.shape, np.random.default_rng(0))


# ------------------------------------------------------------------ top-k / rand-k


@pytest.mark.parametrize(("n", "fraction"), [(18432, 0.1), (18432, 0.01), (70000, 0.001), (300, 0.5)])
def test_topk_keeps_exactly_the_k_largest_magnitudes(n: int, fraction: float) -> None:
    rng = np.random.default_rng(n)
    x = rng.permutation(np.linspace(-1, 1, n)).astype(np.float32)  # distinct magnitudes but ±pairs
    x += np.float32(1e-7) * rng.random(n).astype(np.float32)
    c = Codec("topk", fraction=fraction)
    payload, y = roundtrip(c, x)
    k = math.ceil(fraction * n)
    want = set(np.argsort(-np.abs(x.astype(np.float64)))[:k].tolist())
    assert set(np.flatnonzero(y).tolist()) == want
    np.testing.assert_array_equal(y[list(want)], x[list(want)])
    bitmap, indices = math.ceil(n / 8), k * (2 if n <= 65536 else 4)
    assert payload.size == 4 * k + min(bitmap, indices) == 4 * k + position_bytes(n, k)


def test_randk_positions_come_from_the_shared_seed_and_are_unbiased_without_error_feedback() -> None:
    x = channels(5, shape=(40, 25)).reshape(-1)
    c = Codec("randk", fraction=0.1)
    payload, y = roundtrip(c, x, seed=7)
    assert payload.size == 4 * 100  # values only: the receiver draws the same positions
    kept = np.flatnonzero(y)
    assert len(kept) == 100
    np.testing.assert_allclose(y[kept], x[kept] * 10, rtol=1e-6)  # n/k scaling
    mean = np.mean([roundtrip(c, x, seed)[1] for seed in range(4000)], axis=0, dtype=np.float64)
    # Each element is x·n/k with probability k/n: variance x²(n/k − 1).
    assert np.all(np.abs(mean - x) <= 6 * np.abs(x) * 3 / math.sqrt(4000) + 1e-9)
    ef = Codec("randk", fraction=0.1, error_feedback=True)
    _, y_ef = roundtrip(ef, x, seed=7)
    np.testing.assert_array_equal(np.flatnonzero(y_ef), kept)
    np.testing.assert_array_equal(y_ef[kept], x[kept])  # error feedback: unscaled


# ------------------------------------------------------------------ QSGD


def test_qsgd_is_unbiased_with_levels_of_the_bucket_norm() -> None:
    c = Codec("qsgd", levels=4, bucket=64)
    x = channels(6, shape=(3, 50)).reshape(-1)
    payload, y = roundtrip(c, x)
    assert payload.size == 4 * 3 + 150
    norms = payload[:12].view(np.float32)
    buckets = np.pad(x.astype(np.float64), (0, 42)).reshape(3, 64)
    np.testing.assert_allclose(norms, np.linalg.norm(buckets, axis=1), rtol=1e-6)
    levels = np.pad(y.astype(np.float64), (0, 42)).reshape(3, 64) / norms[:, None] * 4
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-4)  # whole levels of norm/s
    assert np.all(np.sign(y[y != 0]) == np.sign(x[y != 0]))
    n = 4000
    mean = np.mean([roundtrip(c, x, seed)[1] for seed in range(n)], axis=0, dtype=np.float64)
    step = np.repeat(norms.astype(np.float64) / 4, 64)[:150]
    assert np.all(np.abs(mean - x) <= 6 * step / 2 / math.sqrt(n))


# ------------------------------------------------------------------ error feedback


def test_error_feedback_sent_plus_residual_is_the_sum_of_true_updates_exactly() -> None:
    """Dyadic values make float32 sums exact, so equality is exact, round after round."""
    rng = np.random.default_rng(0)
    spec = {"w": ((30, 40), "float32"), "b": ((5,), "float32")}
    c = Codec("topk", fraction=0.1, error_feedback=True, min_size=100)
    names = encoded_names(spec, frozenset(), c)
    assert names == {"w"}
    x = {"w": np.zeros((30, 40), np.float32), "b": np.zeros(5, np.float32)}
    residual: dict[str, np.ndarray] | None = None
    true_sum = np.zeros((30, 40), np.float64)
    sent_sum = np.zeros((30, 40), np.float64)
    for r in range(1, 8):
        update = (rng.integers(-512, 512, size=(30, 40)) / 1024).astype(np.float32)
        trained = {"w": x["w"] + update, "b": x["b"] + 1}
        key = (0, 1, r, 3)
        payload, residual_new = compress_update(trained, x, spec, c, names, key, residual)
        got = decode_arrays(payload, spec, c, names, key, reference=x)
        sent = got["w"] - x["w"]
        np.testing.assert_array_equal(got["b"], trained["b"])  # raw
        before = update + (residual["w"] if residual else 0)
        np.testing.assert_array_equal(sent + residual_new["w"], before)  # disjoint supports: exact
        assert np.count_nonzero(sent) == 120
        true_sum += update
        sent_sum += sent
        np.testing.assert_array_equal(sent_sum + residual_new["w"], true_sum)
        residual = residual_new


# ------------------------------------------------------------------ records and malformed payloads


SPEC = {"conv.weight": ((8, 4, 3, 3), "float32"), "bn.running_mean": ((8,), "float32"), "fc.bias": ((10,), "float32")}


def test_a_record_is_one_array_whose_lengths_follow_from_the_spec() -> None:
    rng = np.random.default_rng(1)
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, (s, _) in SPEC.items()}
    c = Codec("int8", min_size=100)
    names = encoded_names(SPEC, frozenset({"bn.running_mean"}), c)
    assert names == {"conv.weight"}  # a buffer and a tiny tensor travel raw
    payload = encode_arrays(arrays, SPEC, c, names, (0, 0, 1, -1))
    assert payload.size == c.payload_bytes((8, 4, 3, 3)) + 4 * 8 + 4 * 10
    out = decode_arrays(payload, SPEC, c, names, (0, 0, 1, -1))
    assert list(out) == list(SPEC)
    np.testing.assert_array_equal(out["bn.running_mean"], arrays["bn.running_mean"])
    np.testing.assert_array_equal(out["fc.bias"], arrays["fc.bias"])
    with pytest.raises(PayloadError, match="payload has 10 bytes, expected"):
        decode_arrays(payload[:10], SPEC, c, names, (0, 0, 1, -1))


@pytest.mark.parametrize(("codec", "tamper", "message"), [
    (Codec("int8"), lambda p: p.__setitem__(slice(0, 2), np.frombuffer(np.float32(np.nan).tobytes()[2:], np.uint8)),
     "non-finite lo"),
    (Codec("int8"), lambda p: p.__setitem__(slice(16, 18), np.array([0xC0, 0xFF], np.uint8)), "non-finite scale"),
    (Codec("topk", fraction=0.01), lambda p: p.__setitem__(slice(-2, None), np.array([0xFF, 0xFF], np.uint8)),
     r"indices not strictly increasing in \[0, 288\)"),
    (Codec("topk", fraction=0.5), lambda p: p.__setitem__(-1, p[-1] ^ 0x01), "bitmap marks 143 positions, expected 144"),
    (Codec("qsgd"), lambda p: p.__setitem__(slice(4, 5), np.array([100], np.uint8)), r"levels outside \[-16, 16\]"),
])
def test_malformed_payloads_are_named(codec: Codec, tamper, message: str) -> None:  # noqa: ANN001
    spec = {"conv.weight": ((8, 4, 3, 3), "float32")}
    x = {"conv.weight": channels(7, shape=(8, 4, 3, 3))}
    names = frozenset({"conv.weight"})
    payload = encode_arrays(x, spec, codec, names, (1, 1, 1, 1)).copy()
    tamper(payload)
    with pytest.raises(PayloadError, match=rf"array 'conv.weight' \({codec.codec}\): .*{message}"):
        decode_arrays(payload, spec, codec, names, (1, 1, 1, 1))


def test_the_same_key_draws_the_same_and_another_key_other_numbers() -> None:
    a = rng_for((0, 1, 2, 3), "w").random(4)
    assert np.array_equal(a, rng_for((0, 1, 2, 3), "w").random(4))
    assert not np.array_equal(a, rng_for((0, 1, 2, 4), "w").random(4))
    assert not np.array_equal(a, rng_for((0, 1, 2, 3), "b").random(4))


# ------------------------------------------------------------------ the server's round


def _driver(link: Link) -> FederatedRounds:
    cohorts = Cohorts.owned({node: i for i, node in enumerate(NODES)}, seed=0, train_per_round=len(NODES),
                            eval_per_round=0)
    return FederatedRounds(algorithms.get("fedavg"), strategy_cfg("fedavg"), cohorts, lambda r: 0.1, link=link)


def _model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(16, 32)).astype(np.float32), "b": rng.normal(size=16).astype(np.float32)}


def _round(link: Link, tamper: dict[int, object] | None = None) -> tuple[FederatedRounds, dict[str, np.ndarray] | None]:
    strategy = _driver(link)
    x = _model(0)
    spec = {k: (v.shape, "float32") for k, v in x.items()}
    msgs = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in x.items()}), ConfigRecord({}),
                                    FakeGrid(NODES))
    replies = []
    for m in msgs:
        pid = Phase.pid_of(m)
        record = m.content.array_records["arrays"]
        received = (decode_arrays(record[PAYLOAD].numpy(), spec, link.down, encoded_names(spec, set(), link.down), ())
                    if link.down.active else {k: a.numpy() for k, a in record.items()})
        trained = {k: v + np.float32(0.01 * (pid + 1)) for k, v in received.items()}
        names = encoded_names(spec, set(), link.up)
        payload, _ = compress_update(trained, received, spec, link.up, names, link.up_key(1, pid), None)
        if tamper and pid in tamper:
            payload = tamper[pid](payload)  # type: ignore[operator]
        metrics = MetricRecord({"train_loss": 1.0, "train_accuracy": 0.5, "num-examples": COUNTS[pid], "steps": 3})
        replies.append(Message(RecordDict({"arrays": ArrayRecord({PAYLOAD: Array(payload)}), "metrics": metrics}),
                               reply_to=m))
    arrays, _ = strategy.aggregate_train(1, replies)
    return strategy, None if arrays is None else {k: a.numpy() for k, a in arrays.items()}


def test_the_server_applies_decoded_updates_to_its_exact_model_and_counts_the_compressed_bytes() -> None:
    link = Link(down=Codec("int8", min_size=64), up=Codec("int8", min_size=64))
    strategy, got = _round(link)
    rec = strategy.current
    assert got is not None and rec.clients_ok == len(NODES) and rec.clients_rejected == 0
    x = _model(0)
    shift = sum(c * 0.01 * (i + 1) for i, c in enumerate(COUNTS)) / sum(COUNTS)
    # Each client's update is +0.01(i+1) of the model it received; the server adds it to x itself.
    np.testing.assert_allclose(got["w"], x["w"] + shift, atol=(x["w"].max() - x["w"].min()) / 255)
    np.testing.assert_allclose(got["b"], x["b"] + shift, atol=1e-6)  # raw (< min_size)
    raw = sum(len(Array(v).data) for v in x.values())
    assert rec.bytes_down_raw == rec.bytes_up_raw == len(NODES) * raw
    assert rec.bytes_down == rec.bytes_up < 0.4 * rec.bytes_down_raw


def test_a_malformed_compressed_reply_is_rejected_with_its_reason_never_aggregated() -> None:
    link = Link(up=Codec("topk", fraction=0.05, min_size=64))
    clean_strategy, clean = _round(link)

    def out_of_range(p: np.ndarray) -> np.ndarray:
        p = p.copy()
        p[-66:-64] = [0xFF, 0xFF]  # the last of w's 26 uint16 indices (before b's 64 raw bytes) -> 65535
        return p

    strategy, got = _round(link, {2: out_of_range, 4: lambda p: p[:-3], 5: lambda p: p.astype(np.float32)})
    rec = strategy.current
    assert rec.clients_rejected == 3 and rec.clients_ok == len(NODES) - 3
    reasons = "\n".join(rec.failures)
    assert "partition 2: reply rejected: compressed update: array 'w' (topk): indices not strictly increasing" in reasons
    assert "partition 4: reply rejected: compressed update: payload has" in reasons
    assert "partition 5: reply rejected: compressed update: payload is float32" in reasons
    assert got is not None and clean is not None and not np.allclose(got["w"], clean["w"])


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(("overrides", "message"), [
    (["compression.downlink.codec=topk"], "compression.downlink.codec='topk': topk is defined on updates"),
    (["compression.uplink.codec=zip"], "compression.uplink.codec='zip': must be one of none, fp16"),
    (["compression.uplink.error_feedback=true"], "compression.uplink.error_feedback=True: needs a lossy"),
    (["compression=topk", "compression.uplink.fraction=0"], "compression.uplink.fraction=0: must be in (0, 1]"),
    (["compression=qsgd", "compression.uplink.levels=200"], "compression.uplink.levels=200: must be in [1, 127]"),
    (["compression=int8", "client.noop=true"], "client.noop=True: must be false with compression"),
])
def test_bad_compression_configs_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate(compose(overrides))
    assert message in str(exc.value)


def test_every_preset_validates() -> None:
    for preset in ("none", "fp16", "bf16", "int8", "int8_both", "int4", "topk", "randk", "qsgd"):
        validate(compose([f"compression={preset}"]))


def test_report_labels_tell_keys_with_the_same_last_part_apart() -> None:
    from fedconv.runs.report import short_names

    assert short_names(["compression.downlink.codec", "compression.uplink.codec", "strategy.name", "seed"]) == {
        "compression.downlink.codec": "downlink.codec", "compression.uplink.codec": "uplink.codec",
        "strategy.name": "name", "seed": "seed"}
    assert short_names(["strategy.mu", "mu"]) == {"strategy.mu": "strategy.mu", "mu": "mu"}


def test_a_run_saved_before_new_keys_existed_is_the_same_config_as_one_with_their_defaults() -> None:
    from fedconv.simulate import _results_config

    today = compose([])
    before = {k: v for k, v in today.items() if k != "compression"}
    before["client"] = {k: v for k, v in today["client"].items() if k not in ("precision", "compile")}
    before["server"] = {k: v for k, v in today["server"].items() if k not in ("fed_eval", "eval_precision")}
    assert _results_config(before) == _results_config(today)
    assert _results_config(before) != _results_config(compose(["client.precision=bf16"]))
    assert _results_config(before) != _results_config(compose(["client.compile=true"]))
    assert _results_config(before) != _results_config(compose(["compression=int8"]))
