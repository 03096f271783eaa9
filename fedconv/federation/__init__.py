"""The federation: Flower's ServerApp and ClientApp (:mod:`~fedconv.federation.server_app`,
:mod:`~fedconv.federation.client_app`), the round engine between them
(:mod:`~fedconv.federation.rounds`), cohorts, the clients' own state, injected faults and the
stopping rules. The same apps run in a simulation and on real SuperNodes.

May import: everything below it (core, :mod:`fedconv.data`, :mod:`fedconv.learning`,
:mod:`fedconv.algorithms`, :mod:`fedconv.wire`, :mod:`fedconv.runs`). Never what runs it:
:mod:`fedconv.simulation` or :mod:`fedconv.edge` (the runtime records what it is through
:func:`fedconv.runs.timeline.record_runtime`).
"""
