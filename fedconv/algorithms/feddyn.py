"""FedDyn (Acar, Zhao, Matas, Mattina, Whatmough and Saligrama, ICLR 2021, "Federated
Learning Based on Dynamic Regularization").

Each client keeps g_i, its gradient-correction vector (the paper's ∇L_i(θ_i^{t−1}), 0 at
first). With server model x and α > 0, client i minimises

    L_i(θ) − ⟨g_i, θ⟩ + (α/2) ‖θ − x‖²

by local SGD (the two extra terms enter every step as the gradient −g_i + α (θ − x)), then

    g_i ← g_i − α (θ_i − x)            (kept by the client; never sent)

and sends θ_i. Server, over the round's replies S of N clients:

    h ← h − α (1/N) Σ_{i∈S} (θ_i − x)
    x ← (1/|S|) Σ_{i∈S} θ_i − h / α

g_i lives in the client-state store by partition id (:mod:`fedconv.federation.client_state`), h in the
checkpoint; the wire carries what FedAvg's does. BatchNorm's running statistics take the
example-weighted mean. Not in Flower, hence written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedconv.algorithms.base import Algorithm, LocalTraining, Tensors, TrainHook, as_numpy, as_record
from fedconv.checks import Checks


class FedDyn(FedAvg):
    """The server side: FedAvg's sampling and messages; h and the corrected mean."""

    def __init__(self, *, alpha: float, num_clients: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.alpha = alpha
        self.num_clients = num_clients
        self.h: ArrayRecord | None = None  # the checkpoint keeps it
        self._x: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._x = as_numpy(arrays)
        if self.h is None:
            self.h = as_record({k: np.zeros_like(v) for k, v in self._x.items()})
        config["feddyn-alpha"] = self.alpha
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = [m.content for m in replies if not m.has_error()]
        if not contents or self.h is None:
            return None, None
        x, h, alpha = self._x, as_numpy(self.h), self.alpha
        thetas = [as_numpy(r.array_records[self.arrayrecord_key]) for r in contents]
        new_h = {k: h[k] - alpha / self.num_clients * sum(t[k] - x[k] for t in thetas) for k in x}
        new_x = {k: np.mean([t[k] for t in thetas], axis=0) - new_h[k] / alpha for k in x}
        self.h = as_record({k: v.astype(h[k].dtype) for k, v in new_h.items()})
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return as_record({k: v.astype(x[k].dtype) for k, v in new_x.items()}), metrics


class DynamicRegularizer(TrainHook):
    """The client side: adds −g_i + α (θ − x) to every gradient, then updates g_i."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.g: Tensors | None = None
        self.x: Tensors = {}
        self.new_g: Tensors = {}

    def receive(self, arrays: Mapping[str, Tensors], state: Tensors | None) -> None:
        self.g = dict(state) if state is not None else None

    def begin(self, local: LocalTraining) -> None:
        self.x = {k: p.detach().clone() for k, p in local.model.named_parameters()}
        if self.g is None:
            self.g = {k: torch.zeros_like(v) for k, v in self.x.items()}

    @torch.no_grad()
    def before_step(self, model: nn.Module) -> None:
        assert self.g is not None
        for k, p in model.named_parameters():
            if p.grad is not None:
                p.grad.add_(p.detach() - self.x[k], alpha=self.alpha).sub_(self.g[k])

    @torch.no_grad()
    def end(self, model: nn.Module, steps: int) -> None:
        assert self.g is not None
        self.new_g = {k: self.g[k] - self.alpha * (p.detach() - self.x[k]) for k, p in model.named_parameters()}

    def new_state(self) -> Tensors | None:
        return self.new_g


def config_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.alpha", 0, lo_open=True)


ALGORITHM = Algorithm(
    name="feddyn",
    strategy_class=FedDyn,
    strategy_kwargs=lambda cfg: {"alpha": float(cfg["alpha"]), "num_clients": int(cfg["num_partitions"])},
    state_attributes=("h",),
    buffers="mean",
    client_hook=lambda cfg, config: DynamicRegularizer(float(cfg["alpha"])),
    client_state=True,
    config_problems=config_problems,
)
