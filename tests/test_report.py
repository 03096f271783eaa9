"""Reports: numbers checked against hand-computed values on synthetic run dirs (the report on a
real sweep is in test_simulation.py::test_two_job_sweep_writes_two_runs_an_index_and_a_parent_mlflow_run)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedconv.runs import run_dir
from fedconv.runs.report import ReportError, compare, main

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def make_run(path: Path, *, strategy: str, seed: int, accs: list[float], mu: float | None = None, alpha: float = 0.5,
             status: str = "completed", mb_per_round: float = 2.0, client_accs: list[float] | None = None,
             lr: float = 0.05, summary: bool = True) -> Path:
    path.mkdir(parents=True)
    strat = {"name": strategy, **({"mu": mu} if mu is not None else {})}
    cfg = {"seed": seed, "name": "t", "output_dir": str(path), "strategy": strat,
           "dataset": {"name": "fashion_mnist"}, "model": {"name": "twoconv"},
           "partition": {"name": "dirichlet", "alpha": alpha}, "client": {"epochs": 1, "lr": lr},
           "server": {"rounds": len(accs), "fraction_train": 0.5}, "simulation": {"num_clients": 20}}
    (path / run_dir.CONFIG).write_text(yaml.safe_dump(cfg))
    for i, acc in enumerate(accs, start=1):
        run_dir.append_row(path / run_dir.ROUNDS, run_dir.ROUND_COLUMNS, {
            "round": i, "central_accuracy": acc, "central_loss": 1 - acc, "train_loss": 2.0 / i,
            "bytes_total_cum": int(i * mb_per_round * 1e6), "clients_sampled": 10, "clients_ok": 10,
            "fed_cohort": "evaluate", "fed_model_round": i,  # a text column among the numbers
        })
    for pid, acc in enumerate(client_accs or []):
        run_dir.append_row(path / run_dir.CLIENTS, run_dir.CLIENT_COLUMNS, {
            "round": len(accs), "phase": "evaluate", "partition_id": pid, "num_examples": 50, "loss": 0.5, "accuracy": acc})
    if summary:
        run_dir.write_json(path / run_dir.SUMMARY, {
            "status": status, "wall_seconds": 10.0 * (seed + 1), "rounds_completed": len(accs), "rounds_planned": len(accs),
            "final_central_accuracy": accs[-1], "final_round": len(accs), "best_central_accuracy": max(accs),
            "bytes_total": int(len(accs) * mb_per_round * 1e6),
            "num_parameters": 38122, "versions": {"fedconv": "0.1.0", "flwr": "1.42.0"}})
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    make_run(tmp_path / "0", strategy="fedavg", seed=0, accs=[0.5, 0.7, 0.8], client_accs=[0.6, 0.8, 0.9, 1.0])
    make_run(tmp_path / "1", strategy="fedavg", seed=1, accs=[0.6, 0.8, 0.9], client_accs=[0.7, 0.7, 0.8, 0.9])
    make_run(tmp_path / "2", strategy="fedprox", mu=0.1, seed=0, accs=[0.4, 0.5, 0.6], mb_per_round=3.0)
    make_run(tmp_path / "3", strategy="fedprox", mu=0.1, seed=1, accs=[0.5, 0.6, 0.7], mb_per_round=3.0)
    make_run(tmp_path / "4", strategy="fedprox", mu=0.1, seed=2, accs=[0.9], status="failed")
    return tmp_path


def rows_by_group(result: dict) -> dict[str, dict]:
    return {r["group"]: r for r in result["rows"]}


def test_table_numbers_equal_hand_computed_values(sweep: Path) -> None:
    result = compare([sweep], target=0.75)
    rows = rows_by_group(result)
    assert set(rows) == {"fedavg", "fedprox mu=0.1"}
    avg = rows["fedavg"]
    assert avg["n"] == 2 and avg["seeds"] == [0, 1]
    assert avg["final_accuracy_mean"] == pytest.approx(0.85)
    assert avg["final_accuracy_std"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert avg["best_accuracy_mean"] == pytest.approx(0.85) and avg["best_round_mean"] == pytest.approx(3.0)
    # seed 0 reaches 0.75 at round 3 (6 MB), seed 1 at round 2 (4 MB)
    assert avg["rounds_to_target_mean"] == pytest.approx(2.5) and avg["mb_to_target_mean"] == pytest.approx(5.0)
    assert avg["total_mb_mean"] == pytest.approx(6.0) and avg["wall_seconds_mean"] == pytest.approx(15.0)
    assert avg["client_accuracy_mean"] == pytest.approx((0.825 + 0.775) / 2)
    assert avg["client_accuracy_worst"] == pytest.approx((0.6 + 0.7) / 2)
    assert avg["client_accuracy_p10"] == pytest.approx((0.66 + 0.7) / 2)
    prox = rows["fedprox mu=0.1"]
    assert prox["n"] == 2 and prox["final_accuracy_mean"] == pytest.approx(0.65)
    assert prox["rounds_to_target_mean"] is None and prox["reached"] == "0/2"
    assert prox["total_mb_mean"] == pytest.approx(9.0)


def test_failed_runs_are_excluded_and_listed(sweep: Path) -> None:
    result = compare([sweep])
    assert [e["status"] for e in result["excluded"]] == ["failed"]
    assert str(sweep / "4") in result["excluded"][0]["run"]
    assert rows_by_group(result)["fedprox mu=0.1"]["n"] == 2


def test_default_target_is_95_percent_of_the_best_group(sweep: Path) -> None:
    assert compare([sweep])["target"] == pytest.approx(0.95 * 0.85)


def test_facets_split_rows(tmp_path: Path) -> None:
    for i, (strategy, alpha) in enumerate([("fedavg", 0.1), ("fedavg", 1.0), ("fedprox", 0.1), ("fedprox", 1.0)]):
        make_run(tmp_path / str(i), strategy=strategy, mu=0.01 if strategy == "fedprox" else None,
                 seed=0, accs=[0.5, 0.6], alpha=alpha)
    result = compare([tmp_path], facet="partition.alpha")
    assert len(result["rows"]) == 4
    assert {(r["facet"], r["group"]) for r in result["rows"]} == {
        ("0.1", "fedavg"), ("1.0", "fedavg"), ("0.1", "fedprox mu=0.01"), ("1.0", "fedprox mu=0.01")}
    assert result["differences"] == {}
    assert "partition.alpha" in compare([tmp_path])["differences"]


def test_uncontrolled_differences_are_warned(tmp_path: Path) -> None:
    make_run(tmp_path / "a", strategy="fedavg", seed=0, accs=[0.5], lr=0.05)
    make_run(tmp_path / "b", strategy="fedprox", mu=0.1, seed=0, accs=[0.5], lr=0.01)
    result = compare([tmp_path])
    assert result["differences"] == {"client.lr": [0.01, 0.05]}
    out = tmp_path / "report"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert "client.lr" in (out / "report.md").read_text()


def test_a_key_that_holds_a_number_in_one_run_and_text_in_another_is_a_difference(tmp_path: Path) -> None:
    """A hand-edited (or damaged) config.yaml may hold text where other runs hold a number: the
    difference is listed, numbers first, not a TypeError from comparing the two."""
    make_run(tmp_path / "a", strategy="fedavg", seed=0, accs=[0.5], lr=0.05)
    run = make_run(tmp_path / "b", strategy="fedavg", seed=1, accs=[0.5], lr=0.05)
    cfg = yaml.safe_load((run / run_dir.CONFIG).read_text())
    cfg["client"]["lr"] = "0.05 (tuned)"
    (run / run_dir.CONFIG).write_text(yaml.safe_dump(cfg))
    assert compare([tmp_path])["differences"] == {"client.lr": [0.05, "0.05 (tuned)"]}


def test_a_run_without_summary_is_listed_as_in_progress_and_left_out(tmp_path: Path) -> None:
    make_run(tmp_path / "a", strategy="fedavg", seed=0, accs=[0.5, 0.6, 0.7])
    make_run(tmp_path / "b", strategy="fedavg", seed=1, accs=[0.4, 0.65], summary=False)
    result = compare([tmp_path])
    row = result["rows"][0]
    assert row["n"] == 1 and row["final_accuracy_mean"] == pytest.approx(0.7)
    [excluded] = result["excluded"]
    assert excluded["status"] == "in progress" and "no summary.json" in excluded["error"] and "2 rounds" in excluded["error"]


def test_only_differences_that_can_change_results_are_warned(tmp_path: Path) -> None:
    """FedAvg and FedProx default to different straggler policies; without stragglers the
    policy cannot matter, with them it can."""
    for name, strategy, stragglers in (("a", "fedavg", "drop"), ("b", "fedprox", "aggregate")):
        run = make_run(tmp_path / name, strategy=strategy, mu=0.1 if strategy == "fedprox" else None, seed=0, accs=[0.5])
        cfg = yaml.safe_load((run / run_dir.CONFIG).read_text())
        cfg["strategy"]["stragglers"] = stragglers
        cfg["faults"] = {"straggler_fraction": 0.0}
        cfg["verbose"] = name == "a"
        (run / run_dir.CONFIG).write_text(yaml.safe_dump(cfg))
    assert compare([tmp_path])["differences"] == {}
    for name in ("a", "b"):
        cfg = yaml.safe_load((tmp_path / name / run_dir.CONFIG).read_text())
        cfg["faults"]["straggler_fraction"] = 0.5
        (tmp_path / name / run_dir.CONFIG).write_text(yaml.safe_dump(cfg))
    assert compare([tmp_path])["differences"] == {"strategy.stragglers": ["aggregate", "drop"]}


def _three_seeds(tmp_path: Path) -> list[Path]:
    return [make_run(tmp_path / str(seed), strategy="fedavg", seed=seed, accs=[0.5, 0.6 + seed / 100, 0.7 + seed / 100])
            for seed in range(3)]


def _damage_of(run: Path) -> str | None:
    from fedconv.runs.run_reader import read_run

    return read_run(run).problem


def test_every_truncation_of_rounds_csv_is_damage(tmp_path: Path) -> None:
    """Cut anywhere (mid-line or at a line end), rounds.csv never reads as a shorter run."""
    run = make_run(tmp_path / "r", strategy="fedavg", seed=0, accs=[0.5, 0.6, 0.7])
    data = (run / run_dir.ROUNDS).read_bytes()
    header_end = data.index(b"\n") + 1
    assert _damage_of(run) is None
    for cut in range(header_end, len(data)):
        (run / run_dir.ROUNDS).write_bytes(data[:cut])
        assert _damage_of(run), f"cut at byte {cut} of {len(data)} went unnoticed"
    (run / run_dir.ROUNDS).write_bytes(data[:data.index(b"\n", header_end) + 1])  # one whole row left
    assert _damage_of(run) == "summary.json vs rounds.csv: 3 rounds completed but 1 rows"


DAMAGES = {
    "garbled-cell": (lambda p: _replace(p / run_dir.ROUNDS, "0.61", "0.61x"),
                     "rounds.csv line 3: central_accuracy='0.61x' is not a number"),
    "bytes-go-down": (lambda p: _replace(p / run_dir.ROUNDS, "4000000", "400"),
                      "rounds.csv round 2: bytes_total_cum=400 below the previous round's 2000000"),
    "round-gap": (lambda p: _replace(p / run_dir.ROUNDS, "\n3,", "\n4,"), "rounds.csv: row 3 is round 4"),
    "summary-accuracy": (lambda p: _replace(p / run_dir.SUMMARY, '"final_central_accuracy": 0.71',
                                            '"final_central_accuracy": 0.91'),
                         "final_central_accuracy is 0.91 in the summary, 0.71 in the rows"),
    "summary-bytes": (lambda p: _replace(p / run_dir.SUMMARY, '"bytes_total": 6000000', '"bytes_total": 7000000'),
                      "bytes_total is 7000000 in the summary, 6000000 in the rows"),
    "summary-cut": (lambda p: (p / run_dir.SUMMARY).write_text('{"status": "compl'), "summary.json unreadable"),
    "config-cut": (lambda p: (p / run_dir.CONFIG).write_text("a: [1,"), "config.yaml unreadable"),
    "completed-short": (lambda p: _replace(p / run_dir.SUMMARY, '"rounds_planned": 3', '"rounds_planned": 5'),
                        "completed with 5 rounds planned but 3 rows"),
}


@pytest.mark.parametrize("kind", DAMAGES)
def test_damaged_runs_are_flagged_with_the_reason_and_left_out_of_the_means(tmp_path: Path, kind: str) -> None:
    damage, reason = DAMAGES[kind]
    good0, damaged, good2 = _three_seeds(tmp_path)
    damage(damaged)
    result = compare([tmp_path])
    [excluded] = result["excluded"]
    assert excluded["status"] == "damaged" and excluded["run"] == str(damaged) and reason in excluded["error"]
    [row] = result["rows"]
    assert row["n"] == 2 and row["final_accuracy_mean"] == pytest.approx((0.70 + 0.72) / 2)


def test_the_report_names_every_damaged_run_and_its_reason(tmp_path: Path) -> None:
    """One report over a run damaged in each way beside its two good seeds (drawing the
    figures once: the reasons are the report's, whatever else it shows)."""
    for kind, (damage, _) in DAMAGES.items():
        damage(_three_seeds(tmp_path / kind)[1])
    out = tmp_path / "report"
    assert main([str(tmp_path / "*"), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for kind, (_, reason) in DAMAGES.items():
        assert reason in text and str(tmp_path / kind / "1") in text, kind


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text[:300])
    path.write_text(text.replace(old, new, 1))


def test_nothing_usable_left_exits_2_naming_each_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "r", strategy="fedavg", seed=0, accs=[0.5, 0.6])
    (run / run_dir.ROUNDS).write_bytes((run / run_dir.ROUNDS).read_bytes()[:-5])
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "damaged" in err and "ends mid-line" in err
    assert not (tmp_path / "out").exists()


def test_a_moved_sweep_reports_its_own_runs(tmp_path: Path) -> None:
    """sweep.json records absolute run dirs; a copied sweep must read the copy's runs."""
    import shutil

    original = tmp_path / "original"
    for seed in range(2):
        make_run(original / f"seed={seed}", strategy="fedavg", seed=seed, accs=[0.5, 0.6 + seed / 10])
    run_dir.write_json(original / "sweep.json", {"sweep_dir": str(original), "jobs": [
        {"job": s, "run_dir": str(original / f"seed={s}"), "status": "completed"} for s in range(2)]})
    moved = tmp_path / "moved"
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    row = compare([moved])["rows"][0]
    assert row["n"] == 2 and row["runs"] == [str(moved / "seed=0"), str(moved / "seed=1")]


def test_no_runs_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ReportError, match="no run directories"):
        compare([tmp_path])
    assert main([str(tmp_path / "nothing-here")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_report_files_are_written(sweep: Path) -> None:
    out = sweep / "out"
    assert main([str(sweep), "--out", str(out), "--target", "0.75"]) == 0
    md = (out / "report.md").read_text()
    assert "| fedavg | 2 | 0.8500 ± 0.0707 | ± 0.6353 | 0.8500 (3) |" in md and "Excluded runs" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html and "http" not in html.split("<body>")[1]
    for name in ("accuracy_vs_round", "accuracy_vs_mb", "train_loss_vs_round", "client_accuracy"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def test_interval_and_paired_difference_against_a_baseline(tmp_path: Path) -> None:
    """95 % intervals from Student's t (quantiles typed in from a t-table), paired by seed."""
    for seed, (avg, adam) in enumerate([(0.80, 0.82), (0.84, 0.85), (0.78, 0.81)]):
        make_run(tmp_path / f"avg{seed}", strategy="fedavg", seed=seed, accs=[0.5, avg])
        make_run(tmp_path / f"adam{seed}", strategy="fedadam", seed=seed, accs=[0.5, adam])
    make_run(tmp_path / "adam9", strategy="fedadam", seed=9, accs=[0.5, 0.99])  # no fedavg run of seed 9
    result = compare([tmp_path], by=["strategy.name"], baseline=("strategy.name", "fedavg"))
    rows = rows_by_group(result)
    t2 = 4.302652729911275  # t(0.975, df=2)
    assert rows["fedavg"]["final_accuracy_ci95"] == pytest.approx(t2 * statistics.stdev([0.80, 0.84, 0.78]) / 3**0.5)
    (paired,) = result["paired"]
    diffs = [2.0, 1.0, 3.0]  # points, seeds 0..2; seed 9 has no partner
    assert paired["group"] == "fedadam" and paired["baseline"] == "fedavg" and paired["n"] == 3
    assert paired["unpaired_seeds"] == [9] and paired["mean_diff_points"] == pytest.approx(2.0)
    assert paired["ci95_points"] == pytest.approx(t2 * statistics.stdev(diffs) / 3**0.5)  # 2.48: CI spans 0
    assert paired["significant"] is False
    from fedconv.runs.report import paired_sentence

    assert paired_sentence(paired) == ("fedadam vs fedavg: +2.00 ± 2.48 points (95% CI, 3 paired seeds): "
                                       "not distinguishable from 0")
    assert main([str(tmp_path), "--by", "strategy.name", "--baseline", "strategy.name=fedavg",
                 "--out", str(tmp_path / "r")]) == 0
    assert "fedadam vs fedavg: +2.00 ± 2.48 points" in (tmp_path / "r" / "report.md").read_text()
    assert main([str(tmp_path), "--baseline", "strategy.name=fedsgd", "--out", str(tmp_path / "r2")]) == 2
    assert main([str(tmp_path), "--baseline", "fedavg", "--out", str(tmp_path / "r3")]) == 2


def test_an_algorithms_own_hyper_parameters_are_not_uncontrolled_differences(tmp_path: Path) -> None:
    for name, extra in (("fedavg", {}), ("fedadam", {"server_lr": 0.01}), ("fedyogi", {"server_lr": 0.02})):
        run = make_run(tmp_path / name, strategy=name, seed=0, accs=[0.5, 0.6])
        cfg = yaml.safe_load((run / run_dir.CONFIG).read_text())
        cfg["strategy"].update(extra)
        (run / run_dir.CONFIG).write_text(yaml.safe_dump(cfg))
    assert compare([tmp_path], by=["strategy.name"])["differences"] == {}
    again = make_run(tmp_path / "fedadam-2", strategy="fedadam", seed=1, accs=[0.5, 0.7])
    cfg = yaml.safe_load((again / run_dir.CONFIG).read_text())
    cfg["strategy"]["server_lr"] = 0.1  # the same algorithm, another server lr: that is uncontrolled
    (again / run_dir.CONFIG).write_text(yaml.safe_dump(cfg))
    assert compare([tmp_path], by=["strategy.name"])["differences"] == {"strategy.server_lr": [0.01, 0.02, 0.1, "(absent)"]}
    grouped = compare([tmp_path], by=["strategy.name", "strategy.server_lr"])
    assert grouped["differences"] == {} and "fedadam server_lr=0.1" in rows_by_group(grouped)


def add_insight_files(path: Path, pairs: dict[tuple[int, int, int], float], counts: list[list[int]],
                      filters: np.ndarray, confusion: list[list[int]]) -> None:
    """What a run since client drift and model views also writes: client_pairs.csv,
    partition.json's histograms, the final weights and the confusion matrix."""
    import torch

    run_dir.append_rows(path / run_dir.PAIRS, run_dir.PAIR_COLUMNS,
                        [{"round": r, "partition_a": a, "partition_b": b, "cosine": c} for (r, a, b), c in pairs.items()])
    run_dir.write_json(path / run_dir.PARTITION, {"clients": [{"label_histogram": row} for row in counts]})
    run_dir.save_weights(path / run_dir.WEIGHTS, {"block1.0.weight": torch.tensor(filters, dtype=torch.float32),
                                                  "fc.bias": torch.zeros(3)})
    run_dir.write_json(path / run_dir.CLASS_REPORT, {"confusion_matrix": confusion})
    assert np.asarray(confusion).ndim == 2


def test_heatmaps_and_model_views_come_from_the_runs_files(tmp_path: Path) -> None:
    """The similarity matrix of the chosen round, the partition's counts and the filter mosaic
    hold exactly the values the files hold; the page has one figure per view, by section."""
    from fedconv.runs import figures
    from fedconv.runs.run_reader import read_run

    pairs = {(1, 0, 2): 0.5, (1, 0, 3): -0.25, (1, 2, 3): 0.125, (2, 1, 2): 0.75}
    filters = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    counts = [[5, 0, 1], [0, 7, 0]]
    for name, strategy in (("a", "fedavg"), ("b", "scaffold")):
        make_run(tmp_path / name, strategy=strategy, seed=0, accs=[0.5, 0.6], client_accs=[0.5, 0.6])
        add_insight_files(tmp_path / name, pairs, counts, filters, [[3, 1, 0], [0, 4, 0], [1, 0, 2]])
    run = read_run(tmp_path / "a")
    shown, clients, matrix = figures.similarity(run, 1)
    assert shown == 1 and clients == [0, 2, 3]
    assert matrix.tolist() == [[1.0, 0.5, -0.25], [0.5, 1.0, 0.125], [-0.25, 0.125, 1.0]]
    assert figures.similarity(run, None)[:2] == (2, [1, 2])  # default: the last round
    assert figures.similarity(run, 3) is None
    assert figures.label_counts(run).tolist() == counts
    mosaic = figures.filter_mosaic(filters)  # two 3x3 tiles side by side, a NaN column between
    assert mosaic.shape == (3, 7) and np.isnan(mosaic[:, 3]).all()
    assert mosaic[:, :3].tolist() == ((filters[0, 0] - 0) / 8).tolist() and mosaic[0, 4] == 0 and mosaic[2, 6] == 1

    out = tmp_path / "report"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--drift-round", "1"]) == 0
    html = (out / "report.html").read_text()
    ids = re.findall(r"<figure id='([^']+)'", html)
    assert ids == ["accuracy_vs_round", "accuracy_vs_mb", "train_loss_vs_round", "client_accuracy",
                   "client_similarity", "partition_heatmap", "model_fedavg", "model_scaffold"]
    assert html.index("id='s-client-drift'") < html.index("id='client_similarity'") < html.index("id='s-data'")
    assert "<figure id='client_similarity' class='wide'>" in html  # two groups' panels: a row of its own
    for name in ids:
        assert (out / f"{name}.png").read_bytes()[:8] == PNG and (out / f"{name}.svg").is_file()
    md = (out / "report.md").read_text()
    assert "## Final models" in md and "![The final model of scaffold](model_scaffold.png)" in md


@pytest.mark.parametrize(("arg", "says"), [
    ("9", "--drift-round=9: no run has client pairs at that round; they have rounds 1..2"),
    ("0", "--drift-round=0: must be a round number, 1 or more"),
])
def test_a_drift_round_outside_the_runs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], arg: str,
                                                    says: str) -> None:
    make_run(tmp_path / "a", strategy="fedavg", seed=0, accs=[0.5, 0.6])
    add_insight_files(tmp_path / "a", {(1, 0, 1): 0.5, (2, 0, 1): 0.4}, [[1, 2]], np.ones((1, 1, 3, 3)), [[1]])
    assert main([str(tmp_path / "a"), "--out", str(tmp_path / "report"), "--drift-round", arg]) == 2
    assert capsys.readouterr().err == f"error: {says}\n"
    assert not (tmp_path / "report").exists()


def test_runs_without_pairs_say_so_for_a_drift_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "a", strategy="fedavg", seed=0, accs=[0.5, 0.6])
    assert main([str(tmp_path / "a"), "--out", str(tmp_path / "report"), "--drift-round", "1"]) == 2
    assert "no run has client_pairs.csv" in capsys.readouterr().err
