"""Local training and evaluation loops, shared by clients and server.

An algorithm's client side (FedProx's proximal term, q-FedAvg's loss report, ...) enters
through its :class:`TrainHook`, never through arguments here.

Images stay uint8 until a batch is drawn; normalisation and optional augmentation happen
per batch, so a client never holds a float copy of its whole partition.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedconv.checks import Checks
from fedconv.learning.models import channels_last
from fedconv.sections import Client, Server

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "step", "cosine")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for images in [0, 1]: the one normalisation, used in
    training and evaluation and built into exported models."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class Normalizer:
    """uint8 batches -> normalised float tensors (train-set statistics), with optional augmentation."""

    layer: Normalize
    augment: bool = False

    @classmethod
    def from_stats(cls, mean: Sequence[float], std: Sequence[float], augment: bool = False) -> Normalizer:
        return cls(Normalize(mean, std), augment)

    def __call__(self, x_uint8: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.from_numpy(np.array(x_uint8, dtype=np.float32)).div_(255.0)
        if self.augment and generator is not None:
            x = augment_batch(x, generator)
        return self.layer(x)


@dataclass
class LocalTraining:
    """What a hook may look at when a client starts training: the model (holding the global
    weights), the client's training images and labels, how batches are normalised, and the
    round's local learning rate."""

    model: nn.Module
    images: np.ndarray
    labels: np.ndarray
    normalize: Callable[[np.ndarray], torch.Tensor]
    lr: float = 0.0


Tensors = dict[str, "torch.Tensor"]


class TrainHook:
    """An algorithm's additions to local training; the default adds nothing (FedAvg).

    The client calls :meth:`receive` with the server's extra ArrayRecords and this
    partition's stored state (stateful algorithms); :func:`fedconv.learning.training.train_local`
    calls :meth:`begin` once before the first step, :meth:`loss` for every batch (its value
    is added to the data loss), :meth:`before_step` after ``backward`` and before the
    optimizer step (gradient corrections), :meth:`after_step` after it (corrections of the
    weights themselves), and :meth:`end` after the last step; the client
    then sends :meth:`reply_metrics` and :meth:`reply_arrays` and stores :meth:`new_state`."""

    def receive(self, arrays: Mapping[str, Tensors], state: Tensors | None) -> None:
        """The message's ArrayRecords other than the model, and the state this partition
        stored after its last accepted round (None: it has none yet)."""

    def begin(self, local: LocalTraining) -> None:
        """Before the first step, with the received global weights in ``local.model``."""

    def loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to each batch's loss, or None."""
        return None

    def before_step(self, model: nn.Module) -> None:
        """After ``backward()``, before ``optimizer.step()``."""

    def after_step(self, model: nn.Module) -> None:
        """After ``optimizer.step()``."""

    def end(self, model: nn.Module, steps: int) -> None:
        """After the last step; ``steps`` optimizer steps were taken."""

    def reply_metrics(self) -> dict[str, float]:
        """Extra metrics this algorithm's server side reads from the reply."""
        return {}

    def reply_arrays(self) -> dict[str, Tensors]:
        """Extra ArrayRecords of the reply (by record name), as the wire declares them."""
        return {}

    def new_state(self) -> Tensors | None:
        """The state to keep for the next round this partition trains (None: keep nothing)."""
        return None


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with padding, horizontal flip, and (3-channel) brightness/contrast jitter."""
    n, c, h, w = x.shape
    pad = 4 if h >= 32 else 2
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    x = _crop(padded, dy, dx, h, w)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if c == 3:
        brightness = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * brightness
        x = x.clamp_(0.0, 1.0)
    return x


def _crop(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return torch.stack([padded[i, :, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w] for i in range(len(dy))])


def make_optimizer(model: nn.Module, cfg: Client, lr: float) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam, as ``client.optimizer`` says."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class TrainResult:
    loss: float
    accuracy: float
    num_examples: int
    steps: int


PRECISIONS = ("fp32", "bf16")


def autocast(precision: str) -> torch.autocast:
    """bfloat16 autocast of the forward pass when ``precision`` is ``bf16`` (opt-in): the
    convolutions and matrix products run in bf16 (AVX512-BF16 / AMX on recent x86 CPUs),
    while the weights, their gradients, the optimizer state and everything on the wire stay
    float32; an algorithm's own loss term is added outside, in float32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def compiled(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile(model)`` (inductor; on CPU, C++ kernels for the elementwise work around
    oneDNN's convolutions), made once per model object: a worker process keeps its model and
    so compiles once, and inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default
    under /tmp) spares later processes most of the cost. The compiled module shares the
    model's parameters, so loading weights into the model is enough."""
    found: Callable[[torch.Tensor], torch.Tensor] | None = model.__dict__.get("_fedconv_compiled")
    if found is None:
        found = torch.compile(model)
        object.__setattr__(model, "_fedconv_compiled", found)  # not a submodule: no state_dict entry
    return found


def train_local(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    normalizer: Normalizer,
    cfg: Client,
    *,
    lr: float,
    epochs: int,
    hook: TrainHook | None = None,
    seed: int = 0,
    max_steps: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on one client's data; returns mean loss/accuracy over all steps.

    ``hook`` is the algorithm's client side (default: plain local SGD, as FedAvg).
    ``max_steps`` cuts the work short (a straggler that runs out of time mid-epoch).

    The model trains in channels-last layout, oneDNN's fast path for convolutions on CPU
    (the canonical 2conv's step is about a quarter faster), and is handed back in the
    default layout, so callers and the transmitted weights never see the difference."""
    channels_last(model)
    try:
        return _train_steps(model, images, labels, normalizer, cfg, lr=lr, epochs=epochs,
                            hook=hook or TrainHook(), seed=seed, max_steps=max_steps)
    finally:
        channels_last(model, back=True)


def _train_steps(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, normalizer: Normalizer,
    cfg: Client, *, lr: float, epochs: int, hook: TrainHook, seed: int, max_steps: int | None,
) -> TrainResult:
    hook.begin(LocalTraining(model, images, labels, normalizer, lr))
    model.train()
    optimizer = make_optimizer(model, cfg, lr)
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    batch = cfg.batch_size
    n = len(labels)
    total_loss = 0.0
    correct = 0
    seen = 0
    steps = 0
    labels_t = torch.from_numpy(np.array(labels, dtype=np.int64))
    forward = compiled(model) if cfg.compile else model
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch):
            if max_steps is not None and steps >= max_steps:
                break
            idx = np.sort(order[start : start + batch])
            if len(idx) < 2 and n >= 2:  # a 1-example batch breaks BatchNorm statistics
                continue
            x = normalizer(images[idx], gen).contiguous(memory_format=torch.channels_last)
            y = labels_t[idx]
            optimizer.zero_grad(set_to_none=True)
            with autocast(cfg.precision):
                logits = forward(x)
                loss = criterion(logits, y)
            extra = hook.loss(model)
            if extra is not None:
                loss = loss + extra
            loss.backward()
            hook.before_step(model)
            optimizer.step()
            hook.after_step(model)
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            steps += 1
    hook.end(model, steps)
    if seen == 0:
        return TrainResult(loss=math.nan, accuracy=math.nan, num_examples=n, steps=0)
    return TrainResult(loss=total_loss / seen, accuracy=correct / seen, num_examples=n, steps=steps)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int
    predictions: np.ndarray
    top5: float | None = None


def folded_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm folded into the conv before it
    (``torch.fx``'s conv-BN fusion). Same predictions, about a third less time for the
    2conv family on CPU, where eval-mode BatchNorm is a separate pass over the activations.
    Models ``torch.fx`` cannot trace are returned as they are (in eval mode)."""
    with warnings.catch_warnings():  # that module imports torch.utils.mkldnn, whose classes use
        # torch.jit.script_method: torch's deprecation of its own code, which no user can act on
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated", category=DeprecationWarning)
        from torch.fx.experimental.optimization import fuse

    model.eval()
    try:
        return fuse(model, inplace=False)
    except Exception:  # noqa: BLE001 - untraceable model: evaluate it unfolded
        return model


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    normalizer: Normalizer,
    batch_size: int = 1000,
    precision: str = "fp32",
) -> EvalResult:
    """Loss, accuracy (and top-5 where there are more than 5 classes) in large batches
    (``precision="bf16"``: the forward pass under bfloat16 autocast, the loss in float32)."""
    model.eval()
    n = len(labels)
    labels_t = torch.from_numpy(np.array(labels, dtype=np.int64))
    total_loss = 0.0
    preds = np.empty(n, dtype=np.int64)
    top5_hits = 0
    num_classes = 0
    for start in range(0, n, batch_size):
        x = normalizer(images[start : start + batch_size]).contiguous(memory_format=torch.channels_last)
        y = labels_t[start : start + batch_size]
        with autocast(precision):
            logits = model(x).float()
        num_classes = logits.shape[1]
        total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        preds[start : start + len(y)] = logits.argmax(1).numpy()
        if logits.shape[1] > 5:
            top5_hits += int((logits.topk(5, dim=1).indices == y[:, None]).any(1).sum())
    if n == 0:
        return EvalResult(loss=math.nan, accuracy=math.nan, num_examples=0, predictions=preds)
    accuracy = float((preds == labels_t.numpy()).mean())
    top5 = top5_hits / n if num_classes > 5 else None
    return EvalResult(loss=total_loss / n, accuracy=accuracy, num_examples=n, predictions=preds, top5=top5)


def classification_report(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per-class precision/recall/F1 and the confusion matrix (rows = true label)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), preds), 1)
    tp = np.diag(cm).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "per_class": [
            {"label": c, "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
             "support": int(cm[c].sum())}
            for c in range(num_classes)
        ],
        "macro_f1": float(f1.mean()),
        "confusion_matrix": cm.tolist(),
    }


def lr_for_round(server: Server, base_lr: float, server_round: int) -> float:
    """The server's learning-rate schedule across rounds (1-based round numbers)."""
    if server.lr_schedule == "step":
        return base_lr * server.lr_gamma ** ((server_round - 1) // server.lr_step_size)
    if server.lr_schedule == "cosine":  # half a cosine over the run; the last round still learns a little
        total, lr_min = server.rounds, server.lr_min
        return lr_min + 0.5 * (base_lr - lr_min) * (1 + math.cos(math.pi * (server_round - 1) / total))
    return base_lr


def config_problems(c: Checks) -> None:
    """The ``client`` group (local training) and the server's learning-rate schedule."""
    c.in_range("client.epochs", 1, integer=True)
    c.in_range("client.batch_size", 1, integer=True)
    c.one_of("client.optimizer", OPTIMIZERS)
    c.in_range("client.lr", 0, lo_open=True)
    c.in_range("client.momentum", 0, 1, hi_open=True)
    c.in_range("client.weight_decay", 0)
    c.in_range("client.threads", 0, 1024, integer=True)
    c.in_range("client.max_steps", 0, integer=True)
    c.boolean("client.noop")
    c.one_of("client.precision", PRECISIONS)
    c.boolean("client.compile")
    c.one_of("server.eval_precision", PRECISIONS)
    c.one_of("server.lr_schedule", LR_SCHEDULES)
    c.in_range("server.lr_step_size", 1, integer=True)
    c.in_range("server.lr_gamma", 0, 1, lo_open=True)
    c.in_range("server.lr_min", 0)
