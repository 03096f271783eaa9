"""The simulation runtime: Flower's simulation engine driven in process on Ray
(:mod:`~fedconv.simulation.runtime`, :mod:`~fedconv.simulation.ray_session`: one Ray and warm
actors across a sweep's jobs), a job's preparation (resume, resources, writable outputs) and a
sweep's progress. The entry point is ``python -m fedconv.simulate``.

May import: everything below it, :mod:`fedconv.validation` included. Never :mod:`fedconv.edge`.
"""
