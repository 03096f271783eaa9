"""Views of a trained model, as a course shows the 2conv: the first layer's filters, the
feature maps of both convolutional blocks for one image, and the confusion matrix.

The arrays come from plain functions (:func:`first_filters`, :func:`feature_maps`), the
pictures from :func:`draw_filters`, :func:`draw_feature_maps` and :func:`draw_confusion`
(matplotlib, the ``report`` extra). ``fedconv inspect <run dir>`` writes all three for a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first convolution (the 2conv's first block; a depthwise-separable one's
    depthwise part)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no convolution")


def first_filters(model: nn.Module) -> np.ndarray:
    """The first convolution's kernels, ``(filters, in_channels, k, k)``."""
    return first_conv(model).weight.detach().cpu().numpy().copy()


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outputs that are "the feature maps of a block": the 2conv's ``block1`` (conv, [BN],
    act, pool) and ``act2`` (after its second conv); another model's first two convolutions."""
    named = dict(model.named_modules())
    if "block1" in named and "act2" in named:
        return [("block 1", named["block1"]), ("block 2", named["act2"])]
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][:2]
    return [(f"conv {i + 1} ({name})", m) for i, (name, m) in enumerate(convs)]


def feature_maps(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Each block's output for ``images`` (normalized, ``(n, c, h, w)``), in eval mode:
    ``{block: (n, channels, h', w')}``."""
    found: dict[str, np.ndarray] = {}
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: found.__setitem__(name, out.detach().cpu().numpy().copy()))
        for name, module in _blocks(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return found


def _grid(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / cols)), cols


def draw_filters(filters: np.ndarray, path: Path) -> Path:
    """One tile per filter (grey for one input channel, colour for three), each scaled to its range."""
    import matplotlib.pyplot as plt

    rows, cols = _grid(len(filters))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(filters):
            f = filters[i]
            f = (f - f.min()) / (np.ptp(f) or 1.0)
            ax.imshow(f[0] if f.shape[0] != 3 else f.transpose(1, 2, 0), cmap="gray" if f.shape[0] != 3 else None)
    fig.suptitle(f"first layer: {len(filters)} filters, {filters.shape[2]}x{filters.shape[3]}", fontsize=9)
    return _save(fig, path)


def draw_feature_maps(maps: dict[str, np.ndarray], image: np.ndarray, label: str, path: Path, most: int = 16) -> Path:
    """The input image, then up to ``most`` channels of each block's maps (the first image of the batch)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(maps), most + 1, figsize=((most + 1) * 0.75, len(maps) * 0.95 + 0.3), squeeze=False)
    for row, (block, m) in zip(axes, maps.items(), strict=True):
        row[0].imshow(image.squeeze() if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray")
        row[0].set_title(label if block == next(iter(maps)) else "", fontsize=7)
        row[0].set_ylabel(block, fontsize=7)
        for j, ax in enumerate(row[1:]):
            if j < m.shape[1]:
                ax.imshow(m[0, j], cmap="viridis")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("feature maps (the first channels of each block)", fontsize=9)
    return _save(fig, path)


def draw_confusion(matrix: Sequence[Sequence[int]], path: Path) -> Path:
    """The confusion matrix (rows: true label), counts in the cells."""
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(0.5 * len(cm) + 1.5, 0.5 * len(cm) + 1.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(len(cm)))
    ax.set_yticks(range(len(cm)))
    ax.set_title("confusion matrix (central test set, final round)", fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
