"""Faults on the real Flower + Ray stack: crashes, skipped rounds, stragglers, poisoned
replies, timeouts, kill-and-resume, and sweep re-runs (digits, small configs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from conftest import ONE_CPU_RAY, ROOT, CaseRun, mlflow_run, planned_job, rows, simulate
from fedconv.federation.faults import crashes, straggler_plan
from fedconv.runs import checkpoint

BASE = [
    "dataset=digits",
    "server.fraction_train=1.0",
    "server.fraction_evaluate=0",
    "partition.alpha=1.0",
]

pytestmark = pytest.mark.slow


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def ints(table: list[dict[str, str]], key: str) -> list[int]:
    return [int(r[key]) for r in table]


@pytest.mark.cases(dropout=(*BASE, "simulation.num_clients=6", "server.rounds=5", "client.epochs=2", "faults.dropout=0.3"))
def test_dropout_still_converges_and_counts_the_crashes(cases: dict[str, CaseRun]) -> None:
    run = cases["dropout"].completed()
    table = rows(run.dir)
    expected = [sum(crashes(0, r, pid, 0.3) for pid in range(6)) for r in range(1, 6)]
    assert ints(table, "clients_failed") == expected and sum(expected) > 0
    assert [s - f for s, f in zip(ints(table, "clients_sampled"), expected, strict=True)] == ints(table, "clients_ok")
    trained = {(int(r["round"]), int(r["partition_id"])) for r in rows(run.dir, "client_metrics.csv")}
    assert not any(crashes(0, r, pid, 0.3) and (r, pid) in trained for r in range(1, 6) for pid in range(6))
    acc = [float(r["central_accuracy"]) for r in table]
    assert acc[-1] > 0.8 and acc[-1] > acc[0]
    assert "ClientApp raised: injected crash of partition" in run.stdout
    assert json.loads((run.dir / "summary.json").read_text())["status"] == "completed"


ALL_FAIL = (*BASE, "simulation.num_clients=4", "server.rounds=2", "faults.dropout=1.0")


@pytest.mark.cases(all_fail=ALL_FAIL)
def test_all_clients_failing_skips_the_round_and_keeps_the_model(cases: dict[str, CaseRun]) -> None:
    from fedconv.config import compose
    from fedconv.learning import task
    from fedconv.learning.models import transmitted_state

    run = cases["all_fail"].completed()
    table = rows(run.dir)
    assert ints(table, "round_skipped") == [1, 1] and ints(table, "clients_failed") == [4, 4]
    assert ints(table, "clients_ok") == [0, 0] and ints(table, "bytes_up") == [0, 0]
    assert table[0]["central_accuracy"] == table[1]["central_accuracy"]
    cfg = compose(list(ALL_FAIL))
    initial = transmitted_state(task.initial_model(cfg, task.dataset(cfg)))
    final = load_file(str(run.dir / "model.safetensors"))
    assert set(final) == set(initial)
    for name, tensor in initial.items():
        np.testing.assert_array_equal(final[name], tensor.numpy())
    assert json.loads((run.dir / "summary.json").read_text())["rounds_skipped"] == 2


STRAGGLERS = (*BASE, "simulation.num_clients=6", "server.rounds=2", "client.epochs=3", "faults=stragglers")


@pytest.mark.cases(stragglers_fedavg=(*STRAGGLERS, "strategy=fedavg"), stragglers_fedprox=(*STRAGGLERS, "strategy=fedprox"))
def test_stragglers_fedprox_aggregates_fedavg_drops(cases: dict[str, CaseRun]) -> None:
    """Half the clients straggle: FedAvg drops their updates, FedProx aggregates their partial
    work (a sweep's re-run skipping completed jobs:
    test_simulation.py::test_two_job_sweep_writes_two_runs_an_index_and_a_parent_mlflow_run)."""
    fedavg, fedprox = cases["stragglers_fedavg"].completed().dir, cases["stragglers_fedprox"].completed().dir
    for r in range(1, 3):
        assert len(straggler_plan(0, r, range(6), 0.5, 3)) == 3
    avg, prox = rows(fedavg), rows(fedprox)
    assert ints(avg, "stragglers") == [3, 3] and ints(prox, "stragglers") == [3, 3]
    assert ints(avg, "clients_dropped") == [3, 3] and ints(avg, "clients_ok") == [3, 3]
    assert ints(prox, "clients_dropped") == [0, 0] and ints(prox, "clients_ok") == [6, 6]
    dropped = {(int(r["round"]), int(r["partition_id"])) for r in rows(fedavg, "client_metrics.csv") if r["status"] == "dropped"}
    assert dropped == {(r, p) for r in (1, 2) for p in straggler_plan(0, r, range(6), 0.5, 3)}


@pytest.mark.cases(nan_client=(*BASE, "simulation.num_clients=4", "server.rounds=3", "client.epochs=2", "faults=nan_client"))
def test_nan_client_is_rejected_and_the_model_stays_finite(cases: dict[str, CaseRun]) -> None:
    run = cases["nan_client"]
    assert run.status == "completed", run.stdout[-3000:]
    tmp_path = run.dir
    table = rows(tmp_path)
    assert ints(table, "clients_rejected") == [1, 1, 1] and ints(table, "clients_ok") == [3, 3, 3]
    assert "partition 0: reply rejected: array" in run.stdout and "non-finite" in run.stdout
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())
    acc = [float(r["central_accuracy"]) for r in table]
    assert acc[0] < acc[1] < acc[2]
    rejected = [r for r in rows(tmp_path, "client_metrics.csv") if r["status"] == "rejected"]
    assert {r["partition_id"] for r in rejected} == {"0"} and len(rejected) == 3


# A sleeping client holds its Ray actor past the round: one round, so the other two clients
# share the session's second warm actor (a second round would start with the sleeper's actor
# still busy, and 4 actors of half a CPU took ~55 s to start on 2 busy cores).
@pytest.mark.cases(round_timeout=(*BASE, "simulation.num_clients=3", "server.rounds=1", "client.epochs=1",
                                  "faults.slow_partitions=0", "faults.slow_seconds=12", "server.round_timeout=6"))
def test_a_client_past_the_round_timeout_counts_as_failed(cases: dict[str, CaseRun]) -> None:
    run = cases["round_timeout"].completed()
    table = rows(run.dir)
    trained = {(int(r["round"]), int(r["partition_id"])) for r in rows(run.dir, "client_metrics.csv")}
    assert (1, 0) not in trained and {p for _, p in trained} == {1, 2}  # partition 0 did not make it in time
    assert ints(table, "clients_failed") == [1] and ints(table, "clients_ok") == [2]  # the others did
    assert run.stdout.count("partition 0: no reply within the round timeout") == 1
    assert all(6 <= float(r["round_seconds"]) < 6 + 3 for r in table)  # the round waited for the timeout, no longer


def _kill_tree(pid: int) -> None:
    import psutil

    parent = psutil.Process(pid)
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=20)


def _start_and_wait_for_rounds(args: list[str], out: Path, rounds: int) -> subprocess.Popen:
    """Start ``fedconv.simulate`` in its own session, as from a terminal (SIGINT handled: a
    shell's background job, e.g. CI, inherits it ignored), and wait until ``out`` has rounds."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fedconv.simulate", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "rounds.csv").exists() and len(rows(out)) >= rounds:
            return proc
        time.sleep(0.2)
    _kill_tree(proc.pid)
    raise AssertionError(f"the run ended or stalled before round {rounds}: rc {proc.poll()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signalled_run_stops_as_interrupted_keeps_its_rounds_and_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    """A batch scheduler's SIGTERM to the process, or Ctrl-C to its whole process group, in
    the middle of round 3 of the first job of a sweep, while Ray runs: the process ends
    within seconds with 128 + signum, the completed rounds and an ``interrupted`` summary
    stay, the sweep starts no further job, no Ray process is left, and ``resume=`` would take the
    job up after its last completed round."""
    import psutil

    overrides = [*BASE, ONE_CPU_RAY, "simulation.num_clients=4", "server.rounds=4", "faults.slow_partitions=1",
                 "faults.slow_seconds=2"]
    sweep = tmp_path / "sweep"
    out = sweep / "job0"
    args = ["-m", *overrides, "seed=0,1", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${hydra.job.num}"]
    proc = _start_and_wait_for_rounds(args, out, 2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "Ray should be running"
    time.sleep(0.5)  # into round 3, whose slow client needs 2 s
    t0 = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what a terminal does on Ctrl-C
    else:
        proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        raise AssertionError("the run did not end within 60 s of the signal") from None
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert time.monotonic() - t0 < 30
    assert f"fedconv: {sig.name}: stopping" in stderr and f"interrupted by {sig.name}" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] == f"stopped by {sig.name}"
    assert summary["rounds_completed"] == len(rows(out)) in (2, 3)
    jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
    assert [(j["run_dir"], j["status"]) for j in jobs] == [(str(out), "interrupted")]
    assert not (sweep / "job1").exists()
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [p.name() for p in alive]
    # ``resume=`` takes the interrupted job up after its last completed round (checked by the
    # command's own preparation, in process; that a resumed run completes to the uninterrupted
    # result is test_a_killed_run_resumes_to_the_uninterrupted_result's, in real processes)
    resolved, action = planned_job([f"resume={out}"], out)
    assert action == "resume" and resolved["output_dir"] == str(out) and resolved["server"]["rounds"] == 4
    assert checkpoint.load(out / "checkpoint.safetensors").server_round == summary["rounds_completed"]


def test_a_second_signal_quits_at_once_and_leaves_no_ray_process(tmp_path: Path) -> None:
    """Two SIGINTs to the driver alone (``timeout`` forwards its signal so, and so does an
    impatient user's second Ctrl-C under some shells): the process quits with 130 within
    seconds, and Ray's GCS, raylet, agents and workers, which the first signal left running
    and ``os._exit`` would orphan, are gone too."""
    import psutil

    out = tmp_path / "run"
    args = [*BASE, ONE_CPU_RAY, "simulation.num_clients=4", "server.rounds=4", "faults.slow_partitions=1",
            "faults.slow_seconds=3", f"hydra.run.dir={out}"]
    proc = _start_and_wait_for_rounds(args, out, 1)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "Ray should be running"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        raise AssertionError("the process did not quit within 60 s of the second signal") from None
    assert proc.returncode == 130 and "fedconv: interrupted by SIGINT" in stderr, stderr[-3000:]
    assert time.monotonic() - t0 < 15
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.name() for p in alive]


# One run that holds both classes of state: SCAFFOLD keeps server state (its control variate
# c, in the checkpoint, restored like FedAdam's moments: every algorithm's server state
# round-trips through a checkpoint file in test_algorithms.py::test_server_state_survives_a_checkpoint_exactly)
# and client state (each c_i, stored by partition id).
KILLED = (*BASE, "simulation.num_clients=4", "server.rounds=4", "server.fraction_evaluate=0.5",
          "faults.slow_partitions=1", "faults.slow_seconds=2", "strategy=scaffold")


@pytest.mark.cases(whole_scaffold=KILLED)
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, cases: dict[str, CaseRun]) -> None:
    """Killed in round 3 (SIGKILL: no handler runs), copied elsewhere and resumed: the rounds,
    the server's and the clients' state and the tracking sinks continue as if never stopped."""
    overrides = [*KILLED, ONE_CPU_RAY, "logger.tensorboard=true", "logger.mlflow=true",
                 f"logger.mlflow_tracking_uri={tmp_path / 'ml'}"]
    whole_run = cases["whole_scaffold"].completed().dir  # uninterrupted, two actors, no sinks: same numbers
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fedconv.simulate", *overrides, f"hydra.run.dir={killed}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / "rounds.csv").exists() and len(rows(killed)) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(1.0)  # into round 3, whose slow client needs 2 s
    finally:
        _kill_tree(proc.pid)
    assert not (killed / "summary.json").exists() or json.loads((killed / "summary.json").read_text())["status"] != "completed"
    assert 2 <= len(rows(killed)) <= 3  # at most the round in flight is lost
    # The run dir is copied elsewhere (another disk, an archive) and the original damaged:
    # the copy resumes from its own files, in place, and the original is never read or written.
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(killed, moved)
    checkpoint = killed / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    original = {p: p.read_bytes() for p in killed.rglob("*") if p.is_file()}
    killed, summary = moved, moved / "summary.json"
    resumed = simulate(f"resume={killed}")
    ok(resumed)
    assert "resuming after round" in resumed.stdout and str(moved / "checkpoint.safetensors") in resumed.stdout
    assert {p: p.read_bytes() for p in original} == original
    assert not any(p not in original for p in (tmp_path / "killed").rglob("*") if p.is_file())
    assert yaml.safe_load((moved / "config.yaml").read_text())["output_dir"] == str(moved)
    cols = ["round", "central_accuracy", "central_loss", "fed_accuracy", "fed_loss", "train_loss",
            "clients_ok", "bytes_down", "bytes_up", "bytes_total_cum"]
    whole, again = rows(whole_run), rows(killed)
    assert [[r[c] for c in cols] for r in again] == [[r[c] for c in cols] for r in whole]
    final = json.loads(summary.read_text())
    assert final["status"] == "completed" and final["rounds_completed"] == 4 and final["resumed_from_round"] in (2, 3)
    whole_summary = json.loads((whole_run / "summary.json").read_text())
    assert final["final_central_accuracy"] == whole_summary["final_central_accuracy"]
    # the tracking sinks continued their runs: each round once, as in the uninterrupted run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    expected = [(int(r["round"]), pytest.approx(float(r["central_accuracy"]))) for r in whole]
    client, run_id = mlflow_run(killed)
    history = client.get_metric_history(run_id, "central_accuracy")
    assert sorted((m.step, m.value) for m in history) == expected
    events = EventAccumulator(str(killed / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("accuracy/central_accuracy")] == expected


ROBUST = ["fedavg", "fedmedian", "fedtrimmedavg", "krum", "bulyan"]
POISONED = (*BASE, "simulation.num_clients=7", "server.rounds=3", "faults.corrupt_partitions=0",
            "faults.corrupt_mode=scale", "faults.scale_factor=-10")


@pytest.mark.cases(**{f"poisoned_{name}": (*POISONED, f"strategy={name}") for name in ROBUST})
def test_robust_strategies_resist_poisoned_updates_that_pass_the_checks(cases: dict[str, CaseRun]) -> None:
    """One of seven clients sends its update scaled by -10 (finite, well-formed): FedAvg's mean
    collapses to chance, the median, trimmed mean, Krum and Bulyan keep learning."""
    names = ROBUST
    final, best = {}, {}
    for case in names:
        run = cases[f"poisoned_{case}"].completed().dir
        name = yaml.safe_load((run / "config.yaml").read_text())["strategy"]["name"]
        table = rows(run)
        assert ints(table, "clients_rejected") == [0, 0, 0] and ints(table, "clients_ok") == [7, 7, 7], name
        summary = json.loads((run / "summary.json").read_text())
        final[name], best[name] = summary["final_central_accuracy"], summary["best_central_accuracy"]
    assert set(final) == set(names)
    assert best["fedavg"] < 0.15, final  # chance on 10 classes
    for name in names[1:]:
        assert best[name] > 0.3 and final[name] > final["fedavg"] + 0.2, (name, final)
