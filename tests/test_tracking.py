"""Tracking sinks: TensorBoard's event files hold what rounds.csv holds, a resumed run does
not repeat a step, and a failing sink never stops the run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from conftest import CaseRun, mlflow_run, rows
from fedconv.runs.tracking import MlflowSink, TensorBoardSink, Tracking, WandbSink, heatmap, scalar_name

if TYPE_CHECKING:  # imported where used: mlflow alone takes 2 s to import, on every worker that collects
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def events(folder: Path) -> EventAccumulator:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_a_resumed_run_replaces_the_steps_it_redoes(tmp_path: Path) -> None:
    cfg = {"seed": 0, "logger": {"tensorboard": True}}
    first = TensorBoardSink(tmp_path, cfg, 1, np.array([[3, 0], [1, 1]]))
    for r in (1, 2, 3):  # round 3's events were written, then the run died before its checkpoint
        first.round({"round": r, "central_accuracy": 0.1 * r, "bytes_up": 100 * r, "fed_cohort": "evaluate"})
    first.writer.close()
    resumed = TensorBoardSink(tmp_path, cfg, 3, None)  # resumes after the checkpoint of round 2
    for r in (3, 4):
        resumed.round({"round": r, "central_accuracy": 0.5 + 0.1 * r, "bytes_up": 100 * r})
    resumed.end({"rounds_completed": 4, "status": "completed"})
    acc = events(tmp_path / "tensorboard")
    got = [(e.step, round(e.value, 6)) for e in acc.Scalars("accuracy/central_accuracy")]
    assert got == [(1, 0.1), (2, 0.2), (3, 0.8), (4, 0.9)]
    assert [e.step for e in acc.Scalars("bytes/bytes_up")] == [1, 2, 3, 4]
    assert "partition/label_histogram" in acc.Tags()["images"]


def test_tags_group_the_columns_and_the_heatmap_normalises_each_client() -> None:
    assert scalar_name("central_accuracy") == "accuracy/central_accuracy"
    assert scalar_name("bytes_total_cum") == "bytes/bytes_total_cum"
    assert scalar_name("round_seconds") == "time/round_seconds"
    assert scalar_name("clients_ok") == "clients/clients_ok"
    img = heatmap(np.array([[4, 2], [0, 0]]), cell=2)
    assert img.shape == (4, 4) and img[0, 0] == 1.0 and img[0, 2] == 0.5 and img[2:].max() == 0


def test_a_failing_sink_is_reported_once_and_dropped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "tensorboard").write_text("a file where the event folder should be")
    tracking = Tracking.for_run({"logger": {"tensorboard": True}}, tmp_path, 1)
    assert tracking.sinks == []
    assert "logger.tensorboard failed" in capsys.readouterr().err

    class Broken:
        name = "tensorboard"
        calls = 0

        def round(self, row: dict) -> None:
            Broken.calls += 1
            raise OSError("No space left on device")

    tracking = Tracking([Broken()])  # type: ignore[list-item]
    for r in (1, 2, 3):
        tracking.round({"round": r})
    assert Broken.calls == 1 and capsys.readouterr().err.count("No space left on device") == 1


@pytest.mark.slow
@pytest.mark.cases(tensorboard=("dataset=digits", "simulation.num_clients=3", "server.fraction_train=1.0",
                                "server.rounds=3", "partition.alpha=1.0", "logger.tensorboard=true"))
def test_a_run_logs_every_round_to_tensorboard(cases: dict[str, CaseRun]) -> None:
    run = cases["tensorboard"].completed().dir
    acc = events(run / "tensorboard")
    table = rows(run)
    for column in ("central_accuracy", "fed_accuracy", "bytes_up", "clients_ok"):
        got = [(e.step, e.value) for e in acc.Scalars(scalar_name(column))]
        assert got == [(int(r["round"]), pytest.approx(float(r[column]), rel=1e-6)) for r in table], column
    assert "partition/label_histogram" in acc.Tags()["images"]
    assert {"config", "summary"} <= {t.split("/")[0] for t in acc.Tags()["tensors"]}


def test_a_resumed_mlflow_run_continues_without_repeating_a_step(tmp_path: Path) -> None:
    cfg = {"name": "t", "seed": 0, "strategy": {"name": "fedavg"},
           "logger": {"mlflow": True, "mlflow_tracking_uri": str(tmp_path / "mlruns")}}
    run = tmp_path / "run"
    run.mkdir()
    first = MlflowSink(run, cfg, 1)
    for r in (1, 2, 3):  # round 3 reached MLflow, then the run died before its checkpoint
        first.round({"round": r, "central_accuracy": 0.1 * r, "clients_sampled": 2, "fed_cohort": "evaluate",
                     "fed_loss": None})
    resumed = MlflowSink(run, cfg, 3)  # resumes after the checkpoint of round 2
    assert resumed.run_id == first.run_id
    for r in (3, 4):
        resumed.round({"round": r, "central_accuracy": 0.1 * r, "clients_sampled": 2})
    resumed.end({"status": "completed"})
    client, run_id = mlflow_run(run)
    steps = [(m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, "central_accuracy")]
    assert sorted(steps) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.tags["status"] == "completed"
    assert got.data.params["strategy.name"] == "fedavg" and "fed_loss" not in got.data.metrics


# /dev/null is no folder: MLflow cannot make its store under it (as under a file a user named)
@pytest.mark.slow
@pytest.mark.cases(unwritable_mlflow=("dataset=digits", "simulation.num_clients=3", "server.fraction_train=1.0",
                                      "server.rounds=2", "logger.mlflow=true",
                                      "logger.mlflow_tracking_uri=/dev/null/mlruns", "logger.wandb=true"))
def test_an_unwritable_mlflow_store_warns_once_and_the_run_completes(cases: dict[str, CaseRun]) -> None:
    case = cases["unwritable_mlflow"].completed()
    assert case.sweep_stderr.count("logger.mlflow failed") == 1  # no other case logs to MLflow
    assert [r["round"] for r in rows(case.dir)] == ["1", "2"]
    assert json.loads((case.dir / "summary.json").read_text())["status"] == "completed"
    table = rows(case.dir)  # the other sink went on: W&B (offline) holds both rounds
    assert [(step, pytest.approx(acc)) for _, step, acc in wandb_history(case.dir)] == [
        (int(r["round"]), float(r["central_accuracy"])) for r in table]


def wandb_history(run: Path) -> list[tuple[str, int, float]]:
    """(offline run folder, step, central accuracy) of every history record W&B wrote: its
    ``.wandb`` files are LevelDB-style logs of protobuf records (wandb 0.31 no longer ships a
    Python reader), 7-byte header, 32 KiB blocks, each record with a 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    found = []
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, pending = 7, 32768, b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:
                pos += block - pos % block
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            pending += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = pb.Record()
                record.ParseFromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                    found.append((path.parent.name, int(items["_step"]), float(items["central_accuracy"])))
    return found


@pytest.mark.slow  # each W&B run starts W&B's own service process (about 4 s)
def test_wandb_runs_offline_and_a_resumed_run_repeats_no_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = {"name": "t", "seed": 0, "strategy": {"name": "fedavg"}, "logger": {"wandb": True}}
    first = WandbSink(tmp_path, cfg, 1)
    assert os.environ["WANDB_MODE"] == "offline"
    for r in (1, 2, 3):  # round 3 reached W&B, then the run died before its checkpoint
        first.round({"round": r, "central_accuracy": 0.1 * r, "fed_cohort": "evaluate"})
    first.run.finish(exit_code=1)
    resumed = WandbSink(tmp_path, cfg, 3)  # resumes after the checkpoint of round 2
    assert resumed.run.id == first.run.id
    for r in (3, 4):
        resumed.round({"round": r, "central_accuracy": 0.1 * r})
    resumed.end({"status": "completed", "final_central_accuracy": 0.4})
    history = wandb_history(tmp_path)
    assert sorted((step, round(acc, 6)) for _, step, acc in history) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert len({folder for folder, _, _ in history}) == 2  # W&B's offline folder per process start
