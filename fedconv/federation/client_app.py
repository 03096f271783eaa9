"""The fedconv ClientApp: local training and evaluation on one client's partition.

Everything comes from ``context.run_config`` (the flat run config) and
``context.node_config`` (``partition-id``, and ``num-partitions`` or a ``data-dir`` of the
device's own data), so the same app runs in Flower's simulation runtime and on a real
SuperNode. In a simulation's node pool (``simulation.nodes=pool``) the server names the
partition in each message instead: any virtual node can load any partition of the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedconv import algorithms, records
from fedconv.algorithms.base import EVAL_NUM_EXAMPLES
from fedconv.config import from_run_config
from fedconv.data.datasets import declared_shape
from fedconv.data.device_data import load_device_data
from fedconv.federation import client_state, faults
from fedconv.learning import task
from fedconv.learning.models import buffer_names, parameter_names, transmitted_state
from fedconv.learning.training import TrainHook
from fedconv.learning.training import evaluate as evaluate_model
from fedconv.sections import Client, Faults, Server, Simulation
from fedconv.wire import compression
from fedconv.wire.channel import Channel, spec_of

app = ClientApp()
# A partition's stored state: the algorithm hook's own arrays, the layers it keeps local, and
# the uplink's error-feedback residual.
HOOK, LOCAL, RESIDUAL = "hook/", "local/", "residual/"


class PoolError(ValueError):
    """A node that holds its own data was sent work for another partition."""


def _assigned_partition(msg: Message) -> int | None:
    """The partition the server named in this message (node pool), if any."""
    config = msg.content.config_records.get("config")
    return records.integer(config, "partition-id") if config is not None and "partition-id" in config else None


def _partition_id(context: Context, msg: Message) -> int:
    assigned = _assigned_partition(msg)
    return int(context.node_config["partition-id"]) if assigned is None else assigned


def _set_threads(cfg: dict) -> None:
    threads = Client.of(cfg).threads or (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class NodeData:
    """This node's training data (``ds.train_x[train_idx]``) and held-out split."""

    ds: task.ImageDataset
    train_idx: np.ndarray
    held_x: np.ndarray
    held_y: np.ndarray
    source: str  # "partition" (of the run's dataset) or "dir" (the device's own data-dir)


def node_data(cfg: dict, context: Context, msg: Message) -> NodeData:
    """The node's own folder (``data-dir`` in its node config) or, for simulations and demos,
    partition ``partition-id`` of ``num-partitions`` made from the run's dataset and seed
    (in a node pool: the partition the message names, of ``simulation.num_clients``)."""
    pid = _partition_id(context, msg)
    data_dir = context.node_config.get("data-dir")
    if data_dir and _assigned_partition(msg) is not None:
        raise PoolError(
            f"this node trains on its own data-dir ({data_dir}) but the server assigned it partition {pid}: "
            "run devices with simulation.nodes=per_client (fedconv deploy sets it)"
        )
    if data_dir:
        d = cfg["dataset"]
        own = load_device_data(str(data_dir), declared_shape(d), int(d["num_classes"]),
                               float(cfg["partition"]["test_fraction"]), int(cfg["seed"]), pid)
        return NodeData(own.ds, np.arange(len(own.ds.train_y)), own.held_x, own.held_y, "dir")
    ds = task.dataset(cfg)
    pooled = _assigned_partition(msg) is not None
    num_partitions = Simulation.of(cfg).num_clients if pooled else int(context.node_config["num-partitions"])
    parts = task.partitions(cfg, num_partitions)
    held = parts.test[pid]
    return NodeData(ds, parts.train[pid], ds.train_x[held], ds.train_y[held], "partition")


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (it samples cohorts by partition id)
    and what data it trains on (for partition.json and the example-count check)."""
    cfg = from_run_config(context.run_config)
    data = node_data(cfg, context, msg)
    labels = np.concatenate([np.asarray(data.ds.train_y)[data.train_idx], np.asarray(data.held_y)])
    hist = np.bincount(labels.astype(np.int64), minlength=data.ds.num_classes)
    record = ConfigRecord({
        "partition-id": _partition_id(context, msg), "source": data.source,
        "num-train": len(data.train_idx), "num-held-out": len(data.held_y), "label-histogram": hist.tolist(),
    })
    return Message(RecordDict({"partition": record}), reply_to=msg)


@dataclass
class Work:
    """What a train or evaluate message works with: the config, the partition and its data,
    the model holding the global weights, and for a stateful algorithm the partition's
    stored state (the version the message names) and where to store the next one."""

    cfg: dict
    pid: int
    data: NodeData
    model: torch.nn.Module
    algorithm: algorithms.Algorithm
    link: compression.Link
    store: client_state.ClientStateStore | None = None
    started: int = 0
    state: dict[str, torch.Tensor] | None = None
    received: dict[str, np.ndarray] | None = None  # the shared model as decoded: the uplink's reference

    def stored(self, prefix: str) -> dict[str, torch.Tensor] | None:
        """One part of the partition's stored state (:data:`HOOK`, :data:`LOCAL`, :data:`RESIDUAL`)."""
        return None if self.state is None else {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}


def _prepare(msg: Message, context: Context) -> Work:
    """Load the node's data, the global weights, the partition's state (for a stateful
    algorithm) and its own copy of the layers the algorithm keeps local."""
    cfg = from_run_config(context.run_config)
    _set_threads(cfg)
    data = node_data(cfg, context, msg)
    model = task.reusable_model(cfg, data.ds)
    work = Work(cfg, _partition_id(context, msg), data, model, algorithms.get(str(cfg["strategy"]["name"])),
                compression.Link.from_config(cfg))
    local = work.algorithm.local_arrays(model)
    task.load_global(model, _received_model(msg, model, local, work.link.down), local=local)
    if work.link.up.active:
        work.received = {k: v.detach().cpu().numpy().copy() for k, v in transmitted_state(model).items() if k not in local}
    if client_state.partitions_keep_state(work.algorithm, work.link):
        work.store = client_state.store_for(cfg, context.node_config)
        work.started = records.integer(msg.content.config_records["config"], client_state.STATE_ROUND)
        work.state = work.store.load(work.pid, work.started)
    if local:
        _load_local_layers(work, local)
    return work


def _received_model(msg: Message, model: torch.nn.Module, local: frozenset[str],
                    codec: compression.Codec) -> dict[str, torch.Tensor]:
    """The global model of the message, decoded when the downlink is compressed (a value
    codec decodes without draws: no key)."""
    record = msg.content.array_records["arrays"]
    if not codec.active:
        return record.to_torch_state_dict()
    spec = spec_of({k: v for k, v in transmitted_state(model).items() if k not in local})
    decoded = Channel.of(codec, spec, buffer_names(model)).receive(record)
    return {k: torch.from_numpy(np.array(v)) for k, v in decoded.items()}


def _reply_arrays(work: Work, state: dict[str, torch.Tensor], server_round: int) -> tuple[ArrayRecord, dict[str, torch.Tensor]]:
    """The reply's model record (the update encoded by the uplink codec, or the model as it
    is) and the new error-feedback residual to store."""
    codec = work.link.up
    if not codec.active or work.received is None:
        return ArrayRecord(state), {}
    channel = Channel.of(codec, spec_of(state), buffer_names(work.model), work.link.up_key(server_round, work.pid))
    trained = {k: v.detach().cpu().numpy() for k, v in state.items()}
    residual = {k: v.numpy() for k, v in (work.stored(RESIDUAL) or {}).items()}
    record, new_residual = channel.send(trained, reference=work.received, residual=residual)
    return record, {k: torch.from_numpy(v) for k, v in new_residual.items()}


def _load_local_layers(work: Work, local: frozenset[str]) -> None:
    """The partition's own copy of the local layers, as it stored them after its last
    accepted round; the initial model's before its first."""
    own = work.stored(LOCAL) or {}
    if not own:
        initial = task.initial_model(work.cfg, work.data.ds).state_dict()
        own = {k: initial[k] for k in local}
    if set(own) != local:
        raise client_state.StateError(f"partition {work.pid}: stored local layers {sorted(own)[:3]}... "
                                      f"do not match the model's {sorted(local)[:3]}...")
    work.model.load_state_dict(own, strict=False)


def _inject_delay_or_crash(cfg: dict, pid: int, server_round: int) -> None:
    """``conf/faults``: slow clients sleep, crashing clients raise (as a real crash would)."""
    flt = Faults.of(cfg)
    if pid in faults.partition_ids(flt.slow_partitions):
        time.sleep(flt.slow_seconds)
    p = flt.dropout
    if faults.crashes(int(cfg["seed"]), server_round, pid, p):
        raise faults.InjectedCrash(f"injected crash of partition {pid} in round {server_round} (faults.dropout={p})")


def _noop_reply(msg: Message, num_examples: int) -> Message:
    """``client.noop`` (the framework-overhead benchmark): the received model back, no local work."""
    metrics = MetricRecord({"train_loss": float("nan"), "train_accuracy": float("nan"),
                            "num-examples": num_examples, "steps": 0})
    return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)


def _corrupted(work: Work, state: dict[str, torch.Tensor], received: dict[str, torch.Tensor],
               num_examples: int) -> tuple[dict[str, torch.Tensor], int]:
    """``faults.corrupt_partitions``: this partition's reply as a faulty or malicious client sends it."""
    flt = Faults.of(work.cfg)
    mode = flt.corrupt_mode
    state = faults.corrupt_state(state, mode, received=received, parameters=parameter_names(work.model),
                                 factor=flt.scale_factor)
    return state, faults.corrupt_num_examples(num_examples, mode)


def _save_state(work: Work, server_round: int, hook: TrainHook, local: frozenset[str],
                residual: dict[str, torch.Tensor]) -> None:
    """The partition's next state, for the server to name if it accepts this reply."""
    if work.store is None:
        return
    work.store.save(work.pid, server_round, {
        **{HOOK + k: v for k, v in (hook.new_state() or {}).items()},
        **{LOCAL + k: v.detach().clone() for k, v in transmitted_state(work.model).items() if k in local},
        **{RESIDUAL + k: v for k, v in residual.items()},
    }, started_from=work.started)


@app.train()
def train(msg: Message, context: Context) -> Message:
    work = _prepare(msg, context)
    cfg, pid, model, algorithm = work.cfg, work.pid, work.model, work.algorithm
    idx = work.data.train_idx
    if len(idx) == 0:
        raise ValueError(f"partition {pid} has no training data (partition.allow_empty=true)")
    config = msg.content.config_records["config"]
    server_round = records.integer(config, "server-round")
    _inject_delay_or_crash(cfg, pid, server_round)
    if Client.of(cfg).noop:
        return _noop_reply(msg, len(idx))
    corrupt = pid in faults.partition_ids(Faults.of(cfg).corrupt_partitions)
    before = _evaluate_received(work) if Server.of(cfg).with_train_eval else {}
    hook = algorithm.client_hook(cfg["strategy"], config)
    hook.receive({name: rec.to_torch_state_dict() for name, rec in msg.content.array_records.items() if name != "arrays"},
                 work.stored(HOOK))
    received = transmitted_state(model, copy=True) if corrupt else {}
    result = task.train_partition(
        cfg, work.data.ds, model, idx,
        server_round=server_round,
        pid=pid,
        lr=records.number(config, "lr"),
        hook=hook,
        epochs=records.integer(config, "local-epochs") if "local-epochs" in config else None,
        step_fraction=records.number(config, "step-fraction", 1.0),
    )
    local = algorithm.local_arrays(model)
    state = {k: v for k, v in transmitted_state(model).items() if k not in local}
    num_examples = result.num_examples
    if corrupt:
        state, num_examples = _corrupted(work, state, received, num_examples)
    arrays, residual = _reply_arrays(work, state, server_round)
    _save_state(work, server_round, hook, local, residual)
    metrics = MetricRecord({"train_loss": result.loss, "train_accuracy": result.accuracy, "num-examples": num_examples,
                            "steps": result.steps, **before, **hook.reply_metrics()})
    extra = {name: ArrayRecord(arrays) for name, arrays in hook.reply_arrays().items()}
    return Message(RecordDict({"arrays": arrays, **extra, "metrics": metrics}), reply_to=msg)


def _evaluate_received(work: Work) -> dict[str, float | int]:
    """``server.fed_eval=with_train``: the received model (with this partition's own local
    layers) on the held-out split, before any training: the evaluate phase's numbers, sent
    with the update so a round needs one exchange instead of two."""
    data = work.data
    result = evaluate_model(work.model, data.held_x, data.held_y, task.normalizer(work.cfg, data.ds, train=False))
    return {"eval_loss": result.loss, "eval_accuracy": result.accuracy, EVAL_NUM_EXAMPLES: result.num_examples}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The received global model (with this partition's own local layers, for FedBN) on
    the node's held-out split."""
    work = _prepare(msg, context)
    data = work.data
    result = evaluate_model(work.model, data.held_x, data.held_y, task.normalizer(work.cfg, data.ds, train=False))
    metrics = MetricRecord(
        {"eval_loss": result.loss, "eval_accuracy": result.accuracy, "num-examples": result.num_examples}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
