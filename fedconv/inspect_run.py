"""``fedconv inspect <run dir> [--out DIR]``: pictures of a run's final global model — the
first layer's filters, both convolutional blocks' feature maps for one test image per class,
and the confusion matrix of its last central evaluation (:mod:`fedconv.insight.views`).

Bad input (no such run, a run that has not completed, weights that do not fit its config, an
output folder that cannot be written) is one line naming the file and exit 2, before anything
is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fedconv import atomic
from fedconv.config import ConfigError
from fedconv.runs import run_dir


def _problem(run: Path, out: Path) -> str | None:
    """Why this run cannot be inspected into ``out`` (None: it can)."""
    if not run.is_dir():
        return f"{run}: no such run directory"
    for name in (run_dir.CONFIG, run_dir.WEIGHTS, run_dir.CLASS_REPORT):
        if not (run / name).is_file():
            return f"{run / name}: missing; inspect views a completed run's final model"
    if out.exists() and not out.is_dir():
        return f"--out {out}: is a file"
    reason = atomic.unwritable(out)
    return f"--out {out}: cannot write there ({reason})" if reason else None


def inspect(run: Path, out: Path) -> list[Path]:
    """Write the views of ``run``'s final model into ``out``; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    from fedconv.edge.export import load_run_model
    from fedconv.insight import views
    from fedconv.learning import task

    cfg, ds, model = load_run_model(run)
    try:
        matrix = json.loads((run / run_dir.CLASS_REPORT).read_text())["confusion_matrix"]
    except (ValueError, KeyError, TypeError) as exc:
        raise run_dir.RunDirError(f"{run / run_dir.CLASS_REPORT}: unreadable ({type(exc).__name__})") from None
    out.mkdir(parents=True, exist_ok=True)
    written = [views.draw_filters(views.first_filters(model), out / "filters.png")]
    norm = task.normalizer(cfg, ds, train=False)
    labels = np.asarray(ds.test_y)
    for k in range(ds.num_classes):
        first = np.flatnonzero(labels == k)[:1]
        if len(first) == 0:
            continue
        image = np.asarray(ds.test_x[first])
        maps = views.feature_maps(model, norm(image))
        written.append(views.draw_feature_maps(maps, image[0], f"class {k}", out / f"feature_maps_class{k}.png"))
    written.append(views.draw_confusion(matrix, out / "confusion_matrix.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedconv inspect", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run", type=Path, help="a completed run directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run dir>/inspect)")
    args = parser.parse_args(argv)
    out = args.out or args.run / "inspect"
    if problem := _problem(args.run, out):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        written = inspect(args.run, out)
    except (ConfigError, run_dir.RunDirError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"inspect: {len(written)} images in {out}: " + ", ".join(p.name for p in written[:3]) + ", ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
