"""SCAFFOLD, FedNova and FedDyn against their papers' formulas, computed here independently,
and the per-partition client-state store they rely on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_algorithms import COUNTS, NODES, models, play, strategy_cfg
from test_strategies import FakeGrid, task_identity  # noqa: F401  (autouse fixture)
from torch import nn

from fedconv import algorithms
from fedconv.algorithms.base import TrainHook
from fedconv.algorithms.feddyn import DynamicRegularizer
from fedconv.algorithms.fednova import NormalizingFactor, normalizing_factor
from fedconv.algorithms.scaffold import ControlVariates
from fedconv.config import compose
from fedconv.federation import client_state
from fedconv.federation.client_state import ClientStateStore, StateError, store_for
from fedconv.federation.cohorts import Cohorts, Phase
from fedconv.federation.rounds import FederatedRounds
from fedconv.learning.training import Normalizer, train_local
from fedconv.sections import Client

TRAIN_CFG = Client(epochs=2, batch_size=4, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, threads=0,
                   max_steps=0, precision="fp32", compile=False, noop=False)


def partial_driver(name: str, per_round: int, **overrides: object) -> FederatedRounds:
    """Seven partitions, ``per_round`` of them train each round (|S|/N = per_round/7)."""
    cohorts = Cohorts.owned({node: i for i, node in enumerate(NODES)}, seed=0, train_per_round=per_round, eval_per_round=0)
    return FederatedRounds(algorithms.get(name), strategy_cfg(name, **overrides), cohorts, lambda r: 0.1)


def tiny_task(seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray, Normalizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(12, 1, 2, 2), dtype=np.uint8)
    labels = rng.integers(0, 3, size=12)
    return model, images, labels, Normalizer.from_stats([0.5], [0.25])


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


# ------------------------------------------------------------------ SCAFFOLD


class GradientShift(TrainHook):
    """Plain SGD on g + shift: the paper's corrected step, written the other way round."""

    def __init__(self, shift: dict[str, torch.Tensor]) -> None:
        self.shift = shift

    def before_step(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            p.grad.add_(self.shift[k])


def test_scaffold_client_corrects_every_step_and_updates_its_control_variate() -> None:
    model, images, labels, norm = tiny_task()
    x = params(model)
    rng = np.random.default_rng(1)
    c = {k: torch.from_numpy(rng.normal(size=v.shape).astype(np.float32)) for k, v in x.items()}
    c_i = {k: torch.from_numpy(rng.normal(size=v.shape).astype(np.float32)) for k, v in x.items()}
    hook = ControlVariates()
    hook.receive({"control": c}, c_i)
    lr = 0.05
    result = train_local(model, images, labels, norm, TRAIN_CFG, lr=lr, epochs=2, hook=hook, seed=3)
    y = params(model)
    # Independently: SGD on the corrected gradient g - c_i + c, same batches (same seed).
    ref, *_ = tiny_task()
    train_local(ref, images, labels, norm, TRAIN_CFG, lr=lr, epochs=2, seed=3,
                hook=GradientShift({k: c[k] - c_i[k] for k in c}))
    K = result.steps
    assert K == 6
    for k in x:
        torch.testing.assert_close(y[k], dict(ref.named_parameters())[k].detach(), rtol=1e-5, atol=1e-6)
        want = c_i[k] - c[k] + (x[k] - y[k]) / (K * lr)
        torch.testing.assert_close(hook.new_state()[k], want)
        torch.testing.assert_close(hook.reply_arrays()["control"][k], want - c_i[k])


def test_scaffold_first_round_starts_from_a_zero_control_variate() -> None:
    model, images, labels, norm = tiny_task()
    x = params(model)
    c = {k: torch.full_like(v, 0.5) for k, v in x.items()}
    hook = ControlVariates()
    hook.receive({"control": c}, None)
    train_local(model, images, labels, norm, TRAIN_CFG, lr=0.1, epochs=1, hook=hook, seed=0)
    y = params(model)
    for k in x:  # c_i = 0: c_i+ = -c + (x - y)/(K lr), the whole of it is the reply's delta
        torch.testing.assert_close(hook.new_state()[k], -c[k] + (x[k] - y[k]) / (3 * 0.1))
        torch.testing.assert_close(hook.reply_arrays()["control"][k], hook.new_state()[k])


def test_scaffold_server_follows_the_paper() -> None:
    strategy = partial_driver("scaffold", per_round=3, server_lr=0.5)
    x, clients = models(3)
    c = {k: np.zeros_like(v, dtype=np.float64) for k, v in x.items()}
    for r in (1, 2):
        dcs = [{k: np.float32(0.1 * (i + r)) * np.ones_like(v) for k, v in x.items()} for i in range(len(NODES))]
        got = play(strategy, r, x, clients, controls=dcs)
        cohort = sorted(strategy.round.train.pids)
        assert len(cohort) == 3
        w = np.array([COUNTS[i] for i in cohort], dtype=np.float64)
        w /= w.sum()
        sent_c = strategy.state()[0]
        for k in x:
            want = x[k] + 0.5 * sum(wi * (clients[i][k].astype(np.float64) - x[k]) for wi, i in zip(w, cohort, strict=True))
            np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
            c[k] = c[k] + (3 / 7) * np.mean([dcs[i][k] for i in cohort], axis=0)
            np.testing.assert_allclose(sent_c[f"control/{k}"], c[k], rtol=1e-5, atol=1e-7)
        x = got


def test_scaffold_sends_the_server_control_variate_down() -> None:
    strategy = partial_driver("scaffold", per_round=7)
    x, clients = models(4)
    msgs = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in x.items()}), ConfigRecord({}), FakeGrid(NODES))
    assert all(set(m.content.array_records) == {"arrays", "control"} for m in msgs)
    assert all(m.content.config_records["config"]["state-round"] == 0 for m in msgs)
    sent = sum(len(a.data) for a in msgs[0].content.array_records["arrays"].values())
    control = sum(len(a.data) for a in msgs[0].content.array_records["control"].values())
    assert control == sent  # no BatchNorm here: c is exactly the model's size


# ------------------------------------------------------------------ FedNova


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("tau", [1, 3, 17])
def test_fednova_normalizing_factor_is_the_momentum_weight_of_all_gradients(tau: int, rho: float) -> None:
    """a_i is the total weight momentum SGD gives the gradients of τ steps: measured by
    running torch's SGD on a loss whose gradient is a constant g."""
    w = torch.zeros(3, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 0.5])
    opt = torch.optim.SGD([w], lr=0.1, momentum=rho)
    for _ in range(tau):
        opt.zero_grad()
        (w * g).sum().backward()
        opt.step()
    measured = float(-w.detach()[0] / (0.1 * g[0]))
    assert normalizing_factor(tau, rho) == pytest.approx(measured, rel=1e-5)
    assert normalizing_factor(tau, rho) == pytest.approx(sum(sum(rho**j for j in range(t)) for t in range(1, tau + 1)))
    if rho == 0.0:
        assert normalizing_factor(tau, rho) == tau


def test_fednova_hook_reports_a_from_the_steps_taken() -> None:
    model, images, labels, norm = tiny_task()
    hook = NormalizingFactor(0.9)
    result = train_local(model, images, labels, norm, replace(TRAIN_CFG, momentum=0.9), lr=0.1, epochs=1, hook=hook,
                         seed=0, max_steps=2)
    assert result.steps == 2 and hook.reply_metrics() == {"nova_a": pytest.approx(1 + 1.9)}


def test_fednova_aggregate_normalises_unequal_local_steps() -> None:
    strategy = partial_driver("fednova", per_round=7)
    x, clients = models(5)
    a = [1.0, 2.0, 4.0, 8.0, 1.5, 3.0, 6.0]  # heterogeneous τ_i (stragglers, quantity skew)
    got = play(strategy, 1, x, clients, nova_a=a)
    p = np.array(COUNTS, dtype=np.float64) / sum(COUNTS)
    tau_eff = float(np.dot(p, a))
    for k in x:
        d = [(x[k].astype(np.float64) - c[k]) / ai for c, ai in zip(clients, a, strict=True)]
        want = x[k] - tau_eff * sum(pi * di for pi, di in zip(p, d, strict=True))
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
    fedavg = play(partial_driver("fedavg", per_round=7), 1, x, clients)
    assert any(not np.allclose(got[k], fedavg[k]) for k in x)  # unequal τ: not FedAvg's mean
    same = play(partial_driver("fednova", per_round=7), 1, x, clients, nova_a=[2.0] * 7)
    for k in x:  # equal τ: FedNova is FedAvg
        np.testing.assert_allclose(same[k], fedavg[k], rtol=1e-5, atol=1e-6)


def test_fednova_leaves_out_a_client_that_took_no_step() -> None:
    strategy = partial_driver("fednova", per_round=7)
    x, clients = models(6)
    got = play(strategy, 1, x, clients, nova_a=[0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    ref = play(partial_driver("fedavg", per_round=7), 1, x, clients)  # differs: client 0 counts in FedAvg
    p = np.array(COUNTS[1:], dtype=np.float64) / sum(COUNTS[1:])
    for k in x:
        want = sum(pi * c[k].astype(np.float64) for pi, c in zip(p, clients[1:], strict=True))
        np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got[k], ref[k])


def test_fednova_refuses_adam() -> None:
    from fedconv.config import ConfigError, compose
    from fedconv.validation import validate

    with pytest.raises(ConfigError, match="client.optimizer='adam': must be sgd"):
        validate(compose(["strategy=fednova", "client.optimizer=adam"]))


# ------------------------------------------------------------------ FedDyn


def test_feddyn_client_gradient_is_that_of_the_paper_objective() -> None:
    model, images, labels, norm = tiny_task()
    x = params(model)
    rng = np.random.default_rng(2)
    g = {k: torch.from_numpy(rng.normal(size=v.shape).astype(np.float32)) for k, v in x.items()}
    alpha = 0.3
    hook = DynamicRegularizer(alpha)
    hook.receive({}, g)
    train_local(model, images, labels, norm, TRAIN_CFG, lr=0.05, epochs=2, hook=hook, seed=1)
    theta = params(model)

    class PaperObjective(TrainHook):  # the regulariser as a loss, differentiated by autograd
        def loss(self, m: nn.Module) -> torch.Tensor:
            return sum(-(g[k] * p).sum() + alpha / 2 * (p - x[k]).pow(2).sum() for k, p in m.named_parameters())

    ref, *_ = tiny_task()
    train_local(ref, images, labels, norm, TRAIN_CFG, lr=0.05, epochs=2, hook=PaperObjective(), seed=1)
    for k in x:
        torch.testing.assert_close(theta[k], dict(ref.named_parameters())[k].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hook.new_state()[k], g[k] - alpha * (theta[k] - x[k]))
    assert hook.reply_arrays() == {}  # g_i never travels


def test_feddyn_server_keeps_h_and_corrects_the_mean() -> None:
    strategy = partial_driver("feddyn", per_round=3, alpha=0.1)
    x, clients = models(7)
    h = {k: np.zeros_like(v, dtype=np.float64) for k, v in x.items()}
    for r in (1, 2, 3):
        clients = [{k: v + np.float32(0.01 * r) for k, v in c.items()} for c in clients]
        got = play(strategy, r, x, clients)
        cohort = sorted(strategy.round.train.pids)
        for k in x:
            h[k] = h[k] - 0.1 / 7 * sum(clients[i][k].astype(np.float64) - x[k] for i in cohort)
            want = np.mean([clients[i][k].astype(np.float64) for i in cohort], axis=0) - h[k] / 0.1
            np.testing.assert_allclose(strategy.state()[0][f"h/{k}"], h[k], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5)
        x = got


# ------------------------------------------------------------------ the client-state store


def test_store_keeps_the_version_it_started_from_and_the_one_it_wrote(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path)
    assert store.load(3, 0) is None
    s1 = {"w": torch.arange(4.0)}
    store.save(3, 1, s1, started_from=0)
    store.save(3, 4, {"w": torch.ones(4)}, started_from=1)
    assert store.versions(3) == [1, 4]
    torch.testing.assert_close(store.load(3, 1)["w"], s1["w"])
    store.save(3, 6, {"w": torch.zeros(4)}, started_from=1)  # round 4's reply was not accepted
    assert store.versions(3) == [1, 6]
    store.save(3, 9, {"w": torch.zeros(4)}, started_from=6)
    assert store.versions(3) == [6, 9] and store.versions(2) == []
    with pytest.raises(StateError, match="partition 3: its client state after round 4 is missing"):
        store.load(3, 4)
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporaries


def test_store_location_shared_folder_needs_its_marker_and_boards_use_their_own(tmp_path: Path) -> None:
    cfg = {**compose([]), "output_dir": str(tmp_path / "run")}
    with pytest.raises(StateError, match="is not visible on .*simulation.client_state_dir"):
        store_for(cfg, {})
    root = client_state.prepare_shared(cfg)
    assert root == tmp_path / "run" / "client_state" and store_for(cfg, {}).root == root
    shared = {**cfg, "simulation": {**cfg["simulation"], "client_state_dir": str(tmp_path / "nfs")}}
    client_state.prepare_shared(shared)
    assert store_for(shared, {}).root == tmp_path / "nfs"
    board = store_for(cfg, {"state-dir": str(tmp_path / "board")})
    other_run = store_for({**cfg, "output_dir": str(tmp_path / "run2")}, {"state-dir": str(tmp_path / "board")})
    assert board.root.parent == tmp_path / "board" and board.root != other_run.root
    assert store_for(cfg, {"state-dir": str(tmp_path / "board")}).root == board.root  # stable: resume finds it


def test_client_state_advances_only_with_accepted_updates_and_is_checkpointed() -> None:
    strategy = partial_driver("scaffold", per_round=7)
    x, clients = models(8)
    bad = [dict(c) for c in clients]
    bad[2] = {k: np.full_like(v, np.nan) for k, v in bad[2].items()}  # partition 2's reply is rejected
    play(strategy, 1, x, bad)
    assert strategy.client_rounds == {i: 1 for i in range(7) if i != 2}
    sent = strategy.configure_train(2, ArrayRecord({k: Array(v) for k, v in x.items()}), ConfigRecord({}), FakeGrid(NODES))
    by_pid = {Phase.pid_of(m): m.content.config_records["config"]["state-round"] for m in sent}
    assert by_pid == {0: 1, 1: 1, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}
    tensors, layout = strategy.state()
    resumed = partial_driver("scaffold", per_round=7)
    resumed.restore(tensors, layout)
    assert resumed.client_rounds == strategy.client_rounds



# ------------------------------------------------------------------ FedBN


def test_fedbn_keeps_every_batchnorm_array_off_the_wire_and_out_of_the_aggregate() -> None:
    from fedconv.learning.models import batchnorm_names

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    local = batchnorm_names(model)
    assert local == {"1.weight", "1.bias", "1.running_mean", "1.running_var"}
    cohorts = Cohorts.owned({node: i for i, node in enumerate(NODES[:3])}, seed=0, train_per_round=3, eval_per_round=3)
    strategy = FederatedRounds(algorithms.get("fedbn"), strategy_cfg("fedbn"), cohorts, lambda r: 0.1, local_names=local)
    rng = np.random.default_rng(0)
    x = {k: v.detach().numpy() + rng.normal(size=v.shape).astype(np.float32) for k, v in model.state_dict().items()
         if not k.endswith("num_batches_tracked")}
    sent = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in x.items()}), ConfigRecord({}), FakeGrid(NODES[:3]))
    assert all(set(m.content.array_records["arrays"]) == set(x) - local for m in sent)
    clients = [{k: v + np.float32(i + 1) for k, v in x.items() if k not in local} for i in range(3)]
    metrics = {"num-examples": 10, "train_loss": 1.0, "train_accuracy": 0.5, "steps": 1}
    replies = []
    for m in sent:
        mine = clients[Phase.pid_of(m)]
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in mine.items()}), "metrics": MetricRecord(metrics)})
        replies.append(Message(content, reply_to=m))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and list(arrays) == list(x)
    for k in x:
        if k in local:  # untouched: the server's own copy
            np.testing.assert_array_equal(arrays[k].numpy(), x[k])
        else:  # FedAvg of equal-weight replies: the plain mean of +1, +2, +3
            np.testing.assert_allclose(arrays[k].numpy(), x[k] + 2.0, rtol=1e-6, atol=1e-6)  # float32 sums
    evals = strategy.configure_evaluate(1, arrays, ConfigRecord({}), FakeGrid(NODES[:3]))
    assert all(set(m.content.array_records["arrays"]) == set(x) - local for m in evals)
    assert sorted(m.content.config_records["config"]["state-round"] for m in evals) == [1, 1, 1]


def test_recalibrated_batchnorm_holds_the_statistics_of_the_calibration_images() -> None:
    from fedconv.learning.models import recalibrate_batchnorm

    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(5.0)
    model = nn.Sequential(bn).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(2.0, 3.0, size=(50, 2, 4, 4)).astype(np.float32))
    recalibrate_batchnorm(model, [x[:20], x[20:40], x[40:]])
    assert not model.training and bn.momentum == 0.1  # put back as it was
    # A plain mean over the three batches of each batch's mean and unbiased variance.
    batches = [x[:20], x[20:40], x[40:]]
    mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
