"""Which partitions take part in a round, and which node serves each: seeded, by partition id.

Flower's strategies sample nodes with Python's global ``random``; fedconv samples
*partitions* from (seed, round, phase), so a cohort is the same on any runtime, for any
strategy, after a resume. The strategy is then shown only the cohort's nodes
(:class:`CohortGrid`) and takes all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp import Grid

TRAIN_SALT, EVAL_SALT = 0, 1


def sample_cohort(seed: int, server_round: int, salt: int, num_clients: int, k: int) -> list[int]:
    """The partition ids of one round's cohort: a pure function of seed and round."""
    rng = np.random.default_rng([seed, server_round, salt])
    return sorted(int(i) for i in rng.choice(num_clients, size=min(k, num_clients), replace=False))


class CohortGrid:
    """A view of the Grid whose only nodes are this round's cohort.

    Flower's strategies sample ``sample_size`` nodes out of ``grid.get_node_ids()``; with the
    cohort as the whole population they take exactly the cohort.
    """

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass(frozen=True)
class Phase:
    """One phase's cohort: node id -> partition id, and whether messages must name the
    partition (a node pool) or the node already owns it (devices, ``per_client``)."""

    node_to_pid: Mapping[int, int]
    names_partitions: bool

    @property
    def nodes(self) -> list[int]:
        return list(self.node_to_pid)

    def pid(self, node_id: int) -> int:
        return self.node_to_pid.get(node_id, -1)


@dataclass(frozen=True)
class Cohorts:
    """Seeded cohorts over ``num_partitions`` partitions, served either by the nodes that own
    them (``owners``: node -> partition) or by a ``pool`` of interchangeable nodes, to which a
    phase's partitions are dealt in order."""

    seed: int
    num_partitions: int
    train_per_round: int
    eval_per_round: int
    owners: Mapping[int, int] | None = None
    pool: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.owners is None) == (self.pool is None):
            raise ValueError("Cohorts: pass either owners (node -> partition) or a pool of node ids")
        largest = max(self.train_per_round, self.eval_per_round)
        if self.pool is not None and largest > len(self.pool):
            raise ValueError(f"a node pool of {len(self.pool)} cannot serve cohorts of {largest}")

    @classmethod
    def owned(cls, owners: Mapping[int, int], **kw: Any) -> Cohorts:
        return cls(num_partitions=len(owners), owners=dict(owners), **kw)

    @classmethod
    def pooled(cls, pool: list[int], num_partitions: int, **kw: Any) -> Cohorts:
        return cls(num_partitions=num_partitions, pool=tuple(pool), **kw)

    def phase(self, server_round: int, train: bool) -> Phase:
        """The nodes of this round's training (or evaluation) cohort and their partitions."""
        salt, k = (TRAIN_SALT, self.train_per_round) if train else (EVAL_SALT, self.eval_per_round)
        pids = sample_cohort(self.seed, server_round, salt, self.num_partitions, k)
        if self.pool is not None:
            return Phase(dict(zip(self.pool, pids, strict=False)), names_partitions=True)
        assert self.owners is not None
        by_pid = {pid: node for node, pid in self.owners.items()}
        return Phase({by_pid[p]: p for p in pids}, names_partitions=False)
