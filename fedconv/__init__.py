"""fedconv: federated learning of small CNNs (the 2conv family) with Flower, Hydra and Ray."""

__version__ = "0.1.0"
