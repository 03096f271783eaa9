"""The report's figures: each a PNG (and an SVG beside it) with a title that says what it shows,
a caption for the page, and the page section it belongs to.

Curves (accuracy, loss, drift) are drawn per group (the mean over seeds, a ±1 std band) with
one panel per facet value and the legend below the panels, off the data. Heatmaps and model
views are drawn for each group's *representative* run (its completed run with the lowest
seed): the clients × clients cosine of one round's updates (``client_pairs.csv``), the
clients × classes counts of the partition (``partition.json``), the first layer's filters
(``model.safetensors``) and the confusion matrix (``classification.json``). Runs written
before a file existed simply have no such panel. matplotlib, the ``report`` extra.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedconv.runs import run_dir
from fedconv.runs.run_reader import Run

RESULTS, DRIFT, DATA, MODELS = "Accuracy and communication", "Client drift", "Data", "Final models"
SECTIONS = (RESULTS, DRIFT, DATA, MODELS)
MOST_GROUPS = 12  # heatmaps and model views: the first groups only (a 40-group sweep is a table)


@dataclass(frozen=True)
class Figure:
    """A written plot: ``path`` (the PNG; an SVG beside it), its title, caption and section;
    a ``wide`` one (small multiples) takes a page row of its own."""

    path: Path
    title: str
    caption: str
    section: str
    wide: bool = False


@dataclass
class Figures:
    """What every figure of a report shares: the groups by (facet value, label), one panel per
    facet value, one colour per label, and the figures written so far."""

    plt: Any
    groups: dict[tuple[str, str], list[Run]]
    facet_key: str | None
    out: Path
    facets: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    colors: dict[str, Any] = field(default_factory=dict)
    written: list[Figure] = field(default_factory=list)

    def save(self, fig: Any, name: str, title: str, caption: str, section: str, wide: bool = False) -> None:
        fig.suptitle(title, fontsize=11, fontweight="bold")
        for ext in ("svg", "png"):
            fig.savefig(self.out / f"{name}.{ext}", dpi=110)
        self.plt.close(fig)
        self.written.append(Figure(self.out / f"{name}.png", title, caption, section, wide))

    def curves(self, name: str, draw_panel: Callable[[Any, str], None], ylabel: str, xlabel: str,
               title: str, caption: str, section: str = RESULTS, legend: bool = True) -> None:
        """One panel per facet value (``draw_panel(ax, facet_value)``), the legend under them."""
        from matplotlib.ticker import MaxNLocator

        n = len(self.facets)
        fig, axes = self.plt.subplots(1, n, figsize=(max(6.4, 4.6 * n), 4.4), squeeze=False, sharey=True,
                                      layout="constrained")
        for ax, facet_value in zip(axes[0], self.facets, strict=True):
            draw_panel(ax, facet_value)
            ax.set_xlabel(xlabel)
            if xlabel == "round":  # a few rounds must not get ticks at 1.5, 2.5, ...
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if self.facet_key:
                ax.set_title(f"{self.facet_key} = {facet_value}", fontsize=10)
        axes[0][0].set_ylabel(ylabel)
        handles = {lbl: h for ax in axes[0] for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True)}
        if legend and handles:
            fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(4, len(handles)),
                       fontsize=8, frameon=False)
        self.save(fig, name, title, caption, section)

    def mean_band(self, column: str, x_column: str | None = None) -> Callable[[Any, str], None]:
        """Panel drawer: per group, the mean over seeds with a +-1 std band."""

        def draw(ax: Any, facet_value: str) -> None:
            for label in self.labels:
                # members with no value of the column are left out, their x values with them
                pairs = [(m, s) for m in self.groups.get((facet_value, label), []) if (s := m.series(column))]
                if not pairs:
                    continue
                series = [s for _, s in pairs]
                length = min(len(s) for s in series)
                ys = np.array([[v for _, v in s[:length]] for s in series])
                if x_column:
                    x_by_round = [{int(r["round"] or 0): r[x_column] for r in m.rounds} for m, _ in pairs]
                    xs = np.array([[xr.get(rnd, np.nan) for rnd, _ in s[:length]]
                                   for xr, s in zip(x_by_round, series, strict=True)]).mean(0) / 1e6
                else:
                    xs = np.array([rnd for rnd, _ in series[0][:length]])
                mean, std = ys.mean(0), ys.std(0)
                ax.plot(xs, mean, color=self.colors[label], label=f"{label} (n={len(series)})")
                if len(series) > 1:
                    ax.fill_between(xs, mean - std, mean + std, color=self.colors[label], alpha=0.2)

        return draw

    def client_boxes(self, ax: Any, facet_value: str) -> None:
        data, names = [], []
        for label in self.labels:
            accs = [a for m in self.groups.get((facet_value, label), []) for a in m.final_client_accuracies()]
            if accs:
                data.append(accs)
                names.append(label)
        if data:
            ax.boxplot(data, tick_labels=names)
        ax.tick_params(axis="x", rotation=20)

    def representatives(self) -> list[tuple[str, Run]]:
        """Each group's completed run with the lowest seed, named by facet and label."""
        chosen = []
        for (facet_value, label), members in sorted(self.groups.items()):
            name = f"{label} ({self.facet_key} = {facet_value})" if self.facet_key else label
            chosen.append((name, min(members, key=lambda m: (str(m.get("seed")), str(m.path)))))
        return chosen[:MOST_GROUPS]

    def panels(self, count: int, width: float = 3.4, height: float = 3.2) -> tuple[Any, list[Any]]:
        """A figure of ``count`` panels, at most four a row; the unused ones hidden."""
        cols = min(4, count)
        rows = -(-count // cols)
        fig, axes = self.plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.5), squeeze=False,
                                      layout="constrained")
        flat = list(axes.ravel())
        for ax in flat[count:]:
            ax.set_visible(False)
        return fig, flat[:count]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:60] or "group"


def similarity(run: Run, server_round: int | None) -> tuple[int, list[int], np.ndarray] | None:
    """The round shown (``server_round`` or the run's last with pairs), its clients and their
    cosine matrix from ``client_pairs.csv`` (1 on the diagonal); None without pairs that round."""
    rounds = sorted({int(p["round"]) for p in run.pairs})
    if not rounds:
        return None
    shown = server_round if server_round is not None else rounds[-1]
    pairs = [p for p in run.pairs if int(p["round"]) == shown]
    if not pairs:
        return None
    clients = sorted({int(p[k]) for p in pairs for k in ("partition_a", "partition_b")})
    index = {c: i for i, c in enumerate(clients)}
    matrix = np.eye(len(clients))
    for p in pairs:
        a, b = index[int(p["partition_a"])], index[int(p["partition_b"])]
        matrix[a, b] = matrix[b, a] = float(p["cosine"])
    return shown, clients, matrix


def partition_name(run: Run) -> str:
    alpha = run.get("partition.alpha")
    return f"{run.get('partition.name')}{f' α={alpha}' if alpha is not None else ''}, seed {run.get('seed')}"


def label_counts(run: Run) -> np.ndarray | None:
    """partition.json's clients × classes training-example counts (None: no readable file)."""
    try:
        record = json.loads((run.path / run_dir.PARTITION).read_text())
        return np.array([c["label_histogram"] for c in record["clients"]], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def final_model(run: Run) -> tuple[np.ndarray, np.ndarray] | None:
    """The final model's first-layer filters and the last central confusion matrix (None when
    a completed run predates either file or they are unreadable)."""
    try:
        weights = run_dir.load_weights(run.path / run_dir.WEIGHTS)
        matrix = np.asarray(json.loads((run.path / run_dir.CLASS_REPORT).read_text())["confusion_matrix"])
    except (run_dir.RunDirError, OSError, ValueError, KeyError, TypeError):
        return None
    first = next((w for w in weights.values() if w.ndim == 4), None)
    return (first.float().numpy(), matrix) if first is not None and matrix.ndim == 2 else None


def filter_mosaic(filters: np.ndarray, pad: int = 1) -> np.ndarray:
    """The first layer's kernels as one image: a tile per filter, each scaled to its own
    range (grey for one input channel; RGB for three), NaN between tiles."""
    n, channels, k, _ = filters.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    depth = 3 if channels == 3 else 1
    mosaic = np.full((rows * (k + pad) - pad, cols * (k + pad) - pad, depth), np.nan)
    for i, f in enumerate(filters):
        tile = (f - f.min()) / (np.ptp(f) or 1.0)
        r, c = divmod(i, cols)
        mosaic[r * (k + pad):r * (k + pad) + k, c * (k + pad):c * (k + pad) + k] = (
            tile.transpose(1, 2, 0) if depth == 3 else tile[0][..., None])
    return mosaic if depth == 3 else mosaic[..., 0]


def draw_matrix(ax: Any, matrix: np.ndarray, ticks: Sequence[int] | None, cmap: str, **kw: Any) -> Any:
    """A heatmap panel labelled by ``ticks`` on both sides (where they stay legible: ≤ 20),
    else by whole row and column numbers."""
    from matplotlib.ticker import MaxNLocator

    image = ax.imshow(matrix, cmap=cmap, interpolation="nearest", aspect="auto", **kw)
    if ticks is not None and len(ticks) <= 20:
        ax.set_xticks(range(len(ticks)), [str(t) for t in ticks], fontsize=7, rotation=90)
        ax.set_yticks(range(len(ticks)), [str(t) for t in ticks], fontsize=7)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return image


def similarity_figure(figs: Figures, server_round: int | None) -> None:
    """Each group's clients × clients cosine of one round's updates."""
    shown = [(name, s) for name, run in figs.representatives() if (s := similarity(run, server_round))]
    if not shown:
        return
    fig, axes = figs.panels(len(shown))
    image = None
    for ax, (name, (rnd, clients, matrix)) in zip(axes, shown, strict=True):
        image = draw_matrix(ax, matrix, clients, "RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{name}, round {rnd}", fontsize=9)
        ax.set_xlabel("partition id", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine of the two updates")
    rounds = sorted({s[0] for _, s in shown})
    figs.save(fig, "client_similarity", f"Do the clients' updates agree? Round {', '.join(map(str, rounds))}",
              "Cosine between every two clients' updates in one round (each group's lowest seed; red: "
              "they point the same way, blue: opposite ways). Under non-IID data the off-diagonal fades "
              "towards 0; choose the round with --drift-round.", DRIFT, wide=len(shown) > 1)


def partition_figure(figs: Figures) -> None:
    """The clients × classes counts of each distinct partition among the representatives."""
    distinct: dict[bytes, tuple[str, np.ndarray]] = {}
    for _, run in figs.representatives():
        counts = label_counts(run)
        if counts is not None and counts.tobytes() not in distinct:
            distinct[counts.tobytes()] = (partition_name(run), counts)
    if not distinct:
        return
    fig, axes = figs.panels(len(distinct), height=3.8)
    for ax, (name, counts) in zip(axes, distinct.values(), strict=True):
        image = draw_matrix(ax, counts, None, "viridis")
        ax.set_title(f"{name}: {len(counts)} clients", fontsize=9)
        ax.set_xlabel("class", fontsize=8)
        ax.set_ylabel("client (partition id)", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8, label="training examples")
    figs.save(fig, "partition_heatmap", "How the data is split: clients × classes",
              "Training examples of each class on each client (partition.json); one panel per distinct "
              "partition. A row with one bright cell is a client that sees mostly one class.", DATA,
              wide=len(distinct) > 2)


def model_figures(figs: Figures) -> None:
    """Per group: the final model's first-layer filters beside its confusion matrix."""
    for name, run in figs.representatives():
        views = final_model(run)
        if views is None:
            continue
        filters, matrix = views
        fig, (left, right) = figs.plt.subplots(1, 2, figsize=(8.4, 4.0), layout="constrained",
                                               gridspec_kw={"width_ratios": [1, 1.15]})
        left.imshow(filter_mosaic(filters), cmap="gray", interpolation="nearest")
        left.set_title(f"{len(filters)} first-layer filters, {filters.shape[2]}×{filters.shape[3]}", fontsize=9)
        left.axis("off")
        draw_matrix(right, matrix, list(range(len(matrix))), "Blues")
        if len(matrix) <= 12:
            for (i, j), v in np.ndenumerate(matrix):
                right.text(j, i, str(v), ha="center", va="center", fontsize=6,
                           color="white" if v > matrix.max() / 2 else "black")
        right.set_xlabel("predicted", fontsize=8)
        right.set_ylabel("true", fontsize=8)
        right.set_title("confusion matrix, last central evaluation", fontsize=9)
        figs.save(fig, f"model_{slug(name)}", f"The final model of {name}",
                  f"Seed {run.get('seed')}: the first convolution's kernels (each scaled to its own range) and "
                  "the central test set's confusion matrix (rows: true class). fedconv inspect draws "
                  "its feature maps too.", MODELS)


def draw_all(result: dict[str, Any], out: Path, drift_round: int | None = None) -> list[Figure]:
    """Every figure of a report on ``result`` (:func:`fedconv.runs.report.compare`), into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Run]] = result["groups"]
    labels = sorted({g for _, g in groups})
    figs = Figures(plt, groups, result["facet"], out, facets=sorted({f for f, _ in groups}), labels=labels,
                   colors={g: plt.cm.tab10(i % 10) for i, g in enumerate(labels)})
    band = "the line is the mean over seeds, the band ±1 standard deviation"
    figs.curves("accuracy_vs_round", figs.mean_band("central_accuracy"), "central test accuracy", "round",
                "Accuracy by round", f"Accuracy of the global model on the central test set after each round; {band}.")
    figs.curves("accuracy_vs_mb", figs.mean_band("central_accuracy", "bytes_total_cum"), "central test accuracy",
                "cumulative communication (MB)", "Accuracy by bytes sent",
                f"The same accuracy against the measured bytes on the wire, both directions; {band}.")
    figs.curves("train_loss_vs_round", figs.mean_band("train_loss"), "training loss (clients' mean)", "round",
                "Training loss by round", f"The sampled clients' mean local training loss; {band}.")
    figs.curves("client_accuracy", figs.client_boxes, "final per-client accuracy (held-out splits)", "group",
                "Accuracy on each client", "Each client's accuracy on its own held-out split in the last "
                "federated evaluation, over all seeds: the spread is the fairness of the model.", legend=False)
    if any(m.series("update_pairwise_cosine") for members in groups.values() for m in members):  # runs since drift
        figs.curves("client_drift_vs_round", figs.mean_band("update_pairwise_cosine"),
                    "clients' updates: mean pairwise cosine", "round", "Client drift by round",
                    f"Mean cosine between two clients' updates each round (1: all agree, 0: unrelated); {band}.",
                    section=DRIFT)
    similarity_figure(figs, drift_round)
    partition_figure(figs)
    model_figures(figs)
    return figs.written
