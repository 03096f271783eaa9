"""Per-round checkpoints: one safetensors file, written atomically, never unpickled.

The file holds the global weights, the server's torch RNG state and the algorithm's server
state (FedAdam's moments, FedAvgM's momentum, ...) as tensors, and everything else (round,
the layout of that state, byte and time totals) as JSON in the safetensors metadata, so
weights and bookkeeping can never disagree after a crash between two writes.
Cohorts, faults and client shuffling are pure functions of (seed, round), so the round
number is what a resumed run needs to replay the rest exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedconv import atomic

FORMAT = "fedconv-checkpoint-1"
_WEIGHT, _RNG, _ALGORITHM = "global/", "rng/torch", "algorithm/"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or from another run."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    weights: dict[str, torch.Tensor]
    torch_rng: torch.Tensor
    state: dict[str, Any]
    algorithm_state: dict[str, np.ndarray] = field(default_factory=dict)


def save(path: Path, server_round: int, weights: Mapping[str, torch.Tensor], state: Mapping[str, Any],
         algorithm_state: Mapping[str, np.ndarray] | None = None) -> None:
    """Write the checkpoint of a completed round (atomically: temp file, fsync, rename)."""
    from safetensors.torch import save_file

    tensors = {f"{_WEIGHT}{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    tensors[_RNG] = torch.get_rng_state()
    for k, v in (algorithm_state or {}).items():
        tensors[f"{_ALGORITHM}{k}"] = torch.from_numpy(np.ascontiguousarray(v))
    meta = {"format": FORMAT, "round": str(server_round), "state": json.dumps(dict(state))}
    with atomic.replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load(path: Path) -> Checkpoint:
    """Read a checkpoint; safetensors parses only a JSON header and raw tensor bytes."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (the run never completed a round)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a fedconv checkpoint (format {meta.get('format')!r})")
        return Checkpoint(
            server_round=int(meta["round"]),
            weights={k[len(_WEIGHT):]: v for k, v in tensors.items() if k.startswith(_WEIGHT)},
            torch_rng=tensors[_RNG],
            state=json.loads(meta["state"]),
            algorithm_state={k[len(_ALGORITHM):]: v.numpy() for k, v in tensors.items() if k.startswith(_ALGORITHM)},
        )
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
