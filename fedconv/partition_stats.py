"""``fedconv partitions``: partition statistics for
override sets, Hydra's sweep syntax included (``partition.alpha=0.1,0.5,100``): every set is
composed and validated before any is computed, then each gets ``partition.json`` and a
label heatmap, and the console a table.

A command above the library: it uses :mod:`fedconv.data.partitioning` and
:mod:`fedconv.validation`, which imports the partitioning module; nothing imports this one.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedconv import atomic
from fedconv.config import ConfigError, compose
from fedconv.data.datasets import DatasetError, load_dataset
from fedconv.data.partitioning import PartitionError, make_partitions, partition_record, save_heatmap
from fedconv.sections import Simulation
from fedconv.validation import validate


def _expand(overrides: list[str]) -> list[list[str]]:
    """Hydra sweep syntax (``key=a,b,c``) expanded into the cartesian product of overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # the simulation extra

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [text]
        for o, text in zip(parsed, overrides, strict=True)
    ]
    return [list(combo) for combo in itertools.product(*choices)] or [[]]


def _partition_jobs(args: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every override set composed and validated before anything is computed or written."""
    jobs = []
    for overrides in _expand(args):
        cfg = compose(overrides)
        try:
            validate(cfg)
        except ConfigError as exc:
            raise ConfigError("; ".join(str(exc).splitlines())) from None
        jobs.append(("_".join(o.replace("/", "-") for o in overrides) or "default", cfg))
    return jobs


def main(argv: list[str] | None = None) -> int:
    """``fedconv partitions [--out DIR] partition.alpha=0.1,0.5,100 simulation.num_clients=100``."""
    args = list(sys.argv[1:] if argv is None else argv)
    out_root = Path("results") / "partitions" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if "--out" in args:
        i = args.index("--out")
        if i + 1 >= len(args):
            print("error: --out needs a folder", file=sys.stderr)
            return 2
        out_root = Path(args[i + 1])
        del args[i : i + 2]
    if reason := ("it is a file" if out_root.exists() and not out_root.is_dir() else atomic.unwritable(out_root)):
        print(f"error: --out {out_root}: cannot write there ({reason})", file=sys.stderr)
        return 2
    rows = []
    try:
        for tag, cfg in _partition_jobs(args):
            ds = load_dataset(cfg["dataset"])
            n = Simulation.of(cfg).num_clients
            t0 = time.perf_counter()
            parts = make_partitions(np.asarray(ds.train_y), cfg["partition"], n, int(cfg["seed"]))
            seconds = time.perf_counter() - t0
            record = partition_record(np.asarray(ds.train_y), parts, ds.num_classes)
            rows.append((tag, n, record, seconds, cfg))
    except (ConfigError, DatasetError, PartitionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for tag, _, record, _, cfg in rows:  # every set computed: now write them
        out = out_root / tag
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "partition.json", json.dumps({"config": cfg["partition"], **record}))
        save_heatmap(record, out / "heatmap.png", f"{cfg['dataset']['name']}: {tag}")
    print(f"{'partition':<44}{'clients':>8}{'min':>7}{'median':>8}{'max':>7}{'labels/client':>15}{'entropy bits':>14}{'s':>7}")
    for tag, n, record, sec, _ in rows:
        s = record["summary"]
        print(
            f"{tag:<44}{n:>8}{s['size_min']:>7}{s['size_median']:>8.0f}{s['size_max']:>7}"
            f"{s['labels_per_client_mean']:>15.2f}{s['label_entropy_mean_bits']:>14.3f}{sec:>7.2f}"
        )
    for tag, *_ in rows:
        print(f"{tag}: {out_root / tag / 'partition.json'}  {out_root / tag / 'heatmap.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
