"""The board's warm worker (fedconv.edge.warm_worker) as a real process on a real Unix socket,
driven through the deployed ClientApp's handler (fedconv.edge.board_app) with real Flower
messages: same reply as in-process, a killed or restarted worker, a worker that dies or
hangs mid-message, owner-only socket, and a client path that imports neither the simulation
stack (ClientApp) nor torch (the per-message app)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata

from fedconv.config import compose, to_run_config
from fedconv.edge import board_app, warm_worker
from fedconv.learning import task
from fedconv.learning.models import transmitted_state

ROOT = Path(__file__).resolve().parent.parent
worker_process = pytest.mark.slow  # each starts a worker process (≈ 3 s): kept off the fast path
# the tests that share one serving worker run on one xdist worker, so it starts once
serving = pytest.mark.xdist_group("serving_worker")


class Worker:
    """``python -m fedconv.edge.warm_worker`` on ``socket``, started and stopped by the test."""

    def __init__(self, sock: Path, log: Path) -> None:
        self.sock, self.log = sock, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fedconv.edge.warm_worker", "--socket", str(self.sock)],
                                     cwd=ROOT, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while f"pid {self.proc.pid} serving" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def started_worker(base: Path) -> Iterator[Worker]:
    w = Worker(base / "run" / "worker.sock", base / "worker.log")
    w.start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    """A worker of the test's own, for a test that kills, restarts or stops it."""
    with started_worker(tmp_path) as w:
        yield w


@pytest.fixture(scope="module")
def serving_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for the tests that leave it serving (each start costs a process importing
    torch and the ClientApp); each such test checks that it still serves."""
    with started_worker(tmp_path_factory.mktemp("serving")) as w:
        yield w


def train_message(*overrides: str, server_round: int = 1) -> tuple[Message, dict]:
    cfg = compose(["dataset=digits", "client.threads=1", "simulation.num_clients=3", *overrides])
    model = task.initial_model(cfg, task.dataset(cfg))
    content = RecordDict({"arrays": ArrayRecord(transmitted_state(model)),
                          "config": ConfigRecord({"server-round": server_round, "lr": 0.05})})
    # as a SuperNode hands it to the ClientApp: pulled from the SuperLink, with its id
    metadata = Metadata(run_id=1, message_id=f"train-{server_round}-{os.getpid()}", src_node_id=0, dst_node_id=7,
                        reply_to_message_id="", group_id=str(server_round), created_at=time.time(), ttl=3600,
                        message_type="train")
    return make_message(metadata=metadata, content=content), cfg


def context(cfg: dict, sock: Path | None) -> Context:
    node = {"partition-id": 1, "num-partitions": 3, **({warm_worker.SOCKET_KEY: str(sock)} if sock else {})}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=to_run_config(cfg))


def arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}


@worker_process
@serving
def test_the_workers_reply_equals_the_in_process_one(serving_worker: Worker) -> None:
    msg, cfg = train_message()
    warm = board_app.handle(msg, context(cfg, serving_worker.sock))
    cold = board_app.handle(msg, context(cfg, None))
    assert warm.metadata.reply_to_message_id == msg.metadata.message_id
    assert warm.content.metric_records["metrics"]["warm-worker"] == 1
    assert cold.content.metric_records["metrics"]["warm-worker"] == 0
    for key in ("train_loss", "train_accuracy", "num-examples", "steps"):
        assert warm.content.metric_records["metrics"][key] == cold.content.metric_records["metrics"][key], key
    hot, ref = arrays(warm), arrays(cold)
    assert hot.keys() == ref.keys() and all(np.array_equal(hot[k], ref[k]) for k in ref)
    sent = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
    assert not all(np.array_equal(hot[k], sent[k]) for k in sent)  # it trained
    # owner-only: the socket 0600 in a folder of its own 0700
    assert stat.S_IMODE(serving_worker.sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(serving_worker.sock.parent.stat().st_mode) == 0o700


@worker_process
def test_a_killed_worker_falls_back_in_process_and_a_restarted_one_serves_again(
        worker: Worker, capfd: pytest.CaptureFixture[str]) -> None:
    msg, cfg = train_message()
    first = board_app.handle(msg, context(cfg, worker.sock))
    worker.signal(signal.SIGKILL)  # leaves its socket file behind, as a crash would
    assert worker.proc is not None and worker.proc.wait(timeout=30) == -signal.SIGKILL
    fallback = board_app.handle(msg, context(cfg, worker.sock))
    assert f"no warm worker at {worker.sock}" in capfd.readouterr().err
    assert fallback.content.metric_records["metrics"]["warm-worker"] == 0
    worker.start()  # replaces the stale socket
    again = board_app.handle(msg, context(cfg, worker.sock))
    assert again.content.metric_records["metrics"]["warm-worker"] == 1
    for reply in (fallback, again):
        assert all(np.array_equal(arrays(reply)[k], v) for k, v in arrays(first).items())


@worker_process
def test_a_worker_that_dies_or_hangs_mid_message_fails_that_message_in_one_line(worker: Worker) -> None:
    msg, cfg = train_message("faults.slow_partitions=1", "faults.slow_seconds=30", "server.round_timeout=60")
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: errors.append(_raised(msg, context(cfg, worker.sock))))
    thread.start()
    time.sleep(3)  # the worker is sleeping in the slow-client fault
    worker.signal(signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert isinstance(errors[0], warm_worker.WorkerFailed)
    assert str(errors[0]).startswith(f"warm worker at {worker.sock} stopped before replying (killed or restarted?)")
    # A hung worker: the message fails after server.round_timeout instead of hanging the board.
    worker.start()
    msg, cfg = train_message("server.round_timeout=2")
    worker.signal(signal.SIGSTOP)
    t0 = time.monotonic()
    err = _raised(msg, context(cfg, worker.sock))
    worker.signal(signal.SIGCONT)
    assert isinstance(err, warm_worker.WorkerFailed) and "gave no reply within 2 s" in str(err)
    assert time.monotonic() - t0 < 10


@worker_process
@serving
def test_an_error_in_the_worker_fails_the_message_and_the_worker_stays(serving_worker: Worker) -> None:
    msg, cfg = train_message("faults.dropout=1.0")
    err = _raised(msg, context(cfg, serving_worker.sock))
    assert isinstance(err, warm_worker.WorkerFailed)
    assert str(err).startswith("InjectedCrash: injected crash of partition 1 in round 1")
    msg, cfg = train_message()
    assert board_app.handle(msg, context(cfg, serving_worker.sock)).content.metric_records["metrics"]["warm-worker"] == 1


@worker_process
@serving
def test_a_second_worker_on_the_same_socket_is_refused(serving_worker: Worker, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedconv.edge.warm_worker", "--socket", str(serving_worker.sock)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: another warm worker already serves {serving_worker.sock}"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    proc = subprocess.run([sys.executable, "-m", "fedconv.edge.warm_worker", "--socket", str(shared / "w.sock")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "may be written by other users" in proc.stderr
    msg, cfg = train_message()  # the refused second worker left the first serving
    assert board_app.handle(msg, context(cfg, serving_worker.sock)).content.metric_records["metrics"]["warm-worker"] == 1


def _raised(msg: Message, ctx: Context) -> BaseException | None:
    try:
        board_app.handle(msg, ctx)
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


def _imported(module: str, names: tuple[str, ...]) -> list[str]:
    code = (f"import sys, {module}; "
            f"print(sorted({{n for n in sys.modules if n.split('.')[0] in {names!r}}}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return eval(proc.stdout)  # a printed list of module names


@pytest.mark.slow  # two Python processes of their own
def test_the_client_path_imports_no_simulation_stack_and_the_message_app_no_torch() -> None:
    heavy = ("hydra", "omegaconf", "matplotlib", "sklearn", "datasets", "pyarrow", "ray", "pandas")
    assert _imported("fedconv.federation.client_app", heavy) == []
    assert _imported("fedconv.edge.board_app", heavy + ("torch", "fedconv.federation.client_app")) == []
