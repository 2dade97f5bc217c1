"""3-D U-Net regression baseline (fnet-style) as a LightningModule, plus the baselines' shared evaluation code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from dm4isl.io.layout import BF, GT, UNET
from dm4isl.models.checkpoint import ARRAY_AXES, TENSOR_AXES, check_axes
from dm4isl.models.nets.unet3d import build_unet3d, downsampling_factor
from dm4isl.models.outputs import clear_stage, log_scores, score_patches
from dm4isl.models.predictor import Predictor, PredictRequest
from dm4isl.sampling.inference import predict_volume, sliding_window_predict
from dm4isl.sampling.tiled import TileSettings

#: Reconstruction losses of the U-Net baseline (fnet: MSE).
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}
#: Output range of every prediction handed to metrics and writers (per-voxel clip, batch-independent).
OUTPUT_RANGE = (0.0, 1.0)


class BaselineModule(Predictor, L.LightningModule):
    """Deterministic brightfield → fluorescence network ``self.net`` with the baselines' prediction and evaluation.

    Subclasses build ``self.net`` (``(B, 1, Z, Y, X)`` → ``(B, 1, Z, Y, X)``) and set :attr:`output_name`, the
    output folder name of their predictions. Volumes larger than the training patch are predicted with
    Gaussian-weighted sliding windows of the training patch size. Validation logs ``val/{pcc,mse,ms_ssim}``,
    test logs ``test/…`` and returns the arrays for the prediction writer. There are no uncertainty outputs.
    """

    #: Output folder name of this model's predictions (recognised by the evaluation as a baseline).
    output_name = "baseline"

    def __init__(self, net_config: Mapping[str, Any], patch_size: Sequence[int] | None) -> None:
        super().__init__()
        self._factor = downsampling_factor(net_config)
        self._roi = [int(s) for s in patch_size] if patch_size is not None else None

    def forward(self, bf: torch.Tensor) -> torch.Tensor:
        """Raw network output for brightfield ``bf`` ``(B, 1, Z, Y, X)``; Z, Y, X multiples of the downsampling."""
        return self.net(bf)

    def predict_fluorescence(self, bf: torch.Tensor) -> torch.Tensor:
        """Fluorescence ``(B, 1, Z, Y, X)`` in [0, 1] for brightfield ``bf`` ``(B, 1, Z, Y, X)`` of any size.

        Inputs up to the training patch size (multiples of the downsampling factor) take one network call; larger
        ones are tiled by Gaussian-weighted sliding windows of the training patch size.
        """
        roi = self._roi or list(bf.shape[2:])
        pred = predict_volume(
            self.net, bf.float(), roi, self._factor,
            overlap=self.hparams.sw_overlap, sw_batch_size=self.hparams.sw_batch_size,
        )
        return pred.clamp(*OUTPUT_RANGE)

    @torch.no_grad()
    def predict_products(
        self, bf: torch.Tensor, patch_ids: Sequence[int], request: PredictRequest | None = None
    ) -> dict[str, torch.Tensor]:
        """``{output_name: (B, 1, Z, Y, X)}`` in [0, 1] for brightfield ``bf`` ``(B, 1, Z, Y, X)``
        (:class:`~dm4isl.models.predictor.Predictor`; no uncertainty products, ``patch_ids`` unused: deterministic).

        Inputs larger than the tile (``request.tiles``, default the training patch) are tiled with Gaussian-weighted
        sliding windows; smaller ones take :meth:`predict_fluorescence`.
        """
        request = request or PredictRequest()
        bf = bf.to(self.device).float()
        shape = tuple(bf.shape[2:])
        if not self.is_tiled(shape, request.tiles):
            return {self.output_name: self.predict_fluorescence(bf).float()}
        tiles = request.tiles
        pred = sliding_window_predict(self, bf, self.tile_for(shape, tiles), tiles.overlap, tiles.batch)
        return {self.output_name: pred.clamp(*OUTPUT_RANGE).float()}

    def on_validation_epoch_start(self) -> None:
        clear_stage(self, "val")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._log_metrics("val", batch["fl"], self.predict_fluorescence(batch["bf"]), batch["index"])

    def on_validation_epoch_end(self) -> None:
        log_scores(self, "val", prog_bar="pcc")

    def on_test_epoch_start(self) -> None:
        clear_stage(self, "test")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Predict a test batch; returns ``(B, Z, Y, X)`` float32 arrays ``BF``, ``GT`` and :attr:`output_name`."""
        bf, gt = batch["bf"], batch["fl"]
        tiles = TileSettings(overlap=self.hparams.sw_overlap, batch=self.hparams.sw_batch_size)
        pred = self.predict_products(bf, batch["index"], PredictRequest(tiles=tiles))[self.output_name]
        self._log_metrics("test", gt, pred, batch["index"])
        arrays = {BF: bf, GT: gt, self.output_name: pred}
        return {"name": list(batch["name"]), **{k: v[:, 0].float().cpu().numpy() for k, v in arrays.items()}}

    def on_test_epoch_end(self) -> None:
        log_scores(self, "test")

    def _log_metrics(self, stage: str, gt: torch.Tensor, pred: torch.Tensor, ids: torch.Tensor | Sequence[int]) -> None:
        """Score every patch once (:func:`~dm4isl.models.outputs.score_patches`): logged at epoch end as
        ``<stage>/{pcc,mse,ms_ssim}`` (NaN MS-SSIM of small patches left out; under DDP each patch counts once),
        written by the prediction writer; the arrays go to the metrics callback (wider metric sets)."""
        gt_np, pred_np = gt[:, 0].float().cpu().numpy(), pred[:, 0].float().cpu().numpy()
        score_patches(self, stage, gt_np, {self.output_name: pred_np}, torch.as_tensor(ids).tolist(), prefixed=False)


class UNetModule(BaselineModule):
    """3-D U-Net trained by voxel-wise regression (fnet recipe: MSE, Adam lr 1e-3, betas (0.5, 0.999)).

    Batches are dicts with ``bf`` and ``fl`` ``(B, 1, Z, Y, X)`` float32 in [0, 1]. ``net`` is a ``unet3d`` config
    (:mod:`dm4isl.models.nets.unet3d`); ``organelle`` and ``patch_size`` ``(Z, Y, X)`` are stored in the checkpoint.
    """

    output_name = UNET

    def __init__(
        self,
        net: dict[str, Any],
        organelle: dict[str, Any] | None = None,
        patch_size: list[int] | None = None,
        loss: str = "mse",
        lr: float = 1e-3,
        betas: list[float] | tuple[float, float] = (0.5, 0.999),
        sw_overlap: float = 0.25,
        sw_batch_size: int = 4,
        array_axes: str = ARRAY_AXES,
        tensor_axes: str = TENSOR_AXES,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss {loss!r}; expected one of {sorted(LOSSES)}")
        check_axes(array_axes, tensor_axes)
        super().__init__(net, patch_size)
        self.save_hyperparameters()
        self.net = build_unet3d(net, in_channels=1, out_channels=1)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        pred = self.net(batch["bf"])
        loss = LOSSES[self.hparams.loss](pred.float(), batch["fl"].float())
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))
