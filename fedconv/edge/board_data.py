"""The operator's tool that writes one board's data folder per partition (``fedconv
device-data OUT [overrides]``): ``OUT/device-<i>/`` holds partition i's training images and
its held-out split as IDX files, and ``meta.json`` with the whole dataset's normalisation
statistics, which a board reads with :func:`fedconv.data.device_data.load_device_data`.

    fedconv device-data OUT [hydra overrides]   # OUT/device-<i>/ for every partition
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedconv import atomic
from fedconv.config import ConfigError, compose
from fedconv.data.datasets import DatasetError, idx_name, write_idx
from fedconv.learning import task
from fedconv.sections import Simulation
from fedconv.validation import validate


def export_partitions(cfg: dict[str, Any], out: Path) -> list[Path]:
    """Write ``out/device-<i>/`` (IDX train + held-out files, meta.json) for every partition."""
    ds = task.dataset(cfg)
    n = Simulation.of(cfg).num_clients
    parts = task.partitions(cfg, n)
    ndim = 3 if ds.input_shape[0] == 1 else 4
    folders = []
    for pid in range(n):
        folder = out / f"device-{pid}"
        folder.mkdir(parents=True, exist_ok=True)
        for split, idx in (("train", parts.train[pid]), ("t10k", parts.test[pid])):
            images = ds.train_x[idx]
            write_idx(folder / f"{idx_name(split, 'images', ndim)}.gz", images[:, 0] if ndim == 3 else images)
            write_idx(folder / f"{idx_name(split, 'labels', 1)}.gz", np.asarray(ds.train_y[idx], dtype=np.uint8))
        meta = {
            "partition_id": pid, "num_partitions": n, "dataset": cfg["dataset"]["name"],
            "partition": cfg["partition"], "seed": int(cfg["seed"]),
            "num_train": len(parts.train[pid]), "num_held_out": len(parts.test[pid]),
            "label_histogram": np.bincount(np.asarray(ds.train_y)[parts.train[pid]], minlength=ds.num_classes).tolist(),
            "mean": list(ds.mean), "std": list(ds.std),
            "node_config": f"partition-id={pid} num-partitions={n} data-dir=\"<this folder on the board>\"",
        }
        atomic.write_text(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
        folders.append(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-") or "=" in args[0]:
        print("usage: fedconv device-data OUT_DIR [hydra overrides, e.g. simulation.num_clients=8]",
              file=sys.stderr)
        return 2
    out, overrides = Path(args[0]), args[1:]
    try:
        cfg = compose(overrides)
        validate(cfg)
        folders = export_partitions(cfg, out)
    except (ConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        print(f"{folder}: {meta['num_train']} train + {meta['num_held_out']} held-out images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
