"""Local training: algorithm hooks (FedProx's term and its effect on client drift), schedules, metrics."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedconv.algorithms.base import LocalTraining
from fedconv.algorithms.fedprox import ProximalTerm
from fedconv.config import compose
from fedconv.data.datasets import load_dataset
from fedconv.learning.models import build_model
from fedconv.learning.training import (
    Normalizer,
    augment_batch,
    classification_report,
    evaluate,
    folded_for_inference,
    lr_for_round,
    train_local,
)
from fedconv.sections import Client, Server


def small_model(seed: int = 0) -> torch.nn.Module:
    return build_model(compose(["dataset=digits"])["model"], (1, 8, 8), 10, seed=seed)


def test_proximal_term_value_and_gradient() -> None:
    model = small_model()
    global_params = [p.detach().clone() + 0.1 * torch.randn_like(p) for p in model.parameters()]
    mu = 0.7
    hook = ProximalTerm(mu)
    hook.begin(LocalTraining(model, np.zeros((0, 1, 8, 8), np.uint8), np.zeros(0, np.int64), lambda x: torch.zeros(0)))
    hook.global_params = global_params
    term = hook.loss(model)
    assert term is not None
    pairs = zip(model.parameters(), global_params, strict=True)
    expected = 0.5 * mu * sum(float(((p.detach() - g) ** 2).sum()) for p, g in pairs)
    assert float(term.detach()) == pytest.approx(expected, rel=1e-5)
    term.backward()
    for p, g in zip(model.parameters(), global_params, strict=True):
        torch.testing.assert_close(p.grad, mu * (p.detach() - g))
        assert g.grad is None  # w_global is a constant


def _drift(mu: float) -> float:
    cfg = compose(["dataset=digits"])
    ds = load_dataset(cfg["dataset"])
    norm = Normalizer.from_stats(ds.mean, ds.std)
    model = small_model()
    start = [p.detach().clone() for p in model.parameters()]
    train_local(model, ds.train_x[:600], ds.train_y[:600], norm, Client.of(cfg), lr=0.05, epochs=3, hook=ProximalTerm(mu), seed=0)
    return math.sqrt(sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start, strict=True)))


def test_fedprox_keeps_clients_closer_to_the_global_model() -> None:
    free, prox = _drift(0.0), _drift(10.0)
    assert prox < 0.5 * free, (free, prox)


def test_training_learns_and_is_deterministic() -> None:
    cfg = compose(["dataset=digits"])
    ds = load_dataset(cfg["dataset"])
    norm = Normalizer.from_stats(ds.mean, ds.std)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = small_model()
        train_local(model, ds.train_x, ds.train_y, norm, Client.of(cfg), lr=0.05, epochs=3, seed=1)
        results.append(evaluate(model, ds.test_x, ds.test_y, norm))
    assert results[0].accuracy > 0.85
    assert results[0].loss == results[1].loss


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_both_optimizers_reduce_the_loss(optimizer: str) -> None:
    cfg = compose(["dataset=digits", f"client.optimizer={optimizer}"])
    ds = load_dataset(cfg["dataset"])
    norm = Normalizer.from_stats(ds.mean, ds.std)
    model = small_model()
    before = evaluate(model, ds.train_x, ds.train_y, norm).loss
    lr = 0.05 if optimizer == "sgd" else 0.003
    train_local(model, ds.train_x, ds.train_y, norm, Client.of(cfg), lr=lr, epochs=2, seed=0)
    assert evaluate(model, ds.train_x, ds.train_y, norm).loss < 0.6 * before


def test_lr_schedules() -> None:
    server = Server.of(compose([]))
    assert lr_for_round(replace(server, lr_schedule="constant"), 0.1, 7) == 0.1
    step = replace(server, lr_schedule="step", lr_step_size=5, lr_gamma=0.5)
    assert [lr_for_round(step, 0.1, r) for r in (1, 5, 6, 11)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    cos = replace(server, lr_schedule="cosine", rounds=10, lr_min=0.0)
    assert lr_for_round(cos, 0.1, 1) == pytest.approx(0.1)
    assert lr_for_round(cos, 0.1, 6) == pytest.approx(0.05)
    assert lr_for_round(cos, 0.1, 10) == pytest.approx(0.05 * (1 + math.cos(0.9 * math.pi)))
    assert lr_for_round(cos, 0.1, 10) > 0


def test_classification_report_matches_hand_counts() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    rep = classification_report(labels, preds, 3)
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    p0 = rep["per_class"][0]
    assert p0["precision"] == pytest.approx(0.5) and p0["recall"] == pytest.approx(0.5)
    assert rep["per_class"][1]["precision"] == pytest.approx(2 / 3) and rep["per_class"][1]["recall"] == 1.0


def test_evaluate_top5() -> None:
    model = small_model()
    ds = load_dataset(compose(["dataset=digits"])["dataset"])
    res = evaluate(model, ds.test_x, ds.test_y, Normalizer.from_stats(ds.mean, ds.std), batch_size=64)
    assert res.top5 is not None and res.top5 >= res.accuracy and res.num_examples == len(ds.test_y)


def test_augmentation_keeps_shape_and_range() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    y = augment_batch(x, gen)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(x, y)


@pytest.mark.parametrize("name", ["twoconv", "twoconv_dw", "twoconv_res", "twoconv_se", "twoconv_mb", "niid_cnn"])
def test_folding_batchnorm_keeps_the_predictions(name: str) -> None:
    model = build_model(compose([f"model={name}"])["model"], (1, 28, 28), 10, seed=1)
    with torch.no_grad():  # BatchNorm statistics far from the identity, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    def batchnorms(m: torch.nn.Module) -> int:
        return sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())

    before = batchnorms(model)
    folded = folded_for_inference(model)
    # Every BatchNorm right after a conv is folded (twoconv_res: also the shortcut's);
    # twoconv_mb's second one follows a concatenation of two branches and stays.
    assert batchnorms(folded) == {"niid_cnn": 0, "twoconv_mb": 1}.get(name, 0)
    assert batchnorms(model) == before == {"niid_cnn": 0, "twoconv_res": 3}.get(name, 2)  # original untouched
    x = torch.randn(64, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["twoconv", "twoconv_dw", "twoconv_res"])
def test_channels_last_training_matches_the_default_layout_and_hands_back_contiguous_weights(name: str) -> None:
    """train_local trains in channels-last layout for speed; the weights it hands back (and
    that go on the wire) are in the default layout and equal a default-layout run up to
    floating-point reordering."""
    from fedconv.learning.training import _train_steps

    cfg = compose(["dataset=digits"])
    ds = load_dataset(cfg["dataset"])
    norm = Normalizer.from_stats(ds.mean, ds.std)
    model_cfg = compose([f"model={name}", "dataset=digits"])["model"]
    fast, plain = (build_model(model_cfg, (1, 8, 8), 10, seed=3) for _ in range(2))
    args = (ds.train_x[:256], ds.train_y[:256], norm, Client.of(cfg))
    torch.manual_seed(0)
    got = train_local(fast, *args, lr=0.05, epochs=2, seed=1)
    torch.manual_seed(0)
    want = _train_steps(plain, *args, lr=0.05, epochs=2, hook=ProximalTerm(0.0), seed=1, max_steps=None)
    assert got.steps == want.steps > 0
    assert got.loss == pytest.approx(want.loss, rel=1e-4)
    for (key, a), b in zip(fast.state_dict().items(), plain.state_dict().values(), strict=True):
        assert a.is_contiguous(), key
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_bf16_autocast_trains_float32_weights_close_to_the_fp32_path() -> None:
    """client.precision=bf16: the forward pass in bfloat16, the weights, the optimizer state and
    what is sent stay float32; the result stays close to the fp32 path's."""
    from fedconv.config import compose
    from fedconv.data.datasets import load_dataset
    from fedconv.learning import task
    from fedconv.learning.models import build_model, transmitted_state
    from fedconv.learning.training import evaluate, train_local

    cfg = compose(["dataset=digits"])
    ds = load_dataset(cfg["dataset"])
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)  # dropout draws from torch's global generator: the same draws for both
        model = build_model(cfg["model"], ds.input_shape, ds.num_classes, seed=0)
        r = train_local(model, ds.train_x, ds.train_y, task.normalizer(cfg, ds, True),
                        replace(Client.of(cfg), precision=precision), lr=0.05, epochs=2, seed=0)
        assert {v.dtype for v in transmitted_state(model).values()} == {torch.float32}
        ev = evaluate(model, ds.test_x, ds.test_y, task.normalizer(cfg, ds, False), precision=precision)
        fp32_eval = evaluate(model, ds.test_x, ds.test_y, task.normalizer(cfg, ds, False))
        assert (ev.predictions == fp32_eval.predictions).mean() > 0.97  # bf16 inference: same answers, nearly
        results[precision] = (r.loss, ev.accuracy)
    # Measured here with seeds 0-2: losses within 0.003, test accuracy within 1.7 points.
    assert abs(results["bf16"][0] - results["fp32"][0]) < 0.05, results
    assert abs(results["bf16"][1] - results["fp32"][1]) < 0.04, results


@pytest.mark.slow
def test_compiled_training_step_gives_the_eager_predictions() -> None:
    """client.compile=true trains the model's own parameters through torch.compile: after the
    same local epoch (no dropout, so no random draws) the weights and the test-set predictions
    match the eager path's within float tolerance, and nothing compiled leaks into the state."""
    from fedconv.config import compose
    from fedconv.data.datasets import load_dataset
    from fedconv.learning import task
    from fedconv.learning.models import build_model
    from fedconv.learning.training import evaluate, train_local

    cfg = compose(["dataset=digits", "model.dropout=0"])
    ds = load_dataset(cfg["dataset"])
    x, y = ds.train_x[:600], ds.train_y[:600]
    models, losses = {}, {}
    for compile_ in (False, True):
        model = build_model(cfg["model"], ds.input_shape, ds.num_classes, seed=0)
        r = train_local(model, x, y, task.normalizer(cfg, ds, True), replace(Client.of(cfg), compile=compile_),
                        lr=0.05, epochs=1, seed=0)
        models[compile_], losses[compile_] = model, r.loss
    assert "_fedconv_compiled" in models[True].__dict__ and "_fedconv_compiled" not in models[False].__dict__
    assert list(models[True].state_dict()) == list(models[False].state_dict())
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    for (key, a), b in zip(models[True].state_dict().items(), models[False].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=key)
    norm = task.normalizer(cfg, ds, False)
    compiled_preds = evaluate(models[True], ds.test_x, ds.test_y, norm).predictions
    eager_preds = evaluate(models[False], ds.test_x, ds.test_y, norm).predictions
    assert (compiled_preds == eager_preds).mean() > 0.99


@pytest.mark.slow  # a Python process of its own: the import that warned happens once per process
def test_folding_for_inference_prints_no_warning_a_user_cannot_act_on() -> None:
    """Every run's central evaluation folds BatchNorm with torch.fx, whose module imports
    torch.utils.mkldnn: torch 2.13 warns there that its own ``torch.jit.script_method`` is
    deprecated, on every run's console. fedconv silences that one warning, nothing else."""
    import subprocess
    import sys

    code = ("import torch; from fedconv.learning.models import build_model; "
            "from fedconv.learning.training import folded_for_inference; "
            "from fedconv.config import compose; "
            "m = build_model(compose(['dataset=digits'])['model'], (1, 8, 8), 10); folded_for_inference(m); "
            "import warnings; warnings.warn('a deprecation of our own', DeprecationWarning)")
    proc = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "script_method" not in proc.stderr, proc.stderr[-2000:]
    assert "a deprecation of our own" in proc.stderr  # the filter is that warning's alone
