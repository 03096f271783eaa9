"""Peak memory of a stateful algorithm at 1,000 and 10,000 clients: is client state off the driver's heap?

    python experiments/client_state_memory.py [--clients 1000 10000] [--strategies fedavg scaffold] [--rounds 3]

Runs ``python -m fedconv.simulate`` (Fashion-MNIST, IID, node pool, 100 clients per round,
one local epoch) per (strategy, clients) and samples every 0.2 s the resident memory of the
driver process (where the ServerApp, the strategy and its server state live) and of the
whole process tree (driver + Ray workers). Prints one Markdown row per run, with the disk
the client-state store holds at the end. SCAFFOLD's driver should sit within about one model
of FedAvg's whatever the number of clients: each partition's c_i is on disk, the driver holds
an integer per trained partition.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def run(strategy: str, clients: int, rounds: int, out: Path) -> dict:
    per_round = 100
    cmd = [sys.executable, "-m", "fedconv.simulate", f"strategy={strategy}", "partition=iid",
           f"simulation.num_clients={clients}", f"server.fraction_train={per_round / clients}",
           "server.fraction_evaluate=0", f"server.rounds={rounds}", "client.epochs=1", "server.eval_every=1000",
           f"hydra.run.dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = psutil.Process(proc.pid)
    peak_driver = peak_tree = 0
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            rss = driver.memory_info().rss
            tree = rss + sum(c.memory_info().rss for c in driver.children(recursive=True) if c.is_running())
        except psutil.Error:
            time.sleep(0.2)
            continue
        peak_driver, peak_tree = max(peak_driver, rss), max(peak_tree, tree)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    state = out / "client_state"
    files = list(state.glob("p*/r*.safetensors")) if state.exists() else []
    return {"strategy": strategy, "clients": clients, "rc": proc.returncode, "status": summary.get("status"),
            "driver_mb": peak_driver / 2**20, "tree_mb": peak_tree / 2**20, "state_files": len(files),
            "state_mb": sum(f.stat().st_size for f in files) / 2**20, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--strategies", nargs="+", default=["fedavg", "scaffold"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("| strategy | clients | rounds | status | driver peak RSS (MB) | process tree peak RSS (MB) "
          "| client-state files | on disk (MB) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            for strategy in args.strategies:
                r = run(strategy, clients, args.rounds, Path(tmp) / f"{strategy}-{clients}")
                print(f"| {r['strategy']} | {r['clients']} | {args.rounds} | {r['status'] or 'rc ' + str(r['rc'])} "
                      f"| {r['driver_mb']:.0f} | {r['tree_mb']:.0f} | {r['state_files']} | {r['state_mb']:.1f} "
                      f"| {r['wall_s']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
