"""Where a deployed round's time goes: a real SuperLink (TLS + SuperNode auth) and three real
SuperNodes on 127.0.0.1, ``python -m fedconv.edge.deploy`` on digits, one row per variant.

Variants switch one thing at a time: the board's warm worker (``worker-socket`` in the node
config, ``python -m fedconv.edge.warm_worker`` beside each SuperNode), federated evaluation in its
own phase or with the training (``server.fed_eval``), and SuperExec's task poll interval
(``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, Flower's default 1 s). Every variant starts its own
SuperLink and SuperNodes. Per variant: the seconds of each round (rounds.csv), and per train
message (client_metrics.csv) the ClientApp process's seconds from its start to the reply and
the seconds of work in it.

    python experiments/edge_loopback.py [--rounds 2] [--repeat 3] [--variants base,worker,...]

Run it on an otherwise idle machine (it times). Figures: README "Deployment" and docs/edge.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from fedconv.edge.certs import make_lab_keys
from fedconv.edge.deploy import flwr_env

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    name: str
    worker: bool
    fed_eval: str  # separate | with_train
    superexec_poll: float | None  # None: Flower's default (1 s)


VARIANTS = {v.name: v for v in [
    Variant("base", worker=False, fed_eval="separate", superexec_poll=None),
    Variant("poll", worker=False, fed_eval="separate", superexec_poll=0.25),
    Variant("worker", worker=True, fed_eval="separate", superexec_poll=0.25),
    Variant("with_train", worker=False, fed_eval="with_train", superexec_poll=0.25),
    Variant("worker+with_train", worker=True, fed_eval="with_train", superexec_poll=0.25),
    Variant("worker+with_train+poll1", worker=True, fed_eval="with_train", superexec_poll=None),
]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """The SuperLink, SuperNodes and workers of one variant; stops them all on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=(self.tmp / f"{name}.log").open("w"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_log(self, name: str, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in (self.tmp / f"{name}.log").read_text():
            if time.monotonic() > deadline:
                raise SystemExit(f"error: {name} did not print {text!r}: {(self.tmp / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *_: object) -> None:
        """SIGTERM each process group (the daemon and the processes it started), then SIGKILL
        whatever of a group is left after 10 s."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def run_variant(v: Variant, rounds: int, tmp: Path) -> dict:
    keys = make_lab_keys(tmp / "keys", ["127.0.0.1"], supernodes=3)
    port = free_port()
    with Lab(tmp) as lab:
        env = flwr_env(tmp / "superlink-home")
        lab.start("superlink", ["flower-superlink", "--ssl-ca-certfile", str(keys.ca_cert), "--ssl-certfile",
                                str(keys.server_cert), "--ssl-keyfile", str(keys.server_key), "--enable-supernode-auth",
                                "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
                  env)
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "SuperLink did not listen"
            time.sleep(0.1)
        fed = [f"federation.address=127.0.0.1:{port}", f"federation.root_certificates={keys.ca_cert}",
               f"federation.supernode_keys={keys.ca_cert.parent / 'supernodes'}", "federation.num_supernodes=3"]
        subprocess.run([sys.executable, "-m", "fedconv.edge.deploy", *fed, "mode=register", f"hydra.run.dir={tmp / 'x'}"],
                       cwd=ROOT, check=True, capture_output=True)
        for i in range(3):
            node_config = f"partition-id={i} num-partitions=3"
            if v.worker:
                sock = tmp / f"worker-{i}" / "worker.sock"
                lab.start(f"worker-{i}", [sys.executable, "-m", "fedconv.edge.warm_worker", "--socket", str(sock)],
                          {**os.environ})
                lab.wait_log(f"worker-{i}", "serving")
                node_config += f' worker-socket="{sock}"'
            node_env = flwr_env(tmp / f"supernode-{i}-home")
            if v.superexec_poll is not None:
                node_env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(v.superexec_poll)
            lab.start(f"supernode-{i}", ["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates",
                                         str(keys.ca_cert), "--auth-supernode-private-key", str(keys.supernode_keys[i]),
                                         "--port", str(free_port()), "--node-config", node_config], node_env)
        out = tmp / "run"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fedconv.edge.deploy", *fed, "dataset=digits", f"server.rounds={rounds}",
                               "server.fraction_train=1.0", "server.fraction_evaluate=1.0", f"server.fed_eval={v.fed_eval}",
                               "client.threads=1", "server.connect_timeout=120", f"hydra.run.dir={out}"],
                              cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"error: variant {v.name} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with (out / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (out / "client_metrics.csv").open() as f:
        clients = list(csv.DictReader(f))

    def med(key: str, phase: str = "train") -> float:
        return statistics.median(float(r[key]) for r in clients if r["phase"] == phase and r[key])

    return {"variant": v.name, "round_seconds": [float(r["round_seconds"]) for r in rows], "wall": wall,
            "process_seconds": med("process_seconds"), "work_seconds": med("work_seconds"),
            "warm": sorted({r["warm_worker"] for r in clients if r["phase"] == "train"}),
            "fed_accuracy": [r["fed_accuracy"] for r in rows], "central_accuracy": [r["central_accuracy"] for r in rows]}


def idle_cpu(poll: float | None, seconds: float, tmp: Path) -> float:
    """CPU seconds per minute that an idle SuperNode's SuperExec spends polling (insecure
    loopback SuperLink, one SuperNode, no run)."""
    port = free_port()
    with Lab(tmp) as lab:
        lab.start("superlink", ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                                "--host", "127.0.0.1", "--port", str(port)], flwr_env(tmp / "superlink-home"))
        env = flwr_env(tmp / "supernode-home")
        if poll is not None:
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(poll)
        node = lab.start("supernode", ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                                       "--port", str(free_port())], env)
        lab.wait_log("supernode", "SuperNode ID")
        time.sleep(5)
        execs = [p for p in psutil.Process(node.pid).children(recursive=True) if "superexec" in " ".join(p.cmdline())]
        assert execs, "no flower-superexec process"
        before = sum(sum(p.cpu_times()[:2]) for p in execs)
        time.sleep(seconds)
        return (sum(sum(p.cpu_times()[:2]) for p in execs) - before) * 60 / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-cpu", action="store_true",
                        help="only measure an idle SuperExec's CPU use per poll interval (1, 0.25, 0.1, 0.05 s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    if args.idle_cpu:
        print("| FLWR_SUPEREXEC_TASK_POLL_INTERVAL | idle SuperExec CPU (s per minute) |\n|---|---|")
        for poll in (None, 0.25, 0.1, 0.05):
            with tempfile.TemporaryDirectory(prefix="fedconv-idle-") as tmp:
                print(f"| {poll or 1.0:g} s | {idle_cpu(poll, 30, Path(tmp)):.2f} |", flush=True)
        return
    results = []
    for name in args.variants.split(","):
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="fedconv-edge-") as tmp:
                r = run_variant(VARIANTS[name], args.rounds, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| variant | SuperExec poll | worker | fed_eval | s/round (median) | ClientApp process start→reply (s) "
          "| work in it (s) |\n|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        v, runs = VARIANTS[name], [r for r in results if r["variant"] == name]
        per_round = statistics.median(s for r in runs for s in r["round_seconds"])
        print(f"| {name} | {v.superexec_poll or 1.0:g} s | {'yes' if v.worker else 'no'} | {v.fed_eval} | {per_round:.1f} "
              f"| {statistics.median(r['process_seconds'] for r in runs):.2f} "
              f"| {statistics.median(r['work_seconds'] for r in runs):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
