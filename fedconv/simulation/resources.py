"""Can this machine run the job at all? Client resources and memory, checked before Ray starts.

Ray never places an actor that asks for more CPUs or GPUs than a node has: Flower's engine
then waits for ever. A model far larger than memory is built in every actor and the Ray
node dies with no word on why. Both are refused here, in one line naming the key, from the
config and a model built on PyTorch's ``meta`` device (shapes only: nothing is allocated).

A local Ray is checked against this machine before Ray starts; a cluster
(``simulation.ray.address``) against its largest live node once attached
(:func:`check_cluster`), before any run starts on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fedconv.config import ConfigError
from fedconv.sections import Simulation, cohort_sizes

GB = 1024**3
# fp32 copies of the weights a training actor holds: the model, its gradients, SGD's
# momentum (Adam's two moments), the received global copy and the reply being encoded.
ACTOR_COPIES = 6
# the server: global model, evaluation model, aggregate, server optimizer state (two moments)
SERVER_COPIES = 6


def parameter_count(cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> int:
    """The model's parameter count from a build on the meta device (no memory used)."""
    import torch

    from fedconv.learning.models import build_model

    with torch.device("meta"):
        model = build_model(cfg["model"], input_shape, num_classes)
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def _local_cpus(sim: Simulation) -> int:
    return sim.ray.num_cpus or (os.cpu_count() or 1)


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # a CPU build, no driver: no GPU
        return 0


def check_resources(cfg: Mapping[str, Any]) -> None:
    """Client resources against what a local Ray can give."""
    sim = Simulation.of(cfg)
    if sim.ray.address:
        return
    cpus, need = _local_cpus(sim), sim.client_resources.num_cpus
    where = f"simulation.ray.num_cpus={sim.ray.num_cpus}" if sim.ray.num_cpus else f"this machine's {cpus} CPUs"
    if need > cpus:
        raise ConfigError(f"simulation.client_resources.num_cpus={need:g}: more than the {cpus} CPUs Ray has here "
                          f"({where}), so no client could ever start; must be <= {cpus}")
    gpus_needed = sim.client_resources.num_gpus
    gpus = _local_gpus()
    if gpus_needed > gpus:
        raise ConfigError(f"simulation.client_resources.num_gpus={gpus_needed:g}: this machine has {gpus} GPU(s) "
                          f"for Ray, so no client could ever start; must be <= {gpus}")


def check_cluster(cfg: Mapping[str, Any]) -> None:
    """Client resources against the largest live node of the Ray cluster this process is
    attached to: an actor's CPUs and GPUs must all fit on one node."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    sim = Simulation.of(cfg)
    address = sim.ray.address
    for key, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        need = float(getattr(sim.client_resources, key))
        most = max((float(n.get(resource, 0)) for n in nodes), default=0.0)
        if need > most:
            raise ConfigError(f"simulation.client_resources.{key}={need:g}: more than the {most:g} {resource}(s) of the "
                              f"largest node of the Ray cluster at {address} ({len(nodes)} node(s)), so no client could "
                              f"ever start; must be <= {most:g}")


def memory_need(cfg: Mapping[str, Any], params: int) -> tuple[int, int]:
    """(bytes this run needs about, actors it counts): weights in every training actor,
    plus the server's copies and every reply of a round, which Flower holds at once."""
    sim = Simulation.of(cfg)
    cohort = max(cohort_sizes(cfg))
    actors = min(cohort, max(1, int(_local_cpus(sim) // max(sim.client_resources.num_cpus, 1e-9))))
    weights = 4 * params
    return weights * (actors * ACTOR_COPIES + SERVER_COPIES + cohort), actors


def check_memory(cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int,
                 available: int | None = None) -> None:
    """The model's memory, times the copies a run keeps, against the memory available now."""
    import psutil

    if Simulation.of(cfg).ray.address:
        return
    params = parameter_count(cfg, input_shape, num_classes)
    need, actors = memory_need(cfg, params)
    free = psutil.virtual_memory().available if available is None else available
    if need > free:
        raise ConfigError(
            f"model.name={cfg['model']['name']}: {params:,} parameters ({4 * params / GB:.2f} GB in fp32); this run "
            f"needs about {need / GB:.1f} GB ({actors} client actor(s) x {ACTOR_COPIES} copies, the server's "
            f"{SERVER_COPIES}, and a round's replies), but {free / GB:.1f} GB of memory is available; choose a "
            "smaller model (fewer filters, a smaller head) or fewer clients per round")


def check(cfg: Mapping[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Everything above, before the model is built for real."""
    check_resources(cfg)
    check_memory(cfg, input_shape, num_classes)
