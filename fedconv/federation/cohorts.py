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
from flwr.app import Message
from flwr.serverapp import Grid

TRAIN_SALT, EVAL_SALT = 0, 1
GROUP_PREFIX = "partition-"  # a message's group id names its partition; its reply carries it back


def group_of(pid: int) -> str:
    return f"{GROUP_PREFIX}{pid}"


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
    """One phase's cohort: a message per slot (node id, partition id). Each message's group id
    names its partition and every reply carries its message's group id back, so a reply is
    matched to the partition it answers, not to the node that sent it: a node of a pool may
    serve several partitions a round when the pool is smaller than the cohort. Messages to a
    pool also name the partition in their config (``names_partitions``); a node that owns its
    partition (devices, ``per_client``) serves that one only."""

    slots: tuple[tuple[int, int], ...]
    names_partitions: bool

    @property
    def nodes(self) -> list[int]:
        """The phase's distinct nodes, in slot order."""
        return list(dict.fromkeys(node for node, _ in self.slots))

    @property
    def pids(self) -> list[int]:
        return [pid for _, pid in self.slots]

    @staticmethod
    def pid_of(message: Message) -> int:
        """The partition a sent message or a reply is about (its group id); -1: none named."""
        group = message.metadata.group_id
        return int(group[len(GROUP_PREFIX):]) if group.startswith(GROUP_PREFIX) else -1


@dataclass(frozen=True)
class Cohorts:
    """Seeded cohorts over ``num_partitions`` partitions, served either by the nodes that own
    them (``owners``: node -> partition) or by a ``pool`` of interchangeable nodes, to which a
    phase's partitions are dealt in order, round-robin when the cohort is larger than the pool."""

    seed: int
    num_partitions: int
    train_per_round: int
    eval_per_round: int
    owners: Mapping[int, int] | None = None
    pool: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.owners is None) == (self.pool is None):
            raise ValueError("Cohorts: pass either owners (node -> partition) or a pool of node ids")
        if self.pool is not None and not self.pool:
            raise ValueError("Cohorts: a node pool needs at least one node")

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
            return Phase(tuple((self.pool[i % len(self.pool)], p) for i, p in enumerate(pids)), names_partitions=True)
        assert self.owners is not None
        by_pid = {pid: node for node, pid in self.owners.items()}
        return Phase(tuple((by_pid[p], p) for p in pids), names_partitions=False)
