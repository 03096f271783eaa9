"""Bad input, drawn rather than listed: every key the config declares with NaN, infinities,
negatives, zero, huge numbers, wrong types and unknown names, and truncated or byte-flipped
run-dir files under ``resume=``. Each is accepted or refused in one line naming what the
user gave, through the entry point's own preparation (``simulate.prepare`` then
``check_inputs``, in process), never a traceback and never a file written.
Hypothesis draws the cases, seeded (``derandomize``) and bounded: CI draws each property's full
count, the inner loop a quarter (``conftest.draws``)."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import draws, prepare_job
from fedconv import simulate
from fedconv.config import CONF_DIR, ConfigError, compose, flatten
from fedconv.runs import checkpoint, run_dir

SMALL = ["dataset=digits", "simulation.num_clients=4", "server.fraction_train=1.0", "server.rounds=2",
         "partition.alpha=1.0", "server.lr_schedule=constant"]
GROUP_OPTIONS = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml"))
                 for g in ("strategy", "model", "partition", "faults", "compression")}
# what a user types after '=': Hydra's grammar reads nan/inf as floats, [..] as a list
NASTY = ["nan", "inf", "-inf", "-1", "0", "-0.5", "1e30", "9223372036854775808", "abc", "true", "[1,2]", "''",
         "null", "0.5", "3", "2.5"]
ALL_OPTIONS = {group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) for group in ("dataset", *GROUP_OPTIONS)}


def rotation(i: int, shift: int = 0) -> tuple[tuple[str, str], ...]:
    """Option ``i + shift * j`` of the j-th group (wrapping round): ``i`` over the largest
    group's size visits every option of every group, in as many compositions."""
    return tuple((g, opts[(i + shift * j) % len(opts)]) for j, (g, opts) in enumerate(ALL_OPTIONS.items()))


@functools.cache
def _option_keys() -> dict[tuple[str, str] | None, frozenset[str]]:
    """The leaf keys of the default composition (under None), and each group option's own keys
    (``strategy.*`` for ``strategy=scaffold``). A group's option sets only its own keys, so one
    composition takes an option of every group: 16 compositions instead of one an option.
    test_every_key_every_group_declares_is_read_by_a_check composes other pairings and checks
    that their keys are what these predict."""
    keys: dict[tuple[str, str] | None, frozenset[str]] = {None: frozenset(flatten(compose(["dataset=digits"])))}
    for i in range(max(len(o) for o in ALL_OPTIONS.values())):
        groups = rotation(i)
        composed = flatten(compose([f"{g}={o}" for g, o in groups]))
        for group, option in groups:
            keys[(group, option)] = frozenset(k for k in composed if k.split(".")[0] == group)
    return keys


def _keys_and_base(groups: tuple[tuple[str, str], ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The leaf keys of a composition with these group options, and SMALL's overrides that apply
    to it: the defaults' keys outside the chosen groups plus each chosen option's own."""
    options = [f"{g}={o}" for g, o in groups]
    chosen = {g for g, _ in groups}
    known = _option_keys()
    keys = {k for k in known[None] if k.split(".")[0] not in chosen}
    for group, option in groups:
        keys |= known[(group, option)]
    base = [o for o in SMALL if o.split("=")[0] in keys or "=" in o and o.split("=")[0] == "dataset"]
    return tuple(sorted(k for k in keys if k != "dataset.name")), tuple([*base, *options])


@st.composite
def override_sets(draw: st.DrawFn) -> list[str]:
    groups = tuple((g, draw(st.sampled_from(opts))) for g, opts in GROUP_OPTIONS.items() if draw(st.booleans()))
    keys, base = _keys_and_base(groups)
    chosen = draw(st.lists(st.sampled_from(keys), min_size=0, max_size=3, unique=True))  # none: options only
    sets = [f"{k}={draw(st.sampled_from(NASTY))}" for k in chosen]
    if draw(st.integers(0, 4)) == 0:
        group = draw(st.sampled_from(["client", "server", "strategy", "faults", "simulation"]))
        sets.append(f"+{group}.no_such_key={draw(st.sampled_from(NASTY))}")
    return [*[o for o in base if o.split("=")[0] not in chosen], *sets]


# the two tests that read _option_keys run on one pytest-xdist worker: it is composed once
same_worker_as_option_keys = pytest.mark.xdist_group("option_keys")


@same_worker_as_option_keys
def test_any_drawn_override_set_is_accepted_or_refused_in_one_line_naming_its_key(tmp_path_factory) -> None:
    """And the property ran on both kinds: a generator that only ever drew refusals (or only
    acceptances) would prove nothing."""
    drawn: list[tuple[list[str], str | None]] = []

    @settings(max_examples=draws(40), derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(override_sets())
    def accepted_or_refused_in_one_line(overrides: list[str]) -> None:
        out = tmp_path_factory.mktemp("drawn") / "run"
        message = prepare_job(overrides, out)
        drawn.append((overrides, message))
        assert not out.exists(), f"{overrides}: left {sorted(p.name for p in out.iterdir())}"
        if message is None:
            return
        assert len(message.splitlines()) >= 1 and "Traceback" not in message
        keys = {o.split("=")[0].lstrip("+~") for o in overrides}
        for line in message.splitlines():
            named = line.removeprefix("hydra: ")
            assert any(k in named for k in keys) or any(k.rsplit(".", 1)[-1] in named for k in keys), (overrides, line)

    accepted_or_refused_in_one_line()
    refused = [m for _, m in drawn if m is not None]
    assert len(drawn) >= draws(40) and refused, len(drawn)
    if draws(40) == 40:  # acceptances are rare draws (2 of 40): counted at CI's full count
        assert len(refused) < len(drawn), (len(drawn), sorted({m.splitlines()[0] for m in refused}))


@pytest.mark.parametrize("override, message", [
    ("faults.scale_factor=nan", "faults.scale_factor=nan: must be a finite number"),
    ("resume=nan", "resume=nan: must be a string"),  # read before every other key: the run dir
    ("output_dir=[1,2]", "output_dir=[1, 2]: must be a string"),
    ("client.lr=inf", "client.lr=inf: must be a finite number"),
    ("dataset.test_fraction=nan", "dataset.test_fraction=nan: must be a finite number"),
    ("dataset.test_fraction=-0.2", "dataset.test_fraction=-0.2: must be in (0, 1)"),
    ("dataset.split_seed=-1", "dataset.split_seed=-1: must be in [0, 4.29497e+09]"),
    ("dataset.channels=0", "dataset.channels=0: must be in [1, 4096]"),
    ("simulation.client_resources.num_cpus=4096",
     "simulation.client_resources.num_cpus=4096: more than the"),
    ("simulation.client_resources.num_gpus=8", "simulation.client_resources.num_gpus=8: this machine has"),
    ("model.filters1=200000 model.filters2=200000",
     "model.name=twoconv: "),
])
def test_each_class_of_unchecked_key_is_refused_before_ray(tmp_path: Path, override: str, message: str) -> None:
    keys = {o.split("=")[0] for o in override.split()}
    base = [o for o in SMALL if o.split("=")[0] not in keys]
    text = prepare_job([*base, *override.split()], tmp_path / "run")
    assert text is not None and message in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "run").exists()


def test_fedbn_is_checked_on_the_model_it_would_run_not_on_a_config_key(tmp_path: Path) -> None:
    """niid_cnn declares no ``model.batch_norm`` key and has no BatchNorm: FedBN would be FedAvg."""
    from conftest import write_idx_dataset

    write_idx_dataset(tmp_path / "mnist")
    overrides = ["dataset=mnist", f"dataset.data_dir={tmp_path / 'mnist'}", f"dataset.cache_dir={tmp_path / 'cache'}",
                 "simulation.num_clients=4", "server.fraction_train=1.0", "partition=iid", "strategy=fedbn"]
    assert prepare_job([*overrides, "model=twoconv"], tmp_path / "ok") is None
    text = prepare_job([*overrides, "model=niid_cnn"], tmp_path / "run")
    assert text == ("model.name=niid_cnn: has no BatchNorm layer, and strategy=fedbn keeps only those on the clients "
                    "(it would run as FedAvg); choose a model with BatchNorm (model=twoconv) or strategy=fedavg"), text
    assert not (tmp_path / "run").exists()


def test_the_memory_estimate_counts_parameters_without_allocating_them() -> None:
    from fedconv.learning.models import build_model, count_parameters
    from fedconv.simulation import resources

    cfg = compose(SMALL)
    built = build_model(cfg["model"], (1, 8, 8), 10)
    params = count_parameters(built) + sum(b.numel() for b in built.buffers())
    assert resources.parameter_count(cfg, (1, 8, 8), 10) == params
    need, actors = resources.memory_need(cfg, params)
    cohort = 4  # fraction_train 1.0 of 4 clients
    assert need == 4 * params * (actors * resources.ACTOR_COPIES + resources.SERVER_COPIES + cohort)
    with pytest.raises(ConfigError, match="GB of memory is available"):
        resources.check_memory(cfg, (1, 8, 8), 10, available=need - 1)
    resources.check_memory(cfg, (1, 8, 8), 10, available=need)


@same_worker_as_option_keys
def test_every_key_every_group_declares_is_read_by_a_check() -> None:
    """No key escapes validation: compose every option of every group and look at which keys
    the checks read (a key added without a check fails here)."""
    from fedconv.validation import checked

    free = {"name", "output_dir", "resume"}  # checked as text in config_problems, listed for clarity
    # pairings other than _option_keys' own (shift 1: group j takes option i + j), so that the
    # keys asserted are a prediction, not a copy; every option of every group is composed
    for i in range(max(len(o) for o in ALL_OPTIONS.values())):
        groups = rotation(i, shift=1)
        keys, base = _keys_and_base(groups)
        cfg = compose(list(base))
        assert sorted(k for k in flatten(cfg) if k != "dataset.name") == list(keys)  # what the drawn sets assume
        c = checked(cfg)
        unseen = sorted(k for k in flatten(cfg) if k not in c.seen and k not in free)
        assert not unseen, f"{' '.join(f'{g}={o}' for g, o in groups)}: nothing checks {unseen}"


# ---------------------------------------------------------------- the files resume reads


def write_run_dir(run: Path, strategy: str = "fedavg", rounds_done: int = 2, extra: tuple[str, ...] = ()) -> Path:
    """A run dir as the ServerApp leaves it after ``rounds_done`` rounds, written by the same
    functions (config, rows, summary, checkpoint with the algorithm's state layout)."""
    from fedconv import algorithms
    from fedconv.algorithms.base import strategy_state
    from fedconv.federation.client_state import partitions_keep_state
    from fedconv.learning import task
    from fedconv.learning.models import transmitted_state
    from fedconv.wire.compression import Link

    cfg = {**compose([*SMALL, f"strategy={strategy}", "server.rounds=4", *extra]), "output_dir": str(run)}
    cfg["client"]["threads"] = 1
    run_dir.write_config(run, cfg)
    ds = task.dataset(cfg)
    model = task.initial_model(cfg, ds)
    algorithm = algorithms.get(strategy)
    strategy_cfg = {**cfg["strategy"], "num_partitions": 4}  # as the ServerApp builds it
    tensors, layout = strategy_state(algorithm.make_strategy(strategy_cfg), algorithm.state_attributes)
    if partitions_keep_state(algorithm, Link.from_config(cfg)):
        layout["client_rounds"] = {}
    state = {"bytes_total": 10, "bytes_down": 5, "bytes_up": 5, "elapsed_seconds": 1.0,
             "strategy": dict(cfg["strategy"]), "seed": 0, "algorithm": layout}
    checkpoint.save(run / run_dir.CHECKPOINT, rounds_done, transmitted_state(model), state, algorithm_state=tensors)
    for r in range(1, rounds_done + 1):
        run_dir.append_row(run / run_dir.ROUNDS, run_dir.ROUND_COLUMNS, {
            "round": r, "central_accuracy": 0.5 + r / 100, "central_loss": 1.0, "train_loss": 1.0, "clients_sampled": 4,
            "clients_ok": 4, "clients_failed": 0, "bytes_down": 100, "bytes_up": 100, "bytes_total_cum": 200 * r,
            "round_seconds": 1.0, "elapsed_seconds": float(r)})
    run_dir.write_json(run / run_dir.SUMMARY, {"status": "interrupted", "rounds_completed": rounds_done, "seed": 0})
    return run


def completed(run: Path) -> Path:
    """The run dir of a run that ended after its rounds (for the commands that read finished runs)."""
    cfg = (run / run_dir.CONFIG).read_text().replace("rounds: 4", "rounds: 2")
    (run / run_dir.CONFIG).write_text(cfg)
    run_dir.write_json(run / run_dir.SUMMARY, {"status": "completed", "rounds_completed": 2, "seed": 0,
                                              "final_central_accuracy": 0.52, "best_central_accuracy": 0.52,
                                              "bytes_total": 400, "wall_seconds": 2.0})
    return run


def _resume(run: Path, rounds: int = 4) -> str | None:
    return prepare_job([f"resume={run}", f"server.rounds={rounds}"], run)


def files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize("strategy, extra", [("fedavg", ()), ("fedadam", ()), ("scaffold", ()),
                                             ("fedavg", ("compression=topk",))])  # top-k's residual: client state
def test_a_written_run_dir_resumes_and_its_checks_read_only(tmp_path: Path, strategy: str, extra: tuple[str, ...]) -> None:
    run = write_run_dir(tmp_path / "run", strategy, extra=extra)
    before = files(run)
    assert _resume(run) is None
    assert files(run) == before


@pytest.mark.parametrize("saved, config, message", [
    ("fedavg", "fedadam", "checkpoint.safetensors: written by a run with strategy 'fedavg', but config.yaml strategy.name"),
    ("fedadam", "fedavg", "checkpoint.safetensors: written by a run with strategy 'fedadam'"),
    ("fedavg", "scaffold", "checkpoint.safetensors: written by a run with strategy 'fedavg'"),
])
def test_resume_refuses_a_checkpoint_of_another_algorithm(tmp_path: Path, saved: str, config: str, message: str) -> None:
    donor = write_run_dir(tmp_path / "donor", saved)
    run = write_run_dir(tmp_path / "run", config)
    (run / run_dir.CHECKPOINT).write_bytes((donor / run_dir.CHECKPOINT).read_bytes())
    before = files(run)
    text = _resume(run)
    assert text is not None and message in text and len(text.splitlines()) == 1, text
    assert files(run) == before


def test_resume_refuses_a_state_layout_its_algorithm_does_not_keep(tmp_path: Path) -> None:
    """Same strategy keys, but the server state of another algorithm (FedAdam's moments
    missing): caught on the layout, not only the name."""
    from fedconv.runs.checkpoint import load, save

    run = write_run_dir(tmp_path / "run", "fedadam")
    ckpt = load(run / run_dir.CHECKPOINT)
    save(run / run_dir.CHECKPOINT, ckpt.server_round, ckpt.weights, {**ckpt.state, "algorithm": {}})
    text = _resume(run)
    assert text is not None and "holds server state [] but fedadam with this config's compression keeps" in text, text


@pytest.mark.parametrize("state, message", [
    ({"algorithm": {"m_t": "oops", "v_t": {"kind": "none"}}}, "its bookkeeping is not a fedconv checkpoint's"),
    ({"seed": "abc"}, "its bookkeeping is not a fedconv checkpoint's (ValueError"),
    ({"strategy": ["fedadam"]}, "its bookkeeping is not a fedconv checkpoint's"),
])
def test_a_checkpoint_whose_bookkeeping_has_the_wrong_shape_is_refused(tmp_path: Path, state: dict, message: str) -> None:
    from fedconv.runs.checkpoint import load, save

    run = write_run_dir(tmp_path / "run", "fedadam")
    ckpt = load(run / run_dir.CHECKPOINT)
    save(run / run_dir.CHECKPOINT, ckpt.server_round, ckpt.weights, {**ckpt.state, **state})
    text = _resume(run)
    assert text is not None and message in text and len(text.splitlines()) == 1, text


@pytest.mark.parametrize("name, damage, message", [
    ("summary.json", lambda b: b[: len(b) // 2], "summary.json: unreadable"),
    ("summary.json", lambda b: b"[1, 2]", "summary.json: expected a JSON object"),
    ("summary.json", lambda b: b.replace(b'"rounds_completed": 2', b'"rounds_completed": 3'), "says 3 rounds completed"),
    ("summary.json", lambda b: b.replace(b'"seed": 0', b'"seed": 5'), "summary.json: says seed 5"),
    ("config.yaml", lambda b: b": : [\n", "config.yaml: not a fedconv config"),
    ("config.yaml", lambda b: b"just text\n", "config.yaml"),
    ("config.yaml", lambda b: b.replace(b"seed: 0", b"seed: 3"), "checkpoint.safetensors: written by a run with seed 0"),
    ("rounds.csv", lambda b: b + b.splitlines(keepends=True)[1], "rounds.csv: holds round 1 twice"),
    ("rounds.csv", lambda b: b.splitlines(keepends=True)[0], "rounds.csv holds 0 complete rounds"),
    ("checkpoint.safetensors", lambda b: b[:-40], "checkpoint.safetensors: unreadable checkpoint"),
])
def test_resume_names_the_damaged_file_and_touches_nothing(tmp_path: Path, name: str, damage, message: str) -> None:
    run = write_run_dir(tmp_path / "run")
    (run / name).write_bytes(damage((run / name).read_bytes()))
    before = files(run)
    text = _resume(run)
    assert text is not None and message in text and len(text.splitlines()) == 1, text
    assert files(run) == before


def damage(path: Path, cut: float, flips: list[tuple[float, int]]) -> None:
    """Cut the file's last quarter or less (when ``cut`` > 0.5), then XOR bytes at relative places."""
    data = bytearray(path.read_bytes())
    data = data[: max(0, int(len(data) * (1 - cut / 4)))] if cut > 0.5 else data
    for where, xor in flips:
        if data:
            data[min(len(data) - 1, int(where * len(data)))] ^= xor
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_dir(tmp_path_factory.mktemp("pristine") / "run")


@settings(max_examples=draws(30), derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["summary.json", "config.yaml", "rounds.csv", "checkpoint.safetensors"]),
       cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_any_truncation_or_byte_flip_of_a_run_dir_is_resumed_or_refused_in_one_line(
        tmp_path_factory, pristine_run: Path, name: str, cut: float, flips: list[tuple[float, int]]) -> None:
    import shutil

    run = tmp_path_factory.mktemp("flip") / "run"
    shutil.copytree(pristine_run, run)
    (run / run_dir.CONFIG).write_text((run / run_dir.CONFIG).read_text().replace(str(pristine_run), str(run)))
    damage(run / name, cut, flips)
    before = files(run)
    text = _resume(run)
    assert files(run) == before
    if text is not None:
        assert len(text.splitlines()) == 1 and "Traceback" not in text, text


# ---------------------------------------------------------------- one writer per run dir


HOLDER = """
import sys, time
from pathlib import Path
from fedconv.runs import run_dir
lock = run_dir.hold(Path(sys.argv[1])); lock.claim()
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_dir_has_one_writer_and_the_os_frees_it_when_the_holder_dies(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        expected = rf"{run}: another fedconv process writes this run dir \(pid {holder.pid}"
        with pytest.raises(run_dir.RunDirHeld, match=expected) as held:
            run_dir.hold(run)
        assert "\n" not in str(held.value)  # the holder's command line (a multi-line -c here) on one line
    finally:
        holder.kill()
        holder.wait()
    lock = run_dir.hold(run)  # killed: the kernel dropped its lock, no stale file to clear
    lock.release()


@pytest.mark.slow  # a process of its own: Python, torch and the entry point's imports
def test_a_second_sweep_skips_the_job_another_process_writes_and_exits_2(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    job = sweep / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(job)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "fedconv.simulate", "-m", *SMALL, "seed=0",
                               f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=held"],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"skipping {job}: another fedconv process writes this run dir (pid {holder.pid}" in proc.stderr
    assert "1 sweep job(s) skipped: another process writes their run dir" in proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - started < 60
    # nothing of a run: the holder's lock file and Hydra's own bookkeeping (.hydra/, the job's log)
    assert sorted(p.name for p in job.iterdir() if p.name != ".hydra" and p.suffix != ".log") == [run_dir.LOCK]
    assert not (sweep / run_dir.SWEEP_INDEX).exists() or str(job) not in (sweep / run_dir.SWEEP_INDEX).read_text()


def test_a_sweep_exit_status_says_what_its_jobs_did(monkeypatch) -> None:
    for bad, held, failed, code in ([[], [], [], 0], [[], [], ["a"], 1], [["a"], [], ["b"], 2], [[], ["a"], [], 2]):
        monkeypatch.setattr(simulate, "_BAD_INPUT_JOBS", bad)
        monkeypatch.setattr(simulate, "_HELD_JOBS", held)
        monkeypatch.setattr(simulate, "_FAILED_JOBS", failed)
        assert simulate.sweep_exit_code() == code


def test_nan_never_passes_a_number_check() -> None:
    from fedconv.checks import Checks

    for value in (math.nan, math.inf, -math.inf):
        c = Checks({"a": value})
        assert c.number("a") is None and c.problems == [f"a={value!r}: must be a finite number"]


# ---------------------------------------------------------------- untrusted files and peers


def test_an_idx_header_whose_dimensions_overflow_64_bits_is_refused(tmp_path: Path) -> None:
    """2^31 x 2^31 x 4 = 2^64 wraps to 0 in int64: a bare header would have 'matched'."""
    import struct

    from fedconv.data.datasets import DatasetError, parse_idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 2**31, 4))
    with pytest.raises(DatasetError, match=r"wrong length 16 bytes for dimensions \[2147483648, 2147483648, 4\]"):
        parse_idx(path, 3)


def test_a_gzip_that_inflates_past_the_bound_is_refused(tmp_path: Path, monkeypatch) -> None:
    import gzip

    from fedconv.data import datasets

    monkeypatch.setattr(datasets, "MAX_DECOMPRESSED", 1 << 20)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes(3 << 20)))  # 3 MiB of zeros in a few KiB
    with pytest.raises(datasets.DatasetError, match="inflates past"):
        datasets.parse_idx(path, 3)


def test_a_cifar_pickle_cannot_ask_for_an_array_larger_than_itself(tmp_path: Path) -> None:
    import pickle

    import numpy as np

    from fedconv.data.datasets import DatasetError, _read_cifar_batch

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, where the allocation happens

    class Huge:
        def __reduce__(self):
            return reconstruct, (np.ndarray, (10**13,), b"b")  # 10 TB of int8

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Huge(), b"labels": [0]}, protocol=4))
    with pytest.raises(DatasetError, match=r"asks for an array of shape \(10000000000000,\), larger than the file"):
        _read_cifar_batch(path)
    good = tmp_path / "data_batch_2"
    good.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    assert _read_cifar_batch(good)[0].shape == (2, 3, 32, 32)


@settings(max_examples=draws(60), derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.one_of(st.binary(max_size=64), st.sampled_from([b"{}", b"[]", b'{"protocol": 1}', b"null"])),
                       max_size=3),
       framed=st.booleans(), tail=st.binary(max_size=16))
def test_the_warm_worker_outlives_any_bytes_a_peer_sends(frames: list[bytes], framed: bool, tail: bytes) -> None:
    import socket
    import struct

    from fedconv.edge import warm_worker

    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, peer:
        data = b"".join(struct.pack(">Q", len(f)) + f for f in frames) if framed else b"".join(frames)
        peer.sendall(data + tail)
        peer.shutdown(socket.SHUT_WR)
        line = warm_worker.serve_one(ours)
    assert line.startswith(("refused a request", "dropped a request")), line


def test_certs_refuses_a_host_that_is_not_one_and_writes_nothing(tmp_path: Path, capsys) -> None:
    from fedconv.edge import certs

    for bad in ("not a host", "-lead.example", "a..b", "x" * 64, "under_score.lab", ""):
        assert certs.main([str(tmp_path / "keys"), f"--host={bad}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --host {bad!r}: not an IP address or a host name") and "\n" not in err
    assert not (tmp_path / "keys").exists()
    for good in ("192.168.1.10", "::1", "superlink.lab", "pi-4.local."):
        assert certs.host_problem(good) is None


def test_deploy_names_a_supernode_key_that_is_not_one(tmp_path: Path) -> None:
    from fedconv.edge import certs
    from fedconv.edge.deploy import public_key_problem

    certs.main([str(tmp_path / "lab"), "--host", "127.0.0.1", "--supernodes", "1"])
    keys = tmp_path / "lab" / "supernodes"
    assert public_key_problem(keys) is None
    (keys / "supernode-0.pub").write_text("ecdsa-sha2-nistp384 AAAA-not-base64 board\n")
    problem = public_key_problem(keys)
    assert problem is not None and problem.startswith(f"federation.supernode_keys: {keys / 'supernode-0.pub'} is not an "
                                                      "OpenSSH public key")
    assert public_key_problem(tmp_path / "none") == f"federation.supernode_keys={tmp_path / 'none'}: no such folder"


# ---------------------------------------------------------------- every command's boundary


def test_report_refuses_an_output_that_is_a_file_or_unwritable_before_reading_runs(tmp_path: Path, capsys) -> None:
    from fedconv.runs import report

    run = completed(write_run_dir(tmp_path / "run"))
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert report.main([str(run), "--out", str(afile)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {afile}: cannot write the report there (it is a file); " \
                                              "choose a writable folder"
    assert afile.read_text() == "mine"
    assert report.main([str(run), "--out", "/proc/no/report"]) == 2
    assert "cannot write the report there" in capsys.readouterr().err


def test_a_report_that_fails_mid_write_leaves_no_half_report(tmp_path: Path, monkeypatch, capsys) -> None:
    from fedconv.runs import report

    run = completed(write_run_dir(tmp_path / "run"))
    real = report.render_html

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "render_html", full_disk)
    out = tmp_path / "rep"
    assert report.main([str(run), "--out", str(out)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == [] and [p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")] == []
    monkeypatch.setattr(report, "render_html", real)
    assert report.main([str(run), "--out", str(out)]) == 0 and (out / "report.html").is_file()


def test_export_names_corrupt_weights_and_a_config_that_is_not_one(tmp_path: Path, capsys) -> None:
    from fedconv.edge import export
    from fedconv.learning.models import transmitted_state

    run = write_run_dir(tmp_path / "run")
    from fedconv.learning import task

    cfg = compose([*SMALL, "server.rounds=4"])
    run_dir.save_weights(run / run_dir.WEIGHTS, transmitted_state(task.initial_model(cfg, task.dataset(cfg))))
    (run / run_dir.WEIGHTS).write_bytes((run / run_dir.WEIGHTS).read_bytes()[:100])
    assert export.main([str(run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run / run_dir.WEIGHTS}: unreadable weights") and "\n" not in err
    (run / run_dir.CONFIG).write_text(": : [\n")
    assert export.main([str(run), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {run / run_dir.CONFIG}: not a fedconv config")
    assert not (tmp_path / "x").exists()


def test_partitions_validates_every_set_before_writing_any(tmp_path: Path, capsys) -> None:
    from fedconv import partition_stats as partitioning

    out = tmp_path / "parts"
    assert partitioning.main(["--out", str(out), "dataset=digits", "partition.alpha=0.5,nan"]) == 2
    assert capsys.readouterr().err.strip() == "error: partition.alpha=nan: must be a finite number"
    assert partitioning.main(["--out", str(out), "dataset=digits", "simulation.num_clients=-3"]) == 2
    assert capsys.readouterr().err.strip() == "error: simulation.num_clients=-3: must be in [1, inf)"
    assert partitioning.main(["dataset=digits", "--out"]) == 2
    assert not out.exists()


@pytest.mark.slow  # a process of its own: Python, torch and the entry point's imports
def test_an_optuna_study_whose_trials_are_all_refused_ends_in_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedconv.simulate", "-m", "+experiment=optuna_fedprox", *SMALL,
                           "hydra.sweeper.n_trials=2", "client.epochs=0", f"hydra.sweep.dir={tmp_path / 'opt'}"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "error: the sweeper stopped after the job failures above (ValueError: No trials are completed yet.)" \
        in proc.stderr
    assert "2 sweep job(s) refused for their config or data" in proc.stderr


@settings(max_examples=draws(30), derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["summary.json", "config.yaml", "rounds.csv"]),
       cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_any_truncation_or_byte_flip_of_a_run_the_report_reads_is_used_or_excluded(
        tmp_path_factory, pristine_run: Path, name: str, cut: float, flips: list[tuple[float, int]]) -> None:
    """The report reads what runs left behind: a damaged file makes its run excluded with the
    reason (or, with nothing usable left, one ReportError), never a traceback."""
    import shutil

    from fedconv.runs import report

    runs = tmp_path_factory.mktemp("report")
    good, damaged = runs / "good", runs / "damaged"
    for run in (good, damaged):
        shutil.copytree(pristine_run, run)
        completed(run)
    damage(damaged / name, cut, flips)
    for inputs in ([good, damaged], [damaged]):
        try:
            result = report.compare(inputs)
        except report.ReportError as exc:
            assert inputs == [damaged] and len(str(exc).splitlines()) == 1, exc
            continue
        assert result["rows"], result


def test_a_failure_the_disk_cannot_record_is_one_line_and_keeps_the_data(tmp_path: Path, monkeypatch, capsys) -> None:
    run = write_run_dir(tmp_path / "run")
    before = files(run)

    def full_disk(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_dir, "write_json", full_disk)
    simulate._write_failure(run, compose(SMALL), "failed", "RuntimeError: boom")
    assert capsys.readouterr().err.strip() == (
        f"error: could not record the run's failed status in {run / run_dir.SUMMARY} (No space left on device); "
        f"the rounds, rows and checkpoint already in {run} are intact")
    assert files(run) == before


def test_the_entry_point_ends_even_when_a_thread_would_wait_for_ever() -> None:
    """What a failed Flower engine leaves behind: a non-daemon thread blocked for ever.
    Python would wait for it at exit; the entry point's ending does not."""
    code = ("import atexit, threading, time\nfrom fedconv.federation import stopping\n"
            "stopping.FINISH_GRACE_SECONDS = 0.5\natexit.register(print, 'exit handlers ran')\n"
            "threading.Thread(target=time.sleep, args=(600,)).start()\nstopping.finish(1)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - started < 30, proc.stderr[-2000:]
    assert proc.stdout.strip() == "exit handlers ran"  # Ray's shutdown and the sinks' flushes still happen


def test_an_error_names_the_key_the_user_gave(tmp_path: Path) -> None:
    """output_dir= pointing at a folder with a run's rows but no config: the message says
    output_dir=, not resume=."""
    out = tmp_path / "half"
    out.mkdir()
    (out / run_dir.ROUNDS).write_text("round\n")
    text = prepare_job([*SMALL, f"output_dir={out}"], out)
    assert text == f"output_dir={out}: no config.yaml there; resume takes the run dir of an earlier run", text


@pytest.mark.slow  # a process of its own: Python, torch and the entry point's imports
def test_deploy_refuses_a_run_dir_another_process_writes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "fedconv.edge.deploy", "dataset=digits", f"output_dir={run}",
                               "federation.address=127.0.0.1:9", "federation.insecure=true"],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {run}: another fedconv process writes this run dir (pid {holder.pid}")
    assert sorted(p.name for p in run.iterdir()) == [run_dir.LOCK]
