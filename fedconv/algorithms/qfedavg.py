"""q-FedAvg (Li et al., ICLR 2020, "Fair Resource Allocation in Federated Learning"):
clients with a higher loss get a larger say, q tunes how much (q = 0 is FedAvg-like).

Per reply k, with L = 1 / client_lr, F_k the client's loss of the *received* global model
and Δw_k = L (x - w_k) (Flower's ``QFedAvg``):

    Δ_k = F_k^q Δw_k
    h_k = q F_k^(q-1) ||Δw_k||² + L F_k^q
    x   = x - Σ Δ_k / Σ h_k

The paper's F_k is the loss of the model the client received, before local training; the
client hook :class:`GlobalLoss` measures it on the client's training data and sends it as
``global_loss``, which the strategy reads (Flower's default, the mean loss *during* local
training, is not the paper's quantity). BatchNorm's running statistics take the weighted
mean. Stateless across rounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import QFedAvg
from torch import nn

from fedconv.algorithms.base import TRAIN_METRICS, Algorithm, LocalTraining, TrainHook, Wire
from fedconv.checks import Checks

GLOBAL_LOSS = "global_loss"


class GlobalLoss(TrainHook):
    """The received model's mean cross-entropy on the client's training data (eval mode)."""

    def __init__(self, batch_size: int = 1000) -> None:
        self.batch_size = batch_size
        self.value = float("nan")

    def begin(self, local: LocalTraining) -> None:
        model: nn.Module = local.model
        was_training = model.training
        model.eval()
        total, n = 0.0, len(local.labels)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                x = local.normalize(local.images[start : start + self.batch_size])
                y = torch.from_numpy(np.asarray(local.labels[start : start + self.batch_size], dtype=np.int64))
                total += float(nn.functional.cross_entropy(model(x), y, reduction="sum"))
        model.train(was_training)
        self.value = total / n if n else float("nan")

    def reply_metrics(self) -> dict[str, float]:
        return {GLOBAL_LOSS: self.value}


def strategy_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"q": float(cfg["q"]), "client_learning_rate": float(cfg["client_lr"]), "train_loss_key": GLOBAL_LOSS}


def config_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.q", 0)
    c.in_range("strategy.client_lr", 0, lo_open=True)


ALGORITHM = Algorithm(
    name="qfedavg",
    strategy_class=QFedAvg,
    strategy_kwargs=strategy_kwargs,
    buffers="mean",
    client_hook=lambda cfg, config: GlobalLoss(),
    wire=Wire(metrics=(*TRAIN_METRICS, GLOBAL_LOSS), finite=(GLOBAL_LOSS,)),
    config_problems=config_problems,
)
