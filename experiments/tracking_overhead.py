"""What the tracking sinks cost a round: replays a finished run's rounds.csv rows into fresh
TensorBoard and MLflow sinks (in a temporary folder, the same calls the ServerApp makes after
writing each row) and times each call; prints the median per round next to the run's median
round time. Run on an otherwise idle machine, in the venv:

    python experiments/tracking_overhead.py results/runs/default/<timestamp>

The start (MLflow's store, params) and the end (the run's files as artifacts) happen once per
run, not per round; they are printed too.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedconv.config import plain
from fedconv.runs import run_dir
from fedconv.runs.run_dir import _typed  # the rounds.csv cells as the ServerApp wrote them
from fedconv.runs.tracking import MlflowSink, TensorBoardSink


def main(run: Path) -> None:
    cfg = plain(run / run_dir.CONFIG)
    import csv

    with (run / run_dir.ROUNDS).open() as f:
        rows = [{k: _typed(v) for k, v in r.items()} for r in csv.DictReader(f)]
    round_seconds = statistics.median(float(r["round_seconds"]) for r in rows)
    print(f"{run}: {len(rows)} rounds, {len(rows[0])} columns, median round {round_seconds:.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        shutil.copytree(run, out, ignore=shutil.ignore_patterns("tensorboard", "wandb", "tracking.json"))
        cfg["logger"] = {"mlflow": True, "tensorboard": True, "mlflow_tracking_uri": str(Path(tmp) / "mlruns")}
        for name, make in (("tensorboard", lambda: TensorBoardSink(out, cfg, 1, None)),
                           ("mlflow", lambda: MlflowSink(out, cfg, 1))):
            t = time.perf_counter()
            sink = make()
            start = time.perf_counter() - t
            per_round = []
            for row in rows:
                t = time.perf_counter()
                sink.round(row)
                per_round.append(time.perf_counter() - t)
            t = time.perf_counter()
            sink.end({"status": "completed", "rounds_completed": len(rows)})
            end = time.perf_counter() - t
            med = statistics.median(per_round)
            print(f"{name:12s} per round: median {med * 1000:.1f} ms ({med / round_seconds:.2%} of a round); "
                  f"start {start:.2f} s, end {end:.2f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
