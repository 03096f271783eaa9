"""This process's Ray instance: started early, kept between the jobs of a sweep, shut down once.

- **Start-up beside the engine's imports**: ``ray.init`` runs on a helper thread from the moment
  a job's config and data are checked (bad input is refused before Ray starts), while this
  process imports Flower's simulation engine. Ray starts its
  node's processes with PR_SET_PDEATHSIG, which kills them when the *thread* that started them
  ends, so that thread stays alive until Ray is shut down.
- **Warm workers from the start**: a local node gets no ``runtime_env`` (its workers inherit
  the import path from the raylet), so Flower's actors take the workers Ray prestarts (one per
  CPU), which import :data:`WORKER_PRELOAD` as they start (Ray's ``preload_python_modules``).
- **A lean local node**: no autoscaler monitor (one machine never scales) and no log monitor
  unless worker logs go to the console: two Python processes fewer to start and stop.
- **One Ray for a sweep**: Hydra's basic launcher runs a sweep's jobs one after another in
  this process. Between two jobs that completed, Ray stays up and the job's idle actors are
  parked (:func:`kept_actors`), with what their processes cached (data, partitions, models;
  bounded by :mod:`fedconv.learning.task`'s LRU caches), for the next job's pool. A job that did not
  complete, or one that needs other Ray settings or client resources, gets a fresh Ray / fresh
  actors. Results do not depend on which process trains a client: training seeds torch per
  message and client state lives on disk (:mod:`fedconv.federation.client_state`).

Flower's ``RayBackend`` shuts Ray down and kills its actors at the end of every run, and has
no option to keep them; :func:`kept_actors` swaps in subclasses for the run's duration, the
way :func:`fedconv.simulation.runtime.reserved_actors` does for a shared cluster.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from fedconv.runs import timeline

# Modules every local Ray worker imports as it starts, during ``ray.init``: the ClientApp
# (torch, Flower) and torch's compiler front end, which the first ``torch.optim`` optimizer
# imports (≈ 1.5 s here). The imports overlap this process's own start-up instead of
# delaying the first round.
WORKER_PRELOAD = ("fedconv.federation.client_app", "torch._dynamo")

_starting: Future[None] | None = None
_handlers: dict[int, Any] = {}
_release = threading.Event()
_owned: str | None = None  # the settings of the Ray this process started (None: not ours)
_parked: list[Any] = []  # idle actors of the last completed job
_parked_resources: str | None = None
_reused = 0  # actors the current run's pool took over from the job before it


class _NotMainThreadWarning(logging.Filter):
    """``ray.init`` off the main thread warns that it set no SIGTERM handler: fedconv wants none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


@contextmanager
def _lean_head_node(log_to_driver: bool) -> Iterator[None]:
    """``ray.init`` takes neither the monitor nor the log monitor setting, so its ``RayParams``
    get them here; a Ray without those attributes is left as it is."""
    from ray._private import parameter

    original = parameter.RayParams.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if hasattr(self, "no_monitor") and hasattr(self, "include_log_monitor"):
            self.no_monitor = True
            self.include_log_monitor = bool(log_to_driver)

    parameter.RayParams.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original  # type: ignore[method-assign]


def quiet_environment() -> None:
    """Set before Ray starts, so that Ray's processes and workers inherit it too."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence a Ray FutureWarning
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no phoning home from offline machines
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def _init_ray(init_args: Mapping[str, Any], preload: bool) -> None:
    quiet_environment()
    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    args = {"include_dashboard": False, **init_args}
    if args.get("address") or os.environ.get("RAY_ADDRESS"):  # a running cluster: give its workers the path
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **args)
        return
    if preload:
        args["_system_config"] = {"preload_python_modules": list(WORKER_PRELOAD)}
    # "local": a Ray of this process's own, even where ``ray start`` left a cluster on this
    # machine (ray.init() without an address would attach to it, unasked)
    with _lean_head_node(bool(args.get("log_to_driver"))):
        ray.init(address="local", **args)


def _ray_thread(init_args: Mapping[str, Any], preload: bool, started: Future[None], release: threading.Event) -> None:
    try:
        _init_ray(init_args, preload)
    except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for Ray
        started.set_exception(exc)
        return
    started.set_result(None)
    release.wait()  # Ray's processes live as long as this thread


def start(init_args: Mapping[str, Any], *, background: bool = False, preload: bool = True) -> None:
    """Start Ray as Flower's backend would (``RayBackend.init_ray``, which then skips its own
    ``ray.init``) and give this process its signal handlers back: ``ray.init`` installs a
    SIGTERM handler that exits at once and Ray's core worker one that aborts the process, so
    a batch scheduler's stop would end a run without its summary (see :mod:`fedconv.federation.stopping`).

    ``background=True`` only begins; the next call waits for it. ``preload``: the local
    workers import :data:`WORKER_PRELOAD` as they start. A Ray this process started for an
    earlier job is reused when the settings are the same, and restarted when they are not;
    one started by someone else (a launcher's job inside a Ray worker) is used as it is.
    """
    global _starting, _owned, _release
    import ray

    settings = json.dumps({"init_args": dict(init_args), "preload": preload}, sort_keys=True, default=str)
    if _starting is None:
        if ray.is_initialized():
            if _owned is None or _owned == settings:
                return
            shutdown()
        if threading.current_thread() is threading.main_thread():
            _handlers.update({sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)})
        ray_logger = logging.getLogger("ray._private.worker")
        if not any(isinstance(f, _NotMainThreadWarning) for f in ray_logger.filters):
            ray_logger.addFilter(_NotMainThreadWarning())
        _release = threading.Event()  # one per Ray instance: its thread ends when Ray is shut down
        _owned = settings
        _starting = Future()
        threading.Thread(target=_ray_thread, args=(init_args, preload, _starting, _release), name="ray",
                         daemon=True).start()
    if not background:
        _wait_for_start()


def _wait_for_start() -> None:
    """Wait for a ``ray.init`` under way (raising its error) and restore the signal handlers."""
    global _starting
    if _starting is None:
        return
    starting, _starting = _starting, None
    try:
        starting.result()
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in _handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        _handlers.clear()


def preload_workers(backend: Mapping[str, Any]) -> bool:
    """Preload only where Flower's actors take every prestarted worker (one per CPU): clients
    of at most one CPU. With bigger clients most workers would hold torch for nothing."""
    return float(backend["client_resources"]["num_cpus"]) <= 1


def end_job(keep: bool) -> None:
    """After a job: keep Ray and the parked actors for the next job, or shut Ray down."""
    if not keep:
        shutdown()


def shutdown() -> None:
    """No Ray state may leak from one job into the next (a start under way included)."""
    global _owned, _parked_resources, _reused
    try:
        _wait_for_start()
    except Exception:  # noqa: BLE001 - Ray never came up: nothing to shut down
        pass
    _parked.clear()
    _parked_resources = None
    _reused = 0
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    _owned = None
    _release.set()


def _kill(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - an actor that already died
            pass
    actors.clear()


def describe() -> dict[str, Any]:
    """The Ray this process runs its clients on, for summary.json: its node (the same id in two
    jobs: the same Ray instance) and how many actors the run took over from the job before it.
    Empty where this process has no Ray (a deployed ServerApp)."""
    if "ray" not in sys.modules:
        return {}
    import ray

    if not ray.is_initialized():
        return {}
    return {"node_id": ray.get_runtime_context().get_node_id(), "actors_reused": _reused}


def _kept_classes() -> tuple[type, type]:
    """Flower's ``BasicActorPool`` and ``RayBackend``, keeping Ray and idle actors at the end."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    class KeptActorPool(BasicActorPool):
        """Takes the parked actors first; parks its idle ones at the end (busy ones are killed:
        a reply the run no longer waits for must not reach the next job)."""

        def __init__(self, actor_type: Any, client_resources: dict[str, Any], actor_kwargs: dict[str, Any]) -> None:
            global _parked_resources, _reused
            super().__init__(actor_type, client_resources, actor_kwargs)
            self.resources = json.dumps(client_resources, sort_keys=True)
            if _parked_resources != self.resources:  # they would hold the CPUs the new actors need
                _kill(_parked)
            self.reused = list(_parked)
            _reused = len(self.reused)
            timeline.record_runtime("ray", describe())
            _parked.clear()
            _parked_resources = None
            fresh = self.create_actor_fn
            self.create_actor_fn = lambda: self.reused.pop() if self.reused else fresh()

        def add_actors_to_pool(self, num_actors: int) -> None:
            super().add_actors_to_pool(num_actors)
            _kill(self.reused)  # more parked than this pool holds

        def terminate_all_actors(self) -> None:
            global _parked_resources
            _kill(list(self._future_to_actor.values()))
            self._future_to_actor.clear()
            _parked[:] = self.pool
            _parked_resources = self.resources
            self.pool = []

    class KeptRayBackend(RayBackend):
        def terminate(self) -> None:  # Flower's also calls ray.shutdown()
            if self.pool:
                self.pool.terminate_all_actors()

    return KeptActorPool, KeptRayBackend


@contextmanager
def kept_actors() -> Iterator[None]:
    """Flower's Ray backend leaves Ray up and parks its idle actors at the end of the run."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    global _reused
    _reused = 0
    pool, backend = raybackend.BasicActorPool, raybackend.RayBackend
    raybackend.BasicActorPool, raybackend.RayBackend = _kept_classes()  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        raybackend.BasicActorPool, raybackend.RayBackend = pool, backend  # type: ignore[misc]
