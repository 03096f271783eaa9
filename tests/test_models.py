"""The 2conv family: exact parameter counts (computed by hand here), options, seeding."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedconv.config import compose
from fedconv.learning.models import MODEL_NAMES, build_model, count_parameters, main

SHAPES = [(1, 28, 28), (3, 32, 32)]


def conv(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def linear(i: int, o: int) -> int:
    return i * o + o


def expected_twoconv(variant: str, shape: tuple[int, int, int], *, f1: int = 32, f2: int = 64, k: int = 3,
                     batch_norm: bool = True, head: str = "gap", dense: int = 256, layers: int = 1,
                     classes: int = 10, se_reduction: int = 16) -> int:
    c, h, w = shape
    bias = not batch_norm
    if variant == "dw":
        block1 = c * k * k + conv(c, f1, 1, bias)
        block2 = f1 * k * k + conv(f1, f2, 1, bias)
    elif variant == "mb":
        block1 = conv(c, f1 // 2, 3, bias) + conv(c, f1 - f1 // 2, 5, bias)
        block2 = conv(f1, f2, k, bias)
    else:
        block1 = conv(c, f1, k, bias)
        block2 = conv(f1, f2, k, bias)
    total = block1 + block2 + (bn(f1) + bn(f2) if batch_norm else 0)
    if variant == "res":
        total += conv(c, f2, 1, bias) + (bn(f2) if batch_norm else 0)
    if variant == "se":
        hidden = f2 // se_reduction
        total += linear(f2, hidden) + linear(hidden, f2)
    features = f2 if head == "gap" else f2 * (h // 2) * (w // 2)
    for _ in range(layers):
        total += linear(features, dense)
        features = dense
    return total + linear(features, classes)


def cfg(name: str, **overrides: object) -> dict:
    model = compose([f"model={name}"])["model"]
    model.update(overrides)
    return model


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "name,variant", [("twoconv", "canonical"), ("twoconv_dw", "dw"), ("twoconv_res", "res"),
                     ("twoconv_se", "se"), ("twoconv_mb", "mb")]
)
def test_twoconv_variant_parameter_counts(name: str, variant: str, shape: tuple[int, int, int]) -> None:
    model = build_model(cfg(name), shape, 10)
    assert count_parameters(model) == expected_twoconv(variant, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_cnn_parameter_counts(shape: tuple[int, int, int]) -> None:
    c, h, w = shape
    fedavg = conv(c, 32, 5, True) + conv(32, 64, 5, True) + linear(64 * (h // 4) * (w // 4), 512) + linear(512, 10)
    fh = ((h - 4) // 2 - 4) // 2
    niid = conv(c, 6, 5, True) + conv(6, 16, 5, True) + linear(16 * fh * fh, 120) + linear(120, 84) + linear(84, 10)
    assert count_parameters(build_model(cfg("fedavg_cnn"), shape, 10)) == fedavg
    assert count_parameters(build_model(cfg("niid_cnn"), shape, 10)) == niid


def test_published_reference_counts() -> None:
    assert count_parameters(build_model(cfg("fedavg_cnn"), (1, 28, 28), 10)) == 1_663_370
    assert count_parameters(build_model(cfg("niid_cnn"), (1, 28, 28), 10)) == 44_426


@pytest.mark.parametrize("shape", SHAPES)
def test_depthwise_separable_is_smaller(shape: tuple[int, int, int]) -> None:
    dw = count_parameters(build_model(cfg("twoconv_dw"), shape, 10))
    canonical = count_parameters(build_model(cfg("twoconv"), shape, 10))
    assert dw < canonical


@pytest.mark.parametrize(
    "options",
    [
        dict(filters1=64, filters2=128), dict(kernel_size=5), dict(batch_norm=False), dict(head="flatten"),
        dict(dense_units=512, dense_layers=2), dict(dense_layers=3, head="flatten", batch_norm=False),
    ],
)
def test_option_parameter_counts(options: dict) -> None:
    mapping = dict(filters1="f1", filters2="f2", kernel_size="k", batch_norm="batch_norm", head="head",
                   dense_units="dense", dense_layers="layers")
    model = build_model(cfg("twoconv", **options), (1, 28, 28), 10)
    assert count_parameters(model) == expected_twoconv(
        "canonical", (1, 28, 28), **{mapping[k]: v for k, v in options.items()}
    )


@pytest.mark.parametrize(
    "name,activation,pool,head,shape",
    [
        (n, a, p, h, s)
        for (n, a, p, h), s in zip(
            itertools.product(MODEL_NAMES[:5], ["relu", "leaky_relu", "elu"], ["max", "avg", "strided"], ["gap", "flatten"]),
            itertools.cycle([(1, 28, 28), (3, 32, 32), (3, 64, 64)]),
        )
    ][::7],
)
def test_every_option_runs_forward_and_backward(name: str, activation: str, pool: str, head: str, shape: tuple) -> None:
    model = build_model(cfg(name, activation=activation, pool=pool, head=head), shape, 10)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_all_models_accept_all_input_sizes(name: str, shape: tuple) -> None:
    assert build_model(cfg(name), shape, 10)(torch.randn(2, *shape)).shape == (2, 10)


def test_strided_pool_halves_resolution_without_pool_layer() -> None:
    model = build_model(cfg("twoconv", pool="strided", head="flatten"), (1, 28, 28), 10)
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in model.modules())
    features = model.act2(model.bn2(model.conv2(model.block1(torch.zeros(1, 1, 28, 28)))))
    assert model.output(model.dense(model.head(features))).shape == (1, 10)
    assert model.dense[0].in_features == 64 * 14 * 14


def test_same_seed_same_weights_different_seed_differs() -> None:
    a = build_model(cfg("twoconv"), (1, 28, 28), 10, seed=3).state_dict()
    b = build_model(cfg("twoconv"), (1, 28, 28), 10, seed=3).state_dict()
    c = build_model(cfg("twoconv"), (1, 28, 28), 10, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_he_normal_init_and_zero_biases() -> None:
    model = build_model(cfg("fedavg_cnn"), (1, 28, 28), 10, seed=0)
    fc = model.classifier[0]
    std = float(fc.weight.detach().std())
    assert abs(std - (2.0 / fc.in_features) ** 0.5) / (2.0 / fc.in_features) ** 0.5 < 0.05
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(float(m.bias.detach().abs().sum()) == 0.0 for m in layers)


def test_cli_prints_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "1,663,370" in out and "44,426" in out
    for name in MODEL_NAMES:
        assert name in out


def test_cli_single_model_other_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model=twoconv_dw", "dataset=cifar10"]) == 0
    out = capsys.readouterr().out
    assert "twoconv_dw on 3x32x32 input" in out
    assert f"{expected_twoconv('dw', (3, 32, 32)):,}" in out


def test_cli_unknown_model_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model=nope"]) == 2
    assert "model" in capsys.readouterr().err
