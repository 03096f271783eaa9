"""FedNova (Wang, Liu, Liang, Joshi and Poor, NeurIPS 2020, "Tackling the Objective
Inconsistency Problem in Heterogeneous Federated Optimization"), with local SGD momentum ρ.

Clients that take more local steps pull FedAvg's mean towards their own optimum; FedNova
averages *normalised* updates instead. Client i takes τ_i steps (fewer for a straggler,
more for a large partition) and

    a_i = (τ_i − ρ (1 − ρ^τ_i) / (1 − ρ)) / (1 − ρ)          (ρ = 0: a_i = τ_i)
    d_i = (x − y_i) / a_i

server, with p_i ∝ examples:

    τ_eff = Σ_i p_i a_i
    x ← x − τ_eff Σ_i p_i d_i

The client sends y_i and a_i (metric ``nova_a``); the server forms d_i from the same float32
x, so the information is that of (d_i, a_i). ρ is the client's SGD momentum
(``client.momentum``); FedNova's a_i is derived for SGD, so Adam is refused. BatchNorm's
running statistics take the example-weighted mean. Stateless across rounds; not in Flower,
hence written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedconv import records
from fedconv.algorithms.base import TRAIN_METRICS, Algorithm, TrainHook, Wire, as_numpy, as_record, example_weights
from fedconv.checks import Checks

NOVA_A = "nova_a"


def normalizing_factor(steps: int, rho: float) -> float:
    """a_i for ``steps`` local SGD steps with momentum ``rho`` (the paper's ||a_i||_1)."""
    if rho == 0.0:
        return float(steps)
    return (steps - rho * (1.0 - rho**steps) / (1.0 - rho)) / (1.0 - rho)


class FedNova(FedAvg):
    """The server side: FedAvg's sampling and messages, the normalised average to aggregate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._x: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._x = as_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = [m.content for m in replies if not m.has_error()]
        x = self._x
        a = np.array([records.number(next(iter(r.metric_records.values())), NOVA_A) for r in contents])
        useful = a > 0  # a client that took no step sent no update
        contents, a = [r for r, u in zip(contents, useful, strict=True) if u], a[useful]
        if not contents:
            return None, None
        p = example_weights(contents)
        tau_eff = float(np.dot(p, a))
        ys = [as_numpy(r.array_records[self.arrayrecord_key]) for r in contents]
        new_x = {k: x[k] - tau_eff * sum(pi * (x[k] - y[k]) / ai for pi, ai, y in zip(p, a, ys, strict=True)) for k in x}
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return as_record({k: v.astype(x[k].dtype) for k, v in new_x.items()}), metrics


class NormalizingFactor(TrainHook):
    """The client side: plain local SGD, then a_i from the steps it took."""

    def __init__(self, rho: float) -> None:
        self.rho = rho
        self.a = 0.0

    def end(self, model: nn.Module, steps: int) -> None:
        self.a = normalizing_factor(steps, self.rho)

    def reply_metrics(self) -> dict[str, float]:
        return {NOVA_A: self.a}


def client_hook(cfg: Mapping[str, Any], config: ConfigRecord) -> TrainHook:
    return NormalizingFactor(float(cfg["momentum"]))


def config_problems(c: Checks, cohort: int) -> None:
    if c.has("client.momentum"):  # its range is the client group's check
        c.need("strategy.momentum", c.get("strategy.momentum") == c.get("client.momentum"),
               f"client.momentum ({c.get('client.momentum')}): a_i's rho is the clients' SGD momentum")
    if c.has("client.optimizer"):
        c.need("client.optimizer", c.get("client.optimizer") == "sgd", "sgd (FedNova's normalisation is derived for SGD)")


ALGORITHM = Algorithm(
    name="fednova",
    strategy_class=FedNova,
    buffers="mean",
    client_hook=client_hook,
    wire=Wire(metrics=(*TRAIN_METRICS, NOVA_A), finite=(NOVA_A,)),
    config_problems=config_problems,
)
