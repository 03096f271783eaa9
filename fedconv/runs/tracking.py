"""Tracking sinks: the rounds of a run in the tools researchers watch, fed from the same
per-round row as rounds.csv (one place), after it is written.

- ``logger.tensorboard=true``: event files in ``<run dir>/tensorboard`` (``tensorboard
  --logdir results/``): every numeric rounds.csv column as a scalar with ``step=round``
  (grouped as accuracy/, loss/, bytes/, clients/, time/), the resolved config as text, the
  partition's label histogram (clients x classes, each row normalised) as an image, and the
  summary as text at the end. A resumed run writes to the same folder and purges the events
  of the rounds it redoes, so no step appears twice.
- ``logger.mlflow=true``: one MLflow run per fedconv run (experiment = the run's ``name``),
  nested under one parent run per sweep; params = the flattened config; every numeric
  rounds.csv column as a metric with ``step=round``; tags strategy, dataset, model,
  partition, seed, status; at the end rounds.csv, summary.json, partition.json,
  client_metrics.csv, config.yaml and the model as artifacts. The store is
  ``logger.mlflow_tracking_uri``: a folder (default ``results/mlruns``: an SQLite database
  and the artifacts beside it; MLflow 3 refuses its old file store) or any MLflow URI
  (``http://...``, ``sqlite:///...``). ``mlflow ui --backend-store-uri
  sqlite:///results/mlruns/mlflow.db`` shows it. The run id is kept in the run dir
  (``tracking.json``), so a resumed run continues the same MLflow run and logs only the
  rounds MLflow does not hold yet (a redone round has the same numbers: resume is exact).
- ``logger.wandb=true``: a Weights & Biases run per fedconv run (project = ``name``, group =
  the sweep's folder), **offline** unless the user sets ``WANDB_MODE`` (never a network call
  by default; ``wandb sync <run dir>/wandb/offline-run-*`` uploads later): the flattened
  config, every numeric column per round with ``step=round``, the summary at the end. Files
  go under ``<run dir>/wandb``; a resumed run continues the same W&B run id and logs only
  the rounds after the last one it logged (kept in ``tracking.json``).

A sink that fails (disk full, a missing package) is reported once on stderr and dropped; the
run, rounds.csv and the other sinks go on. Written here as glue only: TensorBoard's
``SummaryWriter`` (through ``torch.utils.tensorboard``) and ``MlflowClient`` do the writing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SINKS = ("tensorboard", "mlflow", "wandb")
OPTIONS = ("mlflow_tracking_uri",)  # non-boolean keys of the logger group
TRACKING_IDS = "tracking.json"  # in the run dir: which tracking runs hold this run
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
GROUPS = {"accuracy": "accuracy", "loss": "loss", "bytes": "bytes", "clients": "clients", "seconds": "time",
          "compression": "bytes", "lr": "train", "stragglers": "clients", "round_skipped": "clients"}


def numeric_columns(row: Mapping[str, Any]) -> dict[str, int | float]:
    """The row's numbers by column, as every sink logs them at ``step=round`` (text columns,
    empty cells and the round itself left out)."""
    return {column: value for column, value in row.items()
            if column != "round" and isinstance(value, int | float) and not isinstance(value, bool)}


def sweep_dir(out: Path) -> Path | None:
    """The sweep folder a run dir belongs to (its parent holds sweep.json), or None."""
    from fedconv.runs import run_dir

    return out.parent if (out.parent / run_dir.SWEEP_INDEX).exists() else None


def scalar_name(column: str) -> str:
    """A rounds.csv column as a TensorBoard tag: ``central_accuracy`` -> ``accuracy/central_accuracy``."""
    for marker, group in GROUPS.items():
        if marker in column:
            return f"{group}/{column}"
    return f"train/{column}"


class TensorBoardSink:
    name = "tensorboard"

    def __init__(self, out: Path, cfg: Mapping[str, Any], first_round: int,
                 label_histogram: np.ndarray | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=first_round if first_round > 1 else None)
        if first_round == 1:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(dict(cfg), sort_keys=False) + "\n```", 0)
            if label_histogram is not None and label_histogram.size:
                self.writer.add_image("partition/label_histogram", heatmap(label_histogram), 0, dataformats="HW")

    def round(self, row: Mapping[str, Any]) -> None:
        step = int(row["round"])
        for column, value in numeric_columns(row).items():
            self.writer.add_scalar(scalar_name(column), value, step)
        self.writer.flush()

    def end(self, summary: Mapping[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(dict(summary), indent=1, default=str) + "\n```",
                             int(summary.get("rounds_completed") or 0))
        self.writer.close()


def absolute_tracking_uri(resolved: dict[str, Any]) -> None:
    """A relative MLflow store folder is relative to where the command ran, not to wherever
    the ServerApp happens to run."""
    logger = resolved.get("logger") or {}
    uri = str(logger.get("mlflow_tracking_uri") or "")
    if uri and not _is_uri(uri):
        logger["mlflow_tracking_uri"] = str(Path(uri).resolve())


def _is_uri(value: str) -> bool:
    """An MLflow store URI (``sqlite:///...``, ``http://...``, ``databricks``), not a folder."""
    return "://" in value or value.startswith("databricks")


def mlflow_store(uri: str) -> tuple[str, str | None]:
    """``logger.mlflow_tracking_uri`` as (tracking URI, artifact folder): a plain folder is
    an SQLite store with its artifacts beside it; a URI is used as it is (its server decides
    where artifacts go)."""
    if _is_uri(uri):
        return uri, None
    folder = Path(uri or "results/mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts")


class MlflowSink:
    name = "mlflow"

    def __init__(self, out: Path, cfg: Mapping[str, Any], first_round: int) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        from fedconv.config import flatten

        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." and the like
            logging.getLogger(noisy).setLevel(logging.WARNING)

        uri, artifacts = mlflow_store(str((cfg.get("logger") or {}).get("mlflow_tracking_uri") or ""))
        self.client = MlflowClient(tracking_uri=uri)
        self.out = out
        ids = _read_ids(out).get("mlflow") or {}
        self.parent = self._sweep_parent(uri, artifacts, cfg)
        if ids.get("tracking_uri") == uri and first_round > 1:  # resume: the same MLflow run
            self.run_id = str(ids["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "clients_sampled")
            self.logged = max((m.step for m in history), default=0)
            return
        experiment = self._experiment(str(cfg.get("name") or "default"), artifacts)
        tags = {"mlflow.runName": out.name, "status": "running", "fedconv.runs.run_dir": str(out),
                "strategy": _get(cfg, "strategy", "name"), "dataset": _get(cfg, "dataset", "name"),
                "model": _get(cfg, "model", "name"), "partition": _get(cfg, "partition", "name"),
                "seed": str(cfg.get("seed"))}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        self.run_id = self.client.create_run(experiment, tags=tags).info.run_id
        self.logged = 0
        _write_ids(out, "mlflow", {"tracking_uri": uri, "run_id": self.run_id})
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _experiment(self, name: str, artifacts: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        from mlflow.exceptions import MlflowException

        try:
            # a training experiment, so MLflow 3's UI opens on its runs, not on GenAI traces
            return str(self.client.create_experiment(name, artifact_location=artifacts,
                                                     tags={"mlflow.experimentKind": "custom_model_development"}))
        except MlflowException:  # another job of the sweep made it first
            made = self.client.get_experiment_by_name(name)
            if made is None:
                raise
            return str(made.experiment_id)

    def _sweep_parent(self, uri: str, artifacts: str | None, cfg: Mapping[str, Any]) -> str | None:
        """The sweep's parent run (made by its first job, under the sweep lock), or None
        when this run is not a sweep job (no sweep.json beside its run dir)."""
        from fedconv.runs import run_dir

        sweep = sweep_dir(self.out)
        if sweep is None:
            return None
        with run_dir.sweep_lock(sweep):
            ids = _read_ids(sweep).get("mlflow") or {}
            if ids.get("tracking_uri") == uri:
                parent = str(ids["run_id"])
                self.client.update_run(parent, status="RUNNING")
                return parent
            experiment = self._experiment(str(cfg.get("name") or "default"), artifacts)
            parent = self.client.create_run(experiment, tags={"mlflow.runName": f"sweep {sweep.name}",
                                                              "fedconv.sweep_dir": str(sweep)}).info.run_id
            _write_ids(sweep, "mlflow", {"tracking_uri": uri, "run_id": parent})
            return parent

    def round(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(row["round"])
        if step <= self.logged:  # logged before the run was stopped and resumed
            return
        now = int(time.time() * 1000)
        metrics = [Metric(column, float(value), now, step) for column, value in numeric_columns(row).items()
                   if math.isfinite(value)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, summary: Mapping[str, Any]) -> None:
        from fedconv.runs import run_dir

        status = str(summary.get("status"))
        self.client.set_tag(self.run_id, "status", status)
        for name in (run_dir.ROUNDS, run_dir.SUMMARY, run_dir.PARTITION, run_dir.CLIENTS, run_dir.UPDATES, run_dir.PAIRS,
                     run_dir.CONFIG, run_dir.WEIGHTS):
            if (self.out / name).is_file():
                self.client.log_artifact(self.run_id, str(self.out / name))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))
        if self.parent:  # the parent ends with its latest job (and runs again with the next)
            self.client.set_terminated(self.parent, "FINISHED")


class WandbSink:
    name = "wandb"

    def __init__(self, out: Path, cfg: Mapping[str, Any], first_round: int) -> None:
        import os

        os.environ.setdefault("WANDB_MODE", "offline")  # offline unless the user asks for more
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        from fedconv.config import flatten

        ids = _read_ids(out).get("wandb") or {}
        resume_id = str(ids["run_id"]) if first_round > 1 and ids.get("run_id") else None
        sweep = sweep_dir(out)
        self.run = wandb.init(
            project=str(cfg.get("name") or "default"), dir=str(out), name=out.name,
            group=sweep.name if sweep else None,
            id=resume_id, resume="allow" if resume_id else None,
            config=flatten(cfg), reinit="finish_previous",
            tags=[t for t in (_get(cfg, "strategy", "name"), _get(cfg, "dataset", "name"),
                              _get(cfg, "model", "name")) if t],
            # fedconv prints its own lines and measures its own time: no console capture, no
            # system-metrics sampler competing with the round for the CPU
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.out = out
        self.logged = int(ids.get("last_step", 0)) if resume_id else 0
        _write_ids(out, "wandb", {"run_id": self.run.id, "last_step": self.logged})

    def round(self, row: Mapping[str, Any]) -> None:
        step = int(row["round"])
        if step <= self.logged:  # logged before the run was stopped and resumed
            return
        self.run.log(numeric_columns(row), step=step)
        self.logged = step
        _write_ids(self.out, "wandb", {"run_id": self.run.id, "last_step": step})

    def end(self, summary: Mapping[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in summary.items()
                                 if isinstance(v, int | float | str) and not isinstance(v, bool)})
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)


def _get(cfg: Mapping[str, Any], group: str, key: str) -> str:
    return str((cfg.get(group) or {}).get(key, ""))


def _read_ids(folder: Path) -> dict[str, Any]:
    path = folder / TRACKING_IDS
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _write_ids(folder: Path, sink: str, ids: Mapping[str, Any]) -> None:
    from fedconv.runs import run_dir

    run_dir.write_json(folder / TRACKING_IDS, {**_read_ids(folder), sink: dict(ids)})


def heatmap(hist: np.ndarray, cell: int = 8) -> np.ndarray:
    """Clients x classes counts as a grey image (each client's row normalised to its largest
    class), every cell ``cell`` pixels wide, so 20 clients and 10 classes are visible."""
    h = np.asarray(hist, dtype=np.float64)
    rows = h / np.maximum(h.max(axis=1, keepdims=True), 1)
    return np.kron(rows, np.ones((cell, cell))).astype(np.float32)


class Tracking:
    """Every configured sink; each call goes to each sink, and a failing sink is dropped."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    @classmethod
    def for_run(cls, cfg: Mapping[str, Any], out: Path, first_round: int,
                label_histogram: np.ndarray | None = None) -> Tracking:
        sinks: list[Any] = []
        logger = cfg.get("logger") or {}
        makers = {"tensorboard": lambda: TensorBoardSink(out, cfg, first_round, label_histogram),
                  "mlflow": lambda: MlflowSink(out, cfg, first_round),
                  "wandb": lambda: WandbSink(out, cfg, first_round)}
        for name, make in makers.items():
            if logger.get(name):
                try:
                    sinks.append(make())
                except Exception as exc:  # noqa: BLE001 - a tracking tool must never take the run down
                    _report(name, exc)
        return cls(sinks)

    def round(self, row: Mapping[str, Any]) -> None:
        self._each("round", row)

    def end(self, summary: Mapping[str, Any]) -> None:
        self._each("end", summary)

    def _each(self, method: str, arg: Mapping[str, Any]) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(arg)
            except Exception as exc:  # noqa: BLE001 - a tracking tool must never take the run down
                _report(sink.name, exc)
                self.sinks.remove(sink)


def _report(name: str, exc: Exception) -> None:
    print(f"fedconv: logger.{name} failed ({type(exc).__name__}: {exc}); the run goes on without it "
          "(rounds.csv is unaffected)", file=sys.stderr, flush=True)


def config_problems(c: Any) -> None:
    """The ``logger`` group: one true/false per sink, and the sinks' options."""
    logger = c.get("logger")
    if logger is None:
        return
    if not isinstance(logger, Mapping):
        c.fail("logger", f"must be a group of true/false keys ({', '.join(SINKS)})")
        return
    for name in logger:
        if name in OPTIONS:
            if not isinstance(c.get(f"logger.{name}"), str):
                c.fail(f"logger.{name}", "must be a string")
        elif name not in SINKS:
            c.fail(f"logger.{name}", f"unknown key; sinks: {', '.join(SINKS)}; options: {', '.join(OPTIONS)}")
        else:
            c.boolean(f"logger.{name}")
