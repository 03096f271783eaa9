"""The benchmark harness measures real runs (smoke test on digits; speed goals live in the benchmark)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_fashion_mnist
from fedconv.bench import measure_central_eval, measure_limit, measure_sim

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ["dataset=digits", "simulation.num_clients=4", "server.fraction_train=1.0", "server.rounds=3"]

pytestmark = pytest.mark.slow


def test_compute_limit_trains_the_same_cohorts_in_plain_pytorch() -> None:
    """The benchmark's claim: the limit does the simulation's work, so every round's central
    accuracy is the same number (same cohorts, seeds, lr schedule and aggregation)."""
    limit = measure_limit(DIGITS, workers=2)
    sim = measure_sim(DIGITS)
    assert len(limit["accuracies"]) == 3 and limit["accuracies"] == sim["accuracies"]
    assert limit["accuracies"][-1] > limit["accuracies"][0]
    assert limit["total_s"] == limit["startup_s"] + limit["rounds_s"]


def test_simulation_measurement_and_noop_clients() -> None:
    res = measure_sim([*DIGITS, "client.noop=true", "server.eval_every=1000", "server.fraction_evaluate=0"])
    assert res["total_s"] > res["rounds_s"] > 0 and res["round_s_median"] > 0
    assert res["peak_pss_mib"] > 50
    # no-op clients return the global model: the only central evaluation (the last round) is
    # the untrained model's
    assert len(res["accuracies"]) == 1 and res["accuracies"][0] < 0.3


def test_noop_clients_return_the_global_model_and_empty_clients_fail(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedconv.simulate", "dataset=digits", "simulation.num_clients=40",
         "server.fraction_train=1.0", "server.rounds=2", "server.fraction_evaluate=0", "client.noop=true",
         "partition.alpha=0.01", "partition.min_partition_size=0", "partition.allow_empty=true",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    empty = sum(1 for c in json.loads((tmp_path / "partition.json").read_text())["clients"] if c["num_train"] == 0)
    assert empty > 0
    with (tmp_path / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    accs = {r["central_accuracy"] for r in rows}
    assert len(accs) == 1  # no-op clients: the global model never changes
    for r in rows:
        assert int(r["clients_failed"]) == empty and int(r["clients_ok"]) == 40 - empty
    assert "has no training data" in proc.stdout


def test_central_evaluation_is_timed_on_the_whole_test_set() -> None:
    require_fashion_mnist()
    res = measure_central_eval()  # the benchmark config: Fashion-MNIST's 10,000 test images
    assert res["images"] == 10_000 and res["seconds"] > 0 and res["threads"] >= 1
