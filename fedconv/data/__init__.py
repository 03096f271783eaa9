"""Data: the datasets fedconv reads (IDX, CIFAR pickles, image folders, scikit-learn's digits),
how they are split over clients (:mod:`~fedconv.data.partitioning`, through Flower Datasets'
partitioners), and a board's own data folder (:mod:`~fedconv.data.device_data`).

May import: the core modules (:mod:`fedconv.config`, :mod:`fedconv.checks`, :mod:`fedconv.atomic`,
:mod:`fedconv.optional`, :mod:`fedconv.records`). Nothing here knows about models or federation.
"""
