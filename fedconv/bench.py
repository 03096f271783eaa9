"""``python -m fedconv.bench [--quick] [--repeats N] [--out DIR]``: fedconv against the machine's limit.

1. compute limit: the benchmark config's exact local training (same partitions, cohorts,
   epochs, batch size, optimizer, model) and central evaluation in plain PyTorch, one
   worker process per core, data loaded once: ``T_limit``;
2. fedconv: the same config through ``python -m fedconv.simulate`` (Flower + Ray): ``T_sim``
   with and without start-up, and ``T_sim / T_limit``; the start-up's parts from the run's
   own marks (summary.json ``startup_seconds``); (not with ``--quick``) the same config on the
   bf16 and compiled paths: training throughput and final accuracy;
3. framework overhead: clients that do no work, 10 and (not with ``--quick``) 100 per round:
   seconds per round;
4. scale: 100 / 1,000 / 10,000 clients, 10 per round: seconds per round, start-up, peak memory;
5. edge client: one client's local round on one thread (600 samples);
6. central evaluation: the ServerApp's per-round evaluation of the test set;
7. (not with ``--quick``) a 12-job sweep of a small digits job: its wall time against 12 times
   one job, its peak memory against one job's, and the number of Ray instances it used.

Each measurement runs ``--repeats`` times (default 3); medians are reported. Results go
to ``results/bench/<timestamp>/bench.json`` and ``bench.png`` and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedconv import atomic
from fedconv.sections import Simulation

ROOT = Path(__file__).resolve().parent.parent
BENCH = ["+experiment=bench"]
BF16 = ["client.precision=bf16", "server.eval_precision=bf16"]
SWEEP_JOBS = 12
STARTUP_PARTS = (("config", "config composed"), ("ray", "Ray up"), ("nodes_ready", "clients warm"),
                 ("first_round", "first round"))


# --------------------------------------------------------------- process-tree memory


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) summed over a process and all its descendants (driver, raylet, workers)."""
    import psutil

    root = psutil.Process(pid)
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


def run_sampled(argv: list[str], interval: float = 1.0, **popen: Any) -> dict[str, float]:
    """Run a command; return its exit code, wall seconds, peak tree PSS/RSS and the peak
    RSS of the command's own process (MiB; for a simulation, the driver: ServerApp and strategy)."""
    import psutil

    t0 = time.perf_counter()
    child = subprocess.Popen(argv, **popen)
    peak_rss = peak_pss = peak_root = 0
    while child.poll() is None:
        try:
            rss, pss = tree_memory(child.pid)
            root = psutil.Process(child.pid).memory_info().rss
            peak_rss, peak_pss, peak_root = max(peak_rss, rss), max(peak_pss, pss), max(peak_root, root)
        except psutil.NoSuchProcess:
            pass
        time.sleep(interval)
    return {
        "returncode": child.returncode,
        "wall_s": time.perf_counter() - t0,
        "peak_pss_mib": peak_pss / 2**20,
        "peak_rss_mib": peak_rss / 2**20,
        "peak_root_rss_mib": peak_root / 2**20,
    }


# -------------------------------------------------------------------- compute limit

_WORKER: dict[str, Any] = {}


def _limit_init(cfg: dict[str, Any]) -> None:
    import torch

    from fedconv.learning import task

    torch.set_num_threads(1)
    ds = task.dataset(cfg)
    _WORKER.update(cfg=cfg, ds=ds, parts=task.partitions(cfg, Simulation.of(cfg).num_clients),
                   model=task.reusable_model(cfg, ds))


def _limit_train(job: tuple[dict[str, Any], int, int, float]) -> tuple[dict[str, Any], int]:
    import torch

    from fedconv.learning import task
    from fedconv.learning.models import transmitted_state

    state, pid, server_round, lr = job
    cfg, ds, model = _WORKER["cfg"], _WORKER["ds"], _WORKER["model"]
    task.load_global(model, {k: torch.from_numpy(v) for k, v in state.items()})
    res = task.train_partition(cfg, ds, model, _WORKER["parts"].train[pid], server_round=server_round, pid=pid, lr=lr)
    return {k: v.detach().numpy().copy() for k, v in transmitted_state(model).items()}, res.num_examples


def measure_limit(overrides: list[str], workers: int) -> dict[str, Any]:
    """Plain PyTorch, no Flower, no Ray: the same work on one process per core."""
    import numpy as np
    import torch

    from fedconv.config import clients_per_round, compose
    from fedconv.federation.cohorts import TRAIN_SALT, sample_cohort
    from fedconv.learning import task
    from fedconv.learning.models import channels_last, transmitted_state
    from fedconv.learning.training import evaluate, folded_for_inference, lr_for_round
    from fedconv.sections import Client, Server

    t0 = time.perf_counter()
    cfg = compose(overrides)
    server, n = Server.of(cfg), Simulation.of(cfg).num_clients
    k = clients_per_round(n, server.fraction_train, server.min_train_clients)
    ds = task.dataset(cfg)
    task.partitions(cfg, n)
    model = task.initial_model(cfg, ds)
    eval_model = channels_last(task.initial_model(cfg, ds))
    norm = task.normalizer(cfg, ds, train=False)
    state = {key: v.detach().numpy().copy() for key, v in transmitted_state(model).items()}
    with mp.get_context("spawn").Pool(workers, initializer=_limit_init, initargs=(cfg,)) as pool:
        pool.map(time.sleep, [0.2] * workers, chunksize=1)  # every worker has loaded the data
        startup = time.perf_counter() - t0
        t_rounds = time.perf_counter()
        accuracies = []
        for r in range(1, server.rounds + 1):
            lr = lr_for_round(server, Client.of(cfg).lr, r)
            jobs = [(state, pid, r, lr) for pid in sample_cohort(int(cfg["seed"]), r, TRAIN_SALT, n, k)]
            results = pool.map(_limit_train, jobs, chunksize=1)
            total = sum(num for _, num in results)
            state = {key: sum(s[key] * (num / total) for s, num in results).astype(np.float32) for key in state}
            torch.set_num_threads(workers)
            task.load_global(eval_model, {key: torch.from_numpy(v) for key, v in state.items()})
            folded = folded_for_inference(eval_model)  # the ServerApp's evaluation, done the same way
            accuracies.append(evaluate(folded, ds.test_x, ds.test_y, norm, server.eval_batch_size).accuracy)
        rounds_s = time.perf_counter() - t_rounds
    return {"rounds_s": rounds_s, "startup_s": startup, "total_s": startup + rounds_s,
            "final_accuracy": accuracies[-1], "accuracies": accuracies}


# ----------------------------------------------------------------- fedconv simulate


def measure_sim(overrides: list[str], interval: float = 1.0) -> dict[str, Any]:
    """One ``python -m fedconv.simulate`` run; times from its rounds.csv and process wall."""
    import csv

    with tempfile.TemporaryDirectory(prefix="fedconv-bench-") as tmp:
        argv = [sys.executable, "-m", "fedconv.simulate", *overrides, f"hydra.run.dir={tmp}/run"]
        with open(f"{tmp}/log", "w") as log:
            proc = run_sampled(argv, interval, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if proc["returncode"] != 0:
            tail = Path(f"{tmp}/log").read_text()[-2000:]
            raise RuntimeError(f"simulation failed: {' '.join(overrides)}\n{tail}")
        with open(f"{tmp}/run/rounds.csv") as f:
            rows = list(csv.DictReader(f))
        with open(f"{tmp}/run/client_metrics.csv") as f:
            trained = sum(int(r["num_examples"]) for r in csv.DictReader(f)  # per local epoch
                          if r["phase"] == "train" and r["status"] == "ok")
        summary = json.loads(Path(f"{tmp}/run/summary.json").read_text())
    per_round = [float(r["round_seconds"]) for r in rows]
    inner = per_round[1:-1] or per_round  # the first and last rounds carry warm-up / final work
    rounds_s = float(rows[-1]["elapsed_seconds"])
    marks = summary.get("startup_seconds") or {}
    first_round = float(marks.get("first_round", 0.0))
    return {
        "total_s": proc["wall_s"],
        "rounds_s": rounds_s,
        "startup_s": proc["wall_s"] - rounds_s,
        # the start-up's parts, from the run's own marks (seconds since the command started)
        **{f"startup_{name}_s": float(at) for name, at in marks.items()},
        "shutdown_s": max(0.0, proc["wall_s"] - first_round - rounds_s) if first_round else 0.0,
        "train_examples_per_s": trained / rounds_s,
        "round_s_median": statistics.median(inner),
        "peak_pss_mib": proc["peak_pss_mib"],
        "peak_rss_mib": proc["peak_rss_mib"],
        "final_accuracy": summary["final_central_accuracy"],
        "accuracies": [float(r["central_accuracy"]) for r in rows if r["central_accuracy"] != ""],
    }


# ------------------------------------------------------------------------------ sweep

# A start-up-bound job (digits, 1 training and 1 evaluating client per round), as
# experiments/ray_sweep.sh runs it: what a sweep of many small jobs pays per job.
SWEEP_JOB = ["dataset=digits", "server.fraction_train=0.05", "server.min_train_clients=1",
             "server.fraction_evaluate=0.05", "server.min_evaluate_clients=1"]


def measure_sweep(overrides: list[str], jobs: int, interval: float = 1.0) -> dict[str, Any]:
    """One ``-m`` sweep of ``jobs`` seeds on Hydra's basic launcher (one process, one Ray
    for all jobs): wall time, peak tree memory, and how many Ray instances its jobs ran on."""
    with tempfile.TemporaryDirectory(prefix="fedconv-bench-") as tmp:
        argv = [sys.executable, "-m", "fedconv.simulate", "-m", *overrides, f"seed={','.join(map(str, range(jobs)))}",
                f"hydra.sweep.dir={tmp}/sweep"]
        with open(f"{tmp}/log", "w") as log:
            proc = run_sampled(argv, interval, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if proc["returncode"] != 0:
            raise RuntimeError(f"sweep failed: {' '.join(overrides)}\n{Path(f'{tmp}/log').read_text()[-2000:]}")
        summaries = [json.loads(p.read_text()) for p in Path(f"{tmp}/sweep").glob("*/summary.json")]
    if len(summaries) != jobs or {s["status"] for s in summaries} != {"completed"}:
        raise RuntimeError(f"sweep: {len(summaries)} of {jobs} jobs completed")
    return {
        "wall_s": proc["wall_s"],
        "peak_pss_mib": proc["peak_pss_mib"],
        "jobs": jobs,
        "ray_instances": len({s.get("ray", {}).get("node_id") for s in summaries}),
    }


# ------------------------------------------------------------------------ edge client

def _in_fresh_process(function: str, *args: str) -> dict[str, Any]:
    """Run ``fedconv.bench.<function>(*args)`` in a new Python process (its own peak RSS, its
    own torch threads) and return the JSON it prints last."""
    call = f"from fedconv import bench; bench.{function}(*{args!r})"
    out = subprocess.run([sys.executable, "-c", call], cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def edge_step() -> None:
    """One local epoch of 600 images on one thread, as a board trains: seconds and peak RSS."""
    import resource

    import numpy as np
    import torch

    from fedconv.config import compose
    from fedconv.learning import task
    from fedconv.learning.training import train_local
    from fedconv.sections import Client

    torch.set_num_threads(1)
    cfg = compose(["+experiment=bench"])
    ds = task.dataset(cfg)
    model = task.initial_model(cfg, ds)
    idx = np.sort(np.random.default_rng(0).choice(len(ds.train_y), 600, replace=False))
    x, y = np.array(ds.train_x[idx]), np.array(ds.train_y[idx])
    t0 = time.perf_counter()
    train_local(model, x, y, task.normalizer(cfg, ds, True), Client.of(cfg), lr=0.1, epochs=1, seed=0)
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure_edge() -> dict[str, float]:
    return _in_fresh_process("edge_step")


def central_eval(repeats: str) -> None:
    """The ServerApp's central evaluation timed ``repeats`` times after a warm-up (median)."""
    import torch

    from fedconv.config import compose
    from fedconv.learning import task
    from fedconv.learning.models import channels_last
    from fedconv.learning.training import evaluate, folded_for_inference
    from fedconv.sections import Server

    cfg = compose(["+experiment=bench"])
    ds = task.dataset(cfg)
    model = channels_last(task.initial_model(cfg, ds))  # as the ServerApp holds it
    norm = task.normalizer(cfg, ds, train=False)
    batch = Server.of(cfg).eval_batch_size
    evaluate(model, ds.test_x, ds.test_y, norm, batch_size=batch)  # warm-up
    times = []
    for _ in range(int(repeats)):
        t0 = time.perf_counter()  # as the ServerApp does every round: fold BatchNorm, evaluate
        evaluate(folded_for_inference(model), ds.test_x, ds.test_y, norm, batch_size=batch)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "images": len(ds.test_y), "threads": torch.get_num_threads()}))


def measure_central_eval(repeats: int = 10) -> dict[str, float]:
    """The ServerApp's per-round central evaluation (driver process, default torch threads):
    the median of ``repeats`` timed evaluations after a warm-up."""
    return _in_fresh_process("central_eval", str(repeats))


# ---------------------------------------------------------------------------- driver


def machine() -> dict[str, Any]:
    import torch

    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "torch_threads_per_client": 1,
            "torch": torch.__version__, "python": platform.python_version()}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}


def repeat(fn, n: int, *args: Any) -> dict[str, Any]:
    runs = [fn(*args) for _ in range(n)]
    return {**_median(runs), "repeats": n, "runs": runs}


def run_benchmark(repeats: int, quick: bool) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    rounds = ["server.rounds=5"] if quick else []
    noop = [*BENCH, *rounds, "client.noop=true", "server.eval_every=1000"]
    scale_sizes = [100, 1000] if quick else [100, 1000, 10000]

    def scale_config(n: int) -> list[str]:  # zero-work clients, 10 per round out of n
        return [*noop, *([] if quick else ["server.rounds=10"]), f"simulation.num_clients={n}",
                f"server.fraction_train={10 / n}", "partition.min_partition_size=0", "partition.allow_empty=true"]

    res: dict[str, Any] = {"machine": machine(), "quick": quick, "config": BENCH + rounds}
    print("[bench] compute limit ...", flush=True)
    res["limit"] = repeat(measure_limit, repeats, BENCH + rounds, cores)
    print("[bench] fedconv simulate ...", flush=True)
    res["sim"] = repeat(measure_sim, repeats, BENCH + rounds)
    res["ratio_rounds"] = res["sim"]["rounds_s"] / res["limit"]["rounds_s"]
    res["ratio_total"] = res["sim"]["total_s"] / res["limit"]["total_s"]
    print("[bench] numeric paths ...", flush=True)
    res["paths"] = {} if quick else {  # --quick keeps to the headline numbers (≤ 2 minutes)
        "bf16": repeat(measure_sim, repeats, [*BENCH, *rounds, *BF16]),
        "compiled": repeat(measure_sim, repeats, [*BENCH, *rounds, "client.compile=true"]),
    }
    print("[bench] framework overhead ...", flush=True)
    # 10 zero-work clients per round out of 100 is also the scale series' first point: one measurement.
    res["overhead"] = {
        "10": repeat(measure_sim, repeats, scale_config(100)),
        **({} if quick else {"100": repeat(measure_sim, repeats, [*noop, "server.fraction_train=1.0"])}),
    }
    print("[bench] scale ...", flush=True)
    res["scale"] = {
        str(n): res["overhead"]["10"] if n == 100 else repeat(measure_sim, repeats, scale_config(n))
        for n in scale_sizes
    }
    if not quick:
        print(f"[bench] {SWEEP_JOBS}-job sweep ...", flush=True)
        single = repeat(measure_sim, repeats, SWEEP_JOB)
        res["sweep"] = {"single": single, "sweep": repeat(measure_sweep, repeats, SWEEP_JOB, SWEEP_JOBS)}
    print("[bench] central evaluation ...", flush=True)
    res["central_eval"] = repeat(measure_central_eval, repeats)
    print("[bench] edge client ...", flush=True)
    res["edge"] = repeat(measure_edge, repeats)
    return res


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    lim, sim = res["limit"], res["sim"]
    lines = [
        f"machine: {m['cores']} cores, {m['cpu']}, torch {m['torch']} (1 thread per client worker)",
        f"config: {' '.join(res['config'])}  (medians of {lim['repeats']} runs)",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| T_limit (plain PyTorch, rounds only / with start-up) | {lim['rounds_s']:.1f} s / {lim['total_s']:.1f} s |",
        f"| T_sim (fedconv, rounds only / with start-up) | {sim['rounds_s']:.1f} s / {sim['total_s']:.1f} s |",
        f"| T_sim / T_limit (rounds only / with start-up) | {res['ratio_rounds']:.2f} / {res['ratio_total']:.2f} |",
        f"| final accuracy (limit / sim) | {lim['final_accuracy']:.4f} / {sim['final_accuracy']:.4f} |",
        f"| overhead per round, 10 zero-work clients | {res['overhead']['10']['round_s_median']:.3f} s |",
    ]
    if "100" in res["overhead"]:
        lines.append(f"| overhead per round, 100 zero-work clients | {res['overhead']['100']['round_s_median']:.3f} s |")
    parts = ", ".join(f"{label} {sim[f'startup_{key}_s']:.1f} s" for key, label in STARTUP_PARTS
                      if f"startup_{key}_s" in sim)
    lines.append(f"| start-up of T_sim (seconds since the command started) | {parts}; shutdown {sim['shutdown_s']:.1f} s |")
    for name, path in res.get("paths", {}).items():
        lines.append(
            f"| {name} path: training examples/s (fp32), final accuracy (fp32) | "
            f"{path['train_examples_per_s']:.0f} ({sim['train_examples_per_s']:.0f}), "
            f"{path['final_accuracy']:.4f} ({sim['final_accuracy']:.4f}) |"
        )
    if "sweep" in res:
        one, sweep = res["sweep"]["single"], res["sweep"]["sweep"]
        lines.append(
            f"| {int(sweep['jobs'])}-job digits sweep: wall (jobs × one job), peak PSS (one job), Ray instances | "
            f"{sweep['wall_s']:.1f} s ({int(sweep['jobs']) * one['total_s']:.1f} s), "
            f"{sweep['peak_pss_mib']:.0f} MiB ({one['peak_pss_mib']:.0f} MiB), {int(sweep['ray_instances'])} |"
        )
    for n, row in res["scale"].items():
        lines.append(
            f"| scale {int(n):,} clients (10 per round, zero-work): s/round, start-up, peak PSS | "
            f"{row['round_s_median']:.3f} s, {row['startup_s']:.1f} s, {row['peak_pss_mib']:.0f} MiB |"
        )
    ev = res["central_eval"]
    lines.append(f"| central evaluation of {int(ev['images']):,} test images ({int(ev['threads'])} threads) "
                 f"| {ev['seconds']:.3f} s |")
    edge = res["edge"]
    lines.append(f"| edge client: 600 samples, 1 epoch, 1 thread "
                 f"| {edge['seconds']:.2f} s, {edge['peak_rss_mib']:.0f} MiB peak RSS |")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = ["T_limit", "T_sim"]
    a.bar(names, [res["limit"]["rounds_s"], res["sim"]["rounds_s"]], label="rounds")
    a.bar(names, [res["limit"]["startup_s"], res["sim"]["startup_s"]],
          bottom=[res["limit"]["rounds_s"], res["sim"]["rounds_s"]], label="start-up")
    a.set_ylabel("seconds")
    a.set_title("benchmark config")
    a.legend()
    sizes = list(res["scale"])
    b.plot([int(s) for s in sizes], [res["scale"][s]["round_s_median"] for s in sizes], marker="o")
    b.set_xscale("log")
    b.set_xlabel("total clients (10 per round, zero-work)")
    b.set_ylabel("seconds per round")
    b.set_title("scale")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedconv.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="5 rounds, 1 repeat, scale up to 1,000 clients; no numeric paths, 100-client overhead or sweep")
    parser.add_argument("--repeats", type=int, default=None, help="runs per measurement (default 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out or ROOT / "results" / "bench" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run_benchmark(repeats, args.quick)
    res["bench_wall_s"] = time.perf_counter() - t0
    atomic.write_text(out / "bench.json", json.dumps(res, indent=2))
    plot(res, out / "bench.png")
    text = table(res)
    atomic.write_text(out / "bench.md", text + "\n")
    print(text)
    print(f"\nbenchmark took {res['bench_wall_s']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
