"""FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification"): FedAvg with server momentum.

Per round, with x the global weights and x̄ the clients' weighted mean (Flower's ``FedAvgM``):

    g = x - x̄              (the pseudo-gradient)
    v = beta * v + g        (v = g in the first round)
    x = x - eta_s * v

Server state: ``momentum_vector`` (v) and ``current_arrays`` (x as the strategy last set it),
both checkpointed. BatchNorm's running statistics take the weighted mean, never the momentum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvgM

from fedconv.algorithms.base import Algorithm
from fedconv.checks import Checks


def strategy_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"server_learning_rate": float(cfg["server_lr"]), "server_momentum": float(cfg["server_momentum"])}


def config_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.server_lr", 0, lo_open=True)
    c.in_range("strategy.server_momentum", 0, 1, hi_open=True)


ALGORITHM = Algorithm(
    name="fedavgm",
    strategy_class=FedAvgM,
    strategy_kwargs=strategy_kwargs,
    state_attributes=("current_arrays", "momentum_vector"),
    buffers="mean",
    config_problems=config_problems,
)
