"""The fedconv ServerApp: runs Flower's strategy and writes the run directory.

Reads only ``context.run_config``; ``output_dir`` in it is an absolute path chosen by the
entry point (Flower's processes do not share the caller's working directory).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedconv import __version__, run_dir, task
from fedconv.config import clients_per_round, from_run_config
from fedconv.models import count_parameters, state_bytes, transmitted_state
from fedconv.partitioning import partition_record
from fedconv.strategies import LedgerMixin, make_strategy
from fedconv.training import classification_report, evaluate, lr_for_round

app = ServerApp()


class DiscoveryError(RuntimeError):
    """Not enough nodes answered with their partition id."""


def discover_partitions(grid: Grid, expected: int, timeout: float) -> dict[int, int]:
    """Ask every node for its partition id (cohorts are sampled by partition id)."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise DiscoveryError(f"only {len(node_ids)} of {expected} nodes connected within {timeout:.0f}s")
        time.sleep(0.2)
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in node_ids
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    mapping: dict[int, int] = {}
    for reply in replies:
        if not reply.has_error():
            mapping[reply.metadata.src_node_id] = int(reply.content["partition"]["partition-id"])
    pids = sorted(mapping.values())
    if pids != list(range(expected)):
        raise DiscoveryError(f"expected partition ids 0..{expected - 1}, nodes reported {pids[:20]}")
    return mapping


def _versions() -> dict[str, str]:
    import flwr

    return {
        "fedconv": __version__,
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _console(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


class RunRecorder:
    """Turns each finished round into a rounds.csv row and tracks the summary."""

    def __init__(self, out: Path, cfg: dict[str, Any], strategy: LedgerMixin, model: torch.nn.Module) -> None:
        self.out = out
        self.cfg = cfg
        self.strategy = strategy
        self.rounds = int(cfg["server"]["rounds"])
        self.eval_every = int(cfg["server"]["eval_every"])
        self.ds = task.dataset(cfg)
        self.eval_model = model
        self.norm = task.normalizer(cfg, self.ds, train=False)
        self.started = time.perf_counter()
        self.bytes_total = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.rows: list[dict[str, Any]] = []
        self.final_state: dict[str, torch.Tensor] | None = None

    def central_eval(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower calls this after every round (and with round 0 before the first)."""
        if server_round == 0:
            return None
        record = self.strategy.current
        central: dict[str, float] = {}
        if server_round % self.eval_every == 0 or server_round == self.rounds:
            task.load_global(self.eval_model, arrays.to_torch_state_dict())
            res = evaluate(
                self.eval_model, self.ds.test_x, self.ds.test_y, self.norm,
                batch_size=int(self.cfg["server"]["eval_batch_size"]),
            )
            central = {"central_accuracy": res.accuracy, "central_loss": res.loss}
            if res.top5 is not None:
                central["central_top5"] = res.top5
            if server_round == self.rounds:
                report = classification_report(np.asarray(self.ds.test_y), res.predictions, self.ds.num_classes)
                report.update(round=server_round, accuracy=res.accuracy, loss=res.loss, top5=res.top5)
                run_dir.write_json(self.out / run_dir.CLASS_REPORT, report)
        self.write_round(server_round, record, central)
        if server_round == self.rounds:
            self.final_state = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}
        return MetricRecord(central) if central else None

    def write_round(self, server_round: int, record: Any, central: dict[str, float]) -> None:
        now = time.perf_counter()
        self.bytes_down += record.bytes_down + record.bytes_eval_down
        self.bytes_up += record.bytes_up
        self.bytes_total += record.bytes_down + record.bytes_up + record.bytes_eval_down
        fed_accs = [r["accuracy"] for r in record.client_rows if r["phase"] == "evaluate"]
        row = {
            "round": server_round,
            **central,
            "fed_accuracy": record.fed_accuracy,
            "fed_loss": record.fed_loss,
            "train_loss": record.train_loss,
            "train_accuracy": record.train_accuracy,
            "clients_sampled": record.clients_sampled,
            "clients_ok": record.clients_ok,
            "clients_failed": record.clients_failed,
            "bytes_down": record.bytes_down,
            "bytes_up": record.bytes_up,
            "bytes_eval_down": record.bytes_eval_down,
            "bytes_total_cum": self.bytes_total,
            "round_seconds": now - record.started,
            "elapsed_seconds": now - self.started,
            "lr": record.lr,
            "eval_clients_sampled": record.eval_clients_sampled,
            "eval_clients_ok": record.eval_clients_ok,
            "fed_accuracy_p10": float(np.percentile(fed_accs, 10)) if fed_accs else None,
            "fed_accuracy_min": float(min(fed_accs)) if fed_accs else None,
        }
        run_dir.append_row(self.out / run_dir.ROUNDS, run_dir.ROUND_COLUMNS, row)
        for client_row in record.client_rows:
            run_dir.append_row(self.out / run_dir.CLIENTS, run_dir.CLIENT_COLUMNS, client_row)
        self.rows.append(row)
        acc = row.get("central_accuracy")
        acc_s = f"acc {acc:.4f}  loss {row['central_loss']:.4f}" if acc is not None else "acc    -  "
        fails = f"  failed {record.clients_failed}" if record.clients_failed else ""
        _console(
            f"[round {server_round:>3}/{self.rounds}] {acc_s}  "
            f"down {record.bytes_down / 1e6:.2f} MB  up {record.bytes_up / 1e6:.2f} MB  "
            f"{row['round_seconds']:.1f}s{fails}"
        )
        for failure in record.failures:
            _console(f"    client failure: {failure[:300]}")

    def summary(self, status: str, model: torch.nn.Module) -> dict[str, Any]:
        evaluated = [r for r in self.rows if r.get("central_accuracy") is not None]
        best = max(evaluated, key=lambda r: r["central_accuracy"], default=None)
        final = evaluated[-1] if evaluated else None
        return {
            "status": status,
            "name": self.cfg["name"],
            "strategy": self.cfg["strategy"]["name"],
            "dataset": self.cfg["dataset"]["name"],
            "model": self.cfg["model"]["name"],
            "partition": self.cfg["partition"]["name"],
            "final_central_accuracy": final["central_accuracy"] if final else None,
            "final_central_loss": final["central_loss"] if final else None,
            "final_round": final["round"] if final else None,
            "best_central_accuracy": best["central_accuracy"] if best else None,
            "best_round": best["round"] if best else None,
            "rounds_completed": len(self.rows),
            "rounds_planned": self.rounds,
            "bytes_down_total": self.bytes_down,
            "bytes_up_total": self.bytes_up,
            "bytes_total": self.bytes_total,
            "wall_seconds": time.perf_counter() - self.started,
            "num_parameters": count_parameters(model),
            "model_bytes": state_bytes(model),
            "seed": int(self.cfg["seed"]),
            "versions": _versions(),
        }


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = from_run_config(context.run_config)
    out = Path(str(cfg["output_dir"]))
    if not out.is_absolute():
        raise ValueError(f"output_dir must be an absolute path, got '{out}'")
    out.mkdir(parents=True, exist_ok=True)
    ds = task.dataset(cfg)
    num_clients = int(cfg["simulation"]["num_clients"])
    server = cfg["server"]
    timeout = float(server["round_timeout"])

    parts = task.partitions(cfg, num_clients)
    run_dir.write_json(out / run_dir.PARTITION, partition_record(np.asarray(ds.train_y), parts, ds.num_classes))

    node_to_pid = discover_partitions(grid, num_clients, timeout)
    strategy = make_strategy(cfg["strategy"], float(server["fraction_evaluate"]))
    fraction_eval = float(server["fraction_evaluate"])
    strategy.setup_ledger(
        node_to_pid=node_to_pid,
        seed=int(cfg["seed"]),
        train_per_round=clients_per_round(num_clients, float(server["fraction_train"]), int(server["min_train_clients"])),
        eval_per_round=(
            clients_per_round(num_clients, fraction_eval, int(server["min_evaluate_clients"])) if fraction_eval > 0 else 0
        ),
        lr_for_round=lambda r: lr_for_round(server, float(cfg["client"]["lr"]), r),
    )
    model = task.initial_model(cfg, ds)
    eval_model = task.initial_model(cfg, ds).to(memory_format=torch.channels_last)
    recorder = RunRecorder(out, cfg, strategy, eval_model)
    status = "failed"
    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(transmitted_state(model)),
            num_rounds=int(server["rounds"]),
            timeout=timeout,
            train_config=ConfigRecord({}),
            evaluate_config=ConfigRecord({}),
            evaluate_fn=recorder.central_eval,
        )
        status = "completed" if len(recorder.rows) == recorder.rounds else "failed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if recorder.final_state is not None:
            run_dir.save_weights(out / run_dir.WEIGHTS, recorder.final_state)
        summary = recorder.summary(status, model)
        run_dir.write_json(out / run_dir.SUMMARY, summary)
    acc = summary["final_central_accuracy"]
    acc_text = f"{acc:.4f}" if isinstance(acc, float) and math.isfinite(acc) else "n/a"
    _console(
        f"done: {summary['status']}, {summary['rounds_completed']} rounds, final accuracy {acc_text}, "
        f"best {summary['best_central_accuracy']} (round {summary['best_round']}), "
        f"{summary['bytes_total'] / 1e6:.1f} MB, {summary['wall_seconds']:.1f}s"
    )
