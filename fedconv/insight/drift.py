"""Client drift: the geometry of one round's client updates.

For the global model ``w`` a round sent, client ``i``'s reply ``w_i`` and the new global
model ``w'``, the update is ``u_i = w_i - w`` and the aggregate step ``d = w' - w`` (what the
server actually did: for FedAvg the weighted mean of the ``u_i``, for FedAdam or FedAvgM its
optimizer's step). Over the model's parameters (BatchNorm statistics and arrays that stay on
the clients left out), per client: ``||u_i||`` and ``cos(u_i, d)``, for the whole model and
per layer; per round: their means, ``||d||``, the mean cosine over pairs of distinct clients
(``cos(u_i, u_j)``: near 1 when clients agree, near 0 or below when non-IID data pulls them
apart, the quantity SCAFFOLD sets out to fix), and ``||w' - w_0||``, the distance travelled
from the initial model.

The pairwise mean uses every pair of at most :data:`PAIRS_OF` clients; a larger cohort is
sampled, seeded by the round. Each of those pairs' cosine is kept too (``client_pairs.csv``:
the report's similarity heatmap of a round). Written by hand: a few NumPy lines on arrays fedconv already
holds (no library computes these from Flower's records).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Arrays = Mapping[str, np.ndarray]
PAIRS_OF = 32  # clients whose every pair enters the pairwise mean (a larger cohort is sampled)
MODEL = "model"  # the layer name of the rows about the whole model


@dataclass(frozen=True)
class Geometry:
    """One round: ``summary`` for rounds.csv, ``rows`` for client_updates.csv, ``pairs`` for
    client_pairs.csv."""

    summary: dict[str, float | None]
    rows: list[dict[str, object]] = field(default_factory=list)
    pairs: list[dict[str, object]] = field(default_factory=list)


def _flat(arrays: Arrays, names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[n], dtype=np.float64).ravel() for n in names]) if names else np.zeros(0)


def cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """cos(a, b); None when either is the zero vector (no direction)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else None


def layers(names: Sequence[str]) -> dict[str, list[str]]:
    """Parameter names grouped by layer: ``block1.0.weight`` and ``block1.0.bias`` -> ``block1.0``."""
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(name.rsplit(".", 1)[0] if "." in name else name, []).append(name)
    return grouped


def pairwise_cosines(updates: np.ndarray, server_round: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``updates`` that enter the pairwise figures (non-zero ones; at most
    :data:`PAIRS_OF`, sampled by the round) and their cosine matrix ``cos(u_i, u_j)``."""
    norms = np.linalg.norm(updates, axis=1)
    rows = np.flatnonzero(norms > 0)
    if len(rows) > PAIRS_OF:
        rows = np.sort(np.random.default_rng([server_round, len(rows)]).choice(rows, PAIRS_OF, replace=False))
    unit = updates[rows] / norms[rows, None]
    return rows, unit @ unit.T


def _off_diagonal_mean(gram: np.ndarray) -> float | None:
    k = len(gram)
    return float((gram.sum() - np.trace(gram)) / (k * (k - 1))) if k >= 2 else None


def mean_pairwise_cosine(updates: np.ndarray, server_round: int) -> float | None:
    """Mean of cos(u_i, u_j) over pairs i < j of the rows of ``updates`` (zero rows left out)."""
    return _off_diagonal_mean(pairwise_cosines(updates, server_round)[1])


def _pair_rows(server_round: int, pids: Sequence[int], rows: np.ndarray, gram: np.ndarray) -> list[dict[str, object]]:
    """client_pairs.csv's rows: ``cos(u_a, u_b)`` for each pair a < b the pairwise mean used."""
    return [{"round": server_round, "partition_a": pids[rows[i]], "partition_b": pids[rows[j]],
             "cosine": float(gram[i, j])} for i in range(len(rows)) for j in range(i + 1, len(rows))]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def round_geometry(server_round: int, sent: Arrays, replies: Mapping[int, Arrays], new: Arrays,
                   names: Sequence[str], initial: Arrays | None = None) -> Geometry:
    """The geometry of one round (see the module docstring); ``replies`` by partition id,
    ``names`` the parameter arrays to measure."""
    names = sorted(names)
    base = _flat(sent, names)
    new_flat = _flat(new, names)
    step = new_flat - base
    pids = sorted(replies)
    updates = np.stack([_flat(replies[p], names) - base for p in pids]) if pids else np.zeros((0, len(base)))
    to_step = [cosine(u, step) for u in updates]
    picked, gram = pairwise_cosines(updates, server_round)
    rows: list[dict[str, object]] = [
        {"round": server_round, "partition_id": pid, "layer": MODEL, "norm": float(np.linalg.norm(u)),
         "cosine_to_aggregate": c} for pid, u, c in zip(pids, updates, to_step, strict=True)]
    ends = np.cumsum([np.asarray(sent[n]).size for n in names])
    span = {n: slice(int(e) - np.asarray(sent[n]).size, int(e)) for n, e in zip(names, ends, strict=True)}
    for layer, members in layers(names).items():  # each layer's part of the flat vectors, not re-read
        pick = np.concatenate([np.arange(span[n].start, span[n].stop) for n in members])
        for pid, u in zip(pids, updates[:, pick], strict=True):
            rows.append({"round": server_round, "partition_id": pid, "layer": layer,
                         "norm": float(np.linalg.norm(u)), "cosine_to_aggregate": cosine(u, step[pick])})
    summary: dict[str, float | None] = {
        "update_norm_mean": _mean([float(np.linalg.norm(u)) for u in updates]),
        "update_cosine_to_aggregate": _mean(to_step),
        "update_pairwise_cosine": _off_diagonal_mean(gram),
        "aggregate_step_norm": float(np.linalg.norm(step)),
        "distance_from_init": float(np.linalg.norm(new_flat - _flat(initial, names))) if initial else None,
    }
    return Geometry(summary, rows, _pair_rows(server_round, pids, picked, gram))
