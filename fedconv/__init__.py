"""fedconv: federated learning of small CNNs (the 2conv family) with Flower, Hydra and Ray.

The package in layers; a module imports only from its own layer and those listed before it
list (``tests/test_architecture.py`` reads every import, those inside functions included,
and fails on one that goes the other way or round a circle):

1. core, these top-level modules: :mod:`~fedconv.config` (composing ``conf/``),
   :mod:`~fedconv.checks` (the one-line refusals), :mod:`~fedconv.atomic` (files written
   whole or not at all), :mod:`~fedconv.optional` (extras not installed),
   :mod:`~fedconv.records` (typed reads of Flower's records), :mod:`~fedconv.sections`
   (typed ``server``, ``client``, ``simulation`` and ``faults`` sections; defaults in ``conf/`` only);
2. :mod:`fedconv.data`: datasets, partitions, a board's data folder;
3. :mod:`fedconv.learning`: models, local training, the task;
4. :mod:`fedconv.algorithms`: every aggregation algorithm, one module each;
5. :mod:`fedconv.wire`: codecs, reply checks, the byte ledger;
6. :mod:`fedconv.insight`: client drift, the geometry of a round's updates;
7. :mod:`fedconv.runs`: run directories, checkpoints, tracking, reports;
8. :mod:`fedconv.federation`: the ServerApp, the ClientApp and the round engine;
9. :mod:`~fedconv.validation`: a whole config checked, each group by the module that owns it;
10. :mod:`fedconv.simulation`: Flower's simulation engine on Ray, a job's preparation;
11. :mod:`fedconv.edge`: SuperNodes on boards, certificates, board data, model export;
12. the commands: :mod:`~fedconv.simulate` (``python -m fedconv.simulate``),
    :mod:`~fedconv.cli` (``fedconv <command>``), :mod:`~fedconv.bench`,
    :mod:`~fedconv.partition_stats` (``fedconv partitions``), :mod:`~fedconv.api` (the same from
    Python), :mod:`~fedconv.inspect_run` (``fedconv inspect``), :mod:`~fedconv.flwr_app` (the
    ServerApp ``flwr run .`` starts).
"""

__version__ = "0.1.0"
