"""``flwr run .``: Flower's own front door to the app in pyproject.toml. Its run config (the
defaults there plus ``--run-config`` values) composes as the command line does, bad values
fail the run before any round with one line each, and the real thing runs end to end: the
local SuperLink Flower starts, its default federation of two simulated SuperNodes serving a
cohort of three."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil
import pytest
import yaml
from flwr.app import Context, RecordDict

from fedconv import flwr_app
from fedconv.config import ConfigError, compose, from_run_config, to_run_config
from fedconv.runs.run_reader import read_run

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
DIGITS = {"dataset.name": "digits", "server.rounds": 2, "simulation.num_clients": 6}


def context(values: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={**DEFAULTS, **values})


def test_a_flwr_run_config_composes_as_the_command_line_does() -> None:
    got = from_run_config({**DEFAULTS, **DIGITS, "strategy.name": "fedprox", "strategy.mu": 0.1})
    want = from_run_config({**to_run_config(compose(["dataset=digits", "server.rounds=2", "simulation.num_clients=6",
                                                     "strategy=fedprox", "strategy.mu=0.1"])), "output_dir": "/x"})
    assert got == {**want, "output_dir": ""}
    assert got["dataset"]["height"] == 8 and got["strategy"]["stragglers"] == "aggregate"  # digits', fedprox's own


def test_a_config_fedconv_composed_is_read_as_it_is() -> None:
    cfg = from_run_config({**DEFAULTS, "dataset.name": "digits", "output_dir": "/runs/a"})
    assert cfg["dataset"]["name"] == "digits" and cfg["dataset"]["height"] == 28  # no composition: as given


@pytest.mark.parametrize(("values", "lines"), [
    ({"server.rounds": 0, "client.lr": -1.0},
     ["client.lr=-1.0: must be in (0, inf)", "server.rounds=0: must be in [1, inf)"]),
    ({"server.roundz": 2}, ["server.roundz: no such key (the keys are pyproject.toml's [tool.flwr.app.config])"]),
    ({"dataset.name": "imagenet"}, None),
])
def test_bad_run_config_values_fail_before_any_round(values: dict, lines: list[str] | None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError):
        flwr_app.main(None, context(values))  # type: ignore[arg-type]  # the grid is never reached
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("config error: nothing ran; fix the --run-config values above")
    if lines is not None:
        assert out[:-1] == [f"config error: {line}" for line in lines]
    else:
        assert len(out) == 2 and out[0].startswith("config error: dataset.name='imagenet': must be one of")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow  # Flower's local SuperLink, its simulation runtime and Ray (about a minute)
def test_flwr_run_runs_the_app_on_the_default_federation(tmp_path: Path) -> None:
    if not _free(39091):
        pytest.skip("a local SuperLink already listens on 127.0.0.1:39091 (flwr run would use it, not this test's)")
    venv_bin = Path(sys.executable).parent  # flwr, and the flower-superlink it starts, as an activated venv has them
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")])}
    overrides = " ".join(f'"{k}"={json.dumps(v)}' for k, v in DIGITS.items())
    try:
        proc = subprocess.run([str(venv_bin / "flwr"), "run", str(ROOT), "--stream", "--run-config", overrides],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    finally:
        _stop_local_superlink(tmp_path / "flwr")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    run_id = re.search(r"Successfully started run (\d+)", out)
    assert run_id, out[-3000:]
    assert "node pool: 2 SuperNodes for cohorts of 3: each serves up to 2 partitions a round" in out
    assert "[round   2/2]" in out and "done: completed, 2 rounds" in out, out[-3000:]
    run = tmp_path / "results" / "flwr-runs" / run_id.group(1)  # under the SuperLink's working directory
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["dataset"]["name"] == "digits" and cfg["dataset"]["height"] == 8
    rows = (run / "client_metrics.csv").read_text().splitlines()[1:]
    trained = sorted({int(r.split(",")[2]) for r in rows if r.split(",")[0] == "1" and r.split(",")[1] == "train"})
    assert len(trained) == 3  # the whole cohort of 3, on 2 nodes
    assert read_run(run).status == "completed"  # a run directory like any other: report, api.read


def _stop_local_superlink(flwr_home: Path) -> None:
    """The SuperLink `flwr run` started (detached, with its database under FLWR_HOME) and
    everything it started."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(flwr_home) in part for part in (proc.info["cmdline"] or [])):
            for child in [*proc.children(recursive=True), proc]:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
