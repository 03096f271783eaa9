"""NIID-Bench on Fashion-MNIST: the tables of experiments/niid_bench_fmnist/README.md, from run dirs.

    python experiments/niid_bench_fmnist/table.py results/sweeps/niid_bench_fmnist [--out tables.md] [--plots DIR]

1. ``niid_cnn`` vs published (Flower's reproduction of NIID-Bench). Tolerance (issue #8):
   within max(2 points, 2 x published std) of the published mean for IID, Dir(0.5) and #C=3;
   within 5 points for #C=2. Only completed runs count; cells not run are listed as such.
2. The project's 2conv models on the same protocol, next to ``niid_cnn``. Runs still going
   (or interrupted, to be resumed) are shown with the rounds they have, and compared with
   ``niid_cnn``'s best over the same rounds as well as over all 50.
3. The centralized reference (``cell central``): one client holding all 60,000 images.

Runs are found by scanning ``<root>/<cell>/*/config.yaml``, so every sweep into a cell's
folder counts (seeds, strategies, models, FedProx mu values).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

# Flower's reproduction of NIID-Bench (mean, std over seeds), best central accuracy in %.
PUBLISHED = {
    ("iid", "fedavg"): (89.23, 0.45), ("iid", "fedprox"): (89.42, 0.09),
    ("iid", "scaffold"): (89.33, 0.27), ("iid", "fednova"): (89.36, 0.09),
    ("dir0.5", "fedavg"): (88.09, 0.29), ("dir0.5", "fedprox"): (88.15, 0.42),
    ("dir0.5", "scaffold"): (88.44, 0.25), ("dir0.5", "fednova"): (88.22, 0.12),
    ("c3", "fedavg"): (82.43, 1.52), ("c3", "fedprox"): (82.99, 0.48),
    ("c3", "scaffold"): (80.32, 5.03), ("c3", "fednova"): (81.97, 1.34),
    ("c2", "fedavg"): (78.10, 2.51), ("c2", "fedprox"): (78.05, 0.99),
    ("c2", "scaffold"): (33.80, 41.22), ("c2", "fednova"): (71.67, 2.34),
}
PUBLISHED_MU = 0.01
CELL_NAMES = {"iid": "IID", "dir0.5": "Dir(0.5)", "c3": "#C=3", "c2": "#C=2"}
REFERENCE_MODEL = "niid_cnn"


@dataclass
class Run:
    cell: str
    model: str
    strategy: str
    mu: float | None
    seed: int
    completed: bool
    rounds_planned: int
    accuracies: list[float]  # central test accuracy per completed round, in %
    seconds: list[float]     # wall seconds per round
    parameters: int | None
    code: str  # "fedconv <version> @ <commit>" from summary.json, or "not recorded" (runs before it was)

    @property
    def label(self) -> str:
        """The strategy as the table names it: FedProx rows carry mu when it is not 0.01."""
        if self.strategy == "fedprox" and self.mu is not None and self.mu != PUBLISHED_MU:
            return f"fedprox mu={self.mu:g}"
        return self.strategy

    @property
    def progress(self) -> str:
        """Rounds run of those planned, marked when the run has not completed."""
        return f"{len(self.accuracies)}/{self.rounds_planned}" + ("" if self.completed else " (unfinished)")

    def best(self, rounds: int | None = None) -> tuple[float, int]:
        """Best accuracy (%) and its round, over the first ``rounds`` rounds (all by default)."""
        accs = self.accuracies[:rounds] if rounds else self.accuracies
        best = max(accs)
        return best, accs.index(best) + 1


def read_run(cell: str, run: Path) -> Run | None:
    """A run dir's config, per-round accuracy and status; None when it has no round yet."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows_path = run / "rounds.csv"
    if not rows_path.exists():
        return None
    with rows_path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("central_accuracy")]
    if not rows:
        return None
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    strategy = cfg["strategy"]
    return Run(
        cell=cell,
        model=cfg["model"]["name"],
        strategy=strategy["name"],
        mu=strategy.get("mu"),
        seed=int(cfg["seed"]),
        completed=summary.get("status") == "completed",
        rounds_planned=int(cfg["server"]["rounds"]),
        accuracies=[100 * float(r["central_accuracy"]) for r in rows],
        seconds=[float(r["round_seconds"]) for r in rows],
        parameters=summary.get("num_parameters"),
        code=code_version(summary.get("versions", {})),
    )


def code_version(versions: dict) -> str:
    """Which fedconv produced a run: version and commit (short), "+dirty" kept."""
    commit = str(versions.get("commit") or "")
    if not commit:
        return "not recorded"
    head, dirty = commit.split("+", 1) if "+" in commit else (commit, "")
    return f"{versions.get('fedconv', '?')} @ {head[:7]}" + (f"+{dirty}" if dirty else "")


def collect(root: Path) -> list[Run]:
    runs = []
    for cell in [*CELL_NAMES, "central"]:
        for config in sorted((root / cell).glob("*/config.yaml")):
            run = read_run(cell, config.parent)
            if run is not None:
                runs.append(run)
    return runs


def tolerance(cell: str, std: float) -> float:
    return 5.0 if cell == "c2" else max(2.0, 2 * std)


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def published_table(runs: list[Run]) -> str:
    """Table 1: niid_cnn's completed runs vs the published means, cell by cell."""
    lines = [
        "| partition | strategy | ours: best acc % | seeds | published (mean ± std) | gap (points) | tolerance | within "
        "| wall s/run (this machine) | code |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = [r for r in runs if r.model == REFERENCE_MODEL and r.completed and r.cell in CELL_NAMES]
    for (cell, strategy), (pub, pub_std) in PUBLISHED.items():
        labels = sorted({r.label for r in done if r.cell == cell and r.strategy == strategy}, key=lambda s: (s != strategy, s))
        if not labels:
            lines.append(f"| {CELL_NAMES[cell]} | {strategy} | not run | | {pub:.2f} ± {pub_std:.2f} | | | | | |")
        for label in labels:
            got = sorted((r for r in done if r.cell == cell and r.label == label), key=lambda r: r.seed)
            accs = [r.best()[0] for r in got]
            mean = statistics.mean(accs)
            gap, tol = abs(mean - pub), tolerance(cell, pub_std)
            wall = statistics.mean(sum(r.seconds) for r in got)
            per_seed = (", ".join(f"{r.seed}: {a:.2f}" for r, a in zip(got, accs, strict=True))
                        if len(got) > 1 else str(got[0].seed))
            lines.append(
                f"| {CELL_NAMES[cell]} | {label} | {_mean_std(accs)} | {per_seed} | {pub:.2f} ± {pub_std:.2f} | "
                f"{gap:.2f} | {tol:.2f} | {'yes' if gap <= tol else '**no**'} | {wall:.0f} | "
                f"{', '.join(sorted({r.code for r in got}))} |"
            )
    return "\n".join(lines)


def models_table(runs: list[Run]) -> str:
    """Table 2: every other model on the federated cells, next to niid_cnn (same cell, strategy, seed)."""
    lines = [
        "| partition | strategy | model | seed | rounds run | best acc % (round) | niid_cnn best, same rounds "
        "| niid_cnn best, 50 rounds | s/round (this machine) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    reference = {(r.cell, r.label, r.seed): r for r in runs if r.model == REFERENCE_MODEL}
    others = sorted(
        (r for r in runs if r.model != REFERENCE_MODEL and r.cell in CELL_NAMES),
        key=lambda r: (list(CELL_NAMES).index(r.cell), r.label, r.model, r.seed),
    )
    for r in others:
        acc, at = r.best()
        ref = reference.get((r.cell, r.label, r.seed))
        same = f"{ref.best(len(r.accuracies))[0]:.2f}" if ref else "not run"
        full = f"{ref.best()[0]:.2f}" if ref and ref.completed else "not run"
        lines.append(
            f"| {CELL_NAMES[r.cell]} | {r.label} | {r.model} | {r.seed} | {r.progress} | {acc:.2f} ({at}) | "
            f"{same} | {full} | {statistics.median(r.seconds):.0f} |"
        )
    if not others:
        lines.append("| | | no runs yet | | | | | | |")
    return "\n".join(lines)


def central_table(runs: list[Run]) -> str:
    """Table 3: the centralized reference, one client with all the training data."""
    lines = [
        "| model | seed | epochs run | best acc % (epoch) | first epoch ≥ 90% | s/epoch (this machine) |",
        "|---|---|---|---|---|---|",
    ]
    central = [r for r in runs if r.cell == "central"]
    for r in central:
        acc, at = r.best()
        first = next((i + 1 for i, a in enumerate(r.accuracies) if a >= 90.0), None)
        lines.append(
            f"| {r.model} | {r.seed} | {r.progress} | {acc:.2f} ({at}) | {first or 'not reached'} | "
            f"{statistics.median(r.seconds):.0f} |"
        )
    if not central:
        lines.append("| no runs yet | | | | | |")
    return "\n".join(lines)


def tables(root: Path) -> str:
    runs = collect(root)
    return "\n\n".join([
        "### 1. niid_cnn vs published\n\n" + published_table(runs),
        "### 2. The project's 2conv models on the same protocol\n\n" + models_table(runs),
        "### 3. Centralized reference\n\n" + central_table(runs),
    ])


def plot_models(runs: list[Run], out: Path) -> list[Path]:
    """Accuracy vs round of every model per federated cell and strategy (unfinished runs
    included, which ``fedconv.runs.report`` leaves out), and the centralized reference per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cell in CELL_NAMES:
        others = [r for r in runs if r.cell == cell and r.model != REFERENCE_MODEL]
        if not others:
            continue
        labels = sorted({r.label for r in others})
        fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 3.8), squeeze=False)
        for ax, label in zip(axes[0], labels, strict=True):
            for r in sorted((r for r in runs if r.cell == cell and r.label == label), key=lambda r: (r.model, r.seed)):
                rounds = range(1, len(r.accuracies) + 1)
                ax.plot(rounds, r.accuracies, label=f"{r.model} (seed {r.seed})", marker="." if len(rounds) < 15 else None)
            ax.set_title(f"{CELL_NAMES[cell]}, {label}")
            ax.set_xlabel("round")
            ax.set_ylabel("central test accuracy %")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / f"models_{cell}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    central = [r for r in runs if r.cell == "central"]
    if central:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for r in central:
            ax.plot(range(1, len(r.accuracies) + 1), r.accuracies, label=f"{r.model} (seed {r.seed})")
        ax.axhline(90.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title("centralized, all 60,000 training images")
        ax.set_xlabel("epoch")
        ax.set_ylabel("central test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / "central.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument("--plots", type=Path, help="write the 2conv-vs-niid_cnn and centralized plots here")
    args = parser.parse_args()
    text = tables(args.root)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plots:
        for path in plot_models(collect(args.root), args.plots):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
