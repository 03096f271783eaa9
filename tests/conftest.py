"""Shared helpers: small real-format dataset files written by the tests themselves, and
running ``python -m fedconv.simulate`` as a user would."""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import json
import os
import pickle
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedconv import config as fedconv_config
from fedconv.data import datasets

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# Hydra composes a config in about 0.2 s: it builds the defaults list and parses conf/'s (and
# its own hydra/) YAML files anew each time, and the in-process tests compose hundreds of
# override lists. A composition is a function of the overrides and those files, which no test
# changes, so the tests compose as Hydra does, in its two steps, and keep the slow one:
# 1. the defaults list — the config-group overrides (``dataset=digits``, ``+experiment=...``) —
#    composed by Hydra once per distinct tuple of them per session;
# 2. the value overrides (``server.rounds=3``, ``+client.x=1``, ``~key``) parsed by Hydra's
#    override parser and applied to a copy by Hydra's own ``_apply_overrides_to_config``, the
#    step its ``load_configuration`` runs after the defaults (same values, same refusals).
# Errors are not cached (each call raises anew). Sweeps and ``@package`` overrides take
# Hydra's whole path. test_config.py::test_the_tests_compose_as_hydra_does checks the two agree.
# Installed before the test modules import ``compose``.
_hydra_compose = fedconv_config.compose


def _hydra_compose_with_node(overrides: Sequence[str], config_name: str) -> Any:
    """Hydra's whole composition, its ``hydra`` node kept (what ``@hydra.main`` gets)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    fedconv_config.register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(fedconv_config.CONF_DIR), version_base=None):
            return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


_defaults_composed = functools.cache(_hydra_compose_with_node)


def hydra_config(overrides: Sequence[str], config_name: str = "config") -> Any:
    """Hydra's composition of these overrides, ``hydra`` node included (a fresh copy)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if any(o.is_sweep_override() or o.package is not None for o in parsed):
        return _hydra_compose_with_node(overrides, config_name)
    is_group = [("/" in o.key_or_group or o.key_or_group in CONF_GROUPS) for o in parsed]
    base = _defaults_composed(tuple(o.input_line for o, g in zip(parsed, is_group, strict=True) if g), config_name)
    cfg = copy.deepcopy(base)
    ConfigLoaderImpl._apply_overrides_to_config([o for o, g in zip(parsed, is_group, strict=True) if not g], cfg)
    return cfg


@functools.cache
def _composed(overrides: tuple[str, ...], config_name: str) -> dict:
    from omegaconf import open_dict

    try:
        cfg = hydra_config(overrides, config_name)
        with open_dict(cfg):
            del cfg["hydra"]
        return fedconv_config.plain(cfg)
    except Exception as exc:  # as fedconv.config.compose: every Hydra/OmegaConf error is a bad config
        raise fedconv_config.ConfigError(str(exc).strip().splitlines()[0]) from exc


def _compose_once(overrides: list[str] | None = None, config_name: str = "config") -> dict:
    return copy.deepcopy(_composed(tuple(overrides or ()), config_name))


_compose_once.__doc__ = _hydra_compose.__doc__
fedconv_config.compose = _compose_once


def draws(full: int) -> int:
    """How many examples a property-based test draws (Hypothesis, seeded by ``derandomize``, so
    the same examples every run): ``full`` where ``FEDCONV_TEST_DRAWS=full`` (``scripts/test.sh``,
    hence CI), a quarter of it (at least 8) in the inner loop, ``pytest -m "not slow"``. Each
    drawn example composes a config or resumes a run dir in process, about 0.3 s."""
    return full if os.environ.get("FEDCONV_TEST_DRAWS") == "full" else max(8, full // 4)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 IDX file with fedconv's own writer (its bytes are pinned against a
    hand-written file in test_datasets.py::test_idx_writer_bytes)."""
    if gz:
        path = path.with_name(path.name + ".gz")
    datasets.write_idx(path, array)
    return path


def write_idx_dataset(directory: Path, n_train: int = 60, n_test: int = 20, seed: int = 0, gz: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(directory / name, arr, gz=gz)
    return arrays


def write_cifar_dataset(directory: Path, per_batch: int = 20, seed: int = 0) -> dict:
    """Write the CIFAR-10 python-pickle batches layout (cifar-10-batches-py/)."""
    rng = np.random.default_rng(seed)
    root = directory / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        with (root / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, f)
        written[name] = (data, labels)
    return written


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


def require_fashion_mnist() -> None:
    """CI installs the real data (scripts/bootstrap.sh); there its absence is a failure."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST missing in CI: bootstrap should have installed dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")


ROOT = Path(__file__).resolve().parent.parent


def simulate(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m fedconv.simulate`` in a subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fedconv.simulate", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def compose_job(overrides: list[str]):
    """What ``python -m fedconv.simulate`` composes for these overrides (Hydra's own refusals
    raised): the config without its ``hydra`` node, and the config-group choices."""
    from omegaconf import open_dict

    cfg = hydra_config(overrides)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def planned_job(overrides: list[str], out: Path, composed: tuple | None = None) -> tuple[dict, str]:
    """What ``python -m fedconv.simulate`` would do with these overrides and this run dir, found
    in process by its own preparation: the validated config and "new", "resume" or "skip".
    Bad input raises the error the command prints. ``composed``: ``compose_job``'s result."""
    from fedconv import simulate

    cfg, choices = composed or compose_job(overrides)
    target = simulate.job_dir(cfg, str(out))
    resolved, action = simulate.prepare(cfg, target, choices, overrides)
    if action != "skip":
        simulate.check_inputs(resolved, target if action == "resume" else None)
    return resolved, action


def prepare_job(overrides: list[str], out: Path) -> str | None:
    """None when the entry point would start this job; the one-line refusal otherwise."""
    from fedconv import simulate

    try:
        composed = compose_job(overrides)
    except Exception as exc:  # Hydra's refusal: fedconv's entry point turns it into exit 2 (test_cli)
        return f"hydra: {str(exc).splitlines()[0]}"
    try:
        planned_job(overrides, out, composed)
    except simulate._bad_input_errors() as exc:
        return str(exc)
    return None


def rows(run: Path, name: str = "rounds.csv") -> list[dict[str, str]]:
    """A run directory's CSV file as a list of rows."""
    with (run / name).open() as f:
        return list(csv.DictReader(f))


def mlflow_run(folder: Path) -> tuple[Any, str]:
    """The MLflow client and run id a run dir (or a sweep folder: its parent run) names."""
    from mlflow.tracking import MlflowClient

    from fedconv.runs.tracking import TRACKING_IDS

    ids = json.loads((folder / TRACKING_IDS).read_text())["mlflow"]
    return MlflowClient(ids["tracking_uri"]), ids["run_id"]


# A process's own Ray of one CPU: one client actor instead of one per core. Each actor is a
# Python process that imports torch and Flower's simulation engine (about 10 CPU-seconds on
# 2 cores, all of it while the other worker runs too); a test whose claim does not involve
# clients training side by side (signals, resume, launchers, the API, the terminal) runs its
# process so, as a user on a 1-core machine would. Numbers do not depend on the actor count
# (test_simulation.py::test_same_seed_same_numbers_different_seed_differs compares one actor
# against two).
ONE_CPU_RAY = "simulation.ray.num_cpus=1"


LEAN_BOARD_LACKS = ("hydra", "omegaconf", "ray", "matplotlib", "sklearn", "scipy", "flwr_datasets", "datasets",
                    "pandas", "pyarrow")


def lean_board_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """A SuperNode environment that sees this venv's packages without the ones a lean board
    install (``pip install fedconv``) lacks: a folder of links to every other top-level entry
    of site-packages replaces site-packages on the path (a sitecustomize on PYTHONPATH, which
    every ClientApp process the SuperNode starts inherits), so those modules are absent as on
    a board, and a board path that imports one fails its message."""
    import site

    real = Path(site.getsitepackages()[0])
    lean = tmp_path / "lean-board"
    (lean / "site").mkdir(parents=True, exist_ok=True)
    for entry in real.iterdir():
        if entry.name.removesuffix(".py") not in LEAN_BOARD_LACKS and entry.suffix != ".pth":
            (lean / "site" / entry.name).symlink_to(entry)
    (lean / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path[:] = [{str(lean / 'site')!r} if p == {str(real)!r} else p for p in sys.path]\n")
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(lean), env.get("PYTHONPATH", "")) if p)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_ray_cluster(temp_dir: Path) -> None:
    """Stop only the Ray cluster started with ``--temp-dir=<temp_dir>`` (``ray stop`` would stop
    every Ray on the machine, a concurrent test's too)."""
    import psutil

    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in part for part in proc.info["cmdline"] or []):
                ours.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = ours + [c for p in ours for c in _children(p)]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)  # some of Ray's processes outwait SIGTERM (15 s seen)
    for proc in alive:
        proc.kill()
    assert ours, f"found no process of the Ray cluster in {temp_dir}"


def _children(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# --- Cases: the simple end-to-end runs of the whole session as one sweep -------------------
#
# A test that only runs ``fedconv.simulate`` with some overrides and then reads what the run
# wrote declares that run as a case: ``@pytest.mark.cases(name=(override, ...), ...)`` and
# reads it from the ``cases`` fixture. The first such test runs every case the session's
# selected tests declare as the jobs of one sweep (``+case=a,b,...`` over a config group the
# fixture writes): one process, one Ray and its warm actors, as a user's sweep. A sweep's jobs
# equal separate runs (test_simulation.py::test_same_seed_same_numbers_different_seed_differs).

CONF_GROUPS = frozenset(p.name for p in (ROOT / "conf").iterdir() if p.is_dir())


@dataclasses.dataclass(frozen=True)
class CaseRun:
    """One case's job: its run dir, its status in sweep.json, its part of the sweep's stdout
    and the sweep's whole stderr (every job's: warnings are not marked with their job)."""

    dir: Path
    status: str
    stdout: str
    sweep_stderr: str

    def completed(self) -> CaseRun:
        assert self.status == "completed", f"{self.dir}: {self.status}\n{self.stdout[-3000:]}"
        return self


def case_config(overrides: Sequence[str]) -> dict:
    """The overrides as a global config file: group choices as ``override /group: option``
    defaults, values as nested keys (what ``+experiment=...`` files look like)."""
    from omegaconf import OmegaConf

    choices, values = [], []
    for override in overrides:
        key, _, value = override.partition("=")
        assert not key.startswith(("+", "~", "hydra.")), f"a case sets existing keys only: {override}"
        if key in CONF_GROUPS:
            choices.append({f"override /{key}": value})
        else:
            values.append(override)
    doc = OmegaConf.to_container(OmegaConf.from_dotlist(values)) if values else {}
    return {"defaults": choices, **doc} if choices else doc


def _run_order(name: str, overrides: Sequence[str]) -> tuple[tuple[str, ...], bool, str]:
    """Cases that start Ray or their actors differently run together, after the others; a case
    with a round timeout leaves its straggler's actor busy (killed, not kept), so it runs last
    in its group rather than making the next job start a fresh actor."""
    ray = tuple(sorted(o for o in overrides if o.startswith(("simulation.ray.", "simulation.client_resources."))))
    return ray, any(o.startswith("server.round_timeout=") for o in overrides), name


def declared_cases(items: Sequence[pytest.Item]) -> dict[str, tuple[str, ...]]:
    cases: dict[str, tuple[str, ...]] = {}
    for item in items:
        for marker in item.iter_markers("cases"):
            for name, overrides in marker.kwargs.items():
                assert cases.get(name, tuple(overrides)) == tuple(overrides), f"case {name} declared twice, differently"
                cases[name] = tuple(overrides)
    return cases


def run_cases(cases: Mapping[str, Sequence[str]], base: Path) -> dict[str, CaseRun]:
    """Every case as one job of one sweep; each job's stdout from Hydra's ``#k :`` line on."""
    import yaml

    groups = base / "conf" / "case"
    groups.mkdir(parents=True)
    for name, overrides in cases.items():
        (groups / f"{name}.yaml").write_text("# @package _global_\n" + yaml.safe_dump(case_config(overrides)))
    names = sorted(cases, key=lambda n: _run_order(n, cases[n]))
    proc = simulate("-m", f"+case={','.join(names)}", f"hydra.searchpath=[file://{base / 'conf'}]",
                    f"hydra.sweep.dir={base / 'runs'}", "hydra.sweep.subdir=${hydra:runtime.choices.case}",
                    timeout=1800)
    index = base / "runs" / "sweep.json"
    assert index.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {j["overrides"][0].removeprefix("+case="): j for j in json.loads(index.read_text())["jobs"]}
    parts = re.split(r"^.*\[HYDRA\] \t#\d+ : ", proc.stdout, flags=re.M)[1:]
    out = {}
    for name, part in zip(names, parts, strict=False):
        assert part.startswith(f"+case={name}\n"), part[:200]
        out[name] = CaseRun(Path(jobs[name]["run_dir"]), jobs[name]["status"], part, proc.stderr)
    missing = set(cases) - set(out)
    assert not missing, f"cases never ran: {sorted(missing)}\n{proc.stderr[-3000:]}"
    return out


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker trains with one intra-op thread: two workers on two cores
    with torch's default (a thread per core) oversubscribe them, and OpenMP's spinning threads
    then wait on each other (the fast path took 108 s so, 98 s with one thread a worker).
    Subprocesses the tests start are untouched (they set their own, as users run them)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest-xdist (``--dist loadgroup``) every test that reads cases runs on one
    worker, so the session's sweep runs once (marked as each test is collected: xdist reads
    the groups in its own ``pytest_collection_modifyitems``)."""
    if item.get_closest_marker("cases"):
        item.add_marker(pytest.mark.xdist_group("cases"))


@pytest.fixture(scope="session")
def cases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaseRun]:
    """The runs every selected test declared with ``@pytest.mark.cases``, made in one sweep."""
    return run_cases(declared_cases(request.session.items), tmp_path_factory.mktemp("cases"))

