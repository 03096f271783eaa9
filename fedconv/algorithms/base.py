"""What an aggregation algorithm is to fedconv: one :class:`Algorithm` value per algorithm.

An algorithm says four things, and nothing else in fedconv knows about it:

- **server**: the Flower strategy class it runs (Flower's own class, used as it is, or one
  written here for an algorithm Flower lacks) and that class's keyword arguments, read from
  ``conf/strategy/<name>.yaml`` plus ``num_partitions``, the federation's N (every client,
  not just a round's cohort);
- **server state**: the names of the strategy's attributes that carry state from one round to
  the next (FedAdam's moments, FedAvgM's momentum); the checkpoint stores them as tensors and
  a resumed run puts them back (:func:`strategy_state` / :func:`restore_strategy_state`);
- **client**: a :class:`~fedconv.learning.training.TrainHook` that local training calls (a loss term, a gradient
  correction, extra metrics or arrays for the reply), and whether the client keeps state of
  its own between rounds (SCAFFOLD's control variate), which :mod:`fedconv.federation.client_state`
  stores by partition id;
- **wire**: a :class:`Wire` declaring the records of a train reply, from which
  :mod:`fedconv.wire.reply_checks` derives what a valid reply is.

Written here because Flower's strategies are server-side only: the client half and the
checkpointable state of an algorithm have no place in Flower's API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedconv.checks import Checks

# the client half: local training's extension points, which every algorithm's hook implements
from fedconv.learning.training import LocalTraining as LocalTraining
from fedconv.learning.training import Tensors as Tensors
from fedconv.learning.training import TrainHook as TrainHook

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict
    from flwr.serverapp.strategy import Strategy
    from torch import nn

MODEL = "model"  # an ArrayRecord named, shaped and typed like the global model the server sent
PARAMETERS = "parameters"  # like the global model's trainable parameters only (no BatchNorm statistics)
NUM_EXAMPLES = "num-examples"
EVAL_NUM_EXAMPLES = "eval-num-examples"  # held-out examples behind a train reply's eval metrics (fed_eval=with_train)
TRAIN_METRICS = (NUM_EXAMPLES, "train_loss", "train_accuracy", "steps")


@dataclass(frozen=True)
class Wire:
    """The records of a train reply: ``arrays`` maps each ArrayRecord's name to what it must
    look like (:data:`MODEL` or :data:`PARAMETERS`), ``metrics`` the keys its one MetricRecord must hold, and
    ``finite`` those of them that must be finite numbers (an aggregation rule divides by
    them or raises them to a power). The global model always travels down as ``arrays``."""

    arrays: Mapping[str, str] = field(default_factory=lambda: {"arrays": MODEL})
    metrics: tuple[str, ...] = TRAIN_METRICS
    finite: tuple[str, ...] = ()


BufferRule = Literal["strategy", "mean"]


@dataclass(frozen=True)
class Algorithm:
    """One aggregation algorithm (see the module docstring).

    ``client_state`` says the client keeps state of its own between rounds (the hook's
    :meth:`TrainHook.new_state`), stored by partition id (:mod:`fedconv.federation.client_state`).

    ``local_arrays`` names the model arrays that never leave a client (FedBN's BatchNorm
    layers): the server sends and aggregates the others, each client keeps its own copy of
    these in its client state.

    ``buffers`` says what happens to BatchNorm's running statistics, which are not
    parameters and have no gradient: ``"strategy"`` hands them to the strategy with the
    weights (its rule, e.g. a median or Krum's choice, covers them too); ``"mean"`` keeps
    them away from a server optimizer (FedAvgM's momentum, FedAdam's moments, q-FedAvg's
    step) and sets them to the example-weighted mean of the accepted replies.
    """

    name: str
    strategy_class: type[Strategy]
    strategy_kwargs: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda cfg: {}
    state_attributes: tuple[str, ...] = ()
    buffers: BufferRule = "strategy"
    client_hook: Callable[[Mapping[str, Any], ConfigRecord], TrainHook] = lambda cfg, config: TrainHook()
    client_state: bool = False
    local_arrays: Callable[[nn.Module], frozenset[str]] = lambda model: frozenset()
    wire: Wire = Wire()
    config_problems: Callable[[Checks, int], None] = lambda c, cohort: None
    # a precondition on the model actually built (None: met), checked before Ray starts
    model_problem: Callable[[Mapping[str, Any], nn.Module], str | None] = lambda cfg, model: None

    def make_strategy(self, strategy_cfg: Mapping[str, Any]) -> Strategy:
        """Flower's strategy with this algorithm's hyper-parameters. Cohorts are fedconv's
        (:mod:`fedconv.federation.cohorts`): the strategy is told to take every node it is shown."""
        common: dict[str, Any] = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1,
                                      min_evaluate_nodes=1, min_available_nodes=1)
        return self.strategy_class(**common, **self.strategy_kwargs(strategy_cfg))


# ------------------------------------------------------------------ server state <-> tensors

StateTensors = dict[str, np.ndarray]


def strategy_state(strategy: Strategy, attributes: tuple[str, ...]) -> tuple[StateTensors, dict[str, Any]]:
    """The strategy's round-to-round state as named arrays plus a JSON description.

    Each attribute is None, a dict or list of numpy arrays, or an ArrayRecord (the forms
    Flower's strategies keep); arrays are copied, so later rounds cannot change a saved state.
    """
    from flwr.app import ArrayRecord

    tensors: StateTensors = {}
    layout: dict[str, Any] = {}
    for attr in attributes:
        value = getattr(strategy, attr)
        if value is None:
            layout[attr] = {"kind": "none"}
            continue
        if isinstance(value, ArrayRecord):
            kind, items = "arrayrecord", [(k, a.numpy()) for k, a in value.items()]
        elif isinstance(value, dict):
            kind, items = "dict", list(value.items())
        elif isinstance(value, list):
            kind, items = "list", [(str(i), v) for i, v in enumerate(value)]
        else:
            raise TypeError(f"{type(strategy).__name__}.{attr}: cannot checkpoint a {type(value).__name__}")
        layout[attr] = {"kind": kind, "keys": [k for k, _ in items]}
        for key, array in items:
            tensors[f"{attr}/{key}"] = np.array(array, copy=True)
    return tensors, layout


def restore_strategy_state(strategy: Strategy, tensors: Mapping[str, np.ndarray], layout: Mapping[str, Any]) -> None:
    """Put a state saved by :func:`strategy_state` back onto a freshly built strategy."""
    from flwr.app import Array, ArrayRecord

    for attr, spec in layout.items():
        if not hasattr(strategy, attr):
            raise ValueError(f"{type(strategy).__name__} has no state attribute '{attr}'")
        kind = spec["kind"]
        if kind == "none":
            setattr(strategy, attr, None)
            continue
        arrays = [(k, np.array(tensors[f"{attr}/{k}"], copy=True)) for k in spec["keys"]]
        if kind == "arrayrecord":
            setattr(strategy, attr, ArrayRecord({k: Array(v) for k, v in arrays}))
        elif kind == "dict":
            setattr(strategy, attr, dict(arrays))
        elif kind == "list":
            setattr(strategy, attr, [v for _, v in arrays])
        else:
            raise ValueError(f"unknown state kind '{kind}' for {attr}")


# ------------------------------------------------------------------ arrays for hand-written strategies

def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as name -> numpy array, in its order."""
    return {k: a.numpy() for k, a in record.items()}


def as_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """name -> numpy array as an ArrayRecord, in the mapping's order."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def example_weights(replies: list[RecordDict], uniform: bool = False) -> np.ndarray:
    """Each reply's share: its ``num-examples`` over the total (or 1/|S| with ``uniform``)."""
    from fedconv import records

    n = np.array([1.0 if uniform else records.number(next(iter(r.metric_records.values())), NUM_EXAMPLES)
                  for r in replies])
    return n / n.sum()
