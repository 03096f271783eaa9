"""The benchmark harness measures real runs (smoke test on digits; speed goals live in the benchmark)."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import ONE_CPU_RAY, CaseRun, require_fashion_mnist
from fedconv.bench import measure_central_eval, measure_limit, measure_sim

DIGITS = ["dataset=digits", "simulation.num_clients=4", "server.fraction_train=1.0", "server.rounds=3", ONE_CPU_RAY]

pytestmark = pytest.mark.slow


def test_compute_limit_trains_the_same_cohorts_in_plain_pytorch() -> None:
    """The benchmark's claim: the limit does the simulation's work, so every round's central
    accuracy is the same number (same cohorts, seeds, lr schedule and aggregation); and the
    simulation's measurement itself: process wall, rounds, memory, start-up from the run's marks."""
    limit = measure_limit(DIGITS, workers=1)  # the pool's path; the cohort split over processes sums alike
    sim = measure_sim(DIGITS)
    assert len(limit["accuracies"]) == 3 and limit["accuracies"] == sim["accuracies"]
    assert limit["accuracies"][-1] > limit["accuracies"][0]
    assert limit["total_s"] == limit["startup_s"] + limit["rounds_s"]
    assert sim["total_s"] > sim["rounds_s"] > 0 and sim["round_s_median"] > 0
    assert sim["peak_pss_mib"] > 50
    # the start-up's parts come from the run's own marks, in order, before the rounds
    marks = [sim[f"startup_{k}_s"] for k in ("config", "inputs", "ray", "server_app", "nodes_ready", "first_round")]
    assert marks == sorted(marks) and 0 < marks[0] and marks[-1] < sim["total_s"] - sim["rounds_s"]


@pytest.mark.cases(noop_empty=("dataset=digits", "simulation.num_clients=40", "server.fraction_train=1.0",
                               "server.rounds=3", "server.eval_every=2", "server.fraction_evaluate=0", "client.noop=true",
                               "partition.alpha=0.01", "partition.min_partition_size=0", "partition.allow_empty=true"))
def test_noop_clients_return_the_global_model_and_empty_clients_fail(cases: dict[str, CaseRun]) -> None:
    """No-op clients (the benchmark's overhead measurement) send the global model back: it never
    changes, so every central evaluation (every second round, and the last) is the untrained model's."""
    run = cases["noop_empty"].completed()
    empty = sum(1 for c in json.loads((run.dir / "partition.json").read_text())["clients"] if c["num_train"] == 0)
    assert empty > 0
    with (run.dir / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    accs = [r["central_accuracy"] for r in rows]
    assert accs[0] == "" and accs[1] == accs[2] and float(accs[2]) < 0.3  # the global model never changes
    for r in rows:
        assert int(r["clients_failed"]) == empty and int(r["clients_ok"]) == 40 - empty
    assert "has no training data" in run.stdout


def test_central_evaluation_is_timed_on_the_whole_test_set() -> None:
    require_fashion_mnist()
    res = measure_central_eval(repeats=1)  # the benchmark config: Fashion-MNIST's 10,000 test images
    assert res["images"] == 10_000 and res["seconds"] > 0 and res["threads"] >= 1


def _sim_row(seconds: float, accuracy: float) -> dict[str, float]:
    return {"total_s": seconds + 9, "rounds_s": seconds, "startup_s": 9.0, "round_s_median": seconds / 20,
            "final_accuracy": accuracy, "peak_pss_mib": 1500.0, "train_examples_per_s": 60000 / seconds,
            "startup_config_s": 1.5, "startup_ray_s": 4.5, "startup_nodes_ready_s": 7.5, "startup_first_round_s": 7.6,
            "shutdown_s": 1.4, "repeats": 3}


def test_the_table_shows_start_up_paths_and_sweep_rows() -> None:
    from fedconv.bench import table

    res = {
        "machine": {"cores": 2, "cpu": "cpu", "torch": "2"}, "config": ["+experiment=bench"],
        "limit": {"rounds_s": 40.0, "total_s": 45.0, "final_accuracy": 0.6, "repeats": 3},
        "sim": _sim_row(44.0, 0.6), "ratio_rounds": 1.1, "ratio_total": 1.19,
        "paths": {"bf16": _sim_row(36.0, 0.59), "compiled": _sim_row(52.0, 0.6)},
        "overhead": {"10": {"round_s_median": 0.2}, "100": {"round_s_median": 0.9}},
        "scale": {"100": {"round_s_median": 0.2, "startup_s": 9.0, "peak_pss_mib": 1400.0}},
        "sweep": {"single": _sim_row(10.0, 0.9), "sweep": {"wall_s": 150.0, "peak_pss_mib": 1700.0, "jobs": 12,
                                                             "ray_instances": 1}},
        "central_eval": {"seconds": 1.0, "images": 10000, "threads": 2},
        "edge": {"seconds": 1.1, "peak_rss_mib": 480.0},
    }
    text = table(res)
    assert "| start-up of T_sim (seconds since the command started) | config composed 1.5 s, Ray up 4.5 s, " \
           "clients warm 7.5 s, first round 7.6 s; shutdown 1.4 s |" in text
    assert "| bf16 path: training examples/s (fp32), final accuracy (fp32) | 1667 (1364), 0.5900 (0.6000) |" in text
    assert "| compiled path: training examples/s (fp32), final accuracy (fp32) | 1154 (1364), 0.6000 (0.6000) |" in text
    assert "| 12-job digits sweep: wall (jobs × one job), peak PSS (one job), Ray instances | " \
           "150.0 s (228.0 s), 1700 MiB (1500 MiB), 1 |" in text
    del res["paths"], res["sweep"], res["overhead"]["100"]  # --quick
    quick = table(res)
    assert "path:" not in quick and "sweep" not in quick and "100 zero-work" not in quick
