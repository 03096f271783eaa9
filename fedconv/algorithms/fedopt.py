"""Adaptive federated optimisation (Reddi et al., ICLR 2021, "Adaptive Federated
Optimization"): FedAdam, FedYogi and FedAdagrad, Flower's classes of the same names.

With x the global weights and Δ = x̄ - x (the clients' weighted mean minus x):

    m = beta_1 * m + (1 - beta_1) * Δ
    v = v + Δ²                                            (FedAdagrad)
    v = v - (1 - beta_2) * Δ² * sign(v - Δ²)             (FedYogi)
    v = beta_2 * v + (1 - beta_2) * Δ²                    (FedAdam, with Flower's bias correction)
    x = x + eta * m / (sqrt(v) + tau)

Server state: the moments ``m_t`` and ``v_t``, checkpointed. BatchNorm's running statistics
take the weighted mean: an adaptive step on a variance estimate has no meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedYogi

from fedconv.algorithms.base import Algorithm
from fedconv.checks import Checks


def strategy_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = {"eta": float(cfg["server_lr"]), "eta_l": float(cfg["client_lr"]), "tau": float(cfg["tau"])}
    if "beta_1" in cfg:
        kwargs["beta_1"] = float(cfg["beta_1"])
    if "beta_2" in cfg:
        kwargs["beta_2"] = float(cfg["beta_2"])
    return kwargs


def config_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.server_lr", 0, lo_open=True)
    c.in_range("strategy.tau", 0, lo_open=True)
    c.in_range("strategy.client_lr", 0, lo_open=True)  # Flower records eta_l; the clients use client.lr
    for key in ("strategy.beta_1", "strategy.beta_2"):
        if c.has(key):
            c.in_range(key, 0, 1, hi_open=True)


def _adaptive(name: str, strategy_class: type) -> Algorithm:
    return Algorithm(
        name=name,
        strategy_class=strategy_class,
        strategy_kwargs=strategy_kwargs,
        state_attributes=("m_t", "v_t"),
        buffers="mean",
        config_problems=config_problems,
    )


FEDADAM = _adaptive("fedadam", FedAdam)
FEDYOGI = _adaptive("fedyogi", FedYogi)
FEDADAGRAD = _adaptive("fedadagrad", FedAdagrad)
