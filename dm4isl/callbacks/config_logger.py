"""Log the resolved run configuration to every logger from inside the training/test process."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class ConfigLogger(Callback):
    """Hand the whole resolved config to ``logger.log_hyperparams`` at the start of fit and of test.

    Logging from a callback, not from the launching process, keeps the loggers' writers unopened until the
    process that trains (or tests) owns them: under spawned DDP each stage runs in fresh processes, and a writer
    opened by the launcher would be copied into them with stale state.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def _log(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "test":
            self._log(trainer)
