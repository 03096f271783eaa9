"""Config composition, validation messages and the flat Flower run config."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import compose_job
from fedconv.config import ConfigError, compose, from_run_config, to_run_config
from fedconv.validation import validate


def test_defaults_compose_and_validate() -> None:
    cfg = compose([])
    validate(cfg)
    assert cfg["dataset"]["name"] == "fashion_mnist" and cfg["model"]["name"] == "twoconv"
    assert cfg["partition"]["name"] == "dirichlet" and cfg["partition"]["alpha"] == 0.5
    assert cfg["simulation"]["num_clients"] == 20 and cfg["server"]["rounds"] == 20
    assert cfg["strategy"]["name"] == "fedavg" and cfg["client"]["batch_size"] == 32


AGREE = [
    [],
    ["dataset=digits", "server.rounds=3", "client.lr=0.05"],
    ["strategy=fedprox", "strategy.mu=0.1", "+client.extra=1", "~logger"],
    ["model=twoconv_se", "model.se_reduction=8", "compression=topk", "hydra.run.dir=/tmp/x", "seed=3"],
    ["+experiment=niid_bench_fmnist", "partition=shards", "server.rounds=2"],
    ["server.rounds=2", "hydra/launcher=submitit_local", "resume=/somewhere"],
]
REFUSED = [["client.momentun=0.9"], ["model=resnet50"], ["~nosuchkey"], ["server.rounds=[1"]]


def test_the_tests_compose_as_hydra_does() -> None:
    """conftest.py composes in Hydra's two steps and keeps the defaults list of each set of
    group overrides; every other test relies on that giving what Hydra's whole path gives."""
    from omegaconf import OmegaConf, open_dict

    import conftest

    for overrides in AGREE:
        assert compose(overrides) == conftest._hydra_compose(overrides), overrides  # the product's own compose
        whole = conftest._hydra_compose_with_node(overrides, "config")
        cfg, choices = compose_job(overrides)
        assert choices == dict(whole.hydra.runtime.choices), overrides
        with open_dict(whole):
            del whole["hydra"]
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(whole), overrides
        assert OmegaConf.is_struct(cfg) and OmegaConf.is_struct(whole)
    for overrides in REFUSED:
        with pytest.raises(ConfigError) as ours:
            compose(overrides)
        with pytest.raises(ConfigError) as hydras:
            conftest._hydra_compose(overrides)
        assert str(ours.value) == str(hydras.value), overrides


def test_variant_configs_inherit_the_canonical_options() -> None:
    cfg = compose(["model=twoconv_se", "model.se_reduction=8"])
    assert cfg["model"]["name"] == "twoconv_se" and cfg["model"]["filters2"] == 64
    assert cfg["model"]["se_reduction"] == 8


def test_run_config_round_trip_is_flat_scalars() -> None:
    cfg = compose(["strategy=fedprox"])
    flat = to_run_config(cfg)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["strategy.mu"] == 0.01 and flat["simulation.client_resources.num_cpus"] == 1
    assert from_run_config(flat) == cfg


@pytest.mark.parametrize(
    "override,key",
    [
        ("server.fraction_train=1.5", "server.fraction_train"),
        ("server.fraction_train=0", "server.fraction_train"),
        ("partition.alpha=0", "partition.alpha"),
        ("partition.alpha=-1", "partition.alpha"),
        ("strategy=fedprox strategy.mu=-0.1", "strategy.mu"),
        ("client.epochs=0", "client.epochs"),
        ("client.lr=0", "client.lr"),
        ("client.optimizer=rmsprop", "client.optimizer"),
        ("server.rounds=0", "server.rounds"),
        ("server.min_train_clients=50", "server.min_train_clients"),
        ("model.activation=tanh", "model.activation"),
        ("model.kernel_size=4", "model.kernel_size"),
        ("model.dropout=1.0", "model.dropout"),
        ("server.lr_schedule=exp", "server.lr_schedule"),
        ("partition=pathological partition.k=11", "partition.k"),
        ("simulation.num_clients=0", "simulation.num_clients"),
        ("partition.test_fraction=0 server.fraction_evaluate=0.5", "partition.test_fraction"),
        ("partition.test_fraction=0 server.fraction_evaluate=0 server.fed_eval=with_train", "partition.test_fraction"),
        ("server.fed_eval=both", "server.fed_eval"),
        ("client.precision=fp16", "client.precision"),
        ("client.compile=maybe", "client.compile"),
        ("server.eval_precision=int8", "server.eval_precision"),
    ],
)
def test_invalid_values_name_the_key_and_the_range(override: str, key: str) -> None:
    cfg = compose(override.split())
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value)
    assert "must be" in str(err.value)


@pytest.mark.parametrize("override", ["model=resnet50", "strategy=fedsgd", "partition.nonexistent=3", "dataset=svhn"])
def test_unknown_names_and_keys_are_config_errors(override: str) -> None:
    with pytest.raises(ConfigError):
        compose([override])


def test_all_problems_reported_one_per_line() -> None:
    cfg = compose(["client.lr=-1", "server.rounds=0"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("client.lr=-1")


def test_pyproject_declares_the_flower_app_with_the_default_config() -> None:
    """`flwr run .` ships fedconv with [tool.flwr.app.config]; it must equal the default composition."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedconv.flwr_app:app", "clientapp": "fedconv.edge.board_app:app"}
    assert app["config"] == to_run_config(compose([]))


def test_sweep_job_folders_are_stable_and_short() -> None:
    from fedconv.config import job_dirname

    assert job_dirname("seed=1,strategy=fedprox") == "seed=1,strategy=fedprox"
    assert job_dirname("") == "defaults"
    long = ",".join(f"key{i}=value{i}" for i in range(20))
    assert job_dirname(long).startswith("job-") and len(job_dirname(long)) < 20
    # the same command must find the same folders in a later process (no per-process hash seed)
    other = subprocess.run([sys.executable, "-c", f"from fedconv.config import job_dirname; print(job_dirname({long!r}))"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "random"})
    assert other.stdout.strip() == job_dirname(long)
    assert job_dirname(long) != job_dirname(long + ",x=1")


# Every bad value a user can type and what its one-line message must name, checked in
# process through the entry point's own path (simulate.prepare, then check_inputs); a few
# cases also run as real processes in test_simulation.py (exit 2, no run dir, no traceback).
BAD_VALUES = [
    ("server.fraction_train=1.5", "server.fraction_train=1.5: must be in (0, 1]"),
    ("server.fraction_train=0", "server.fraction_train=0: must be in (0, 1]"),
    ("server.fraction_evaluate=-0.1", "server.fraction_evaluate=-0.1: must be in [0, 1]"),
    ("partition.alpha=0", "partition.alpha=0: must be in (0, inf)"),
    ("strategy=fedprox strategy.mu=-1", "strategy.mu=-1: must be in [0, inf)"),
    ("client.epochs=0", "client.epochs=0: must be in [1, inf)"),
    ("client.epochs=abc", "client.epochs='abc': must be a number"),
    ("client.lr=0", "client.lr=0: must be in (0, inf)"),
    ("simulation.nodes=shared", "simulation.nodes='shared': must be one of pool, per_client"),
    ("server.rounds=0", "server.rounds=0: must be in [1, inf)"),
    ("server.rounds=2.5", "server.rounds=2.5: must be an integer"),
    ("server.min_train_clients=9", "server.min_train_clients=9: 9 clients per round but simulation.num_clients=4"),
    ("server.min_train_replies=9", "server.min_train_replies=9: must be <= the 4 clients sampled per round"),
    ("dataset.augment=maybe", "dataset.augment='maybe': must be true or false"),
    ("faults.dropout=1.5", "faults.dropout=1.5: must be in [0, 1]"),
    ("faults.corrupt_partitions=7", "faults.corrupt_partitions=7: partition ids must be in [0, simulation.num_clients=4)"),
    ("faults.corrupt_mode=evil",
     "faults.corrupt_mode='evil': must be one of nan, inf, shape, dtype, names, num_examples, signflip, scale"),
    ("strategy=fedadam strategy.server_lr=-0.1", "strategy.server_lr=-0.1: must be in (0, inf)"),
    ("strategy=fedavgm strategy.server_momentum=1.0", "strategy.server_momentum=1.0: must be in [0, 1)"),
    ("strategy=krum strategy.num_malicious_nodes=1",
     "strategy.num_malicious_nodes=1: krum needs n >= 2f + 3 = 5 clients per round with f=1, but the cohort has 4"),
    ("strategy=bulyan simulation.num_clients=10 strategy.num_malicious_nodes=2",
     "strategy.num_malicious_nodes=2: bulyan needs n >= 4f + 3 = 11 clients per round with f=2, but the cohort has 10"),
    ("strategy=multikrum simulation.num_clients=6 strategy.num_nodes_to_select=6",
     "strategy.num_nodes_to_select=6: must be <= n - f = 5 (cohort 6, f=1)"),
    ("strategy=fedtrimmedavg strategy.beta=0.5", "strategy.beta=0.5: must be in [0, 0.5)"),
    ("strategy=qfedavg strategy.q=-1", "strategy.q=-1: must be in [0, inf)"),
    ("strategy=scaffold strategy.weighting=median", "strategy.weighting='median': must be one of examples, uniform"),
    ("strategy=scaffold strategy.server_lr=0", "strategy.server_lr=0: must be in (0, inf)"),
    ("strategy=feddyn strategy.alpha=0", "strategy.alpha=0: must be in (0, inf)"),
    ("strategy=fednova client.momentum=1.0", "client.momentum=1.0: must be in [0, 1)"),
    ("strategy=fednova strategy.momentum=0.5",
     "strategy.momentum=0.5: must be client.momentum (0.9): a_i's rho is the clients' SGD momentum"),
    ("strategy=fedbn model.batch_norm=false", "model.batch_norm=False: must be true for FedBN (without BatchNorm it is FedAvg)"),
    ("strategy=fedbn strategy.calibration_images=0", "strategy.calibration_images=0: must be in [1, inf)"),
    ("strategy.stragglers=wait", "strategy.stragglers='wait': must be one of drop, aggregate"),
    ("+client.momentum_typo=0.9", "client.momentum_typo=0.9: unknown key; known keys in client:"),
    ("model=niid_cnn", "model.name=niid_cnn needs inputs of at least 16x16, got 8x8"),
    ("dataset=mnist dataset.data_dir=/nonexistent", "dataset 'mnist' not found; looked in: /nonexistent"),
    ("resume=/nonexistent/run", "resume=/nonexistent/run: no such run directory"),
]
SMALL_RUN = ["dataset=digits", "simulation.num_clients=4", "server.fraction_train=1.0", "server.rounds=3",
             "partition.alpha=1.0"]


def entry_point_error(overrides: list[str], out) -> str:
    """What ``python -m fedconv.simulate`` refuses these overrides with (before Ray starts)."""
    from fedconv import simulate
    from fedconv.data.datasets import DatasetError
    from fedconv.data.partitioning import PartitionError
    from fedconv.learning.models import ModelConfigError

    cfg, choices = compose_job(overrides)
    with pytest.raises((ConfigError, DatasetError, PartitionError, ModelConfigError)) as exc:
        resolved, _ = simulate.prepare(cfg, out if not cfg.resume else out.__class__(cfg.resume), choices, overrides)
        simulate.check_inputs(resolved)
    return str(exc.value)


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_values_are_refused_in_one_line_naming_the_key(tmp_path, override: str, message: str) -> None:
    keys = {o.split("=")[0] for o in override.split()}
    base = [o for o in SMALL_RUN if o.split("=")[0] not in keys]
    text = entry_point_error([*base, *override.split()], tmp_path / "run")
    assert message in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "run").exists()


def test_each_group_is_checked_by_its_owner() -> None:
    """The vocabularies live with the modules that use them; config validation asks them."""
    from fedconv import algorithms, config
    from fedconv.data import partitioning
    from fedconv.data.datasets import DATASETS
    from fedconv.federation import faults
    from fedconv.learning import training
    from fedconv.learning.models import MODEL_NAMES

    assert not any(hasattr(config, name) for name in ("DATASETS", "PARTITIONS", "STRATEGIES", "CORRUPT_MODES"))
    cfg = compose([])
    for key, owner_values in (("dataset.name", DATASETS), ("model.name", MODEL_NAMES),
                              ("partition.name", partitioning.PARTITIONS), ("strategy.name", algorithms.STRATEGIES),
                              ("client.optimizer", training.OPTIMIZERS), ("faults.corrupt_mode", faults.CORRUPT_MODES)):
        group, leaf = key.split(".")
        bad = {**cfg, group: {**cfg[group], leaf: "nosuch"}}
        with pytest.raises(ConfigError) as exc:
            validate(bad)
        assert f"{key}='nosuch': must be one of {', '.join(owner_values)}" in str(exc.value)


@pytest.mark.slow  # three Python processes of their own
def test_the_group_modules_and_config_each_import_first_in_a_fresh_process() -> None:
    for module in ("federation.faults", "learning.models", "config"):
        proc = subprocess.run([sys.executable, "-c", f"import fedconv.{module}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_resume_refuses_to_change_rounds_under_a_cosine_schedule(tmp_path) -> None:
    """Checked from the saved config before any checkpoint is read (the end-to-end resume
    cases are in test_resume_and_outputs.py)."""
    from fedconv.runs import run_dir

    run = tmp_path / "cosine-run"
    run_dir.write_config(run, {**compose([*SMALL_RUN, "server.rounds=1"]), "output_dir": str(run)})
    text = entry_point_error([f"resume={run}", "server.rounds=3"], run)
    assert text == ("server.rounds=3: cannot change on resume with server.lr_schedule=cosine (the schedule spans "
                    "all 1 rounds, so the rounds already run would have had other learning rates)")
