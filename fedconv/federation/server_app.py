"""The fedconv ServerApp: runs Flower's strategy and writes the run directory.

Reads only ``context.run_config``; ``output_dir`` in it is an absolute path chosen by the
entry point (Flower's processes do not share the caller's working directory).
"""

from __future__ import annotations

import gc
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedconv import __version__, algorithms, records
from fedconv.config import from_run_config
from fedconv.data.partitioning import histogram_record, partition_record
from fedconv.federation import client_state, stopping
from fedconv.federation.cohorts import Cohorts
from fedconv.federation.rounds import FederatedRounds, RoundPolicy
from fedconv.learning import task
from fedconv.learning.models import (
    buffer_names,
    channels_last,
    count_parameters,
    recalibrate_batchnorm,
    state_bytes,
    transmitted_state,
)
from fedconv.learning.training import classification_report, evaluate, folded_for_inference, lr_for_round
from fedconv.runs import checkpoint, run_dir, timeline
from fedconv.runs.progress import RoundProgress
from fedconv.runs.tracking import Tracking
from fedconv.sections import Client, Faults, Server, Simulation, cohort_sizes, virtual_nodes
from fedconv.wire import compression
from fedconv.wire.ledger import short_reason

app = ServerApp()


class DiscoveryError(RuntimeError):
    """Not enough nodes answered with their partition id."""


@dataclass(frozen=True)
class NodeReport:
    """What a node said about its data when asked (train and held-out counts, and the
    label histogram of both together)."""

    node_id: int
    partition_id: int
    source: str
    num_train: int
    num_held_out: int
    label_histogram: list[int]


WAIT_REPORT_SECONDS = 15.0  # while nodes are awaited, a line this often says how many came


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """The connected node ids, once there are at least ``expected`` of them."""
    started = last_report = time.monotonic()
    while len(node_ids := list(grid.get_node_ids())) < expected:
        now = time.monotonic()
        if now > started + timeout:
            raise DiscoveryError(f"only {len(node_ids)} of {expected} nodes connected within {timeout:.0f}s "
                                 "(server.connect_timeout)")
        if now - last_report >= WAIT_REPORT_SECONDS:
            _console(f"waiting for SuperNodes: {len(node_ids)} of {expected} connected "
                     f"({now - started:.0f}s of server.connect_timeout={timeout:.0f}s)")
            last_report = now
        time.sleep(0.2)
    return node_ids


POOL_SETTLE_SECONDS = 2.0  # a simulation's node count that has not grown for this long is complete


def pool_nodes(grid: Grid, wanted: int, timeout: float) -> list[int]:
    """A simulation's node pool: up to ``wanted`` of the registered nodes. A simulation
    registers its nodes at start-up, so the pool is complete once ``wanted`` are there or
    their count has not grown for :data:`POOL_SETTLE_SECONDS` (``flwr run``'s federation has
    ``num-supernodes`` of them, whatever the cohort); a smaller pool serves each round's
    cohort a few partitions a node (:class:`~fedconv.federation.cohorts.Cohorts`)."""
    started = changed = time.monotonic()
    seen: list[int] = []
    while True:
        node_ids = sorted(grid.get_node_ids())
        now = time.monotonic()
        if len(node_ids) >= wanted:
            return node_ids[:wanted]
        if node_ids != seen:
            seen, changed = node_ids, now
        elif seen and now - changed >= POOL_SETTLE_SECONDS:
            return seen
        if now > started + timeout:
            raise DiscoveryError(f"no SuperNode connected within {timeout:.0f}s (server.connect_timeout)")
        time.sleep(0.2)


def discover_partitions(grid: Grid, expected: int, timeout: float, pool: list[int] | None = None) -> dict[int, NodeReport]:
    """Ask every node for its partition id and data (cohorts are sampled by partition id).

    With a ``pool`` of node ids, the server names partition i for the i-th of them instead:
    the query then only warms every pool node up (imports, data, model) and proves it can
    load a partition, as the per-client query does before round 1.
    """
    node_ids = pool if pool is not None else wait_for_nodes(grid, expected, timeout)
    messages = [
        Message(RecordDict({"config": ConfigRecord({"partition-id": i} if pool is not None else {})}), dst_node_id=n,
                message_type=MessageType.QUERY)
        for i, n in enumerate(node_ids)
    ]
    replies = stopping.send_and_receive(grid, messages, timeout)
    reports: dict[int, NodeReport] = {}
    errors = []
    for reply in replies:
        if reply.has_error():
            errors.append(short_reason(reply.error.reason))
            continue
        r = reply.content.config_records["partition"]
        node = reply.metadata.src_node_id
        reports[node] = NodeReport(node, records.integer(r, "partition-id"), str(r["source"]),
                                   records.integer(r, "num-train"), records.integer(r, "num-held-out"),
                                   records.integers(r, "label-histogram"))
    pids = sorted(rep.partition_id for rep in reports.values())
    if pids != list(range(expected)):
        detail = f"; node errors: {errors[:3]}" if errors else ""
        raise DiscoveryError(f"expected partition ids 0..{expected - 1}, nodes reported {pids[:20]}{detail}")
    return reports


def reported_partitions(reports: Mapping[int, NodeReport], num_classes: int) -> dict[str, Any]:
    """partition.json from what the nodes reported (simulated partitions and device folders alike)."""
    by_pid = sorted(reports.values(), key=lambda r: r.partition_id)
    hist = np.array([r.label_histogram for r in by_pid], dtype=np.int64)
    record = histogram_record(hist, [r.num_train for r in by_pid], [r.num_held_out for r in by_pid])
    for client, rep in zip(record["clients"], by_pid, strict=True):
        client["source"] = rep.source
    return record


def run_rounds(
    strategy: FederatedRounds, grid: Grid, arrays: ArrayRecord, first_round: int, last_round: int,
    timeout: float, end_round: Callable[[int, ArrayRecord], None],
) -> ArrayRecord:
    """Flower's ``Strategy.start`` loop (train, federated evaluation, then our hook),
    from any round: ``start`` always begins at round 1, a resumed run does not."""
    for server_round in range(first_round, last_round + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        new_arrays, _ = strategy.aggregate_train(server_round, stopping.send_and_receive(grid, messages, timeout))
        if new_arrays is not None:  # None: no valid replies, the round is skipped
            arrays = new_arrays
        messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        if messages:
            strategy.aggregate_evaluate(server_round, stopping.send_and_receive(grid, messages, timeout))
        end_round(server_round, arrays)
    return arrays


def source_commit() -> str:
    """The git commit of the fedconv source this process runs, "+dirty" when it has
    uncommitted changes, or "" outside a git checkout (an installed wheel)."""
    import subprocess

    here = Path(__file__).resolve().parents[1]  # the fedconv package
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def _versions() -> dict[str, str]:
    import flwr

    return {
        "fedconv": __version__,
        "commit": source_commit(),
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _console(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


class RunRecorder:
    """Turns each finished round into a rounds.csv row and tracks the summary."""

    def __init__(self, out: Path, cfg: dict[str, Any], strategy: FederatedRounds, model: torch.nn.Module) -> None:
        self.out = out
        self.cfg = cfg
        self.strategy = strategy
        self.server = Server.of(cfg)
        self.rounds = self.server.rounds
        self.eval_every = self.server.eval_every
        self.with_train = self.server.with_train_eval
        self.ds = task.dataset(cfg)
        self.eval_model = model
        self.norm = task.normalizer(cfg, self.ds, train=False)
        self.started = time.perf_counter()
        self.bytes_total = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.bytes_down_raw = 0  # what the same messages would have carried uncompressed
        self.bytes_up_raw = 0
        self.rows: list[dict[str, Any]] = []
        self.final_state: dict[str, torch.Tensor] | None = None
        self.resumed_from: int | None = None
        self.progress: RoundProgress | None = None  # the console: lines, and a bar on a terminal
        self.tracking = Tracking([])  # TensorBoard etc., fed with each rounds.csv row

    def console(self, line: str) -> None:
        if self.progress is None:
            _console(line)
        else:
            self.progress.line(line)

    def end_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """After a round: central evaluation, one rounds.csv row, then the checkpoint."""
        record = self.strategy.current
        state = arrays.to_torch_state_dict()
        central: dict[str, float] = {}
        if server_round % self.eval_every == 0 or server_round == self.rounds:
            task.load_global(self.eval_model, state)
            if self.strategy.local_names:  # FedBN: no global BatchNorm; AdaBN on unlabelled test images
                self._recalibrate()
            res = evaluate(
                folded_for_inference(self.eval_model), self.ds.test_x, self.ds.test_y, self.norm,
                batch_size=self.server.eval_batch_size, precision=self.server.eval_precision,
            )
            central = {"central_accuracy": res.accuracy, "central_loss": res.loss}
            if res.top5 is not None:
                central["central_top5"] = res.top5
            if server_round == self.rounds:
                report = classification_report(np.asarray(self.ds.test_y), res.predictions, self.ds.num_classes)
                report.update(round=server_round, accuracy=res.accuracy, loss=res.loss, top5=res.top5)
                run_dir.write_json(self.out / run_dir.CLASS_REPORT, report)
        self.write_round(server_round, record, central)
        tensors, layout = self.strategy.state()
        checkpoint.save(self.out / run_dir.CHECKPOINT, server_round, state, {**self.checkpoint_state(), "algorithm": layout},
                        algorithm_state=tensors)
        if server_round == self.rounds:
            self.final_state = state
            if self.strategy.local_names:  # the model the central accuracy measured: with its AdaBN statistics
                evaluated = self.eval_model.state_dict()
                self.final_state = {k: (evaluated[k].detach().clone().contiguous() if k in self.strategy.local_names
                                        else v) for k, v in state.items()}

    def _recalibrate(self) -> None:
        n = int(self.cfg["strategy"]["calibration_images"])
        images = self.ds.test_x[:n]
        batch = self.server.eval_batch_size
        recalibrate_batchnorm(self.eval_model, (
            self.norm(images[i : i + batch]).contiguous(memory_format=torch.channels_last) for i in range(0, len(images), batch)))

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything besides the weights that a resumed run needs to continue the ledger."""
        return {
            "bytes_total": self.bytes_total,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "bytes_down_raw": self.bytes_down_raw,
            "bytes_up_raw": self.bytes_up_raw,
            "elapsed_seconds": time.perf_counter() - self.started,
            "strategy": dict(self.cfg["strategy"]),
            "seed": int(self.cfg["seed"]),
        }

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        """Continue from a checkpoint: drop rows of rounds after it, reload the totals."""
        k = ckpt.server_round
        self.rows = run_dir.truncate_rows(self.out / run_dir.ROUNDS, run_dir.ROUND_COLUMNS, k)
        run_dir.truncate_rows(self.out / run_dir.CLIENTS, run_dir.CLIENT_COLUMNS, k)
        run_dir.truncate_rows(self.out / run_dir.UPDATES, run_dir.UPDATE_COLUMNS, k)
        run_dir.truncate_rows(self.out / run_dir.PAIRS, run_dir.PAIR_COLUMNS, k)
        if len(self.rows) != k:
            raise checkpoint.CheckpointError(
                f"{self.out / run_dir.ROUNDS} holds {len(self.rows)} complete rounds up to the checkpoint's round {k}"
            )
        st = ckpt.state
        self.bytes_total, self.bytes_down, self.bytes_up = int(st["bytes_total"]), int(st["bytes_down"]), int(st["bytes_up"])
        # checkpoints written before compression existed: nothing was compressed
        self.bytes_down_raw = int(st.get("bytes_down_raw", self.bytes_down))
        self.bytes_up_raw = int(st.get("bytes_up_raw", self.bytes_up))
        self.started = time.perf_counter() - float(st["elapsed_seconds"])
        self.strategy.restore(ckpt.algorithm_state, st.get("algorithm", {}))
        self.resumed_from = k

    def write_round(self, server_round: int, record: Any, central: dict[str, float]) -> None:
        """One round: its rows in ``rounds.csv`` and ``clients.csv``, the sinks, the console."""
        row = self._round_row(server_round, record, central)
        run_dir.append_row(self.out / run_dir.ROUNDS, run_dir.ROUND_COLUMNS, row)
        self.tracking.round(row)
        for client_row in record.client_rows:
            run_dir.append_row(self.out / run_dir.CLIENTS, run_dir.CLIENT_COLUMNS, client_row)
        if record.update_rows:
            run_dir.append_rows(self.out / run_dir.UPDATES, run_dir.UPDATE_COLUMNS, record.update_rows)
        if record.update_pairs:
            run_dir.append_rows(self.out / run_dir.PAIRS, run_dir.PAIR_COLUMNS, record.update_pairs)
        self.rows.append(row)
        self._print_round(server_round, record, row)
        if self.progress is not None:
            self.progress.round_done(server_round, row.get("central_accuracy"), self.bytes_total / 1e6)

    def _round_row(self, server_round: int, record: Any, central: dict[str, float]) -> dict[str, Any]:
        """The round's ``rounds.csv`` row, the run's byte totals counted on."""
        now = time.perf_counter()
        self.bytes_down += record.bytes_down + record.bytes_eval_down
        self.bytes_up += record.bytes_up
        self.bytes_total += record.bytes_down + record.bytes_up + record.bytes_eval_down
        raw_down = record.bytes_down_raw + record.bytes_eval_down_raw
        self.bytes_down_raw += raw_down
        self.bytes_up_raw += record.bytes_up_raw
        fed_accs = [r["accuracy"] for r in record.client_rows if r["phase"] == "evaluate"]
        return {
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
            "clients_rejected": record.clients_rejected,
            "clients_dropped": record.clients_dropped,
            "stragglers": len(record.stragglers),
            "round_skipped": int(record.skipped),
            # which clients and which global model fed_accuracy/fed_loss are about
            "fed_cohort": None if record.fed_accuracy is None else ("train" if self.with_train else "evaluate"),
            "fed_model_round": None if record.fed_accuracy is None else server_round - int(self.with_train),
            "compression_down": _ratio(record.bytes_down + record.bytes_eval_down, raw_down),
            "compression_up": _ratio(record.bytes_up, record.bytes_up_raw),
            **record.update_summary,
        }

    def _print_round(self, server_round: int, record: Any, row: Mapping[str, Any]) -> None:
        acc = row.get("central_accuracy")
        acc_s = f"acc {acc:.4f}  loss {row['central_loss']:.4f}" if acc is not None else "acc    -  "
        fails = "".join(
            f"  {label} {n}"
            for label, n in (("failed", record.clients_failed), ("rejected", record.clients_rejected),
                             ("dropped", record.clients_dropped))
            if n
        )
        if record.skipped:
            fails += (f"  SKIPPED: {record.clients_ok} valid replies < server.min_train_replies="
                      f"{self.strategy.policy.min_train_replies}, global model unchanged")
        self.console(
            f"[round {server_round:>3}/{self.rounds}] {acc_s}  "
            f"down {record.bytes_down / 1e6:.2f} MB  up {record.bytes_up / 1e6:.2f} MB  "
            f"{row['round_seconds']:.1f}s{fails}"
        )
        for failure in record.failures:
            self.console(f"    client failure: {failure[:300]}")

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
            "rounds_skipped": sum(int(r.get("round_skipped") or 0) for r in self.rows),
            "resumed_from_round": self.resumed_from,
            "bytes_down_total": self.bytes_down,
            "bytes_up_total": self.bytes_up,
            "bytes_total": self.bytes_total,
            "bytes_down_raw_total": self.bytes_down_raw,
            "bytes_up_raw_total": self.bytes_up_raw,
            "compression": {d: dict(self.cfg["compression"][d])
                            for d in ("downlink", "uplink")},
            "wall_seconds": time.perf_counter() - self.started,
            # measuring the updates' geometry in this process (a resumed run: since it resumed)
            "update_geometry_seconds": self.strategy.geometry_seconds,
            "num_parameters": count_parameters(model),
            "model_bytes": state_bytes(model),
            "seed": int(self.cfg["seed"]),
            "nodes": Simulation.of(self.cfg).nodes,
            "virtual_nodes": virtual_nodes(self.cfg),
            "versions": _versions(),
            # seconds from the command's (or sweep job's) start to each milestone before round 1
            "startup_seconds": timeline.marks(),
            "ray": timeline.runtime("ray"),
        }


def _ratio(sent: int, raw: int) -> float | None:
    """Bytes sent per byte the same arrays take uncompressed (1.0 without compression)."""
    return sent / raw if raw else None


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        serve(grid, context)
    except stopping.RunStopped as stop:  # before the first round: nothing to record
        _console(f"{stop} before the first round")


def _output_dir(cfg: dict[str, Any], context: Context) -> Path:
    # `flwr run .` of the repo's own app has no output_dir: write under the ServerApp's cwd.
    out = Path(str(cfg.get("output_dir") or Path.cwd() / "results" / "flwr-runs" / str(context.run_id)))
    if not out.is_absolute():
        raise ValueError(f"output_dir must be an absolute path, got '{out}'")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _federation(grid: Grid, cfg: dict[str, Any], ds: task.ImageDataset, out: Path) -> tuple[Cohorts, dict[int, int]]:
    """Discover the nodes, write ``partition.json``: the cohorts and each partition's size."""
    sim, connect_timeout = Simulation.of(cfg), Server.of(cfg).connect_timeout
    num_clients = sim.num_clients
    train_k, eval_k = cohort_sizes(cfg)
    seed = int(cfg["seed"])
    if sim.nodes == "pool":
        # Virtual nodes of a simulation can load any partition: only the pool is queried (to
        # warm it up), the server knows the partitions (made once per machine, from the disk
        # cache) and names one in every message.
        nodes = pool_nodes(grid, virtual_nodes(cfg), connect_timeout)
        if len(nodes) < max(train_k, eval_k):
            _console(f"node pool: {len(nodes)} SuperNodes for cohorts of {max(train_k, eval_k)}: each serves "
                     f"up to {-(-max(train_k, eval_k) // len(nodes))} partitions a round, one after another")
        warmed = discover_partitions(grid, len(nodes), connect_timeout, pool=nodes)
        timeline.mark("nodes_ready")
        pool = sorted(warmed, key=lambda node: warmed[node].partition_id)
        parts = task.partitions(cfg, num_clients)
        record = partition_record(np.asarray(ds.train_y), parts, ds.num_classes)
        for client in record["clients"]:
            client["source"] = "partition"
        run_dir.write_json(out / run_dir.PARTITION, record)
        cohorts = Cohorts.pooled(pool, num_clients, seed=seed, train_per_round=train_k, eval_per_round=eval_k)
        return cohorts, {pid: len(t) for pid, t in enumerate(parts.train)}
    reports = discover_partitions(grid, num_clients, connect_timeout)
    timeline.mark("nodes_ready")
    run_dir.write_json(out / run_dir.PARTITION, reported_partitions(reports, ds.num_classes))
    owners = {node: rep.partition_id for node, rep in reports.items()}
    cohorts = Cohorts.owned(owners, seed=seed, train_per_round=train_k, eval_per_round=eval_k)
    return cohorts, {rep.partition_id: rep.num_train for rep in reports.values()}


def _round_engine(cfg: dict[str, Any], cohorts: Cohorts, sizes: dict[int, int], model: torch.nn.Module) -> FederatedRounds:
    """The configured algorithm's Flower strategy inside fedconv's round engine."""
    server, client = Server.of(cfg), Client.of(cfg)
    policy = RoundPolicy(
        straggler_fraction=Faults.of(cfg).straggler_fraction,
        local_epochs=client.epochs,
        stragglers=str(cfg["strategy"]["stragglers"]),
        min_train_replies=server.min_train_replies,
    )
    algorithm = algorithms.get(str(cfg["strategy"]["name"]))
    return FederatedRounds(
        algorithm, cfg["strategy"], cohorts,
        lr_for_round=lambda r: lr_for_round(server, client.lr, r),
        policy=policy, partition_sizes=sizes, buffer_names=buffer_names(model),
        local_names=algorithm.local_arrays(model), link=compression.Link.from_config(cfg),
        evaluate_with_train=server.with_train_eval,
        initial={k: v.detach().numpy().copy() for k, v in transmitted_state(model).items()},
    )


def _resumed(cfg: dict[str, Any], out: Path, model: torch.nn.Module, recorder: RunRecorder) -> tuple[ArrayRecord, int]:
    """The global model to send first and the first round: the initial model and 1, or the
    checkpoint's model and the round after it (``resume=``), with its state put back."""
    if not cfg.get("resume"):
        return ArrayRecord(transmitted_state(model)), 1
    ckpt = checkpoint.load(out / run_dir.CHECKPOINT)
    task.load_global(model, ckpt.weights)  # the checkpoint must fit this config's model
    arrays = ArrayRecord({k: ckpt.weights[k] for k in transmitted_state(model)})
    torch.set_rng_state(ckpt.torch_rng)
    recorder.restore(ckpt)
    _console(f"resuming after round {ckpt.server_round} from {out / run_dir.CHECKPOINT}")
    return arrays, ckpt.server_round + 1


def _start_sinks(recorder: RunRecorder, cfg: dict[str, Any], out: Path, first_round: int) -> None:
    """The console's progress bar and the tracking sinks, continuing from ``first_round``."""
    recorder.progress = RoundProgress(recorder.rounds, done=first_round - 1)
    clients = json.loads((out / run_dir.PARTITION).read_text()).get("clients", [])
    recorder.tracking = Tracking.for_run(cfg, out, first_round,
                                         np.array([c.get("label_histogram", []) for c in clients]))


def _rounds_then_summary(strategy: FederatedRounds, grid: Grid, arrays: ArrayRecord, first_round: int,
                         out: Path, model: torch.nn.Module, recorder: RunRecorder) -> dict[str, Any]:
    """Run the rounds; whatever ends them, write the final weights and ``summary.json``."""
    server = recorder.server
    status = "failed"
    try:
        run_rounds(strategy, grid, arrays, first_round, server.rounds, server.round_timeout, recorder.end_round)
        status = "completed" if len(recorder.rows) == recorder.rounds else "failed"
    except stopping.RunStopped:  # Ctrl-C or SIGTERM: keep the completed rounds, end quietly
        status = "interrupted"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if recorder.progress is not None:
            recorder.progress.close()
        if recorder.final_state is not None:
            run_dir.save_weights(out / run_dir.WEIGHTS, recorder.final_state)
        summary = recorder.summary(status, model)
        run_dir.write_json(out / run_dir.SUMMARY, summary)
        recorder.tracking.end(summary)
    return summary


def _print_done(summary: Mapping[str, Any]) -> None:
    def accuracy(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "n/a"

    _console(
        f"done: {summary['status']}, {summary['rounds_completed']} rounds, "
        f"final accuracy {accuracy(summary['final_central_accuracy'])}, "
        f"best {accuracy(summary['best_central_accuracy'])} (round {summary['best_round']}), "
        f"{summary['bytes_total'] / 1e6:.1f} MB, {summary['wall_seconds']:.1f}s"
    )


def serve(grid: Grid, context: Context) -> None:
    """Discover the nodes, run the rounds, write the run directory."""
    timeline.mark("server_app")
    cfg = from_run_config(context.run_config)
    out = _output_dir(cfg, context)
    if not cfg.get("output_dir"):  # `flwr run .`: no command wrote the run's config.yaml
        cfg = {**cfg, "output_dir": str(out)}
        run_dir.write_config(out, cfg)
    ds = task.dataset(cfg)
    cohorts, sizes = _federation(grid, cfg, ds, out)
    model = task.initial_model(cfg, ds)
    strategy = _round_engine(cfg, cohorts, sizes, model)
    if strategy.stateful:
        client_state.prepare_shared(cfg)
    recorder = RunRecorder(out, cfg, strategy, channels_last(task.initial_model(cfg, ds)))
    arrays, first_round = _resumed(cfg, out, model, recorder)
    # Flower's q-FedAvg, Bulyan and FedTrimmedAvg call gc.collect() for every reply; with the
    # start-up heap (torch, Flower, the dataset) frozen out of the collector's reach, each
    # collection scans only what the rounds allocate.
    gc.freeze()
    _start_sinks(recorder, cfg, out, first_round)
    timeline.mark("first_round")
    _print_done(_rounds_then_summary(strategy, grid, arrays, first_round, out, model, recorder))
