"""SCAFFOLD, FedNova and FedDyn on the real Flower + Ray stack (digits, small): they learn,
SCAFFOLD's wire doubles FedAvg's, and its client state is the same whichever virtual node
trains a partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import Array
from safetensors.numpy import load_file

from conftest import CaseRun, rows
from fedconv.config import compose
from fedconv.data.datasets import load_dataset
from fedconv.learning.models import batchnorm_names, build_model, parameter_names

pytestmark = pytest.mark.slow

SMALL = ["dataset=digits", "simulation.num_clients=5", "server.fraction_evaluate=0", "server.rounds=3", "partition.alpha=1.0"]


STATEFUL = ["fedavg", "scaffold", "fednova", "feddyn", "fedbn"]


@pytest.mark.cases(**{f"stateful_{name}": (*SMALL, "server.fraction_train=1.0", "server.fraction_evaluate=1.0",
                                           f"strategy={name}") for name in STATEFUL})
def test_stateful_algorithms_learn_and_their_wire_is_what_they_send(cases: dict[str, CaseRun]) -> None:
    """SCAFFOLD carries one more copy of the parameters each way; FedBN never sends its
    BatchNorm layers, and each partition keeps its own."""
    runs = [cases[f"stateful_{name}"].completed().dir for name in STATEFUL]
    by_name = {yaml.safe_load((run / "config.yaml").read_text())["strategy"]["name"]: run for run in runs}
    assert list(by_name) == STATEFUL
    for name, run in by_name.items():
        acc = [float(r["central_accuracy"]) for r in rows(run)]
        assert acc[-1] > acc[0] + 0.05 and acc[-1] > 0.3, (name, acc)
        assert all(int(r["clients_ok"]) == 5 and int(r["clients_rejected"]) == 0 for r in rows(run)), name
    # The control variate covers the trainable parameters: one more float32 copy of each, each
    # way, per client (BatchNorm's running statistics travel once). Sizes as Flower serialises them.
    cfg = compose(SMALL)
    ds = load_dataset(cfg["dataset"])
    model = build_model(cfg["model"], ds.input_shape, ds.num_classes, seed=0)
    trainable, bn = parameter_names(model), batchnorm_names(model)
    control_bytes = sum(len(Array(v.detach().numpy()).data) for k, v in model.state_dict().items() if k in trainable)
    bn_bytes = sum(len(Array(v.detach().numpy()).data) for k, v in model.state_dict().items() if k in bn)
    assert bn_bytes > 0
    fedavg, scaffold, fedbn = rows(by_name["fedavg"]), rows(by_name["scaffold"]), rows(by_name["fedbn"])
    for a, s, b in zip(fedavg, scaffold, fedbn, strict=True):
        for key in ("bytes_down", "bytes_up"):
            assert int(s[key]) == int(a[key]) + 5 * control_bytes, key
            assert 1.98 < int(s[key]) / int(a[key]) <= 2.0
        assert int(b["bytes_up"]) == int(a["bytes_up"]) - 5 * bn_bytes
        assert int(b["bytes_down"]) == int(a["bytes_down"]) - 5 * bn_bytes
        assert int(b["bytes_eval_down"]) == int(a["bytes_eval_down"]) - 5 * bn_bytes
        assert b["fed_accuracy"] and b["central_accuracy"]  # personalised and AdaBN-central, both reported
    final = load_file(by_name["fedbn"] / "model.safetensors")  # the centrally evaluated model: AdaBN statistics
    means = [k for k in bn if k.endswith("running_mean")]
    assert means and all(np.abs(final[k]).sum() > 0 for k in means)
    assert all(np.array_equal(final[k], np.ones_like(final[k])) for k in bn if k.endswith(".weight"))  # initial affine
    own = [load_file(p) for p in sorted((by_name["fedbn"] / "client_state").glob("p*/r3.safetensors"))]
    assert len(own) == 5 and set(own[0]) == {f"local/{k}" for k in bn}
    assert not np.array_equal(own[0][f"local/{sorted(bn)[0]}"], own[1][f"local/{sorted(bn)[0]}"])
    assert len(list((by_name["scaffold"] / "client_state").glob("p*/r*.safetensors"))) >= 5
    assert not (by_name["fednova"] / "client_state").exists()  # stateless: nothing stored


SCAFFOLD_HALF = (*SMALL, "server.fraction_train=0.4", "server.rounds=4", "strategy=scaffold")


@pytest.mark.cases(scaffold_pool=(*SCAFFOLD_HALF, "simulation.nodes=pool"),
                   scaffold_per_client=(*SCAFFOLD_HALF, "simulation.nodes=per_client"))
def test_scaffold_gives_the_same_run_in_the_node_pool_and_with_a_node_per_client(cases: dict[str, CaseRun]) -> None:
    """Half the clients per round, so pool nodes train different partitions from round to
    round: the state must follow the partition, not the node."""
    cols = ["round", "central_accuracy", "central_loss", "train_loss", "clients_ok", "bytes_down", "bytes_up"]
    tables = {}
    dirs = {nodes: cases[f"scaffold_{nodes}"].completed().dir for nodes in ("pool", "per_client")}
    for nodes in ("pool", "per_client"):
        run = dirs[nodes]
        tables[nodes] = [[r[c] for c in cols] for r in rows(run)]
        trained = [r for r in rows(run, "client_metrics.csv") if r["phase"] == "train"]
        assert len({r["partition_id"] for r in trained}) == 5  # every partition trained at least once
    assert tables["pool"] == tables["per_client"]
    def states(nodes: str) -> list[Path]:
        return sorted(p.relative_to(dirs[nodes]) for p in dirs[nodes].rglob("r*.safetensors"))

    pool_states = states("pool")
    assert pool_states and pool_states == states("per_client")
    for rel in pool_states:
        a, b = (np.frombuffer((dirs[n] / rel).read_bytes(), dtype=np.uint8) for n in ("pool", "per_client"))
        assert np.array_equal(a, b), rel
