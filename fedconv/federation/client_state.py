"""State a client keeps between the rounds it trains, stored by partition id.

SCAFFOLD's control variate, FedDyn's gradient correction and FedBN's BatchNorm layers belong
to a *partition*, not to a node: in a simulation's node pool any virtual node trains any
partition, so Flower's per-node ``Context.state`` cannot hold them. They live on disk instead,
one folder per run, never in the server's memory (10,000 SCAFFOLD clients of a 38k-parameter
model are 1.5 GB) and never on the wire (the ledger counts none of it):

- **simulation** (pool or per-client nodes): ``<run dir>/client_state/``, or
  ``simulation.client_state_dir``. Every Ray worker reads and writes that folder, so on a
  multi-node Ray cluster it must be on storage every node mounts (NFS, a shared volume): the
  server writes a marker there, and a client on a node that cannot see it stops with an error
  naming the folder and the host, before it trains;
- **a real board** (node config ``state-dir``): the board's own disk, ``<state-dir>/<run>/``,
  where ``<run>`` is derived from the run's output directory, so a resumed run finds it again
  and two runs never mix.

Versions make resume exact. A partition's state after round r is ``p<pid>/r<r>.safetensors``,
written atomically. The server names the version a client starts from (``state-round``: the
partition's last round whose update it *accepted*, 0 for none) and keeps that map in its
checkpoint. So a client's state advances only with an update the server aggregated (SCAFFOLD's
server control variate stays the mean of the clients'), and a resumed run reads the version
its checkpoint knew, never one written by a round after it. A client keeps only the version it
started from and the one it wrote.

Written here because neither Flower nor Ray offers per-partition state that outlives a process.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from fedconv import atomic
from fedconv.sections import Simulation

MARKER = "FEDCONV_CLIENT_STATE"
STATE_ROUND = "state-round"  # config key: the version a client starts from


class StateError(RuntimeError):
    """A partition's state is missing or unreadable where the server says it must be."""


def partitions_keep_state(algorithm: Any, link: Any) -> bool:
    """Does each partition keep state between rounds: the algorithm's own (SCAFFOLD's control
    variate) or the uplink codec's error-feedback residual? The one rule for the server (which
    version of each partition's state is current), the client (where it stores it) and resume
    (what a checkpoint must hold)."""
    return bool(algorithm.client_state or link.up.error_feedback)


def shared_dir(cfg: Mapping[str, Any]) -> Path:
    """The run's state folder in a simulation (see the module docstring)."""
    configured = Simulation.of(cfg).client_state_dir
    return Path(configured) if configured else Path(str(cfg["output_dir"])) / "client_state"


def prepare_shared(cfg: Mapping[str, Any]) -> Path:
    """Server side: create the run's state folder and its marker (idempotent: a resumed run
    reuses the folder and the versions in it)."""
    root = shared_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(root / MARKER, f"fedconv client state of {cfg['output_dir']}\n")
    return root


def run_key(output_dir: str) -> str:
    """A short stable name for a run, for the folder on a board's own disk."""
    return hashlib.sha256(output_dir.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClientStateStore:
    """The versions of every partition's state in one folder."""

    root: Path

    def path(self, pid: int, version: int) -> Path:
        return self.root / f"p{pid}" / f"r{version}.safetensors"

    def load(self, pid: int, version: int) -> dict[str, torch.Tensor] | None:
        """Partition ``pid``'s state after round ``version`` (0: none yet, returns None)."""
        if version <= 0:
            return None
        path = self.path(pid, version)
        try:
            return load_tensors(path.read_bytes())
        except FileNotFoundError:
            raise StateError(f"partition {pid}: its client state after round {version} is missing from "
                             f"{path.parent} on {socket.gethostname()}") from None

    def save(self, pid: int, version: int, tensors: Mapping[str, torch.Tensor], started_from: int) -> None:
        """Write the state after round ``version`` atomically, then drop every other version
        but ``started_from`` (the server may still ask for it, if this round's reply is lost)."""
        atomic.write_bytes(self.path(pid, version), save_tensors({k: v.contiguous() for k, v in tensors.items()}))
        for old in self.path(pid, version).parent.glob("r*.safetensors"):
            if old.stem not in (f"r{version}", f"r{started_from}"):
                old.unlink(missing_ok=True)

    def versions(self, pid: int) -> list[int]:
        return sorted(int(p.stem[1:]) for p in (self.root / f"p{pid}").glob("r*.safetensors"))


def store_for(cfg: Mapping[str, Any], node_config: Mapping[str, Any]) -> ClientStateStore:
    """Client side: the board's own ``state-dir``, or the run's shared folder (which must
    be visible here: see the module docstring)."""
    own = node_config.get("state-dir")
    if own:
        return ClientStateStore(Path(str(own)).expanduser() / run_key(str(cfg["output_dir"])))
    root = shared_dir(cfg)
    if not (root / MARKER).is_file():
        raise StateError(
            f"the run's client-state folder {root} is not visible on {socket.gethostname()}: on a multi-node "
            "Ray cluster set simulation.client_state_dir to storage every node mounts (NFS), or give each "
            "SuperNode a state-dir in its node config"
        )
    return ClientStateStore(root)
