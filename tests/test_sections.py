"""Typed config sections: they cover their YAML exactly (a default is written once, in conf/),
a missing key is one line naming it, and a run saved before a key existed reads as it ran."""

from __future__ import annotations

import dataclasses

import pytest

from fedconv.config import CONF_DIR, ConfigError, compose, flatten, lookup
from fedconv.runs import run_dir
from fedconv.sections import (
    LEGACY_DEFAULTS,
    Client,
    Faults,
    Server,
    Simulation,
    cohort_sizes,
    declared_keys,
    virtual_nodes,
)
from fedconv.simulation import resume
from fedconv.validation import validate

SECTIONS = {"server": Server, "client": Client, "simulation": Simulation, "faults": Faults}


@pytest.mark.parametrize("group", sorted(SECTIONS))
def test_a_section_declares_every_key_of_each_option_of_its_group_and_no_other(group: str) -> None:
    """Each option file of the group (faults has four) composes to exactly the section's keys:
    a key added to the YAML without the section, or the other way round, fails here."""
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert options
    declared = {k for k in declared_keys() if k.startswith(f"{group}.")}
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert {f"{group}.{k}" for k in flatten(cfg[group])} == declared, option
        section = SECTIONS[group].of(cfg)
        for key in declared:  # the typed value is the YAML's value
            assert lookup(dataclasses.asdict(section), key.split(".", 1)[1]) == lookup(cfg, key), key


def test_a_missing_key_is_one_line_naming_it() -> None:
    cfg = compose([])
    del cfg["server"]["round_timeout"]
    with pytest.raises(ConfigError, match=r"^server\.round_timeout: missing; conf/server/ declares it"):
        Server.of(cfg)
    cfg["simulation"]["ray"] = "127.0.0.1:6379"
    with pytest.raises(ConfigError, match=r"^simulation\.ray='127\.0\.0\.1:6379': must be a group of keys \(address, num_cpus"):
        Simulation.of(cfg)


def test_cohort_sizes_and_virtual_nodes_follow_flowers_rule() -> None:
    """max(int(n * fraction), minimum) per phase; a pool registers the largest cohort only."""
    cfg = compose(["simulation.num_clients=30", "server.fraction_train=0.2", "server.fraction_evaluate=0.1",
                   "server.min_evaluate_clients=4", "simulation.nodes=pool"])
    assert cohort_sizes(cfg) == (6, 4)  # int(30 * 0.2) = 6; int(30 * 0.1) = 3 < 4
    assert virtual_nodes(cfg) == 6
    cfg["simulation"]["nodes"] = "per_client"
    assert virtual_nodes(cfg) == 30
    cfg["server"]["fed_eval"] = "with_train"  # evaluation rides on the train replies
    assert cohort_sizes(cfg) == (6, 0)


def test_every_legacy_key_is_a_key_of_todays_config() -> None:
    cfg = compose([])
    assert [k for k in LEGACY_DEFAULTS if lookup(cfg, k) is None] == []


def test_a_run_saved_before_the_newer_keys_existed_resumes_with_the_values_it_ran_with(tmp_path) -> None:
    """A config.yaml without any key of LEGACY_DEFAULTS (as fedconv's first runs wrote it) reads
    back complete: it validates, every section builds, and the missing keys hold the values the
    code used before they existed (a node per client, no faults, fp32, plain FedAvg stragglers)."""
    cfg = compose([])
    for key in LEGACY_DEFAULTS:
        group, *middle, leaf = key.split(".")
        node = cfg[group]
        for part in middle:
            node = node[part]
        del node[leaf]
    run_dir.write_config(tmp_path, cfg)
    saved = resume.saved_config(tmp_path)
    validate(saved)
    assert Simulation.of(saved).nodes == "per_client"
    assert virtual_nodes(saved) == Simulation.of(saved).num_clients
    assert Server.of(saved).fed_eval == "separate" and Server.of(saved).connect_timeout == 600
    assert Client.of(saved).precision == "fp32" and not Client.of(saved).compile
    assert dataclasses.asdict(Faults.of(saved)) == dataclasses.asdict(Faults.of(compose([])))  # none: all off
    assert saved["strategy"]["stragglers"] == "drop" and saved["partition"]["allow_empty"] is False
    assert {k: lookup(saved, k) for k in LEGACY_DEFAULTS} == LEGACY_DEFAULTS
