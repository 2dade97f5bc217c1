"""Stops training at the first non-finite training loss, before the bad update reaches weights or checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the checkpoints written before it are left as they were."""


class NaNGuard(L.Callback):
    """Raise :class:`TrainingDivergedError` when a training loss is NaN or ±inf.

    The check runs before ``backward`` (automatic and manual optimisation alike), so the weights are never updated
    with non-finite gradients and no checkpoint is written after the bad step: ``last.ckpt`` and the best checkpoint
    stay those written before it. Under DDP the ranks agree on the decision (one all-reduce per backward pass), so
    every process stops together instead of waiting for the one that failed.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        value = loss.detach().float().cpu().flatten().tolist()
        where = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback is not None else None
        kept = (
            f"the checkpoints written before this step are kept in {Path(where)}"
            if where is not None else "no checkpoint callback is configured"
        )
        raise TrainingDivergedError(
            f"training loss of {type(pl_module).__name__} is {value if len(value) > 1 else value[0]} at epoch "
            f"{trainer.current_epoch}, global step {trainer.global_step}; expected a finite value. Training stopped "
            f"before this update: {kept} (resume from last.ckpt with a lower learning rate, or check the inputs "
            f"for NaN)"
        )
