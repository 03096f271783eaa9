"""The 2conv model family: the canonical two-block CNN, its variants and two reference CNNs.

``build_model(cfg, input_shape, num_classes, seed)`` is the only entry point the rest of
fedconv uses; ``fedconv models [model=...] [dataset=...]`` prints layer tables.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from fedconv.checks import Checks

TWOCONV_VARIANTS = {
    "twoconv": "canonical",
    "twoconv_dw": "dw",
    "twoconv_res": "res",
    "twoconv_se": "se",
    "twoconv_mb": "mb",
}
REFERENCE_MODELS = ("fedavg_cnn", "niid_cnn")
MODEL_NAMES = (*TWOCONV_VARIANTS, *REFERENCE_MODELS)
ACTIVATIONS = ("relu", "leaky_relu", "elu")
POOLS = ("max", "avg", "strided")
HEADS = ("gap", "flatten")
LEAKY_SLOPE = 0.01


class ModelConfigError(ValueError):
    """A model option is unknown or does not fit the input; the message names the key."""


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    raise ModelConfigError(f"model.activation: unknown '{name}'; allowed: {', '.join(ACTIVATIONS)}")


def _conv(cin: int, cout: int, k: int, stride: int, bias: bool, separable: bool) -> nn.Module:
    """A k x k 'same' convolution, or its depthwise-separable factorisation."""
    if not separable:
        return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)
    return nn.Sequential(
        nn.Conv2d(cin, cin, k, stride=stride, padding=k // 2, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=bias),
    )


class MultiBranchConv(nn.Module):
    """Parallel 3x3 and 5x5 convolutions whose outputs are concatenated (Inception-style)."""

    def __init__(self, cin: int, cout: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.branch3 = nn.Conv2d(cin, cout // 2, 3, stride=stride, padding=1, bias=bias)
        self.branch5 = nn.Conv2d(cin, cout - cout // 2, 5, stride=stride, padding=2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3(x), self.branch5(x)], dim=1)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global pool, bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


def _first_block(channels: int, filters: int, kernel_size: int, variant: str, batch_norm: bool, activation: str,
                 pool: str) -> nn.Sequential:
    """conv (plain, depthwise-separable or multi-branch) -> [BN] -> act -> pool (none when strided)."""
    stride = 2 if pool == "strided" else 1
    if variant == "mb":
        conv: nn.Module = MultiBranchConv(channels, filters, stride, not batch_norm)
    else:
        conv = _conv(channels, filters, kernel_size, stride, not batch_norm, separable=variant == "dw")
    layers: list[nn.Module] = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm2d(filters))
    layers.append(_activation(activation))
    if pool == "max":
        layers.append(nn.MaxPool2d(2, 2))
    elif pool == "avg":
        layers.append(nn.AvgPool2d(2, 2))
    return nn.Sequential(*layers)


class TwoConv(nn.Module):
    """conv -> [BN] -> act -> pool -> conv -> [BN] -> act -> head -> dense x n -> output."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        variant: str = "canonical",
        filters1: int = 32,
        filters2: int = 64,
        kernel_size: int = 3,
        batch_norm: bool = True,
        activation: str = "relu",
        pool: str = "max",
        head: str = "gap",
        dense_units: int = 256,
        dense_layers: int = 1,
        dropout: float = 0.5,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        if pool not in POOLS:
            raise ModelConfigError(f"model.pool: unknown '{pool}'; allowed: {', '.join(POOLS)}")
        if head not in HEADS:
            raise ModelConfigError(f"model.head: unknown '{head}'; allowed: {', '.join(HEADS)}")
        if h < 2 or w < 2:
            raise ModelConfigError(f"input {input_shape} is too small for a 2x2 downsampling")
        bias = not batch_norm
        self.block1 = _first_block(c, filters1, kernel_size, variant, batch_norm, activation, pool)
        self.conv2 = _conv(filters1, filters2, kernel_size, 1, bias, separable=variant == "dw")
        self.bn2 = nn.BatchNorm2d(filters2) if batch_norm else nn.Identity()
        self.shortcut: nn.Module | None = None
        if variant == "res":
            proj: list[nn.Module] = [nn.Conv2d(c, filters2, 1, stride=2, bias=bias)]
            if batch_norm:
                proj.append(nn.BatchNorm2d(filters2))
            self.shortcut = nn.Sequential(*proj)
        self.act2 = _activation(activation)
        self.se = SqueezeExcite(filters2, se_reduction) if variant == "se" else None
        if head == "gap":
            self.head: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            features = filters2
        else:
            self.head = nn.Flatten()
            features = filters2 * (h // 2) * (w // 2)
        dense: list[nn.Module] = []
        for _ in range(dense_layers):
            dense += [nn.Linear(features, dense_units), _activation(activation), nn.Dropout(dropout)]
            features = dense_units
        self.dense = nn.Sequential(*dense)
        self.output = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.block1(x)))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        y = self.act2(y)
        if self.se is not None:
            y = self.se(y)
        return self.output(self.dense(self.head(y)))


class FedAvgCNN(nn.Module):
    """The CNN of McMahan et al. (2017): 1,663,370 parameters on 28x28x1 input."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * (h // 4) * (w // 4), 512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class NiidCNN(nn.Module):
    """The NIID-Bench simple CNN (Li et al. 2022): 44,426 parameters on 28x28x1 input."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = input_shape
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ModelConfigError(f"model.name=niid_cnn needs inputs of at least 16x16, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * fh * fw, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def init_weights(model: nn.Module, activation: str, seed: int) -> None:
    """He-normal weights for conv/linear layers, zero biases, from a seeded generator. A model
    on the ``meta`` device (shapes only) has no values to set: its layers are skipped, which
    also spares the process PyTorch's compiler front end, which a meta tensor's ``normal_``
    imports (≈ 2 s of CPU)."""
    gen = torch.Generator().manual_seed(int(seed))
    nonlinearity: Literal["leaky_relu", "relu"] = "leaky_relu" if activation == "leaky_relu" else "relu"
    slope = LEAKY_SLOPE if activation == "leaky_relu" else 0.0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.is_meta:
            nn.init.kaiming_normal_(module.weight, a=slope, nonlinearity=nonlinearity, generator=gen)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


TWOCONV_KEYS = (
    "filters1", "filters2", "kernel_size", "batch_norm", "activation", "pool", "head",
    "dense_units", "dense_layers", "dropout", "se_reduction",
)


def build_model(
    cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int, seed: int = 0
) -> nn.Module:
    """Build and seed-initialise the model a ``model`` config group describes."""
    name = str(cfg["name"])
    if name in TWOCONV_VARIANTS:
        kwargs = {k: cfg[k] for k in TWOCONV_KEYS if k in cfg}
        model: nn.Module = TwoConv(input_shape, num_classes, variant=TWOCONV_VARIANTS[name], **kwargs)
    elif name == "fedavg_cnn":
        model = FedAvgCNN(input_shape, num_classes)
    elif name == "niid_cnn":
        model = NiidCNN(input_shape, num_classes)
    else:
        raise ModelConfigError(f"model.name: unknown '{name}'; allowed: {', '.join(MODEL_NAMES)}")
    init_weights(model, str(cfg.get("activation", "relu")), seed)
    return model


def channels_last(model: nn.Module, back: bool = False) -> nn.Module:
    """The model in channels-last layout, in place (oneDNN's fast convolution path on CPU);
    ``back=True`` returns it to the default (contiguous) layout."""
    layout = torch.contiguous_format if back else torch.channels_last
    return model.to(memory_format=layout)  # type: ignore[call-overload]  # torch's stubs omit memory_format


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_bytes(model: nn.Module) -> int:
    """Bytes of everything a global model carries: parameters and float buffers."""
    return sum(t.numel() * t.element_size() for t in transmitted_state(model).values())


def transmitted_state(model: nn.Module, copy: bool = False) -> dict[str, torch.Tensor]:
    """The state exchanged in federated rounds (BatchNorm's batch counter stays local);
    ``copy`` detaches it from the model (the model may train on)."""
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    return {k: v.detach().clone() for k, v in state.items()} if copy else state


def parameter_names(model: nn.Module) -> frozenset[str]:
    """Names of the trainable parameters in :func:`transmitted_state`."""
    return frozenset(name for name, _ in model.named_parameters())


def buffer_names(model: nn.Module) -> frozenset[str]:
    """Names of the transmitted arrays that are not parameters: BatchNorm's running statistics."""
    return frozenset(transmitted_state(model)) - parameter_names(model)


def batchnorm_names(model: nn.Module) -> frozenset[str]:
    """Names of every transmitted array of a BatchNorm layer: its affine weight and bias and
    its running statistics (what FedBN keeps on the client)."""
    names = {f"{prefix}.{key}" if prefix else key
             for prefix, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
             for key in module.state_dict()}
    return frozenset(names & set(transmitted_state(model)))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm layer's running statistics as the plain mean over
    ``batches`` (AdaBN, Li et al. 2016); the affine parameters and all other weights stay."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    was_training = model.training
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def layer_table(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, str, str, int]]:
    """(name, type, output shape, own parameters) for every leaf module, from a dry run."""
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            def hook(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
                params = sum(p.numel() for p in mod.parameters(recurse=False))
                rows.append((name, type(mod).__name__, "x".join(map(str, out.shape[1:])), params))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return rows


def format_summary(name: str, model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    lines = [f"{name} on {'x'.join(map(str, input_shape))} input", f"{'layer':<22}{'type':<18}{'output':<14}{'params':>10}"]
    for layer, kind, shape, params in layer_table(model, input_shape):
        lines.append(f"{layer:<22}{kind:<18}{shape:<14}{params:>10,}")
    n = count_parameters(model)
    lines.append(f"total parameters: {n:,}   size: {state_bytes(model) / 1e6:.3f} MB (fp32 parameters + buffers)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print layer tables. With no ``model=`` override, every variant is printed."""
    from fedconv.config import ConfigError, compose
    from fedconv.data.datasets import declared_shape

    overrides = list(sys.argv[1:] if argv is None else argv)
    names = [None] if any(o.startswith("model=") for o in overrides) else list(MODEL_NAMES)
    summary = []
    try:
        for name in names:
            cfg = compose(overrides + ([f"model={name}"] if name else []))
            ds = cfg["dataset"]
            shape = declared_shape(ds)
            model = build_model(cfg["model"], shape, int(ds["num_classes"]), int(cfg["seed"]))
            print(format_summary(cfg["model"]["name"], model, shape), end="\n\n")
            summary.append((cfg["model"]["name"], count_parameters(model), state_bytes(model) / 1e6))
    except (ConfigError, ModelConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(summary) > 1:
        print(f"{'model':<14}{'parameters':>14}{'MB':>10}")
        for name, n, mb in summary:
            print(f"{name:<14}{n:>14,}{mb:>10.3f}")
    return 0


def config_problems(c: Checks) -> None:
    """The ``model`` group."""
    c.one_of("model.name", MODEL_NAMES)
    c.boolean("model.batch_norm")
    if c.get("model.name") not in TWOCONV_VARIANTS:
        return
    c.one_of("model.activation", ACTIVATIONS)
    c.one_of("model.pool", POOLS)
    c.one_of("model.head", HEADS)
    for key in ("filters1", "filters2", "dense_units", "dense_layers", "se_reduction"):
        c.in_range(f"model.{key}", 1, integer=True)
    c.in_range("model.kernel_size", 1, 15, integer=True)
    kernel = c.get("model.kernel_size")
    if isinstance(kernel, int) and kernel % 2 == 0:
        c.fail("model.kernel_size", "must be odd ('same' padding)")
    c.in_range("model.dropout", 0, 1, hi_open=True)


if __name__ == "__main__":
    sys.exit(main())
