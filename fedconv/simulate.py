"""``python -m fedconv.simulate [overrides] [-m sweeps]``: a Flower simulation on Ray.

Hydra composes and sweeps; this module validates the config, fixes the run directory,
flattens the config into Flower's run config and hands it to :mod:`fedconv.runtime`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedconv import run_dir
from fedconv.config import ConfigError, to_run_config, validate

EXIT_BAD_CONFIG = 2


def _discard_if_empty(out: Path) -> None:
    """Remove a run dir that holds nothing but Hydra's bookkeeping (no fake results)."""
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def _update_sweep_index(sweep_dir: Path, entry: dict[str, Any]) -> None:
    """sweep.json: one entry per job with its overrides, run dir and status."""
    path = sweep_dir / "sweep.json"
    index = json.loads(path.read_text()) if path.exists() else {"sweep_dir": str(sweep_dir), "jobs": []}
    index["jobs"] = [j for j in index["jobs"] if j["job"] != entry["job"]] + [entry]
    index["jobs"].sort(key=lambda j: j["job"])
    run_dir.write_json(path, index)


def _write_failure(out: Path, cfg: dict[str, Any], status: str, error: str) -> None:
    """Make sure a run that did not complete never looks like it did."""
    path = out / run_dir.SUMMARY
    summary = json.loads(path.read_text()) if path.exists() else {"seed": cfg.get("seed"), "rounds_completed": 0}
    if summary.get("status") != "completed" or status == "interrupted":
        summary.update(status=status, error=error)
        run_dir.write_json(path, summary)


def resolve(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The plain, validated config this run will use (output dir and threads filled in)."""
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    validate(resolved)
    resolved["output_dir"] = str(out)
    client = resolved["client"]
    if int(client["threads"]) == 0:  # a virtual client uses exactly its CPU budget
        client["threads"] = max(1, int(resolved["simulation"]["client_resources"]["num_cpus"]))
    return resolved


def check_inputs(resolved: dict[str, Any]) -> None:
    """Load the data, make the partitions and build the model before Ray starts, so a
    missing file or an impossible partition fails in one line. The ServerApp runs in this
    process, so this also warms its caches."""
    from fedconv import task

    ds = task.dataset(resolved)
    declared = tuple(int(resolved["dataset"][k]) for k in ("channels", "height", "width"))
    if ds.input_shape != declared:
        raise ConfigError(f"dataset: files hold {ds.input_shape} images but the config declares {declared}")
    task.partitions(resolved, int(resolved["simulation"]["num_clients"]))
    task.initial_model(resolved, ds)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one simulation job; returns its summary."""
    from fedconv import runtime
    from fedconv.datasets import DatasetError
    from fedconv.models import ModelConfigError
    from fedconv.partitioning import PartitionError

    hc = HydraConfig.get()
    out = Path(cfg.output_dir or hc.runtime.output_dir).resolve()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        resolved = resolve(cfg, out)
        check_inputs(resolved)
    except (ConfigError, DatasetError, PartitionError, ModelConfigError) as exc:
        _discard_if_empty(out)
        prefix = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"{prefix}: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    if (out / run_dir.SUMMARY).exists() or (out / run_dir.ROUNDS).exists():
        print(f"error: {out} already holds a run; choose another output_dir", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)
    out.mkdir(parents=True, exist_ok=True)
    run_dir.write_config(out, resolved)
    job = {"job": hc.job.num if multirun else 0, "overrides": list(hc.overrides.task), "run_dir": str(out)}
    sweep_dir = Path(hc.sweep.dir).resolve() if multirun else None
    if sweep_dir is not None:
        _update_sweep_index(sweep_dir, {**job, "status": "running"})
    print(f"fedconv run -> {out}", flush=True)
    started = time.perf_counter()
    status, error = "failed", ""
    try:
        runtime.run_simulation(
            to_run_config(resolved),
            int(resolved["simulation"]["num_clients"]),
            runtime.backend_config(resolved["simulation"], bool(resolved["verbose"])),
            bool(resolved["verbose"]),
        )
        summary = json.loads((out / run_dir.SUMMARY).read_text())
        status = summary["status"]
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except Exception as exc:  # the run failed; record it and (in a sweep) go on
        error = f"{type(exc).__name__}: {exc}"
        print(f"run failed: {error}", file=sys.stderr)
    finally:
        _shutdown_ray()
        if status != "completed":
            _write_failure(out, resolved, status, error)
        summary = json.loads((out / run_dir.SUMMARY).read_text())
        if sweep_dir is not None:
            _update_sweep_index(
                sweep_dir,
                {
                    **job,
                    "status": summary.get("status"),
                    "final_central_accuracy": summary.get("final_central_accuracy"),
                    "wall_seconds": round(time.perf_counter() - started, 2),
                },
            )
    if status != "completed" and not multirun:
        sys.exit(1)
    return summary


def _shutdown_ray() -> None:
    """No Ray state may leak from one sweep job into the next."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    summary = run(cfg)
    acc = summary.get("final_central_accuracy")
    return float(acc) if acc is not None else None


if __name__ == "__main__":
    main()
