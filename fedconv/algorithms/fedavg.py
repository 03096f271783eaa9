"""FedAvg (McMahan et al., AISTATS 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data"): each client runs local SGD from the global model; the server sets
the global model to the example-weighted mean of the returned models. Flower's ``FedAvg``."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from fedconv.algorithms.base import Algorithm

ALGORITHM = Algorithm(
    name="fedavg",
    strategy_class=FedAvg,
)
