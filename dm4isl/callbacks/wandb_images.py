"""Validation image grids and per-patch test tables: W&B media with ``logger=wandb``, PNG files otherwise."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from dm4isl.io.figures import GridRow, grid_image, prediction_grid
from dm4isl.io.layout import BF, DDPM, DDPMAVG, ERROR_MASK, GT, STD_INTRA
from dm4isl.models.outputs import PATCH_SCORES, patch_rows
from dm4isl.uncertainty.masks import error_mask
from dm4isl.uncertainty.thresholds import resolve_threshold, sampling_setting

log = logging.getLogger(__name__)

#: Grid columns, left to right (mid-Z slices). The error mask needs a threshold valid for the validation sampler.
COLUMNS = (BF, GT, DDPM, DDPMAVG, STD_INTRA, ERROR_MASK)
#: Keys of the media and table logged to W&B.
IMAGE_KEY = "val/images"
TABLE_KEY = "test/per_patch"
#: Columns of the per-patch test table (scores computed once by the model, :func:`dm4isl.models.outputs.patch_rows`).
TABLE_COLUMNS = ["patch", "method", *PATCH_SCORES]


class ImageGrid(pl.Callback):
    """Mid-Z grid BF | GT | DDPM | DDPMavg | std | error mask of the first validation patches, per validation.

    The grid is logged with ``WandbLogger.log_image`` when a W&B logger is attached, else written as
    ``<output_dir>/val_step<step>.png``. The images are the validation's own samples (the ``outputs`` the DDPM's
    ``validation_step`` returns; nothing is sampled again), so only patches with id < ``val_num_patches`` appear. At
    test, the per-patch PCC/MSE/MS-SSIM the model computed go to a ``wandb.Table`` (W&B only; the prediction
    writer's CSV has them for every logger). Panels are drawn by :func:`dm4isl.io.figures.grid_figure`. Models whose
    validation returns no prediction are skipped.
    """

    def __init__(
        self, n_images: int = 2, mask_threshold: float | None = None, output_dir: str | os.PathLike | None = None,
        organelle: Mapping[str, Any] | None = None,
    ) -> None:
        self.n_images = int(n_images)
        self.given_threshold = None if mask_threshold is None else float(mask_threshold)
        self.organelle = dict(organelle or {})
        self.mask_threshold: float | None = self.given_threshold
        self.output_dir = Path(output_dir) if output_dir else None
        self._rows: list[GridRow] = []
        self._names: dict[int, str] = {}

    @staticmethod
    def _wandb(trainer: pl.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []
        self.mask_threshold = self._threshold_for(pl_module)

    def _threshold_for(self, pl_module: pl.LightningModule) -> float | None:
        """The error-mask threshold valid for the validation sampler (a given one, or the organelle's where valid).

        A threshold published for DDPM-1000 maps is never applied to the validation's DDIM maps: then the
        ``error mask`` column is left out (one log line says why).
        """
        if self.given_threshold is not None or not hasattr(pl_module, "val_settings"):
            return self.given_threshold
        setting = sampling_setting(pl_module.val_settings.to_dict(), (pl_module.target.low, pl_module.target.high),
                                   pl_module.schedule.num_train_timesteps)
        found, reason = resolve_threshold("intra", setting, self.organelle)
        if found is None and not getattr(self, "_told", False):
            log.info("validation images: %s", reason.replace("no error masks written", "no error-mask column"))
            self._told = True
        return None if found is None else found.value

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not isinstance(outputs, Mapping) or "prediction" not in outputs:
            return
        keep = torch.as_tensor(outputs["index"]) < self.n_images
        if not bool(keep.any()):
            return
        pred = outputs["prediction"]
        for b in torch.nonzero(keep).flatten().tolist():
            row = {
                BF: outputs["bf"][b, 0].float().cpu().numpy(),
                GT: outputs["fl"][b, 0].float().cpu().numpy(),
                DDPM: pred.ddpm[b, 0].float().cpu().numpy(),
                DDPMAVG: pred.ddpmavg[b, 0].float().cpu().numpy(),
                STD_INTRA: pred.std_intra[b, 0].float().cpu().numpy(),
            }
            if self.mask_threshold is not None:
                row[ERROR_MASK] = error_mask(row[STD_INTRA], self.mask_threshold).astype(np.float32)
            self._rows.append(GridRow(f"patch {int(outputs['index'][b])}", row))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._rows or not trainer.is_global_zero:
            return
        columns = [c for c in COLUMNS if c in self._rows[0].volumes]
        caption = " | ".join(columns)
        wandb_logger = self._wandb(trainer)
        if wandb_logger is not None:
            grid = grid_image(self._rows, columns)
            wandb_logger.log_image(key=IMAGE_KEY, images=[grid], step=trainer.global_step, caption=[caption])
            return
        folder = self.output_dir or Path(trainer.default_root_dir)
        path = prediction_grid(self._rows, columns, folder / f"val_step{trainer.global_step:06d}.png")
        log.info("validation grid (%s) written to %s", caption, path)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._names = {}

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, Mapping) and "name" in outputs and isinstance(batch, Mapping) and "index" in batch:
            self._names.update({int(i): str(n) for i, n in zip(batch["index"], outputs["name"], strict=True)})

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wandb_logger = self._wandb(trainer)
        if wandb_logger is None:
            return
        table = per_patch_table(patch_rows(pl_module, "test"), self._names)
        if table and trainer.is_global_zero:
            wandb_logger.log_table(key=TABLE_KEY, columns=TABLE_COLUMNS, data=table)


def per_patch_table(rows: Mapping[int, Mapping[str, Mapping[str, float]]], names: Mapping[int, str]) -> list[list[Any]]:
    """``[patch, method, pcc, mse, ms_ssim]`` rows of the W&B test table from the model's per-patch scores
    ``{patch id: {product: {score: value}}}``; patch ids without a name are shown by id."""
    return [[names.get(pid, str(pid)), product, *(float(scores[k]) for k in PATCH_SCORES)]
            for pid, by_product in rows.items() for product, scores in by_product.items()]


