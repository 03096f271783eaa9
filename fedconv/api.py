"""fedconv from Python (a notebook, a script): the same config, checks and run directory as
the command line, and the run read back as values.

    from fedconv import api

    run = api.run(["dataset=digits", "server.rounds=5"])      # Hydra overrides, as on the command line
    run.series("central_accuracy")                             # [(1, 0.71), (2, 0.83), ...]
    run.summary["final_central_accuracy"], run.path            # summary.json, the run directory
    run.updates                                                # client_updates.csv: each client's drift
    trained = api.model(run)                                   # the final global model, its dataset
    trained.model(trained.prepare(trained.dataset.test_x[:8]))  # logits, inputs normalized as in training
    runs = [api.run(["dataset=digits", f"seed={s}"]) for s in range(3)]
    table = api.compare(runs, by=["strategy.name"])["rows"]    # what `fedconv report` prints

:func:`run` runs ``python -m fedconv.simulate`` with the overrides in a child process: the
same composition, checks and run directory as the command, its own Ray (started and ended
with the run), so an interpreter can call it again and again and keeps no Ray or Flower
state; the child's console lines come through as they are printed. Bad input raises
:class:`~fedconv.config.ConfigError` with the command's one-line reasons (the key and what is
allowed) and leaves nothing on disk; a run that fails raises :class:`RunFailed`. Sweeps
(``-m``) stay on the command line, whose launchers and sweepers they need.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedconv.config import EXIT_BAD_CONFIG, ConfigError
from fedconv.runs import report
from fedconv.runs.run_reader import Run, read_run

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fedconv.data.datasets import ImageDataset

__all__ = ["ConfigError", "Run", "RunFailed", "Trained", "compare", "model", "read", "run"]

RUN_LINE = "fedconv run -> "  # the command's line naming the run directory


class RunFailed(RuntimeError):
    """The run started and did not complete; ``run`` is what its directory holds (or None)."""

    def __init__(self, message: str, run: Run | None) -> None:
        super().__init__(message)
        self.run = run


def run(overrides: Sequence[str] = (), *, echo: bool = True) -> Run:
    """One run of ``python -m fedconv.simulate <overrides>``, read back (see the module
    docstring). ``echo=False`` keeps the console lines out of the notebook."""
    if isinstance(overrides, str):
        raise TypeError("overrides: a list of KEY=VALUE strings, e.g. ['dataset=digits', 'server.rounds=5']")
    if any(o.strip() in ("-m", "--multirun") for o in overrides):
        raise ConfigError("-m: a sweep runs from the command line (python -m fedconv.simulate -m ...); "
                          "api.run runs one configuration")
    lines, errors, code = _simulate(list(overrides), echo)
    if code == EXIT_BAD_CONFIG:
        raise ConfigError("\n".join(errors) or f"bad input (exit {code})")
    where = [line[len(RUN_LINE):].split(" (")[0] for line in lines if line.startswith(RUN_LINE)]
    done = read_run(Path(where[-1])) if where else None
    if code != 0 or done is None or done.status != "completed":
        status = done.status if done else "no run directory"
        detail = "; ".join(errors[-3:]) or (done.problem or "") if done else "; ".join(errors[-3:])
        raise RunFailed(f"the run ended {status} (exit {code}){': ' + detail if detail else ''}", done)
    return done


def _simulate(overrides: list[str], echo: bool) -> tuple[list[str], list[str], int]:
    """Run the command; its stdout lines, its error lines (one-line reasons, prefixes cut) and exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "fedconv.simulate", *overrides], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    lines = []
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if echo:
            print(line, end="", flush=True)
    stderr = proc.stderr.read()
    code = proc.wait()
    return lines, _reasons(stderr), code


def _reasons(stderr: str) -> list[str]:
    """The command's error lines without their prefixes; Hydra's message for an unknown group
    option (several lines, with its search path) as one line."""
    text = stderr.split("\nConfig search path:")[0]
    if "\nAvailable options in" in text:
        head, _, options = text.partition("\nAvailable options in ")
        group, _, names = options.partition(":")
        text = f"{head.strip()}; available options in {group}: {', '.join(n.strip() for n in names.split())}"
    return [r for line in text.splitlines() if line.strip() and (r := _reason(line))]


def _reason(line: str) -> str:
    for prefix in ("config error: ", "error: "):
        if line.startswith(prefix):
            return line[len(prefix):]
    return line if not line.startswith(("Traceback", "Set the environment variable HYDRA_FULL_ERROR")) else ""


def read(path: str | Path) -> Run:
    """A run directory read back strictly (:func:`fedconv.runs.run_reader.read_run`): a damaged
    one comes back with ``problem`` saying which file and why."""
    return read_run(Path(path))


def compare(runs: Sequence[Run] | Sequence[str | Path], by: Sequence[str] = report.DEFAULT_BY,
            facet: str | None = None, baseline: tuple[str, str] | None = None) -> dict[str, Any]:
    """What ``fedconv report`` prints, as data: ``rows`` (one per group: final accuracy with its
    interval over seeds, rounds to the target, bytes, ...), ``excluded`` runs and why,
    ``differences`` not controlled for, and the ``paired`` differences against ``baseline``."""
    inputs: list[Any] = list(runs)
    return report.compare(inputs, by=by, facet=facet, baseline=baseline)


@dataclass(frozen=True)
class Trained:
    """A completed run's final global model (eval mode), the dataset it learned, its config."""

    model: torch.nn.Module
    dataset: ImageDataset
    config: dict[str, Any]

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """Raw images ``(n, c, h, w)`` as the model takes them: normalized as in evaluation."""
        from fedconv.learning import task

        return task.normalizer(self.config, self.dataset, train=False)(images)


def model(run: Run | str | Path) -> Trained:
    """The final global model of a completed run (``model.safetensors``, no pickle), rebuilt
    from the run's config with its dataset; :class:`~fedconv.runs.run_dir.RunDirError` or
    FileNotFoundError name the file when the run has no fitting weights."""
    from fedconv.edge.export import load_run_model

    cfg, ds, net = load_run_model(run.path if isinstance(run, Run) else Path(run))
    return Trained(net, ds, cfg)
