"""Stamps every checkpoint with what is needed to reload it without its config: model class, versions, git revision."""

from __future__ import annotations

from typing import Any

import lightning as L

from dm4isl.io.provenance import git_revision
from dm4isl.models.checkpoint import PROVENANCE_KEY, provenance_block


class Provenance(L.Callback):
    """Adds the provenance block of :func:`dm4isl.models.checkpoint.provenance_block` to every checkpoint written.

    The block holds the model class, the dm4isl version, the git revision and, when the datamodule fitted its
    organelle windows on the training data (``organelle=custom``), those windows.
    """

    def __init__(self) -> None:
        self._git = git_revision()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        fitted = getattr(getattr(trainer, "datamodule", None), "fitted_windows", None)
        checkpoint[PROVENANCE_KEY] = provenance_block(pl_module, self._git, fitted)
