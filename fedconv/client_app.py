"""The fedconv ClientApp: local training and evaluation on one client's partition.

Everything comes from ``context.run_config`` (the flat run config) and
``context.node_config`` (``partition-id``, ``num-partitions``), so the same app runs in
Flower's simulation runtime and on a real SuperNode.
"""

from __future__ import annotations

import os
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedconv import faults, task
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


def _inject_delay_or_crash(cfg: dict, pid: int, server_round: int) -> None:
    """``conf/faults``: slow clients sleep, crashing clients raise (as a real crash would)."""
    flt = cfg.get("faults", {})
    if pid in faults.partition_ids(flt.get("slow_partitions", "")):
        time.sleep(float(flt.get("slow_seconds", 0.0)))
    p = float(flt.get("dropout", 0.0))
    if faults.crashes(int(cfg["seed"]), server_round, pid, p):
        raise faults.InjectedCrash(f"injected crash of partition {pid} in round {server_round} (faults.dropout={p})")


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, pid, ds, parts, model = _prepare(msg, context)
    idx = parts.train[pid]
    if len(idx) == 0:
        raise ValueError(f"partition {pid} has no training data (partition.allow_empty=true)")
    config = msg.content["config"]
    _inject_delay_or_crash(cfg, pid, int(config["server-round"]))
    if cfg["client"].get("noop"):  # framework-overhead benchmark: no local work at all
        metrics = MetricRecord({"train_loss": float("nan"), "train_accuracy": float("nan"), "num-examples": len(idx), "steps": 0})
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)
    result = task.train_partition(
        cfg, ds, model, idx,
        server_round=int(config["server-round"]),
        pid=pid,
        lr=float(config["lr"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        epochs=int(config["local-epochs"]) if "local-epochs" in config else None,
        step_fraction=float(config.get("step-fraction", 1.0)),
    )
    state = transmitted_state(model)
    num_examples = result.num_examples
    flt = cfg.get("faults", {})
    if pid in faults.partition_ids(flt.get("corrupt_partitions", "")):
        state = faults.corrupt_state(state, str(flt["corrupt_mode"]))
        num_examples = faults.corrupt_num_examples(num_examples, str(flt["corrupt_mode"]))
    metrics = MetricRecord(
        {
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            "num-examples": num_examples,
            "steps": result.steps,
        }
    )
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, pid, ds, parts, model = _prepare(msg, context)
    idx = parts.test[pid]
    result = evaluate_model(model, ds.train_x[idx], ds.train_y[idx], task.normalizer(cfg, ds, train=False))
    metrics = MetricRecord(
        {"eval_loss": result.loss, "eval_accuracy": result.accuracy, "num-examples": result.num_examples}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
