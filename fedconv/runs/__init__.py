"""Runs: a run directory and everything read from or written to it: the files and their
checks (:mod:`~fedconv.runs.run_dir`, :mod:`~fedconv.runs.run_reader`), the checkpoint, the
tracking sinks (TensorBoard, MLflow, W&B), the console's round log and start-up timeline, and
the reports that compare runs (:mod:`~fedconv.runs.report`, ``fedconv report``).

May import: the core modules and the layers below (:mod:`fedconv.data`, :mod:`fedconv.learning`,
:mod:`fedconv.algorithms`, :mod:`fedconv.wire`). Never the federation that writes the runs.
"""
