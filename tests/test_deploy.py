"""Deployment engine on loopback: a real SuperLink and real SuperNodes as processes, TLS and
SuperNode authentication on, keys from ``fedconv certs``, the run started by
``fedconv deploy``."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, lean_board_env
from fedconv.config import compose
from fedconv.edge.board_data import export_partitions
from fedconv.edge.certs import LabKeys, make_lab_keys
from fedconv.edge.deploy import flwr_env

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"SuperLink exited: {log.read_text()[-3000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"SuperLink not listening on {port}: {log.read_text()[-3000:]}")


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


class Processes:
    """Starts Flower's daemons in their own sessions; stops them and all their children."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        import psutil

        family = []
        for proc in self.procs:
            try:
                parent = psutil.Process(proc.pid)
                family += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(family, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


def deploy(*overrides: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedconv.edge.deploy", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env or {**os.environ, "PYTHONUNBUFFERED": "1"})


def secure_lab(tmp_path: Path, processes: Processes, boards: int,
               registered: int) -> tuple[LabKeys, int, list[str], subprocess.CompletedProcess]:
    """A SuperLink with TLS and SuperNode authentication on a free loopback port, keys for
    ``boards`` SuperNodes of which the first ``registered`` are registered by
    ``fedconv.edge.deploy mode=register``; returns the keys, the port, the federation overrides
    and the registration's result."""
    keys = make_lab_keys(tmp_path / "keys", ["127.0.0.1", "localhost"], supernodes=boards)
    folder = tmp_path / "registered"
    folder.mkdir()
    for i in range(registered):
        (folder / keys.public_key(i).name).write_bytes(keys.public_key(i).read_bytes())
    port = free_port()
    link_log = tmp_path / "superlink.log"
    link = processes.start(
        ["flower-superlink", "--ssl-ca-certfile", str(keys.ca_cert), "--ssl-certfile", str(keys.server_cert),
         "--ssl-keyfile", str(keys.server_key), "--enable-supernode-auth",
         "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
        link_log, flwr_env(tmp_path / "superlink-home"),
    )
    wait_for_port(port, link, link_log)
    federation = [f"federation.address=127.0.0.1:{port}", f"federation.root_certificates={keys.ca_cert}",
                  f"federation.supernode_keys={folder}", f"federation.num_supernodes={registered}"]
    reg = deploy(*federation, "mode=register", f"hydra.run.dir={tmp_path / 'unused'}")
    assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-2000:]
    return keys, port, federation, reg


def test_three_authenticated_boards_train_keep_their_state_across_a_restart_and_a_fourth_is_refused(
    tmp_path: Path, processes: Processes
) -> None:
    """One lab, everything a deployment meets (one SuperLink, one run: each start costs a
    Python process on 2 cores). Boards 0-2 are registered, board 3's key is not. Each registered
    board runs a warm worker and keeps SCAFFOLD's client state (its c_i, and the top-k
    uplink's residual) in its own ``state-dir``; board 2 trains on its own data folder with
    the modules a lean install lacks blocked. After round 1, board 0's worker dies (its later
    messages run in the ClientApp process) and board 1's SuperNode is stopped and restarted
    (its round-2 message may go to the dead node; round 3 trains on the restarted board, from
    its stored state, through its worker, which outlived the SuperNode).

    SCAFFOLD's server control variate c moves by (1/N) Σ Δc_i of the accepted replies, so it
    equals the mean of the boards' c_i exactly when every board's state advanced with, and
    only with, its accepted updates: a board that lost its c_i, or kept one the server
    rejected, breaks the equality."""
    from safetensors.numpy import load_file

    keys, port, federation, reg = secure_lab(tmp_path, processes, boards=4, registered=3)
    assert reg.stdout.count("registered supernode-") == 3
    # Board 2 trains on its own copy of its data (a folder written by the export tool);
    # the others build their partition from the dataset with the run's partitioner and seed.
    export_partitions(compose(["dataset=digits", "simulation.num_clients=3"]), tmp_path / "devices")
    node_configs = {i: f'partition-id={i} num-partitions=3 state-dir="{tmp_path / f"board-{i}"}"' for i in range(4)}
    node_configs[2] = (f'partition-id=2 data-dir="{tmp_path / "devices" / "device-2"}" '
                       f'state-dir="{tmp_path / "board-2"}"')
    envs = {i: (lean_board_env(tmp_path, flwr_env(tmp_path / "supernode-2-home")) if i == 2
                else flwr_env(tmp_path / f"supernode-{i}-home")) for i in range(4)}
    workers: dict[int, subprocess.Popen] = {}
    for i in range(3):  # each registered board's warm worker, named by its socket
        sock = tmp_path / f"worker-{i}" / "worker.sock"
        worker_log = tmp_path / f"worker-{i}.log"
        workers[i] = processes.start([sys.executable, "-m", "fedconv.edge.warm_worker", "--socket", str(sock)],
                                     worker_log, envs[i])
        node_configs[i] += f' worker-socket="{sock}"'
    for i in range(3):
        wait_for_text(tmp_path / f"worker-{i}.log", "serving", workers[i])

    def supernode(i: int, log: str) -> subprocess.Popen:
        return processes.start(
            ["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(keys.ca_cert),
             "--auth-supernode-private-key", str(keys.supernode_keys[i]), "--port", str(free_port()),
             "--node-config", node_configs[i]],
            tmp_path / log, {**envs[i], "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"},
        )

    nodes = {i: supernode(i, f"supernode-{i}.log") for i in range(4)}
    run = tmp_path / "run"
    run_proc = subprocess.Popen(
        [sys.executable, "-m", "fedconv.edge.deploy", *federation, "dataset=digits", "strategy=scaffold",
         "compression=topk", "server.rounds=3", "server.fraction_train=1.0", "client.threads=1", "client.epochs=1",
         "server.connect_timeout=120", "server.round_timeout=90", f"hydra.run.dir={run}"],
        cwd=ROOT, stdout=(tmp_path / "deploy.log").open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # (Round 2's message reaches a worker no sooner than a fresh flwr-clientapp process has
        # started, >= 1 s after the round-1 row; the kill follows the row within 0.05 s.)
        deadline = time.monotonic() + 300
        while run_proc.poll() is None and time.monotonic() < deadline:
            if (run / "rounds.csv").exists() and len((run / "rounds.csv").read_text().splitlines()) >= 2:
                workers[0].kill()
                break
            time.sleep(0.05)
        assert run_proc.poll() is None, (tmp_path / "deploy.log").read_text()[-3000:]
        os.killpg(nodes[1].pid, signal.SIGTERM)  # board 1 reboots between rounds 1 and 2
        nodes[1].wait(timeout=30)
        nodes[1] = supernode(1, "supernode-1-restarted.log")
        assert run_proc.wait(timeout=400) == 0, (tmp_path / "deploy.log").read_text()[-3000:]
    finally:
        if run_proc.poll() is None:
            run_proc.kill()
    stdout = (tmp_path / "deploy.log").read_text()
    assert "[round   3/3]" in stdout and "done: completed" in stdout
    with (run / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    for r in rows:
        assert int(r["clients_sampled"]) == 3 and int(r["bytes_down"]) > 0 and int(r["bytes_up"]) > 0
        assert r["central_accuracy"] != ""
        # deploy's default server.fed_eval=with_train: one exchange a round, evaluated by the trainers
        assert int(r["eval_clients_ok"]) == int(r["clients_ok"]) and int(r["bytes_eval_down"]) == 0
        assert r["fed_cohort"] == "train"
        assert 0 < float(r["compression_up"]) < 0.6  # top-k model record + the fp32 control record
    for r in (rows[0], rows[2]):  # round 3: the restarted board trained again
        assert int(r["clients_ok"]) == 3 and int(r["clients_failed"]) == 0, r
        # a regression guard, not the benchmark (experiments/edge_loopback.py): ≈ 6 s here on 2 idle cores
        assert float(r["round_seconds"]) < 30, r["round_seconds"]
    with (run / "client_metrics.csv").open() as f:
        trained = [c for c in csv.DictReader(f) if c["phase"] == "train" and c["status"] == "ok"]
    assert all(0 < float(c["work_seconds"]) < float(c["process_seconds"]) for c in trained)
    warm = {(int(c["round"]), int(c["partition_id"])): c["warm_worker"] for c in trained}
    assert {k: v for k, v in warm.items() if k[0] != 2 or k[1] != 1} == {
        (1, 0): "1", (1, 1): "1", (1, 2): "1", (2, 0): "0", (2, 2): "1", (3, 0): "0", (3, 1): "1", (3, 2): "1"}
    assert f"no warm worker at {tmp_path / 'worker-0' / 'worker.sock'}" in (tmp_path / "supernode-0.log").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    partition = json.loads((run / "partition.json").read_text())
    assert partition["num_clients"] == 3
    assert [c["source"] for c in partition["clients"]] == ["partition", "partition", "dir"]
    for name in ("config.yaml", "model.safetensors", "client_metrics.csv", "checkpoint.safetensors"):
        assert (run / name).is_file(), name
    # Each board's state on its own disk, none in the server's run dir, with its residual.
    boards = [list((tmp_path / f"board-{i}").glob(f"*/p{i}/r*.safetensors")) for i in range(3)]
    assert all(boards), boards
    assert not list((run / "client_state").glob("p*"))
    latest = [load_file(max(files, key=lambda p: int(p.stem[1:]))) for files in boards]
    assert all(any(k.startswith("residual/") and np.abs(v).sum() > 0 for k, v in state.items()) for state in latest)
    server = load_file(run / "checkpoint.safetensors")
    control = {k.removeprefix("algorithm/control/"): v for k, v in server.items() if k.startswith("algorithm/control/")}
    assert control and all(np.abs(v).sum() > 0 for v in control.values())
    for k, c in control.items():
        np.testing.assert_allclose(c, sum(state[f"hook/{k}"] for state in latest) / 3, rtol=1e-4, atol=1e-6)
    # The unregistered SuperNode was refused: it exited with an error and never took part.
    assert nodes[3].wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in (tmp_path / "supernode-3.log").read_text()
    assert all(nodes[i].poll() is None for i in range(3))


def test_federation_config_errors_exit_2(tmp_path: Path) -> None:
    proc = deploy("federation.address=nohostport", f"federation.root_certificates={tmp_path / 'missing.crt'}",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "federation.address='nohostport'" in proc.stderr and "federation.root_certificates=" in proc.stderr
    assert not (tmp_path / "run").exists()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


def test_insecure_is_opt_in_and_warns(tmp_path: Path) -> None:
    """TLS is the default: without a CA certificate deploy refuses to start. The insecure
    federation's warning: test_an_unreachable_superlink_is_named_within_seconds."""
    secure = deploy("mode=register", "federation.root_certificates=", f"hydra.run.dir={tmp_path / 'run2'}")
    assert secure.returncode == 2 and "federation.root_certificates" in secure.stderr


@pytest.mark.parametrize("mode", ["run", "register"])
def test_an_unreachable_superlink_is_named_within_seconds(tmp_path: Path, mode: str) -> None:
    address = f"127.0.0.1:{closed_port()}"
    t0 = time.perf_counter()
    proc = deploy("federation=local", f"federation.address={address}", "dataset=digits", f"mode={mode}",
                  f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: no SuperLink at {address} (connection refused)"
    warning, _ = proc.stderr.strip().splitlines()  # federation=local is insecure: it says so, then the cause
    assert warning.startswith("WARNING: federation.insecure=true: TLS is off"), warning
    assert not (tmp_path / "run").exists()
    assert time.perf_counter() - t0 < 20


def test_deploy_refuses_a_run_dir_that_already_holds_a_run(tmp_path: Path) -> None:
    """Checked before any run starts, so no SuperLink is needed: nothing is overwritten. A
    run dir holds a run once it has rows or a checkpoint (the check deploy makes, in process);
    the refusal as a user meets it, in a real process, once."""
    from fedconv.runs import run_dir

    for left in ("rounds.csv", "checkpoint.safetensors"):
        held = tmp_path / left
        held.mkdir()
        (held / left).write_text("from an earlier run\n")
        assert run_dir.existing_run(held) != "none", left
    out = tmp_path / "checkpoint.safetensors"
    proc = deploy("federation=local", f"hydra.run.dir={out}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"output_dir={out}: already holds a run" in proc.stderr
    assert (out / "checkpoint.safetensors").read_text() == "from an earlier run\n"
    assert not (out / "summary.json").exists()


def test_deploy_checks_the_servers_dataset_before_starting(tmp_path: Path) -> None:
    """The ServerApp evaluates on the test set on the SuperLink's machine (where the launcher
    runs): a missing dataset fails here in one line, before any SuperLink is contacted."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "FEDCONV_DATA"}
    proc = deploy("federation=local", "dataset=mnist", f"dataset.data_dir={empty}",
                  f"hydra.run.dir={tmp_path / 'run'}", env={**env, "PYTHONUNBUFFERED": "1"}, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"dataset 'mnist' not found; looked in: {empty}" in proc.stderr
    assert "run this launcher there" in proc.stderr and "Successfully started run" not in proc.stdout
    assert not (tmp_path / "run").exists()
