"""Peak memory of a stateful algorithm at 1,000 and 10,000 clients: is client state off the driver's heap?

    python experiments/client_state_memory.py [--clients 1000 10000] [--strategies fedavg scaffold] [--per-round 100]

Runs ``python -m fedconv.simulate`` (Fashion-MNIST, IID, node pool, ``--per-round`` clients per
round for clients / per-round rounds, so about 63 % of the partitions train at least once and
hold state; one local epoch; central evaluation only at the end) per (strategy, clients), with
``fedconv.bench.run_sampled`` sampling the driver's RSS (the ServerApp, the strategy and its
server state live there) and the whole process tree's PSS (driver + Ray workers). Prints one
Markdown row per run, with what the client-state store holds on disk at the end. SCAFFOLD's
driver should stay within about one model of FedAvg's whatever the number of clients: each
partition's c_i is on disk, the driver holds one integer per trained partition.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fedconv.bench import run_sampled

ROOT = Path(__file__).resolve().parent.parent


def run(strategy: str, clients: int, per_round: int, out: Path) -> dict:
    rounds = max(1, clients // per_round)
    cmd = [sys.executable, "-m", "fedconv.simulate", f"strategy={strategy}", "partition=iid",
           f"simulation.num_clients={clients}", f"server.fraction_train={per_round / clients}", "server.fraction_evaluate=0",
           f"server.rounds={rounds}", "client.epochs=1", f"server.eval_every={rounds}", f"hydra.run.dir={out}"]
    res = run_sampled(cmd, interval=0.2, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    files = list((out / "client_state").glob("p*/r*.safetensors"))
    return {**res, "rounds": rounds, "status": summary.get("status") or f"exit {res['returncode']}", "state_files": len(files),
            "state_mib": sum(f.stat().st_size for f in files) / 2**20,
            "trained": len({f.parent.name for f in files})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--strategies", nargs="+", default=["fedavg", "scaffold"])
    ap.add_argument("--per-round", type=int, default=100)
    args = ap.parse_args()
    print("| strategy | clients | per round | rounds | status | driver peak RSS (MiB) | tree peak PSS (MiB) "
          "| partitions with state | state on disk (MiB) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            for strategy in args.strategies:
                r = run(strategy, clients, args.per_round, Path(tmp) / f"{strategy}-{clients}")
                print(f"| {strategy} | {clients} | {args.per_round} | {r['rounds']} | {r['status']} "
                      f"| {r['peak_root_rss_mib']:.0f} | {r['peak_pss_mib']:.0f} | {r['trained']} "
                      f"| {r['state_mib']:.1f} | {r['wall_s']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
