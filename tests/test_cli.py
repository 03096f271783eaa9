"""The ``fedconv`` console command dispatches to each module's own entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FEDCONV = str(Path(sys.executable).with_name("fedconv"))  # installed by pip from [project.scripts]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDCONV, *args], capture_output=True, text=True, timeout=120)


def test_no_command_lists_the_commands_and_exits_2() -> None:
    proc = run()
    assert proc.returncode == 2 and "usage: fedconv <command>" in proc.stdout
    assert all(name in proc.stdout for name in ("simulate", "report", "deploy", "certs", "export", "bench"))
    unknown = run("simulte")
    assert unknown.returncode == 2 and "unknown command 'simulte'" in unknown.stderr


@pytest.mark.slow  # a process of its own: Python, torch and the entry point's imports
def test_commands_are_the_modules_entry_points(tmp_path: Path) -> None:
    simulate = run("simulate", "server.fraction_train=1.5", f"hydra.run.dir={tmp_path / 'run'}")
    assert simulate.returncode == 2
    assert simulate.stderr.strip() == "config error: server.fraction_train=1.5: must be in (0, 1]"
    assert not (tmp_path / "run").exists()
    report = run("report", str(tmp_path / "nothing"))
    assert report.returncode == 2 and "no run directories" in report.stderr
    certs = run("certs", str(tmp_path / "keys"), "--host", "127.0.0.1", "--supernodes", "1")
    assert certs.returncode == 0 and (tmp_path / "keys" / "supernodes" / "supernode-0").is_file()


@pytest.mark.slow  # a process of its own: Python, torch and the entry point's imports
def test_a_lean_board_install_runs_the_client_and_names_the_extra_for_the_rest(tmp_path) -> None:  # noqa: ANN001
    """`pip install fedconv` (a board) has no Hydra, Ray, Flower Datasets, matplotlib or
    scikit-learn: the ClientApp imports without them, the other commands say which extra."""
    from conftest import LEAN_BOARD_LACKS, lean_board_env

    env = lean_board_env(tmp_path)
    code = ("import importlib.util, fedconv.federation.client_app; "
            f"print([m for m in {LEAN_BOARD_LACKS!r} if importlib.util.find_spec(m) is not None])")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "fedconv.cli", "simulate"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fedconv simulate needs 'hydra', which this install lacks: pip install \"fedconv[simulation]\""
