"""FedProx (Li et al., MLSys 2020, "Federated Optimization in Heterogeneous Networks").

Server: FedAvg's weighted mean (Flower's ``FedProx``, which also sends ``proximal-mu`` in
every train message). Client: each local objective gains ``(mu/2) * ||w - w_global||^2``,
which :class:`ProximalTerm` adds to every batch's loss; partial work of stragglers is
aggregated (the paper's systems-heterogeneity setting).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedProx
from torch import nn

from fedconv import records
from fedconv.algorithms.base import Algorithm, LocalTraining, TrainHook
from fedconv.checks import Checks


class ProximalTerm(TrainHook):
    """``(mu/2) * ||w - w_global||^2`` over the trainable parameters, w_global held fixed."""

    def __init__(self, mu: float) -> None:
        self.mu = mu
        self.global_params: list[torch.Tensor] = []

    def begin(self, local: LocalTraining) -> None:
        self.global_params = [p.detach().clone() for p in local.model.parameters()]

    def loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.mu <= 0:
            return None
        total = torch.zeros(())
        for w, w0 in zip(model.parameters(), self.global_params, strict=True):
            total = total + (w - w0).pow(2).sum()
        return 0.5 * self.mu * total


def client_hook(cfg: Mapping[str, Any], config: ConfigRecord) -> TrainHook:
    return ProximalTerm(records.number(config, "proximal-mu"))


def config_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.mu", 0)


ALGORITHM = Algorithm(
    name="fedprox",
    strategy_class=FedProx,
    strategy_kwargs=lambda cfg: {"proximal_mu": float(cfg["mu"])},
    client_hook=client_hook,
    config_problems=config_problems,
)
