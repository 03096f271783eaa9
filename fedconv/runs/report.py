"""Compare runs: ``fedconv report <sweep dir | run dirs | globs> [--by K] [--facet K]``.

Reads run directories (see :mod:`fedconv.runs.run_dir`), groups them by config keys, averages
over seeds, and writes report.md, a self-contained report.html and PNG/SVG plots.
:func:`compare` returns the same table as plain rows for notebooks.
"""

from __future__ import annotations

import argparse
import base64
import glob
import html
import json
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedconv import atomic
from fedconv.config import flatten, lookup
from fedconv.runs import run_dir
from fedconv.runs.figures import SECTIONS, Figure, draw_all
from fedconv.runs.run_reader import IN_PROGRESS, Run, read_run
from fedconv.wire import compression

DEFAULT_BY = ("strategy.name", "strategy.mu")
AVERAGED_OVER = "seed"
ROUND_POLICY_KEYS = frozenset({"strategy.stragglers"})  # in every strategy's config, but the server's policy


class ReportError(ValueError):
    """Nothing to report on, or a bad argument; the message says what was looked at."""


# Keys that say where or how a run executes, never what it computes.
EXECUTION_KEYS = frozenset({
    "name", "output_dir", "resume", "verbose", "dataset.data_dir", "dataset.cache_dir", "dataset.download",
    "simulation.nodes", "simulation.client_state_dir", "simulation.ray.address", "simulation.ray.num_cpus",
    "simulation.ray.include_dashboard", "server.connect_timeout", "logger.tensorboard",
})


def inert_keys(cfg: Mapping[str, Any]) -> set[str]:
    """Dotted keys whose value cannot change this run's numbers: the execution keys, and the
    options of a mechanism the config leaves off (straggler handling without stragglers, a
    step schedule's gamma under a cosine one, ...). A report warns only about the others."""
    def get(key: str) -> Any:
        return lookup(cfg, key)

    inert = set(EXECUTION_KEYS)
    if not get("faults.straggler_fraction"):
        inert.add("strategy.stragglers")
    if not str(get("faults.corrupt_partitions") or "").strip():
        inert |= {"faults.corrupt_mode", "faults.scale_factor"}
    elif get("faults.corrupt_mode") != "scale":
        inert.add("faults.scale_factor")
    if not str(get("faults.slow_partitions") or "").strip():
        inert.add("faults.slow_seconds")
    if get("server.fed_eval") == "with_train":
        inert |= {"server.fraction_evaluate", "server.min_evaluate_clients"}
    if get("server.lr_schedule") != "step":
        inert |= {"server.lr_step_size", "server.lr_gamma"}
    if get("server.lr_schedule") != "cosine":
        inert.add("server.lr_min")
    if get("client.optimizer") != "sgd":
        inert.add("client.momentum")
    if get("model.name") != "twoconv_se":
        inert.add("model.se_reduction")
    return inert | compression.inert_keys(cfg)


def _sweep_index(path: Path) -> dict[str, Any] | None:
    """The sweep's index, or None where there is none or it is unreadable (then the run
    dirs under the folder are found by their config.yaml, which they all have)."""
    if not (path / run_dir.SWEEP_INDEX).exists():
        return None
    try:
        return run_dir.read_sweep_index(path.resolve())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"warning: {path / run_dir.SWEEP_INDEX} unreadable ({type(exc).__name__}); "
              "reading the run dirs under it instead", file=sys.stderr)
        return None


def find_runs(inputs: Sequence[str | Path]) -> list[Run]:
    """Expand sweep dirs (sweep.json), run dirs and globs into parsed runs."""
    dirs: list[Path] = []
    looked: list[str] = []
    for item in inputs:
        matches = sorted(glob.glob(str(item))) or [str(item)]
        for m in matches:
            p = Path(m)
            looked.append(str(p))
            index = _sweep_index(p)
            if index is not None:
                dirs += [Path(j["run_dir"]) for j in index["jobs"]]
            elif (p / run_dir.CONFIG).exists():
                dirs.append(p)
            elif p.is_dir():
                dirs += sorted(c.parent for c in p.rglob(run_dir.CONFIG) if ".hydra" not in c.parts)
    seen: set[Path] = set()
    runs = []
    for d in dirs:  # a sweep's job without a config.yaml is read (as damaged), not skipped
        d = d.resolve()
        if d not in seen:
            seen.add(d)
            runs.append(read_run(d))
    if not runs:
        raise ReportError(f"no run directories (with {run_dir.CONFIG}) found in: {', '.join(looked) or '(nothing given)'}")
    return runs


def _why_excluded(run: Run) -> str:
    if run.problem:
        return run.problem
    if run.status == IN_PROGRESS:
        return (f"no {run_dir.SUMMARY}: still running, or stopped before writing one "
                f"({len(run.rounds)} rounds so far; resume=<run dir> continues it)")
    return str((run.summary or {}).get("error", ""))


def _value_order(value: Any) -> tuple[int, Any]:
    """Numbers by value, then anything else by its JSON: one config key may hold a float in one
    run and a string in another (a hand-edited or damaged config.yaml)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, json.dumps(value, sort_keys=True))


def uncontrolled_differences(runs: Sequence[Run], keys: Iterable[str]) -> dict[str, list[Any]]:
    """Config keys that differ between runs, are neither grouped nor faceted on, and can
    change the numbers in at least one of them (:func:`inert_keys`)."""
    grouped = {*keys, AVERAGED_OVER}
    flats = [flatten(r.config) for r in runs]
    inert = set.intersection(*(inert_keys(r.config) for r in runs)) if runs else set()
    all_keys = set().union(*flats)
    diffs = {}
    for key in sorted(all_keys):
        if key in grouped or key in inert:
            continue
        if "strategy.name" in grouped and key.startswith("strategy.") and key not in ROUND_POLICY_KEYS:
            # an algorithm's own hyper-parameters come with its name: they differ only
            # where runs of the *same* algorithm disagree on them
            by_name: dict[Any, set[str]] = {}
            for f in flats:
                by_name.setdefault(f.get("strategy.name"), set()).add(json.dumps(f.get(key), sort_keys=True))
            if all(len(v) == 1 for v in by_name.values()):
                continue
        values = {json.dumps(f.get(key), sort_keys=True) for f in flats}
        if len(values) > 1:
            diffs[key] = sorted((json.loads(v) for v in values if v != "null"), key=_value_order) + (
                ["(absent)"] if "null" in values else [])
    return diffs


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key by its last part, or by as many last parts as tell it from the other keys
    (``compression.downlink.codec`` and ``compression.uplink.codec``: ``downlink.codec``)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if not any(other != key and (other == short or other.endswith("." + short)) for other in keys):
                break
        names[key] = short
    return names


def group_label(run: Run, keys: Sequence[str]) -> str:
    parts = []
    for key, short in short_names(keys).items():
        value = run.get(key)
        if value is None:
            continue
        parts.append(str(value) if short == "name" else f"{short}={value}")
    return " ".join(parts) or "all"


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def ci95(values: Sequence[float]) -> float | None:
    """Half-width of the 95 % confidence interval of the mean (Student's t, n - 1 degrees of
    freedom); None for fewer than two values, where there is no interval to give."""
    from scipy import stats

    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def paired_differences(groups: dict[tuple[str, str], list[Run]], baseline: tuple[str, str]) -> list[dict[str, Any]]:
    """Each group against the baseline group of its facet, paired by seed: the mean of
    (final accuracy - baseline's final accuracy of the same seed) in points, with its 95 %
    interval. A seed only one side ran is left out of the pair, and named."""
    key, wanted = baseline
    rows = []
    for facet in sorted({f for f, _ in groups}):
        members = {label: runs for (f, label), runs in groups.items() if f == facet}
        base_labels = [label for label, runs in members.items()
                       if runs and all(str(r.get(key)) == wanted for r in runs)]
        if len(base_labels) != 1:
            raise ReportError(f"--baseline {key}={wanted}: {'no' if not base_labels else len(base_labels)} groups"
                              f"{' in facet ' + facet if facet else ''} match (groups: {', '.join(sorted(members))})")
        base_label = base_labels[0]
        base = _by_seed(members[base_label], base_label)
        for label, runs in sorted(members.items()):
            if label == base_label:
                continue
            mine = _by_seed(runs, label)
            seeds = sorted(set(mine) & set(base), key=str)
            diffs = [100 * (mine[s] - base[s]) for s in seeds]
            mean = statistics.fmean(diffs) if diffs else None
            half = ci95(diffs)
            rows.append({
                "facet": facet or None, "group": label, "baseline": base_label, "n": len(diffs), "seeds": seeds,
                "unpaired_seeds": sorted(set(mine) ^ set(base), key=str),
                "mean_diff_points": mean, "ci95_points": half,
                "significant": None if half is None or mean is None else abs(mean) > half,
            })
    return rows


def _by_seed(runs: list[Run], label: str) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for run in runs:
        acc = _final_accuracy(run)
        if acc is None:
            continue
        seed = run.get(AVERAGED_OVER)
        if seed in out:
            raise ReportError(f"group '{label}' has two runs with seed {seed}: pairing by seed needs one each "
                              "(group on the key that tells them apart with --by)")
        out[seed] = acc
    return out


def paired_sentence(row: dict[str, Any]) -> str:
    """``fedadam vs fedavg: +1.20 ± 0.40 points (95% CI, 3 paired seeds)`` and what it means."""
    if row["mean_diff_points"] is None:
        return f"{row['group']} vs {row['baseline']}: no seed in common"
    seeds = f"{row['n']} paired seed{'s' if row['n'] != 1 else ''}"
    if row["ci95_points"] is None:
        return f"{row['group']} vs {row['baseline']}: {row['mean_diff_points']:+.2f} points ({seeds}; no interval from one seed)"
    verdict = "a real difference" if row["significant"] else "not distinguishable from 0"
    return (f"{row['group']} vs {row['baseline']}: {row['mean_diff_points']:+.2f} ± {row['ci95_points']:.2f} points "
            f"(95% CI, {seeds}): {verdict}")


def rounds_to_target(run: Run, target: float) -> tuple[int | None, float | None]:
    """First round whose central accuracy reaches the target, and bytes sent up to it."""
    for r in run.rounds:
        acc = r.get("central_accuracy")
        if acc is not None and acc >= target:
            return int(r["round"] or 0), r.get("bytes_total_cum")
    return None, None


def _final_accuracy(run: Run) -> float | None:
    series = run.series("central_accuracy")
    return series[-1][1] if series else None


def _group(runs: Sequence[Run], by: Sequence[str], facet: str | None) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        facet_value = str(run.get(facet)) if facet else ""
        groups.setdefault((facet_value, group_label(run, by)), []).append(run)
    return dict(sorted(groups.items()))


def _default_target(groups: Mapping[tuple[str, str], list[Run]]) -> float:
    """95 % of the best group's mean final accuracy (1.0 where no group has one)."""
    group_finals = [_mean_std([a for a in map(_final_accuracy, rs) if a is not None])[0] for rs in groups.values()]
    best = max((f for f in group_finals if f is not None), default=None)
    return 0.95 * best if best is not None else 1.0


def _group_row(facet: str | None, label: str, members: list[Run], target: float) -> dict[str, Any]:
    """One group's row of the comparison: means, spreads and intervals over its runs (seeds)."""
    finals = [a for a in map(_final_accuracy, members) if a is not None]
    bests = [max(s, key=lambda x: x[1]) for s in (m.series("central_accuracy") for m in members) if s]
    reached = [rounds_to_target(m, target) for m in members]
    hits = [(r, b) for r, b in reached if r is not None]
    every_seed = len(hits) == len(members)  # rounds/MB to target only when every seed got there
    totals = [t for m in members if m.rounds and (t := m.rounds[-1].get("bytes_total_cum")) is not None]
    sent_vs_raw = [s["bytes_total"] / raw for m in members if (s := m.summary) and s.get("bytes_total")
                   and (raw := s.get("bytes_down_raw_total", 0) + s.get("bytes_up_raw_total", 0))]
    walls = [float(m.summary["wall_seconds"]) for m in members if m.summary and m.summary.get("wall_seconds") is not None]
    clients = [c for c in (m.final_client_accuracies() for m in members) if c]
    final_mean, final_std = _mean_std(finals)
    return {
        "facet": facet,
        "group": label,
        "n": len(members),
        "seeds": sorted({m.get("seed") for m in members}),
        "rounds": max((len(m.rounds) for m in members), default=0),
        "final_accuracy_mean": final_mean,
        "final_accuracy_std": final_std,
        "final_accuracy_ci95": ci95(finals),
        "best_accuracy_mean": _mean_std([b[1] for b in bests])[0],
        "best_round_mean": _mean_std([float(b[0]) for b in bests])[0],
        "target": target,
        "reached": f"{len(hits)}/{len(members)}",
        "rounds_to_target_mean": _mean_std([float(r) for r, _ in hits])[0] if every_seed else None,
        "mb_to_target_mean": _mean_std([b / 1e6 for _, b in hits if b is not None])[0] if every_seed else None,
        "total_mb_mean": _mean_std([t / 1e6 for t in totals])[0],
        "sent_vs_uncompressed": _mean_std(sent_vs_raw)[0],
        "wall_seconds_mean": _mean_std(walls)[0],
        "client_accuracy_mean": _mean_std([statistics.fmean(c) for c in clients])[0],
        "client_accuracy_p10": _mean_std([float(np.percentile(c, 10)) for c in clients])[0],
        "client_accuracy_worst": _mean_std([min(c) for c in clients])[0],
        "runs": [str(m.path) for m in members],
    }


def compare(
    inputs: Sequence[str | Path] | Sequence[Run],
    by: Sequence[str] = DEFAULT_BY,
    facet: str | None = None,
    target: float | None = None,
    baseline: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The comparison as plain data: ``rows`` (one per facet x group), ``excluded`` runs,
    the ``target`` used, config ``differences`` not controlled for, and with a ``baseline``
    (key, value) the ``paired`` differences of every other group against it."""
    runs = [i for i in inputs if isinstance(i, Run)] or find_runs([i for i in inputs if not isinstance(i, Run)])
    usable = [r for r in runs if r.status == "completed"]
    excluded = [{"run": str(r.path), "status": r.status, "error": _why_excluded(r)} for r in runs if r not in usable]
    if not usable:
        raise ReportError("no completed, undamaged run to report on: "
                          + "; ".join(f"{e['run']} ({e['status']}{': ' + e['error'] if e['error'] else ''})" for e in excluded))
    groups = _group(usable, by, facet)
    if target is None:
        target = _default_target(groups)
    rows = [_group_row(facet_value if facet else None, label, members, target)
            for (facet_value, label), members in groups.items()]
    return {
        "rows": rows,
        "excluded": excluded,
        "target": target,
        "by": list(by),
        "facet": facet,
        "differences": uncontrolled_differences(usable, [*by, *([facet] if facet else [])]),
        "paired": paired_differences(groups, baseline) if baseline else [],
        "runs": usable,
        "groups": groups,
    }


# ---------------------------------------------------------------------------- render


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_round(value: float | None) -> str:
    """A round number, or a mean of them over seeds: 12, 12.5 (never 12.0)."""
    if value is None:
        return "–"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


TABLE_HEADER = [
    "group", "n", "final acc (mean ± std)", "95% CI", "best acc (round)", "rounds to target", "MB to target",
    "total MB", "vs uncompressed", "wall s", "client acc mean / p10 / worst",
]


TABLE_NOTE = ("Target accuracy {target:.4f}; rounds/MB to target are means over seeds and shown only when every "
              "seed reached it. 95% CI: half-width of the Student-t interval of the mean final accuracy over seeds.")


def table_cells(row: dict[str, Any]) -> list[str]:
    reached = row["reached"]
    rtt = _fmt_round(row["rounds_to_target_mean"]) if row["rounds_to_target_mean"] is not None else f"not reached ({reached})"
    return [
        row["group"],
        str(row["n"]),
        f"{_fmt(row['final_accuracy_mean'])} ± {_fmt(row['final_accuracy_std'])}",
        f"± {_fmt(row['final_accuracy_ci95'])}" if row["final_accuracy_ci95"] is not None else "– (n=1)",
        f"{_fmt(row['best_accuracy_mean'])} ({_fmt_round(row['best_round_mean'])})",
        rtt,
        _fmt(row["mb_to_target_mean"], 1),
        _fmt(row["total_mb_mean"], 1),
        _fmt(row["sent_vs_uncompressed"], 3),
        _fmt(row["wall_seconds_mean"], 1),
        " / ".join(_fmt(row[k]) for k in ("client_accuracy_mean", "client_accuracy_p10", "client_accuracy_worst")),
    ]


def header_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    runs: list[Run] = result["runs"]

    def values(key: str) -> str:
        return ", ".join(sorted({str(r.get(key)) for r in runs}))

    def version(v: dict) -> str:
        commit = str(v.get("commit") or "")
        at = f" @ {commit[:7]}{'+dirty' if commit.endswith('+dirty') else ''}" if commit else ""
        return f"fedconv {v.get('fedconv')}{at}, flwr {v.get('flwr')}"

    versions = sorted({version(s["versions"]) for s in (r.summary for r in runs) if s and s.get("versions")})
    params = sorted({f"{int(r.summary['num_parameters']):,}" for r in runs if r.summary and r.summary.get("num_parameters")})
    return [
        ("dataset", values("dataset.name")),
        ("model", f"{values('model.name')} ({', '.join(params) or '?'} parameters)"),
        ("partition", values("partition.name")
         + (f", alpha {values('partition.alpha')}" if any(r.get("partition.alpha") is not None for r in runs) else "")),
        ("clients", f"{values('simulation.num_clients')} total, fraction_train {values('server.fraction_train')}"),
        ("rounds", values("server.rounds")),
        ("local epochs", values("client.epochs")),
        ("seeds", values("seed")),
        ("grouped by", ", ".join(result["by"]) + (f"; faceted by {result['facet']}" if result["facet"] else "")),
        ("target accuracy", f"{result['target']:.4f}"),
        ("versions", "; ".join(versions) or "?"),
    ]


def render_markdown(result: dict[str, Any], figures: Sequence[Figure]) -> str:
    lines = ["# fedconv report", ""]
    lines += [f"- **{k}**: {v}" for k, v in header_lines(result)]
    if result["differences"]:
        lines += ["", "> **Warning: runs also differ in keys that are not grouped on** (an unfair comparison?):"]
        lines += [f"> - `{k}`: {', '.join(map(str, v))}" for k, v in result["differences"].items()]
    facets = sorted({r["facet"] for r in result["rows"]}, key=str)
    for facet_value in facets:
        lines += [""]
        if result["facet"]:
            lines += [f"## {result['facet']} = {facet_value}", ""]
        lines += ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
        lines += ["| " + " | ".join(table_cells(r)) + " |" for r in result["rows"] if r["facet"] == facet_value]
    lines += ["", TABLE_NOTE.format(target=result["target"])]
    if result["paired"]:
        lines += ["", "## Against the baseline (final accuracy, paired by seed)", ""]
        lines += [f"- {(r['facet'] + ': ') if r['facet'] else ''}{paired_sentence(r)}" for r in result["paired"]]
    if result["excluded"]:
        lines += ["", "## Excluded runs (not in the means)", ""]
        lines += [f"- `{e['run']}`: {e['status']}" + (f" — {e['error']}" if e["error"] else "") for e in result["excluded"]]
    for section in SECTIONS:
        shown = [f for f in figures if f.section == section]
        if shown:
            lines += ["", f"## {section}", ""]
            lines += [f"![{f.title}]({f.path.name})\n\n*{f.caption}*\n" for f in shown]
    return "\n".join(lines) + "\n"


PAGE_STYLE = (
    "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d1d1f;max-width:1500px;"
    "margin:0 auto;padding:.5em 1.5em 3em}"
    "h1{margin:.6em 0 .2em}h2{margin:1.6em 0 .5em;padding-bottom:.2em;border-bottom:1px solid #ddd}"
    "nav{display:flex;flex-wrap:wrap;gap:.3em 1.2em;margin:.4em 0 1em}nav a{white-space:nowrap}"
    ".facts{columns:2 26em;padding-left:1.2em;margin:.4em 0}"
    ".scroll{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
    "td:first-child,th:first-child{text-align:left}th{background:#f4f4f6}"
    ".warn{background:#fff3cd;padding:.5em 1em;border-radius:4px}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,600px),1fr));gap:1.2em}"
    "figure{margin:0;padding:.6em;border:1px solid #e2e2e6;border-radius:6px;background:#fff;min-width:0}"
    "figure.wide{grid-column:1/-1}figure img{display:block;max-width:100%;height:auto;margin:0 auto}"
    "figcaption{font-size:.9em;color:#444;margin-top:.4em}"
    "@media (max-width:640px){body{padding:.3em .7em 2em;font-size:14px}td,th{padding:3px 5px}}"
)


def _figure_html(fig: Figure) -> str:
    esc = html.escape
    data = base64.b64encode(fig.path.read_bytes()).decode()
    wide = " class='wide'" if fig.wide else ""
    return (f"<figure id='{esc(fig.path.stem)}'{wide}><img alt='{esc(fig.title)}' data-name='{esc(fig.path.stem)}' "
            f"src='data:image/png;base64,{data}'><figcaption>{esc(fig.caption)}</figcaption></figure>")


def render_html(result: dict[str, Any], figures: Sequence[Figure]) -> str:
    esc = html.escape
    sections = [s for s in SECTIONS if any(f.section == s for f in figures)]
    anchor = {s: "s-" + s.lower().replace(" ", "-") for s in sections}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>fedconv report</title>",
        f"<style>{PAGE_STYLE}</style></head><body><h1>fedconv report</h1>",
        "<nav><a href='#s-results'>Results</a>" + "".join(f"<a href='#{anchor[s]}'>{esc(s)}</a>" for s in sections)
        + "</nav><ul class='facts'>",
    ]
    parts += [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in header_lines(result)]
    parts.append("</ul>")
    if result["differences"]:
        parts.append("<div class='warn'><b>Warning: runs also differ in keys that are not grouped on</b><ul>")
        parts += [f"<li><code>{esc(k)}</code>: {esc(', '.join(map(str, v)))}</li>" for k, v in result["differences"].items()]
        parts.append("</ul></div>")
    parts.append("<h2 id='s-results'>Results</h2>")
    for facet_value in sorted({r["facet"] for r in result["rows"]}, key=str):
        if result["facet"]:
            parts.append(f"<h3>{esc(result['facet'])} = {esc(str(facet_value))}</h3>")
        parts.append("<div class='scroll'><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in TABLE_HEADER) + "</tr>")
        for row in result["rows"]:
            if row["facet"] == facet_value:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in table_cells(row)) + "</tr>")
        parts.append("</table></div>")
    parts.append(f"<p>{esc(TABLE_NOTE.format(target=result['target']))}</p>")
    if result["paired"]:
        parts.append("<h3>Against the baseline (final accuracy, paired by seed)</h3><ul>")
        parts += [f"<li>{esc((r['facet'] + ': ') if r['facet'] else '')}{esc(paired_sentence(r))}</li>"
                  for r in result["paired"]]
        parts.append("</ul>")
    if result["excluded"]:
        parts.append("<h3>Excluded runs (not in the means)</h3><ul>")
        parts += [f"<li><code>{esc(e['run'])}</code>: {esc(e['status'])} {esc(e['error'] or '')}</li>"
                  for e in result["excluded"]]
        parts.append("</ul>")
    for section in sections:
        parts.append(f"<h2 id='{anchor[section]}'>{esc(section)}</h2><div class='grid'>")
        parts += [_figure_html(f) for f in figures if f.section == section]
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: dict[str, Any], out: Path, drift_round: int | None = None) -> list[Path]:
    """Write the report into ``out``: made whole in a folder beside it first, then moved in
    file by file (each a rename), so a failure on the way (a full disk) leaves no half report."""
    import os
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        staged = Path(tmp)
        figures = draw_all(result, staged, drift_round)
        atomic.write_text(staged / "report.md", render_markdown(result, figures))
        atomic.write_text(staged / "report.html", render_html(result, figures))
        table = [{k: v for k, v in r.items()} for r in result["rows"]]
        run_dir.write_json(staged / "report.json", {"target": result["target"], "rows": table,
                                                    "excluded": result["excluded"],
                                                    "differences": result["differences"], "paired": result["paired"]})
        names = ["report.md", "report.html", "report.json",
                 *(f.path.with_suffix(ext).name for f in figures for ext in (".png", ".svg"))]
        for name in names:
            os.replace(staged / name, out / name)
    return [out / name for name in names]


def _no_drift_round(runs: Sequence[Run], drift_round: int | None) -> str | None:
    """Why no similarity heatmap can show ``drift_round`` (None: one can, or none was asked for)."""
    if drift_round is None:
        return None
    rounds = sorted({int(p["round"]) for r in runs for p in r.pairs})
    if drift_round in rounds:
        return None
    if not rounds:
        return f"no run has {run_dir.PAIRS} (runs written before it, or one client a round); leave it out"
    return f"no run has client pairs at that round; they have rounds {rounds[0]}..{rounds[-1]}"


def _unwritable(out: Path) -> str | None:
    if out.exists() and not out.is_dir():
        return "it is a file"
    return atomic.unwritable(out)


def _default_out(inputs: Sequence[str]) -> Path:
    first = Path(inputs[0])
    if len(inputs) == 1 and first.is_dir():
        return first / "report"
    return Path("results") / "reports" / time.strftime("%Y-%m-%d_%H-%M-%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedconv report", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="sweep dirs, run dirs or globs")
    parser.add_argument("--by", nargs="+", default=list(DEFAULT_BY),
                        help="config keys to group on (default: strategy.name strategy.mu); "
                             "any strategy's hyper-parameter works, e.g. strategy.server_lr")
    parser.add_argument("--facet", default=None, help="config key: one panel/table per value (e.g. partition.alpha)")
    parser.add_argument("--target", type=float, default=None,
                        help="target accuracy (default: 95%% of the best group's final accuracy)")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: <sweep dir>/report)")
    parser.add_argument("--drift-round", type=int, default=None, metavar="N",
                        help="the round of the client-similarity heatmaps (default: each run's last)")
    parser.add_argument("--baseline", default=None, metavar="KEY=VALUE",
                        help="the group to compare every other against, paired by seed (e.g. strategy.name=fedavg)")
    args = parser.parse_args(argv)
    baseline = None
    if args.baseline is not None:
        key, sep, value = args.baseline.partition("=")
        if not sep or not key or not value:
            print(f"error: --baseline={args.baseline}: must be KEY=VALUE, e.g. strategy.name=fedavg", file=sys.stderr)
            return 2
        baseline = (key, value)
    if args.drift_round is not None and args.drift_round < 1:
        print(f"error: --drift-round={args.drift_round}: must be a round number, 1 or more", file=sys.stderr)
        return 2
    if args.target is not None and not 0 < args.target <= 1:
        print(f"error: --target={args.target}: must be in (0, 1]", file=sys.stderr)
        return 2
    out = args.out or _default_out(args.inputs)
    if reason := _unwritable(out):
        print(f"error: --out {out}: cannot write the report there ({reason}); choose a writable folder", file=sys.stderr)
        return 2
    try:
        result = compare(args.inputs, by=args.by, facet=args.facet, target=args.target, baseline=baseline)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if reason := _no_drift_round(result["runs"], args.drift_round):
        print(f"error: --drift-round={args.drift_round}: {reason}", file=sys.stderr)
        return 2
    try:
        written = write_report(result, out, args.drift_round)
    except OSError as exc:
        print(f"error: writing the report in {out} failed ({exc.strerror or exc}); the runs are untouched and "
              "no report was written", file=sys.stderr)
        return 1
    print(render_markdown(result, []), end="")
    print(f"report: {out / 'report.html'}  ({len(written)} files in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
