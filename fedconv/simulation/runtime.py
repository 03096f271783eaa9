"""How a flat run config becomes a running Flower simulation (the one runtime-specific file).

fedconv drives Flower's simulation runtime in-process: the same engine ``flwr run`` uses
on a local SuperLink (``flwr.simulation.app`` calls the same ``_run_simulation``), minus
the SuperLink, FAB packaging and subprocesses. That keeps start-up short, lets a Hydra
sweep run every job in one process, and hands both apps a real ``context.run_config``:

- the ServerApp gets it through the server ``Context``;
- every virtual SuperNode gets it the way Flower gives it to an installed app: from the
  ``[tool.flwr.app.config]`` table of the app directory's ``pyproject.toml``, which is
  written here for the run.

``flwr.simulation.run_simulation`` (the public function) is deprecated in flwr 1.42 and
hands the apps an empty run config, so it is not used. Moving to ``flwr run`` against a
local SuperLink means replacing this file only.

A job of a sweep launched by ``hydra/launcher=ray_cluster`` runs inside a Ray worker of a shared
cluster, beside other jobs. Flower sizes its actor pool to the whole cluster and creates the
actors one by one, so concurrent jobs each get part of their pool and wait on the rest held
by the others: a deadlock (seen here: 4 jobs on 2 CPUs, 1 of 4 finished). There, and only
there, the pool is :class:`ReservedActorPool`: sized to the job's largest cohort and reserved
all at once as a Ray placement group, so a job either holds every CPU its clients need or
queues until it can.

When Ray starts, and how it is kept between the jobs of a sweep: :mod:`fedconv.simulation.ray_session`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from queue import Queue
from typing import Any

import tomli_w

from fedconv.runs import timeline
from fedconv.sections import Simulation
from fedconv.simulation import ray_session

CLIENT_APP = "fedconv.edge.board_app:app"  # a deployed message: the warm worker or in-process
SERVER_APP = "fedconv.federation.server_app:app"


def write_app_dir(directory: Path, run_config: Mapping[str, Any]) -> None:
    """A minimal Flower App description whose default config is this run's config."""
    project = {
        "project": {
            "name": "fedconv-run",
            "version": "0.1.0",
            "description": "One fedconv run: its config is [tool.flwr.app.config]",
            "license": "Apache-2.0",
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedconv",
                    "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
                    "config": dict(run_config),
                }
            }
        },
    }
    (directory / "pyproject.toml").write_text(tomli_w.dumps(project))


def backend_config(sim: Simulation, verbose: bool) -> dict[str, Any]:
    """Flower's Ray backend config: client resources and ``ray.init`` arguments."""
    init_args: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "log_to_driver": bool(verbose),
    }
    if sim.ray.address:
        init_args["address"] = sim.ray.address
    else:
        init_args["include_dashboard"] = sim.ray.include_dashboard
        if sim.ray.num_cpus > 0:
            init_args["num_cpus"] = sim.ray.num_cpus
    resources = sim.client_resources
    return {"client_resources": {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
            "init_args": init_args}


class _ClientErrorsInRoundLog(logging.Filter):
    """Flower logs every ClientApp exception with its Ray traceback; the ServerApp already
    prints one line per failed client in its round log, so keep those for ``verbose=true``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and record.pathname.endswith(("vce_api.py", "raybackend.py")))


def in_ray_worker() -> bool:
    """Is this process a Ray worker (a job of ``hydra/launcher=ray_cluster``), not a Ray driver?"""
    if "ray" not in sys.modules:
        return False
    import ray

    return bool(ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)


def reserved_actor_pool_class(max_actors: int) -> type:
    """Flower's ``BasicActorPool``, sized to at most ``max_actors`` and reserved all at once."""
    import ray
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    class ReservedActorPool(BasicActorPool):
        def __init__(self, actor_type: Any, client_resources: dict[str, Any], actor_kwargs: dict[str, Any]) -> None:
            super().__init__(actor_type, client_resources, actor_kwargs)
            self.actors_capacity = max(1, min(self.actors_capacity, max_actors))
            bundle = {"CPU": float(client_resources.get("num_cpus", 1))}
            if float(client_resources.get("num_gpus", 0)) > 0:
                bundle["GPU"] = float(client_resources["num_gpus"])
            self.group = placement_group([bundle] * self.actors_capacity, strategy="PACK")
            ray.get(self.group.ready())  # queue here while other jobs hold the cluster
            strategy = PlacementGroupSchedulingStrategy(self.group)
            self.create_actor_fn = lambda: actor_type.options(
                **client_resources, scheduling_strategy=strategy).remote(**(actor_kwargs or {}))

        def terminate_all_actors(self) -> None:
            remove_placement_group(self.group)  # ends the job's actors and frees its reservation

    return ReservedActorPool


class _PromptQueue(Queue):
    """Flower's simulation engine polls its message queues with ``get(timeout=1.0)`` and
    checks its stop flag in between, so every run ended up to a second after its last round
    (about 0.9 s a job of a sweep, measured). Polled in 0.05 s slices, it stops at once."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return super().get(block, timeout if timeout is None else min(timeout, 0.05))


@contextmanager
def prompt_stop() -> Iterator[None]:
    """Flower's engine builds its message queues as :class:`_PromptQueue` meanwhile."""
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.Queue
    vce_api.Queue = _PromptQueue  # type: ignore[misc]
    try:
        yield
    finally:
        vce_api.Queue = original  # type: ignore[misc]


@contextmanager
def reserved_actors(max_actors: int) -> Iterator[None]:
    """Flower's Ray backend builds a :func:`reserved_actor_pool_class` pool meanwhile."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = raybackend.BasicActorPool
    raybackend.BasicActorPool = reserved_actor_pool_class(max_actors)  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        raybackend.BasicActorPool = original  # type: ignore[misc]


def _new_run() -> Any:
    """A Flower ``Run`` with fresh ids, and the task identity its apps read, as ``flwr run``
    makes them for a local simulation."""
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return run


def run_simulation(run_config: Mapping[str, Any], num_supernodes: int, backend: Mapping[str, Any], verbose: bool,
                   max_actors: int = 0, keep_actors: bool = False) -> None:
    """Run the fedconv ServerApp against ``num_supernodes`` virtual SuperNodes on Ray.
    Inside a Ray worker (a launcher's job) at most ``max_actors`` actors, reserved at once;
    ``keep_actors``: Ray and the idle actors outlive the run (:mod:`fedconv.simulation.ray_session`)."""
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedconv.federation.client_app import app as client_app
    from fedconv.federation.server_app import app as server_app

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose and not any(isinstance(f, _ClientErrorsInRoundLog) for f in flwr_logger.filters):
        flwr_logger.addFilter(_ClientErrorsInRoundLog())
    ray_session.quiet_environment()
    run = _new_run()
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    ray_session.start(backend["init_args"], preload=ray_session.preload_workers(backend))
    timeline.mark("ray")
    timeline.record_runtime("ray", ray_session.describe())
    if in_ray_worker():
        pool: Any = reserved_actors(max_actors or num_supernodes)
    else:
        pool = ray_session.kept_actors() if keep_actors else nullcontext()
    with tempfile.TemporaryDirectory(prefix="fedconv-app-") as app_dir, pool, prompt_stop():
        write_app_dir(Path(app_dir), run_config)
        _run_simulation(
            num_supernodes=num_supernodes,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config=dict(backend),
            server_app_context=context,
            app_dir=app_dir,
            run=run,
            is_app=True,
            verbose_logging=verbose,
        )
