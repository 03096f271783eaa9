"""Config composition, validation messages and the flat Flower run config."""

from __future__ import annotations

import pytest

from fedconv.config import ConfigError, compose, from_run_config, to_run_config, validate


def test_defaults_compose_and_validate() -> None:
    cfg = compose([])
    validate(cfg)
    assert cfg["dataset"]["name"] == "fashion_mnist" and cfg["model"]["name"] == "twoconv"
    assert cfg["partition"]["name"] == "dirichlet" and cfg["partition"]["alpha"] == 0.5
    assert cfg["simulation"]["num_clients"] == 20 and cfg["server"]["rounds"] == 20
    assert cfg["strategy"]["name"] == "fedavg" and cfg["client"]["batch_size"] == 32


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
    assert app["components"] == {"serverapp": "fedconv.server_app:app", "clientapp": "fedconv.client_app:app"}
    assert app["config"] == to_run_config(compose([]))


def test_sweep_job_folders_are_stable_and_short() -> None:
    from fedconv.config import job_dirname

    assert job_dirname("seed=1,strategy=fedprox") == "seed=1,strategy=fedprox"
    assert job_dirname("") == "defaults"
    long = ",".join(f"key{i}=value{i}" for i in range(20))
    assert job_dirname(long) == job_dirname(long) and job_dirname(long).startswith("job-") and len(job_dirname(long)) < 20
    assert job_dirname(long) != job_dirname(long + ",x=1")
