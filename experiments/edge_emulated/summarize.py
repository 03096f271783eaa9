"""Summarise one ``board.sh measure`` result folder as a Markdown table (printed)."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path


def main(res: Path) -> None:
    install = json.loads((res / "install.json").read_text())
    imports = {m: statistics.median(float(x) for x in (res / f"import-{m}.txt").read_text().split())
               for m in ("fedconv.federation.client_app", "fedconv.edge.board_app")}
    native, board = (json.loads((res / f"epoch-{k}.json").read_text()) for k in ("native", "board"))
    with (res / "run" / "rounds.csv").open() as f:
        rounds = list(csv.DictReader(f))
    with (res / "run" / "client_metrics.csv").open() as f:
        clients = list(csv.DictReader(f))
    partition = json.loads((res / "run" / "partition.json").read_text())
    board_rows = [r for r in clients if r["partition_id"] == "2" and r["phase"] == "train"]
    native_rows = [r for r in clients if r["partition_id"] != "2" and r["phase"] == "train"]

    def med(rows: list[dict], key: str) -> str:
        values = [float(r[key]) for r in rows if r.get(key)]
        return f"{statistics.median(values):.2f}" if values else "-"

    lines = [
        "| what | native (x86, 1 thread) | emulated aarch64 board |",
        "|---|---|---|",
        f"| board install (site-packages, MB) | | {install['site_packages_mb']:.0f} (torch {install['torch_mb']:.0f}) |",
        f"| `import fedconv.federation.client_app` (s, median of 3) | | {imports['fedconv.federation.client_app']:.2f} |",
        f"| `import fedconv.edge.board_app` (s, median of 3) | | {imports['fedconv.edge.board_app']:.2f} |",
        f"| one local epoch, digits partition 2 ({native['examples']} examples, s) | {native['epoch_seconds']:.3f} "
        f"| {board['epoch_seconds']:.3f} |",
        f"| native/emulated epoch ratio (board-speed factor) | 1 "
        f"| {board['epoch_seconds'] / native['epoch_seconds']:.1f}x slower |",
        f"| train message: work on the warm worker (s, median) | {med(native_rows, 'work_seconds')} "
        f"| {med(board_rows, 'work_seconds')} |",
        f"| train message: ClientApp process start to reply (s, median) | {med(native_rows, 'process_seconds')} "
        f"| {med(board_rows, 'process_seconds')} |",
        "",
        f"Rounds ({len(rounds)}, 3 SuperNodes, TLS + auth): "
        + ", ".join(f"{float(r['round_seconds']):.1f}s" for r in rounds)
        + f"; clients ok per round: {[int(r['clients_ok']) for r in rounds]}; "
        f"the board's updates aggregated in rounds {[int(r['round']) for r in board_rows if r['status'] == 'ok']}; "
        f"partition.json sources: {[c['source'] for c in partition['clients']]}",
        f"Board packages: {', '.join(install['packages'])}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
