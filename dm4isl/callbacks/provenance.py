"""Stamps every checkpoint with what is needed to reload it without its config: model class, versions, git revision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

import dm4isl
from dm4isl.io.provenance import git_revision as io_git_revision

#: Key of the provenance block inside a Lightning checkpoint dict.
PROVENANCE_KEY = "dm4isl"
#: Key, inside the provenance block, of the organelle windows fitted on the training data (``{bf_window, fl_window}``).
FITTED_WINDOWS_KEY = "fitted_windows"


def git_revision(path: Path | None = None) -> str:
    """The git commit of the dm4isl source tree (with ``-dirty`` when modified), or ``"unknown"``."""
    return io_git_revision(path or Path(dm4isl.__file__).resolve().parent)


def model_class_path(module: L.LightningModule) -> str:
    """Import path ``package.module.Class`` of a LightningModule instance."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


class Provenance(L.Callback):
    """Adds ``checkpoint["dm4isl"] = {model_class, version, git[, fitted_windows]}`` to every checkpoint written."""

    def __init__(self) -> None:
        self._git = git_revision()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[PROVENANCE_KEY] = {
            "model_class": model_class_path(pl_module),
            "version": dm4isl.__version__,
            "git": self._git,
        }
        fitted = getattr(getattr(trainer, "datamodule", None), "fitted_windows", None)
        if fitted:  # normalisation windows computed from the training data (organelle=custom), reused at predict time
            checkpoint[PROVENANCE_KEY][FITTED_WINDOWS_KEY] = {k: [float(v) for v in w] for k, w in fitted.items()}
