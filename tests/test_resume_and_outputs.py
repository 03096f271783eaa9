"""Where a user's files meet the program: resume with overrides, a corrupt checkpoint, and
output locations nothing can be written to (real ``python -m fedconv.simulate``, digits)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import CaseRun, prepare_job, simulate

TINY = ["dataset=digits", "simulation.num_clients=4", "server.fraction_train=1.0", "server.fraction_evaluate=0",
        "partition.alpha=1.0", "server.lr_schedule=constant"]
pytestmark = pytest.mark.slow


def files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


TWO_ROUNDS = pytest.mark.cases(tiny_two_rounds=(*TINY, "server.rounds=2"))


@pytest.fixture
def two_rounds(cases: dict[str, CaseRun]) -> Path:
    """A completed 2-round run (the session's sweep made it): read, copied, never written."""
    return cases["tiny_two_rounds"].completed().dir


RESUME_REFUSALS = [
    (["strategy=fedprox"], "strategy cannot change when a run resumes"),
    (["client.lr=0.5"], "client.lr cannot change when a run resumes"),
    (["server.rounds=1"], "server.rounds=1: must be >= the 2 rounds this run completed"),
    (["server.rounds=4", "server.lr_schedule=cosine"], "server.lr_schedule cannot change"),
]


@TWO_ROUNDS
def test_resume_refuses_overrides_it_cannot_honour(two_rounds: Path) -> None:
    """Every refusal through the command's own preparation, in process (one place catches
    them all: the resume checks); the first also as a user types it, in a real process."""
    before = files(two_rounds)
    for overrides, message in RESUME_REFUSALS:
        text = prepare_job([f"resume={two_rounds}", *overrides], two_rounds)
        assert text is not None and message in text and len(text.splitlines()) == 1, (overrides, text)
    overrides, message = RESUME_REFUSALS[0]
    proc = simulate(f"resume={two_rounds}", *overrides)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert files(two_rounds) == before


@TWO_ROUNDS
def test_a_corrupt_checkpoint_exits_2_and_keeps_the_recorded_status(tmp_path: Path, two_rounds: Path) -> None:
    run = tmp_path / "interrupted"
    run.mkdir()
    for p in two_rounds.iterdir():
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "interrupted"  # as a run stopped after round 2 records itself
    summary["rounds_planned"] = 4
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("rounds: 2", "rounds: 4"))
    checkpoint = run / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-40])
    before = files(run)
    t0 = time.perf_counter()
    proc = simulate(f"resume={run}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {checkpoint}: unreadable checkpoint")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert files(run) == before and json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert time.perf_counter() - t0 < 30  # refused before Ray starts


@pytest.mark.parametrize("key", ["hydra.run.dir", "output_dir", "hydra.sweep.dir"])
def test_an_unwritable_output_location_is_one_line_and_exit_2(tmp_path: Path, key: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    target = a_file / "run"
    args = [*TINY, "server.rounds=1", f"{key}={target}"]
    if key == "hydra.sweep.dir":
        args = ["-m", *args, "seed=0,1"]
    elif key == "output_dir":
        args.append(f"hydra.run.dir={tmp_path / 'hydra-run'}")
    proc = simulate(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    expected = f"config error: {key}={target}: cannot write a run there (Not a directory); choose a writable folder"
    assert proc.stderr.strip() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no stub .hydra/ or log left
