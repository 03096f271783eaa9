"""The ClientApp a SuperNode starts for every message in deployment: Flower only, no torch.

Flower 1.42 starts a fresh ``flwr-clientapp`` process per message. This app keeps that
process light: when the node config names a ``worker-socket`` (a board's
:mod:`fedconv.edge.warm_worker`, started once per board), it hands the message over and replies
with the worker's answer; otherwise, or when no worker answers on that socket, it imports
:mod:`fedconv.federation.client_app` and does the work itself (one line on stderr says why). Either
way the work is fedconv's ClientApp and the server checks the reply like any other.

Every reply's metrics also say what the message cost on the board, for client_metrics.csv:
``work-seconds`` (the ClientApp's work), ``process-seconds`` (from this process's start to
the reply: the cold cost of a message) and ``warm-worker`` (1 when the worker did the work).
"""

from __future__ import annotations

import sys
import time

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from fedconv.edge import warm_worker
from fedconv.runs import timeline

app = ClientApp()
WORK_SECONDS, PROCESS_SECONDS, WARM_WORKER = "work-seconds", "process-seconds", "warm-worker"
_DEFAULT_TIMEOUT = 3600.0  # server.round_timeout's default: a hung worker never hangs a board longer


def _round_timeout(context: Context) -> float:
    value = context.run_config.get("server.round_timeout", _DEFAULT_TIMEOUT)
    return float(value) if isinstance(value, (int, float)) and value > 0 else _DEFAULT_TIMEOUT


def handle(msg: Message, context: Context) -> Message:
    """The worker's reply when one serves the node's ``worker-socket``, else this process's."""
    path = context.node_config.get(warm_worker.SOCKET_KEY)
    reply: Message | None = None
    if path:
        try:
            content, seconds = warm_worker.call(str(path), msg, context, _round_timeout(context))
            reply, warm = Message(content, reply_to=msg), 1
        except warm_worker.WorkerAbsent as exc:
            print(f"fedconv: {exc}; this message runs in the ClientApp process", file=sys.stderr, flush=True)
    if reply is None:
        started = time.perf_counter()
        reply = warm_worker.run_in_process(msg, context)
        seconds, warm = time.perf_counter() - started, 0
    metrics = next(iter(reply.content.metric_records.values()), None)  # a query's reply has none
    if metrics is not None:
        _add_costs(metrics, seconds, warm)
    return reply


def _add_costs(metrics: MetricRecord, work_seconds: float, warm: int) -> None:
    metrics[WORK_SECONDS] = round(float(work_seconds), 3)
    metrics[PROCESS_SECONDS] = round(timeline.process_age(), 3)
    metrics[WARM_WORKER] = warm


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handle(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return handle(msg, context)
