"""Exponential moving average (EMA) of the weights, used for validation, test and every saved checkpoint."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

#: Default EMA decay (per optimizer step) once the warm-up is over.
DEFAULT_DECAY = 0.999
#: Warm-up of the decay: ``min(decay, (1 + n) / (WARMUP_OFFSET + n))`` after ``n`` updates, so that the first
#: (random) weights are forgotten within tens of steps instead of thousands.
WARMUP_OFFSET = 10.0


def warmup_decay(decay: float, num_averaged: int | torch.Tensor, warmup: bool = True) -> float:
    """The decay of the ``num_averaged``-th update: ``decay``, lowered during the warm-up when ``warmup``."""
    if not warmup:
        return float(decay)
    n = float(num_averaged)
    return min(float(decay), (1.0 + n) / (WARMUP_OFFSET + n))


class EMA(WeightAveraging):
    """EMA of the parameters with Lightning's :class:`WeightAveraging` machinery.

    After every optimizer step ``ema = d·ema + (1 − d)·weights`` with ``d`` = :func:`warmup_decay`. The EMA
    weights replace the live ones during validation (so the checkpoint chosen on validation is chosen for its EMA
    weights), and every checkpoint stores them as its ``state_dict`` — prediction and test load them like any
    checkpoint — with the live weights under ``current_model_state`` for resuming. Buffers are never averaged or
    swapped: they hold running training statistics (e.g. the DDPM's fluorescence mean), which stay exact.
    """

    def __init__(self, decay: float = DEFAULT_DECAY, warmup: bool = True, device: str | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay}; expected 0 < decay < 1")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        super().__init__(device=device, use_buffers=False, avg_fn=self._average)

    def _average(self, ema: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = warmup_decay(self.decay, num_averaged, self.warmup)
        return ema * d + current.to(ema.dtype) * (1.0 - d)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after every optimizer step (not at epoch ends)."""
        return step_idx is not None

    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        assert self._average_model is not None
        for ema, live in zip(self._average_model.module.parameters(), pl_module.parameters(), strict=True):
            tmp = ema.data.clone()
            ema.data.copy_(live.data)
            live.data.copy_(tmp)

    def _copy_average_to_current(self, pl_module: pl.LightningModule) -> None:
        assert self._average_model is not None
        for ema, live in zip(self._average_model.module.parameters(), pl_module.parameters(), strict=True):
            live.data.copy_(ema.data)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """``state_dict`` ← EMA parameters with the live buffers; the live state → ``current_model_state``."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        live = checkpoint.get("current_model_state")
        if live is None:
            return
        buffers = {name for name, _ in pl_module.named_buffers()}
        for name in buffers & set(live):
            checkpoint["state_dict"][name] = live[name]

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Resuming a fit restores live and EMA weights; testing a checkpoint keeps its EMA ``state_dict``."""
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
