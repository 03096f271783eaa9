"""Sweeps beyond one process: the sweep index under concurrent jobs, Hydra's submitit and
Ray launchers, and the Optuna sweeper, each on the real plugin with a small digits config."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import ONE_CPU_RAY, free_port, rows, simulate, stop_ray_cluster
from fedconv.runs import run_dir


def _write_entries(sweep_dir: str, worker: int, count: int) -> None:
    for i in range(count):
        run_dir.update_sweep_index(Path(sweep_dir), {"job": i, "overrides": [f"w={worker}"],
                                                     "run_dir": f"{sweep_dir}/w{worker}_{i}", "status": "running"})
        run_dir.update_sweep_index(Path(sweep_dir), {"job": i, "overrides": [f"w={worker}"],
                                                     "run_dir": f"{sweep_dir}/w{worker}_{i}", "status": "completed"})


def test_concurrent_jobs_lose_no_index_entry(tmp_path: Path) -> None:
    """Six writers at once, each numbering its jobs from 0 as every sweep does (a second sweep
    into the same folder): every entry is kept, by run dir, none lost or overwritten."""
    workers, count = 6, 15
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_entries, args=(str(tmp_path), w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    index = json.loads((tmp_path / run_dir.SWEEP_INDEX).read_text())
    dirs = sorted(j["run_dir"] for j in index["jobs"])
    assert dirs == sorted(f"{tmp_path}/w{w}_{i}" for w in range(workers) for i in range(count))
    assert {j["status"] for j in index["jobs"]} == {"completed"}


SMALL = ("dataset=digits", "simulation.num_clients=3", "server.fraction_train=0.34", "server.fraction_evaluate=0",
         "server.rounds=2")


def completed_jobs(sweep: Path) -> dict[str, str]:
    index = json.loads((sweep / run_dir.SWEEP_INDEX).read_text())
    return {Path(j["run_dir"]).name: j["status"] for j in index["jobs"]}


def assert_two_complete_runs_then_skipped(sweep: Path, *launcher: str) -> None:
    proc = simulate("-m", *launcher, *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = completed_jobs(sweep)
    assert len(jobs) == 2 and set(jobs.values()) == {"completed"}, jobs
    for name in jobs:
        assert [r["round"] for r in rows(sweep / name)] == ["1", "2"]
        assert json.loads((sweep / name / "summary.json").read_text())["status"] == "completed"
    again = simulate("-m", *launcher, *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}", timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = again.stdout + again.stderr + "".join(p.read_text() for p in sweep.rglob("*_log.out"))
    assert sorted(n for n in jobs if f"skipping {sweep / n}" in log) == sorted(jobs)


@pytest.mark.slow
def test_a_sweep_on_submitit_local_runs_each_job_in_its_own_process(tmp_path: Path) -> None:
    assert_two_complete_runs_then_skipped(tmp_path / "sweep", "hydra/launcher=submitit_local", ONE_CPU_RAY)


@pytest.fixture
def two_node_ray_cluster() -> Iterator[tuple[str, Path]]:
    """A Ray cluster on 127.0.0.1 as a user starts one (``ray start``): a head and a worker
    node of one CPU each; its address and its own temp dir (stopped alone; Ray limits the
    socket path length)."""
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    temp_dir = Path("/tmp") / f"fedconv-ray-{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    address = f"127.0.0.1:{port}"
    nodes = (["--head", f"--port={port}", "--include-dashboard=false"], [f"--address={address}"])
    try:
        for node in nodes:
            start = subprocess.run([ray, "start", *node, "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                    "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                                   env=env, capture_output=True, text=True, timeout=120)
            assert start.returncode == 0, start.stderr[-2000:]
        yield address, temp_dir
    finally:
        stop_ray_cluster(temp_dir)


@pytest.mark.slow
def test_a_two_node_ray_cluster_takes_a_run_and_a_sweeps_jobs(tmp_path: Path,
                                                               two_node_ray_cluster: tuple[str, Path]) -> None:
    """One cluster, two ways to use it. A run attaches (``simulation.ray.address``) with
    SCAFFOLD's client state in a folder both nodes read (standing in for NFS): clients run on
    both nodes and find each other's state; a client bigger than any node is refused once
    attached. Then Hydra's Ray launcher runs a sweep's jobs as tasks on the same cluster."""
    address, temp_dir = two_node_ray_cluster
    # Two CPUs in all, but an actor's CPUs must fit on one node: refused once attached, no run dir.
    big = simulate(*SMALL, "simulation.client_resources.num_cpus=2", f"simulation.ray.address={address}",
                   f"hydra.run.dir={tmp_path / 'big'}")
    assert big.returncode == 2, big.stdout[-3000:] + big.stderr[-3000:]
    assert big.stderr.strip().splitlines()[-1] == (
        f"config error: simulation.client_resources.num_cpus=2: more than the 1 CPU(s) of the largest node of the "
        f"Ray cluster at {address} (2 node(s)), so no client could ever start; must be <= 1")
    assert not (tmp_path / "big").exists()
    shared = tmp_path / "nfs" / "state"
    proc = simulate("dataset=digits", "simulation.num_clients=4", "server.fraction_train=1.0", "server.rounds=2",
                    "server.fraction_evaluate=0", "strategy=scaffold", f"simulation.ray.address={address}",
                    f"simulation.client_state_dir={shared}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert all(int(r["clients_ok"]) == 4 for r in rows(tmp_path / "run"))
    assert sorted(p.name for p in shared.glob("p*")) == ["p0", "p1", "p2", "p3"]
    assert not (tmp_path / "run" / "client_state").exists()
    # The cluster's own session started the ClientApp actors ...
    logs = list((temp_dir / "session_latest" / "logs").glob("*"))
    texts = [p.read_text(errors="ignore") for p in logs if p.is_file() and p.suffix in (".out", ".err", ".log")]
    assert any("ClientAppActor" in text for text in texts), "no ClientAppActor ran in the existing cluster"
    # ... on both of its nodes (the GCS keeps dead actors' records), and the cluster is
    # still up after the run, with both nodes' CPUs (one client of the cluster, as a user's)
    check = subprocess.run(
        [sys.executable, "-c",
         f"import ray; from ray._private import state; ray.init(address='{address}', logging_level='ERROR'); "
         "print(len({a['Address']['NodeID'] for a in state.actors().values() if a['ActorClassName'] == 'ClientAppActor'}), "
         "ray.cluster_resources()['CPU'])"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"},
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.strip().splitlines()[-1].split() == ["2", "2.0"], check.stdout[-2000:]
    # A sweep on the cluster: each job a task, its one client an actor on a node's CPU.
    assert_two_complete_runs_then_skipped(tmp_path / "sweep", "hydra/launcher=ray_cluster",
                                          f"hydra.launcher.ray.init.address={address}")


@pytest.mark.slow
def test_an_optuna_search_records_its_best_trial_and_resumes(tmp_path: Path) -> None:
    search = ("-m", "+experiment=optuna_fedprox", *SMALL, ONE_CPU_RAY, "server.fraction_train=1.0",
              f"hydra.sweep.dir={tmp_path}")
    first = simulate(*search, "hydra.sweeper.n_trials=1", timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    resumed = simulate(*search, "hydra.sweeper.n_trials=2", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert resumed.stdout.count("skipping ") == 1  # the seeded sampler asks the same first trial again
    jobs = completed_jobs(tmp_path)
    assert len(jobs) == 2 and set(jobs.values()) == {"completed"}
    best = {name: json.loads((tmp_path / name / "summary.json").read_text())["best_central_accuracy"]
            for name in jobs}
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(best.values()))
    winner = json.loads((tmp_path / max(best, key=lambda n: best[n]) / "summary.json").read_text())
    saved = yaml.safe_load((tmp_path / max(best, key=lambda n: best[n]) / "config.yaml").read_text())
    assert results["best_params"]["strategy.mu"] == pytest.approx(saved["strategy"]["mu"])
    assert winner["status"] == "completed"


@pytest.mark.slow
def test_a_sweep_keeps_one_ray_and_its_actors_past_a_bad_job(tmp_path: Path) -> None:
    """Hydra's basic launcher runs the jobs in one process: Ray starts once and each job takes
    over the warm actors of the last job that ran (whose results equal a process of its own:
    test_simulation.py::test_same_seed_same_numbers_different_seed_differs). A job refused
    for its config says so in one line, and the sweep goes on with
    the next job on the same Ray, then exits 2."""
    sweep = tmp_path / "sweep"
    proc = simulate("-m", *SMALL, ONE_CPU_RAY, "client.lr=0.05,-1,0.1", f"hydra.sweep.dir={sweep}", timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = json.loads((sweep / run_dir.SWEEP_INDEX).read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["completed", "bad_input", "completed"]
    assert "client.lr" in jobs[1]["error"] and not Path(jobs[1]["run_dir"]).exists()
    assert proc.stderr.count("config error: client.lr=-1: must be in (0, inf)") == 1
    assert f"1 sweep job(s) refused for their config or data (see above): {jobs[1]['run_dir']}" in proc.stderr
    assert "[sweep] job 3/3 completed: 2 completed, 0 skipped, 1 failed" in proc.stdout
    ran = [Path(jobs[0]["run_dir"]), Path(jobs[2]["run_dir"])]
    summaries = [json.loads((run / "summary.json").read_text()) for run in ran]
    assert [s["status"] for s in summaries] == ["completed"] * 2
    assert len({s["ray"]["node_id"] for s in summaries}) == 1  # one Ray instance for the sweep
    assert [s["ray"]["actors_reused"] > 0 for s in summaries] == [False, True]
    assert [r["round"] for r in rows(ran[0])] == ["1", "2"] and [r["round"] for r in rows(ran[1])] == ["1", "2"]
    # A job on the actors an earlier job left warm equals a process of its own: the session's
    # sweep of cases against a single run, test_simulation.py::test_same_seed_same_numbers_different_seed_differs.
