"""The fedconv ClientApp: local training and evaluation on one client's partition.

Everything comes from ``context.run_config`` (the flat run config) and
``context.node_config`` (``partition-id``, ``num-partitions``), so the same app runs in
Flower's simulation runtime and on a real SuperNode.
"""

from __future__ import annotations

import os

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedconv import task
from fedconv.config import from_run_config
from fedconv.models import transmitted_state
from fedconv.training import evaluate as evaluate_model

app = ClientApp()


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _set_threads(cfg: dict) -> None:
    threads = int(cfg["client"].get("threads", 0)) or (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (it samples cohorts by partition id)."""
    record = ConfigRecord({"partition-id": _partition_id(context), "pid": os.getpid()})
    return Message(RecordDict({"partition": record}), reply_to=msg)


def _prepare(msg: Message, context: Context) -> tuple[dict, int, task.ImageDataset, task.Partitions, torch.nn.Module]:
    """Config, partition id, cached data and partitions, and the model holding the global weights."""
    cfg = from_run_config(context.run_config)
    _set_threads(cfg)
    ds = task.dataset(cfg)
    parts = task.partitions(cfg, int(context.node_config["num-partitions"]))
    model = task.reusable_model(cfg, ds)
    task.load_global(model, msg.content["arrays"].to_torch_state_dict())
    return cfg, _partition_id(context), ds, parts, model


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, pid, ds, parts, model = _prepare(msg, context)
    idx = parts.train[pid]
    if len(idx) == 0:
        raise ValueError(f"partition {pid} has no training data (partition.allow_empty=true)")
    if cfg["client"].get("noop"):  # framework-overhead benchmark: no local work at all
        metrics = MetricRecord({"train_loss": float("nan"), "train_accuracy": float("nan"), "num-examples": len(idx)})
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)
    config = msg.content["config"]
    result = task.train_partition(
        cfg, ds, model, idx,
        server_round=int(config["server-round"]),
        pid=pid,
        lr=float(config["lr"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    metrics = MetricRecord(
        {
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            "num-examples": result.num_examples,
        }
    )
    arrays = ArrayRecord(transmitted_state(model))
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, pid, ds, parts, model = _prepare(msg, context)
    idx = parts.test[pid]
    result = evaluate_model(model, ds.train_x[idx], ds.train_y[idx], task.normalizer(cfg, ds, train=False))
    metrics = MetricRecord(
        {"eval_loss": result.loss, "eval_accuracy": result.accuracy, "num-examples": result.num_examples}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
