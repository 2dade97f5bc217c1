"""Validation image grids and per-patch test tables: W&B media with ``logger=wandb``, PNG files otherwise."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from dm4isl.io.atomic import atomic_path
from dm4isl.io.layout import BF, DDPM, DDPMAVG, GT, LINEAR
from dm4isl.metrics.basic import mse, pcc
from dm4isl.uncertainty.masks import error_mask
from dm4isl.uncertainty.thresholds import resolve_threshold, sampling_setting

log = logging.getLogger(__name__)

#: Grid columns, left to right (mid-Z slices). ``error mask`` needs a threshold on the intra-process std.
COLUMNS = ("BF", "GT", "DDPM", "DDPMavg", "std", "error mask")
#: Grey level of the separators between panels, and their width in pixels.
SEPARATOR_VALUE = 1.0
SEPARATOR_PX = 2
#: Keys of the media and table logged to W&B.
IMAGE_KEY = "val/images"
TABLE_KEY = "test/per_patch"
#: Outputs of a test step compared with GT in the per-patch table.
TABLE_METHODS = (DDPM, DDPMAVG, LINEAR)


def _unit(panel: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] (a constant panel becomes 0)."""
    lo, hi = float(panel.min()), float(panel.max())
    return (panel - lo) / (hi - lo) if hi > lo else np.zeros_like(panel)


def grid_row(panels: Mapping[str, np.ndarray]) -> np.ndarray:
    """One grid row ``(Y, X · n + separators)`` in [0, 1] from ``(Z, Y, X)`` volumes: their mid-Z slices.

    Fluorescence panels (GT, DDPM, DDPMavg) keep their [0, 1] scale; BF and std are min-max scaled.
    """
    slices = []
    for name, volume in panels.items():
        mid = np.asarray(volume, dtype=np.float32)[volume.shape[0] // 2]
        slices.append(np.clip(mid, 0.0, 1.0) if name in ("GT", "DDPM", "DDPMavg", "error mask") else _unit(mid))
    sep = np.full((slices[0].shape[0], SEPARATOR_PX), SEPARATOR_VALUE, np.float32)
    parts = [p for s in slices for p in (s, sep)][:-1]
    return np.concatenate(parts, axis=1)


def image_grid(rows: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Rows of :func:`grid_row` stacked into one ``(H, W)`` uint8 image."""
    built = [grid_row(r) for r in rows]
    sep = np.full((SEPARATOR_PX, built[0].shape[1]), SEPARATOR_VALUE, np.float32)
    parts = [p for r in built for p in (r, sep)][:-1]
    return (np.concatenate(parts, axis=0) * 255.0).round().astype(np.uint8)


def per_patch_rows(outputs: Mapping[str, Any]) -> list[list[Any]]:
    """``[name, method, PCC, MSE]`` for every patch and method of a test step's outputs (``(B, Z, Y, X)`` arrays)."""
    rows = []
    for b, name in enumerate(outputs["name"]):
        gt = np.asarray(outputs[GT][b])
        for method in TABLE_METHODS:
            if method in outputs:
                pred = np.asarray(outputs[method][b])
                rows.append([str(name), method, float(pcc(gt, pred)), float(mse(gt, pred))])
    return rows


class ImageGrid(pl.Callback):
    """Mid-Z grid BF | GT | DDPM | DDPMavg | std | error mask of the first validation patches, per validation.

    The grid is logged with ``WandbLogger.log_image`` when a W&B logger is attached, else written as
    ``<output_dir>/val_step<step>.png``. The images are the validation's own samples (the ``outputs`` the DDPM's
    ``validation_step`` returns; nothing is sampled again), so only patches with id < ``val_num_patches`` appear. At
    test, per-patch PCC/MSE go to a ``wandb.Table`` (W&B only; the
    prediction writer's CSV has them for every logger). Models whose validation returns no prediction are skipped.
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
        self._rows: list[dict[str, np.ndarray]] = []
        self._table: list[list[Any]] = []

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
                "std": pred.std_intra[b, 0].float().cpu().numpy(),
            }
            if self.mask_threshold is not None:
                row["error mask"] = error_mask(row["std"], self.mask_threshold).astype(np.float32)
            self._rows.append(row)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._rows or not trainer.is_global_zero:
            return
        grid = image_grid(self._rows)
        caption = " | ".join(self._rows[0])
        wandb_logger = self._wandb(trainer)
        if wandb_logger is not None:
            wandb_logger.log_image(key=IMAGE_KEY, images=[grid], step=trainer.global_step, caption=[caption])
            return
        folder = self.output_dir or Path(trainer.default_root_dir)
        path = folder / f"val_step{trainer.global_step:06d}.png"
        _write_png(path, grid)
        log.info("validation grid (%s) written to %s", caption, path)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._table = []

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if isinstance(outputs, Mapping) and GT in outputs and "name" in outputs:
            self._table.extend(per_patch_rows(outputs))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wandb_logger = self._wandb(trainer)
        if wandb_logger is None or not self._table or not trainer.is_global_zero:
            return
        wandb_logger.log_table(key=TABLE_KEY, columns=["patch", "method", "pcc", "mse"], data=self._table)


def _write_png(path: Path, image: np.ndarray) -> None:
    """Save a ``(H, W)`` uint8 image as a grey PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, image, cmap="gray", vmin=0, vmax=255, format="png")
