"""dm4isl: in-silico labelling of 3-D brightfield z-stacks with conditional diffusion models."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "predict"]


def __getattr__(name: str) -> Any:
    """Lazy ``dm4isl.predict``: the prediction module, callable as ``dm4isl.predict(bf, checkpoint, ...)``."""
    if name == "predict":
        return importlib.import_module("dm4isl.predict")
    raise AttributeError(f"module 'dm4isl' has no attribute {name!r}")
