"""The console of a run: a live progress bar on a terminal, plain lines everywhere else."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ONE_CPU_RAY, ROOT, CaseRun, rows
from fedconv.runs.progress import RoundProgress

SMALL = ["dataset=digits", "simulation.num_clients=3", "server.fraction_train=1.0", "server.fraction_evaluate=0",
         "server.rounds=3", "partition.alpha=1.0"]


def test_not_a_terminal_gets_the_plain_lines_only() -> None:
    out = io.StringIO()
    progress = RoundProgress(3, stream=out)
    progress.line("[round   1/3] acc 0.5000")
    progress.round_done(1, 0.5, 1.0)
    progress.close()
    assert out.getvalue() == "[round   1/3] acc 0.5000\n"


def run_in_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as its stdout and stderr; its exit code and output."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    env.pop("FEDCONV_PLAIN", None)
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.cases(progress_plain=SMALL)
def test_a_terminal_shows_the_bar_and_the_same_lines(tmp_path: Path, cases: dict[str, CaseRun]) -> None:
    code, shown = run_in_terminal([sys.executable, "-m", "fedconv.simulate", *SMALL, ONE_CPU_RAY,
                                   f"hydra.run.dir={tmp_path / 'tty'}"])
    assert code == 0, shown[-3000:]
    assert "━" in shown and "round" in shown and "ETA" in shown and " MB" in shown  # the bar was drawn
    for r in (1, 2, 3):
        assert f"[round   {r}/3] acc" in shown
    plain = cases["progress_plain"].completed()  # the same run on a pipe, not a terminal
    assert "[round   3/3] acc" in plain.stdout and "\x1b[" not in plain.stdout and "━" not in plain.stdout
    assert [r["central_accuracy"] for r in rows(tmp_path / "tty")] == [r["central_accuracy"] for r in rows(plain.dir)]


def test_a_sweep_counts_its_jobs_and_estimates_from_those_that_ran() -> None:
    from omegaconf import OmegaConf

    from fedconv.simulation.sweep_progress import eta, sweep_size

    grid = OmegaConf.create({"hydra": {"overrides": {"task": ["seed=0,1,2", "strategy=fedavg,fedprox", "a=1"]}}})
    assert sweep_size(grid) == 6
    assert sweep_size(OmegaConf.create({"hydra": {"sweeper": {"n_trials": 12}, "overrides": {"task": []}}})) == 12
    assert eta([60.0, 120.0], 3) == "4m30s" and eta([4000.0], 1) == "1h06m" and eta([], 2) == "-"
