"""FedBN (Li, Jiang, Zhang, Kamp and Dou, ICLR 2021, "FedBN: Federated Learning on Non-IID
Features via Local Batch Normalization").

Every BatchNorm layer (affine weight and bias, running mean and variance) stays on its
client: it is never sent, never averaged, and each partition keeps its own copy in the
client-state store (:mod:`fedconv.federation.client_state`) from one round it trains to the next (a
partition that has not trained yet starts from the initial model's layers). Everything else
is FedAvg: Flower's ``FedAvg`` aggregates the shared arrays, weighted by examples.

Two accuracies, because the paper's model is personal:

- **federated** (``fed_accuracy``, clients evaluating on their held-out split): each client's
  personalised model, the shared weights with its *own* BatchNorm layers (the paper's metric);
- **central** (``central_accuracy``, the server's test set): there is no global BatchNorm, so
  the server evaluates the shared weights with BatchNorm at its initial affine (γ = 1, β = 0)
  and running statistics re-estimated on ``strategy.calibration_images`` unlabelled images of
  the central test set (AdaBN, Li et al. 2016; label-free and transductive). It says how well
  the shared features serve a new client that only adapts statistics, not what any client sees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedconv.algorithms.base import Algorithm
from fedconv.checks import Checks
from fedconv.learning.models import batchnorm_names


def config_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.calibration_images", 1, integer=True)
    if c.has("model.batch_norm"):
        c.need("model.batch_norm", c.get("model.batch_norm") is True, "true for FedBN (without BatchNorm it is FedAvg)")


def model_problem(cfg: Mapping[str, Any], model: nn.Module) -> str | None:
    """FedBN keeps the BatchNorm layers home; a model without any would run FedAvg under FedBN's name."""
    if batchnorm_names(model):
        return None
    return (f"model.name={cfg['model']['name']}: has no BatchNorm layer, and strategy=fedbn keeps only those on "
            "the clients (it would run as FedAvg); choose a model with BatchNorm (model=twoconv) or strategy=fedavg")


ALGORITHM = Algorithm(
    name="fedbn",
    strategy_class=FedAvg,
    client_state=True,
    local_arrays=batchnorm_names,
    config_problems=config_problems,
    model_problem=model_problem,
)
