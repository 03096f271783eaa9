"""Sweeps beyond one process: the sweep index under concurrent jobs, Hydra's submitit and
Ray launchers, and the Optuna sweeper, each on the real plugin with a small digits config."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from fedconv import run_dir


def _write_entries(sweep_dir: str, worker: int, count: int) -> None:
    for i in range(count):
        run_dir.update_sweep_index(Path(sweep_dir), {"job": i, "overrides": [f"w={worker}"],
                                                     "run_dir": f"{sweep_dir}/w{worker}_{i}", "status": "running"})
        run_dir.update_sweep_index(Path(sweep_dir), {"job": i, "overrides": [f"w={worker}"],
                                                     "run_dir": f"{sweep_dir}/w{worker}_{i}", "status": "completed"})


def test_concurrent_jobs_lose_no_index_entry(tmp_path: Path) -> None:
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
