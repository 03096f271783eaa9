"""Compression on the real Flower + Ray stack (digits, small): the ledger counts what the
messages carry, accuracy holds, and top-k's error-feedback residual follows its partition
through the node pool and a resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from conftest import ONE_CPU_RAY, CaseRun, rows, simulate

pytestmark = pytest.mark.slow

SMALL = ["dataset=digits", "simulation.num_clients=5", "server.fraction_evaluate=0", "partition.alpha=1.0"]


def _ok(proc) -> None:  # noqa: ANN001
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


PRESETS = ["none", "int8", "int8_both", "topk"]


@pytest.mark.cases(**{f"compression_{p}": (*SMALL, "server.fraction_train=1.0", "server.rounds=3", f"compression={p}")
                      for p in PRESETS})
def test_compressed_runs_send_a_fraction_of_the_bytes_and_still_learn(cases: dict[str, CaseRun]) -> None:
    runs = {}
    for preset in PRESETS:
        run = cases[f"compression_{preset}"].completed().dir
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        runs[(cfg["compression"]["downlink"]["codec"], cfg["compression"]["uplink"]["codec"])] = run
    fp32 = rows(runs[("none", "none")])
    int8, both, topk = rows(runs[("none", "int8")]), rows(runs[("int8", "int8")]), rows(runs[("none", "topk")])
    for f, q, b, t in zip(fp32, int8, both, topk, strict=True):
        assert int(q["bytes_up"]) <= 0.27 * int(f["bytes_up"])  # headers included: the messages as sent
        assert int(q["bytes_down"]) == int(f["bytes_down"])
        assert int(b["bytes_down"]) <= 0.27 * int(f["bytes_down"]) and int(b["bytes_up"]) == int(q["bytes_up"])
        assert int(t["bytes_up"]) <= 0.2 * int(f["bytes_up"])
        assert float(f["compression_up"]) == 1.0 and float(q["compression_up"]) == int(q["bytes_up"]) / int(f["bytes_up"])
        assert float(b["compression_down"]) == pytest.approx(int(b["bytes_down"]) / int(f["bytes_down"]))
        assert all(int(r["clients_ok"]) == 5 and int(r["clients_rejected"]) == 0 for r in (q, b, t))
    final = {k: float(rows(run)[-1]["central_accuracy"]) for k, run in runs.items()}
    assert final[("none", "none")] > 0.5
    assert abs(final[("none", "int8")] - final[("none", "none")]) < 0.03, final
    assert abs(final[("int8", "int8")] - final[("none", "none")]) < 0.05, final
    assert float(topk[-1]["central_accuracy"]) > float(topk[0]["central_accuracy"]) + 0.1, final
    summary = json.loads((runs[("none", "int8")] / "summary.json").read_text())
    assert summary["bytes_up_raw_total"] == json.loads((runs[("none", "none")] / "summary.json").read_text())["bytes_up_total"]
    assert summary["bytes_up_total"] == sum(int(r["bytes_up"]) for r in int8)
    assert summary["compression"]["uplink"]["codec"] == "int8"


TOPK = (*SMALL, "server.fraction_train=0.4", "server.lr_schedule=constant", "compression=topk")


@pytest.mark.cases(topk_pool=(*TOPK, "server.rounds=4", "simulation.nodes=pool"),
                   topk_per_client=(*TOPK, "server.rounds=4", "simulation.nodes=per_client"),
                   topk_no_feedback=(*TOPK, "server.rounds=4", "compression.uplink.error_feedback=false"),
                   topk_two_rounds=(*TOPK, "server.rounds=2"))
def test_topk_residual_follows_the_partition_through_the_pool_and_a_resume(tmp_path: Path, cases: dict[str, CaseRun]) -> None:
    """Two of five clients a round, so pool nodes train other partitions each round; a
    completed 2-round run extended by ``resume= server.rounds=4`` must equal the uninterrupted
    4-round run (also resume's plain case: a completed run made longer), and the residual each
    partition stored must be what changed the result."""
    cols = ["round", "central_accuracy", "central_loss", "train_loss", "clients_ok", "bytes_down", "bytes_up",
            "bytes_total_cum", "lr"]
    tables: dict[str, list[list[str]]] = {}
    for name in ("pool", "per_client", "no_feedback"):
        (tmp_path / name).symlink_to(cases[f"topk_{name}"].completed().dir)
        tables[name] = [[r[c] for c in cols] for r in rows(tmp_path / name)]
    resumed = tmp_path / "resumed"
    shutil.copytree(cases["topk_two_rounds"].completed().dir, resumed)  # the session's case stays as made
    proc = simulate(f"resume={resumed}", "server.rounds=4", ONE_CPU_RAY)  # one actor: the same numbers
    _ok(proc)
    assert "resuming after round 2" in proc.stdout
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4 and summary["resumed_from_round"] == 2
    tables["resumed"] = [[r[c] for c in cols] for r in rows(resumed)]
    assert tables["pool"] == tables["per_client"] == tables["resumed"]
    assert tables["no_feedback"][:1] == tables["pool"][:1]  # round 1: no partition has a residual yet
    assert tables["no_feedback"] != tables["pool"]
    trained = [r for r in rows(tmp_path / "pool", "client_metrics.csv") if r["phase"] == "train"]
    pids = {int(r["partition_id"]) for r in trained}
    stored = {int(p.parent.name[1:]) for p in (tmp_path / "pool" / "client_state").glob("p*/r*.safetensors")}
    assert stored == pids
    for path in (tmp_path / "pool" / "client_state").glob("p*/r*.safetensors"):
        state = load_file(path)
        assert state and all(k.startswith("residual/") for k in state)
        assert any(np.abs(v).sum() > 0 for v in state.values())
    assert not (tmp_path / "no_feedback" / "client_state").exists()
