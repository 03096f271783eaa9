"""Learning: the 2conv family and the other models (:mod:`~fedconv.learning.models`), the local
training and evaluation loops with their extension points for algorithms
(:mod:`~fedconv.learning.training`: ``TrainHook``), and :mod:`~fedconv.learning.task`, which
puts a config's dataset, partitions and model together (as ``task.py`` does in Flower's examples).

May import: the core modules and :mod:`fedconv.data`. Never an algorithm: algorithms plug into
training through ``TrainHook``.
"""
