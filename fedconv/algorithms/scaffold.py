"""SCAFFOLD (Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"), option II control variates.

Round with server model x, server control variate c, client i's control variate c_i (0 at
first), K local steps of local learning rate η:

    client:  y_i ← x;  K times: y_i ← SGD step on y_i, then y_i ← y_i − η (c − c_i)
             c_i⁺ = c_i − c + (x − y_i) / (K η)
             sends y_i and Δc_i = c_i⁺ − c_i;  keeps c_i⁺
    server:  x ← x + η_g Σ_i w_i (y_i − x)
             c ← c + (|S| / N) · (1/|S|) Σ_i Δc_i

The correction is applied to the weights after each optimizer step, as the reference runs
(Flower's niid_bench baseline, NIID-Bench) do: with plain SGD this is exactly the paper's
``y ← y − η (g − c_i + c)``; with momentum it keeps the correction out of the momentum
buffer. The client sends its model y_i rather than Δy_i: the server subtracts the same
float32 x, so the information is identical and the reply checks and fault injection treat
it as any model. w_i is the example-weighted share (``strategy.weighting=examples``, as the
reference runs) or 1/|S| (``uniform``, the paper's notation).

Both directions carry twice FedAvg's payload on the parameters: x and c down, y_i and Δc_i
up (c covers trainable parameters; BatchNorm's running statistics have no gradient and take
the example-weighted mean). c_i lives in the client-state store by partition id
(:mod:`fedconv.federation.client_state`), c in the checkpoint. Not in Flower, hence written here.
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

from fedconv.algorithms.base import (
    MODEL,
    PARAMETERS,
    Algorithm,
    LocalTraining,
    Tensors,
    TrainHook,
    Wire,
    as_numpy,
    as_record,
    example_weights,
)
from fedconv.checks import Checks

CONTROL = "control"  # the ArrayRecord of c (down) and of Δc_i (up)
WEIGHTINGS = ("examples", "uniform")


class Scaffold(FedAvg):
    """The server side: FedAvg's sampling and messages, plus c in every train message and
    the two updates above in :meth:`aggregate_train`."""

    def __init__(self, *, server_learning_rate: float = 1.0, num_clients: int, weighting: str = "examples",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_learning_rate = server_learning_rate
        self.num_clients = num_clients
        self.uniform = weighting == "uniform"
        self.control: ArrayRecord | None = None  # c; the checkpoint keeps it
        self._x: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._x = as_numpy(arrays)
        if self.control is None:
            self.control = as_record({k: np.zeros_like(v) for k, v in self._x.items()})
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for m in messages:
            m.content[CONTROL] = self.control
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = [m.content for m in replies if not m.has_error()]
        if not contents or self.control is None:
            return None, None
        w = example_weights(contents, uniform=self.uniform)
        eta_g, share = self.server_learning_rate, len(contents) / self.num_clients
        x, c = self._x, as_numpy(self.control)
        ys = [as_numpy(r.array_records[self.arrayrecord_key]) for r in contents]
        dcs = [as_numpy(r.array_records[CONTROL]) for r in contents]
        new_x = {k: x[k] + eta_g * sum(wi * (y[k] - x[k]) for wi, y in zip(w, ys, strict=True)) for k in x}
        self.control = as_record({k: c[k] + share * np.mean([dc[k] for dc in dcs], axis=0) for k in c})
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return as_record({k: v.astype(x[k].dtype) for k, v in new_x.items()}), metrics


class ControlVariates(TrainHook):
    """The client side: corrects every step by −η (c − c_i), then computes c_i⁺ and Δc_i."""

    def __init__(self) -> None:
        self.c: Tensors = {}
        self.c_i: Tensors = {}
        self.x: Tensors = {}
        self.lr = 0.0
        self.new_c_i: Tensors = {}
        self.delta_c: Tensors = {}

    def receive(self, arrays: Mapping[str, Tensors], state: Tensors | None) -> None:
        self.c = {k: v.float() for k, v in arrays[CONTROL].items()}
        self.c_i = dict(state) if state is not None else {k: torch.zeros_like(v) for k, v in self.c.items()}
        if set(self.c_i) != set(self.c):
            raise ValueError(f"stored control variate holds {sorted(self.c_i)[:3]}..., the server's {sorted(self.c)[:3]}...")

    def begin(self, local: LocalTraining) -> None:
        self.lr = local.lr
        self.x = {k: p.detach().clone() for k, p in local.model.named_parameters() if k in self.c}
        self.correction = {k: self.c[k] - self.c_i[k] for k in self.c}

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            p.sub_(self.correction[k], alpha=self.lr)

    @torch.no_grad()
    def end(self, model: nn.Module, steps: int) -> None:
        y = {k: p.detach() for k, p in model.named_parameters()}
        if steps == 0:  # nothing learnt, nothing to say about the gradients
            self.new_c_i = dict(self.c_i)
        else:
            self.new_c_i = {k: self.c_i[k] - self.c[k] + (self.x[k] - y[k]) / (steps * self.lr) for k in self.c}
        self.delta_c = {k: self.new_c_i[k] - self.c_i[k] for k in self.c}

    def reply_arrays(self) -> dict[str, Tensors]:
        return {CONTROL: self.delta_c}

    def new_state(self) -> Tensors | None:
        return self.new_c_i


def strategy_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {"server_learning_rate": float(cfg["server_lr"]), "num_clients": int(cfg["num_partitions"]),
            "weighting": str(cfg["weighting"])}


def config_problems(c: Checks, cohort: int) -> None:
    c.in_range("strategy.server_lr", 0, lo_open=True)
    c.one_of("strategy.weighting", WEIGHTINGS)


ALGORITHM = Algorithm(
    name="scaffold",
    strategy_class=Scaffold,
    strategy_kwargs=strategy_kwargs,
    state_attributes=("control",),
    buffers="mean",
    client_hook=lambda cfg, config: ControlVariates(),
    client_state=True,
    wire=Wire(arrays={"arrays": MODEL, CONTROL: PARAMETERS}),
    config_problems=config_problems,
)
