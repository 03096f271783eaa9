"""Optional dependencies: what each extra of ``pip install "fedconv[...]"`` brings, and the
one clear error when a module of one is missing.

A board's base install (``pip install fedconv``) holds only what its ClientApp needs: torch,
numpy, flwr, safetensors, pillow, cryptography. Simulation (Ray, Hydra, Flower Datasets'
partitioners), reports (matplotlib, scipy), the operator's deployment tool and ONNX export
are extras; the README's set-up installs them all.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# top-level module -> the extra that installs it
EXTRA_OF = {
    "hydra": "simulation", "omegaconf": "simulation", "ray": "simulation", "psutil": "simulation",
    "yaml": "simulation", "tomli_w": "simulation", "flwr_datasets": "partitions", "datasets": "partitions",
    "sklearn": "partitions", "matplotlib": "report", "scipy": "report", "onnx": "export",
    "onnxscript": "export", "onnxruntime": "export",
}


class MissingExtra(ModuleNotFoundError):
    """A module of an extra this install lacks; the message names the pip command."""


def missing_extra_message(module: str, needed_for: str) -> str | None:
    """The one-line explanation for a missing optional ``module`` (None: not an extra's)."""
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return f"{needed_for} needs '{top}', which this install lacks: pip install \"fedconv[{extra}]\""


def require(module: str, needed_for: str) -> ModuleType:
    """``import module``, or :class:`MissingExtra` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc.name or module, needed_for)
        if message is None:
            raise
        raise MissingExtra(message, name=exc.name) from exc
