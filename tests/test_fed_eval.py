"""``server.fed_eval=with_train``: one exchange a round, the training clients evaluating the
model they received (real Flower + Ray, digits)."""

from __future__ import annotations

import pytest

from conftest import CaseRun, rows

pytestmark = pytest.mark.slow

ALL = ["dataset=digits", "simulation.num_clients=4", "server.fraction_train=1.0", "server.rounds=3",
       "partition.alpha=1.0"]


@pytest.mark.cases(fed_eval_separate=(*ALL, "server.fraction_evaluate=1.0", "server.fed_eval=separate"),
                   fed_eval_with_train=(*ALL, "server.fed_eval=with_train"))
def test_training_clients_evaluate_the_received_model_as_an_evaluate_phase_would(cases: dict[str, CaseRun]) -> None:
    """Every client trains and evaluates each round. The separate evaluate phase of round t
    measures the model after round t on every held-out split; with_train's round t + 1 measures
    the same model (the one its clients receive) on the same splits, before they train."""
    separate, with_train = cases["fed_eval_separate"].completed().dir, cases["fed_eval_with_train"].completed().dir
    sep, one = rows(separate), rows(with_train)
    assert [r["central_accuracy"] for r in sep] == [r["central_accuracy"] for r in one]  # same training
    assert all(int(r["bytes_eval_down"]) == 0 and int(r["eval_clients_ok"]) == 4 for r in one)
    assert all(int(r["bytes_eval_down"]) > 0 for r in sep)
    assert [(r["fed_cohort"], int(r["fed_model_round"])) for r in one] == [("train", 0), ("train", 1), ("train", 2)]
    assert [(r["fed_cohort"], int(r["fed_model_round"])) for r in sep] == [("evaluate", 1), ("evaluate", 2), ("evaluate", 3)]
    for t in (1, 2):
        for key in ("fed_accuracy", "fed_loss"):
            assert float(one[t][key]) == pytest.approx(float(sep[t - 1][key]), rel=1e-9), (t, key)
    assert float(one[0]["fed_accuracy"]) < 0.3  # round 1 measures the initial model
    evaluated = [r for r in rows(with_train, "client_metrics.csv") if r["phase"] == "evaluate"]
    assert len(evaluated) == 12 and {r["partition_id"] for r in evaluated} == {"0", "1", "2", "3"}
