"""Conditional 3-D DDPM for in-silico labelling (LightningModule): brightfield in, fluorescence + uncertainty out."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from dm4isl.data.normalize import COND_NORMS, TargetRange, zscore_per_patch
from dm4isl.errors import ConfigError
from dm4isl.io.layout import BF, DDPM, DDPMAVG, GT, LINEAR, STD_INTER, STD_INTRA, seed_product
from dm4isl.models.checkpoint import ARRAY_AXES, PENDING_STATS_KEY, TENSOR_AXES, check_axes
from dm4isl.models.nets import build_net
from dm4isl.models.outputs import clear_stage, log_scores, score_patches
from dm4isl.models.predictor import Predictor, PredictRequest
from dm4isl.sampling import NoiseSchedule, Prediction, SamplerSettings, sample
from dm4isl.sampling.ensemble import sample_ensemble
from dm4isl.sampling.noise import training_noise
from dm4isl.sampling.tiled import sample_ensemble_tiled

#: Losses on the predicted noise.
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
#: What the network predicts: the noise ε (the reference), the clean image x0 ("sample") or v (Salimans & Ho 2022).
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
#: Per-timestep weights of the training loss: none (the reference) or min-SNR-γ (Hang et al. 2023, "Efficient
#: Diffusion Training via Min-SNR Weighting Strategy"), which caps the weight of low-noise steps.
LOSS_WEIGHTINGS = ("none", "min_snr")
#: Learning-rate schedules: constant (the reference) or cosine decay to 0 at the last optimizer step, each after an
#: optional linear warm-up of ``warmup_steps``.
LR_SCHEDULES = ("constant", "cosine")
#: Running sums over training batches: voxel count, Σbf, Σfl, Σbf², Σbf·fl (float64).
_N, _SUM_BF, _SUM_FL, _SUM_BF2, _SUM_BFFL = range(5)


def lr_factor(kind: str, warmup_steps: int, total_steps: int, step: int) -> float:
    """Multiplier of the base learning rate at optimizer ``step`` (0-based): linear warm-up, then constant or cosine.

    Cosine reaches 0 at ``total_steps``; warm-up rises linearly from 1/``warmup_steps`` to 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class DDPMModule(Predictor, L.LightningModule):
    """Conditional DDPM around MONAI ``DiffusionModelUNet`` (SPEC §2–3); batches are dicts of ``(B, 1, Z, Y, X)``.

    The network sees ``[brightfield, x_t]`` on the channel axis (``cond_first=True``, the reference order) and
    predicts the noise ε; ``cond_norm="zscore"`` standardises each brightfield patch first (low-contrast
    brightfield, e.g. std ≈ 0.03 after the fixed window, is otherwise drowned by the unit-variance x_t).
    Fluorescence targets are mapped from [0, 1] to ``target_range`` for training and back
    for output. Running sums of the training data give the training-set fluorescence mean (for the sampler's
    ε̂ mean correction) and a voxel-wise linear brightfield → fluorescence baseline; both travel in the
    checkpoint. Validation samples the first ``val_num_patches`` validation patches with ``val_sampler`` and
    logs ``val/{ddpm,ddpmavg}_{pcc,mse,ms_ssim}``; test uses ``test_sampler`` and returns the arrays for the
    prediction writer.
    """

    #: Its products include the intra-process (and, with several seeds, inter-process) std maps.
    has_uncertainty = True

    def __init__(
        self,
        net: dict[str, Any],
        organelle: dict[str, Any] | None = None,
        patch_size: list[int] | None = None,
        schedule: dict[str, Any] | None = None,
        loss: str = "l1",
        lr: float = 2.5e-5,
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        target_range: list[float] | tuple[float, float] = (-1.0, 1.0),
        cond_first: bool = True,
        cond_norm: str = "none",
        prediction_type: str = "epsilon",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        val_sampler: dict[str, Any] | None = None,
        val_num_patches: int = 8,
        test_sampler: dict[str, Any] | None = None,
        array_axes: str = ARRAY_AXES,
        tensor_axes: str = TENSOR_AXES,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"loss {loss!r}; expected one of {sorted(LOSSES)}")
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError(f"loss_weighting {loss_weighting!r}; expected one of {LOSS_WEIGHTINGS}")
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule {lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if int(warmup_steps) < 0:
            raise ConfigError(f"warmup_steps = {warmup_steps}; expected ≥ 0")
        if cond_norm not in COND_NORMS:
            raise ConfigError(f"cond_norm {cond_norm!r}; expected one of {COND_NORMS}")
        check_axes(array_axes, tensor_axes)
        self.save_hyperparameters()
        self.net = build_net(net, in_channels=2, out_channels=1)
        self.schedule = NoiseSchedule(**(schedule or {}))
        self.target = TargetRange(*target_range)
        self.val_settings = SamplerSettings.from_dict(val_sampler)
        self.test_settings = SamplerSettings.from_dict(test_sampler)
        # "data_stats" is the checkpoint contract's TRAINING_STATS_KEY (dm4isl.models.checkpoint)
        self.register_buffer("data_stats", torch.zeros(5, dtype=torch.float64))
        self.register_buffer("_pending_stats", torch.zeros(5, dtype=torch.float64), persistent=False)
        self._val_seen = 0

    # --- network -----------------------------------------------------------------------------------------------
    def net_output(self, x_t: torch.Tensor, t: torch.Tensor, bf: torch.Tensor) -> torch.Tensor:
        """Raw network output (ε, x0 or v: ``prediction_type``); ``x_t``, ``bf`` are (B, 1, Z, Y, X), ``t`` (B,)."""
        if self.hparams.cond_norm == "zscore":
            bf = zscore_per_patch(bf)
        parts = (bf, x_t) if self.hparams.cond_first else (x_t, bf)
        return self.net(torch.cat(parts, dim=1), timesteps=t)

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t as a float32 ``(B, 1, 1, 1, 1)`` tensor (schedule arithmetic in float32 whatever the net's precision)."""
        abar = self.schedule.alphas_cumprod.to(like.device)[t.long()].to(torch.float32)
        return abar.view(-1, *([1] * (like.ndim - 1)))

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, bf: torch.Tensor) -> torch.Tensor:
        """Predicted noise ε̂ for ``x_t`` and brightfield ``bf`` ``(B, 1, Z, Y, X)`` at timesteps ``t`` ``(B,)``.

        Networks trained to predict x0 (``sample``) or v are converted to the equivalent ε̂, so every sampler
        recovers exactly the network's x̂0 from it.
        """
        out = self.net_output(x_t, t, bf).float()
        kind = self.hparams.prediction_type
        if kind == "epsilon":
            return out
        abar = self._abar(t, x_t)
        if kind == "sample":
            return (x_t.float() - abar.sqrt() * out) / (1.0 - abar).sqrt()
        return abar.sqrt() * out + (1.0 - abar).sqrt() * x_t.float()

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output: ε (reference), x0 (``sample``) or v = √ᾱ ε − √(1−ᾱ) x0."""
        kind = self.hparams.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        abar = self._abar(t, x0)
        return abar.sqrt() * noise - (1.0 - abar).sqrt() * x0

    # --- training ----------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        bf, fl = batch["bf"], batch["fl"]
        self._accumulate(bf, fl)
        x0 = self.target.to_model(fl.float())
        noise, t = training_noise(batch["index"], x0, self.schedule.num_train_timesteps)
        out = self.net_output(self.schedule.add_noise(x0, noise, t), t, bf)
        target = self.training_target(x0, noise, t)
        if self.hparams.loss_weighting == "none":
            loss = LOSSES[self.hparams.loss](out.float(), target)
        else:
            per_patch = LOSSES[self.hparams.loss](out.float(), target, reduction="none").mean(dim=(1, 2, 3, 4))
            loss = (self.loss_weights(t).to(per_patch) * per_patch).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Weights ``(B,)`` of the per-patch losses at timesteps ``t`` ``(B,)`` (``loss_weighting``).

        min-SNR-γ gives every timestep the weight min(SNR_t, γ) in x0 units, SNR_t = ᾱ_t / (1 − ᾱ_t); expressed for
        the network's own target that is min(SNR, γ)/SNR for ε, min(SNR, γ) for x0 and min(SNR, γ)/(SNR + 1) for v.
        """
        abar = self.schedule.alphas_cumprod.to(t.device)[t.long()].to(torch.float32)
        snr = abar / (1.0 - abar)
        capped = snr.clamp(max=float(self.hparams.min_snr_gamma))
        if self.hparams.loss_weighting == "none":
            return torch.ones_like(snr)
        kind = self.hparams.prediction_type
        if kind == "epsilon":
            return capped / snr
        if kind == "sample":
            return capped
        return capped / (snr + 1.0)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Adam without weight decay; with ``lr_schedule``/``warmup_steps`` a per-step multiplier of the rate."""
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        warmup, kind = int(self.hparams.warmup_steps), self.hparams.lr_schedule
        if kind == "constant" and warmup == 0:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        if kind == "cosine" and not 0 < total < 10**9:
            raise ConfigError("lr_schedule=cosine needs a finite number of optimizer steps (set trainer.max_steps)")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, kind, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- training-data statistics (fluorescence mean, linear baseline) -------------------------------------------
    def _accumulate(self, bf: torch.Tensor, fl: torch.Tensor) -> None:
        bf64, fl64 = bf.detach().double(), fl.detach().double()
        count = torch.tensor(float(bf64.numel()), dtype=torch.float64, device=bf64.device)
        self._pending_stats += torch.stack([count, bf64.sum(), fl64.sum(), (bf64 * bf64).sum(), (bf64 * fl64).sum()])

    def _merge_stats(self) -> None:
        """Add this epoch's sums of every process to the stored statistics (collective: all ranks call it)."""
        pending = self._pending_stats
        if self._trainer is not None and self._trainer.world_size > 1:
            pending = self.trainer.strategy.reduce(pending, reduce_op="sum")
        self.data_stats += pending
        self._pending_stats.zero_()

    def on_train_epoch_end(self) -> None:
        self._merge_stats()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep this epoch's not yet merged sums: a run resumed mid-epoch then counts every batch exactly once."""
        checkpoint[PENDING_STATS_KEY] = self._pending_stats.detach().cpu().clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if PENDING_STATS_KEY in checkpoint:
            self._pending_stats.copy_(checkpoint[PENDING_STATS_KEY])

    @property
    def fl_mean(self) -> float | None:
        """Training-set fluorescence mean (data units), or ``None`` before any training batch."""
        n = float(self.data_stats[_N])
        return float(self.data_stats[_SUM_FL]) / n if n > 0 else None

    def linear_baseline(self, bf: torch.Tensor) -> torch.Tensor:
        """Voxel-wise least-squares fit fl ≈ a·bf + b on the training data, applied to ``bf``, clipped to [0, 1]."""
        s = self.data_stats.tolist()
        n = s[_N]
        if n == 0:
            raise ValueError("no training statistics yet: the linear baseline needs at least one training batch")
        var_bf = s[_SUM_BF2] / n - (s[_SUM_BF] / n) ** 2
        cov = s[_SUM_BFFL] / n - s[_SUM_BF] * s[_SUM_FL] / n**2
        slope = cov / var_bf if var_bf > 0 else 0.0
        intercept = s[_SUM_FL] / n - slope * s[_SUM_BF] / n
        return (slope * bf.float() + intercept).clamp(0.0, 1.0)

    # --- sampling --------------------------------------------------------------------------------------------------
    def usable_settings(self, settings: SamplerSettings | None = None) -> SamplerSettings:
        """``settings`` (default: the test sampler) with the ε̂ mean correction switched off, and a warning, when this
        model has no training statistics yet (validation or test before any training batch)."""
        settings = settings or self.test_settings
        if settings.mean_correction and self.fl_mean is None:
            rank_zero_warn("ε̂ mean correction skipped: no training statistics in this model yet")
            settings = SamplerSettings.from_dict({**settings.to_dict(), "mean_correction": False})
        return settings

    def predict_fluorescence(
        self, bf: torch.Tensor, patch_ids: torch.Tensor | Sequence[int], settings: SamplerSettings | None = None
    ) -> Prediction:
        """One reverse process per patch of brightfield ``bf`` ``(B, 1, Z, Y, X)`` in [0, 1], untiled, with every
        intermediate product of :func:`sample` (validation and the W&B panels use it)."""
        return sample(self.eps, bf.float(), patch_ids, self.schedule, self.usable_settings(settings), self.target,
                      self.fl_mean)

    @torch.no_grad()
    def predict_products(
        self, bf: torch.Tensor, patch_ids: Sequence[int], request: PredictRequest | None = None
    ) -> dict[str, torch.Tensor]:
        """``DDPM``, ``DDPMavg``, ``std_intra`` and, with ``n_seeds > 1``, ``std_inter`` (with ``keep_seeds`` also
        every seed's ``DDPM`` and ``DDPMavg``), each ``(B, 1, Z, Y, X)``, for brightfield ``bf`` ``(B, 1, Z, Y, X)``
        in [0, 1] (:class:`~dm4isl.models.predictor.Predictor`).

        The patches × seeds rows run through the reverse process together (:func:`sample_ensemble`); inputs larger
        than the tile are sampled whole, ε̂ blended from tiles at every step (:func:`sample_ensemble_tiled`).
        """
        request = request or PredictRequest()
        settings = request.settings or self.test_settings
        if settings.mean_correction and self.fl_mean is None:
            raise ValueError("the checkpoint has no training statistics; the ε̂ mean correction needs them")
        bf = bf.to(self.device).float()
        shape = tuple(bf.shape[2:])
        ids = [int(i) for i in (patch_ids.tolist() if isinstance(patch_ids, torch.Tensor) else patch_ids)]
        if self.is_tiled(shape, request.tiles):
            ens = sample_ensemble_tiled(
                self.eps, bf, ids, self.schedule, settings, request.n_seeds, request.tiles,
                self.tile_for(shape, request.tiles), self.target, self.fl_mean, request.max_batch,
            )
        else:
            ens = sample_ensemble(self.eps, bf, ids, self.schedule, settings, request.n_seeds, self.target,
                                  self.fl_mean, request.max_batch)
        out = {DDPM: ens.ddpm, DDPMAVG: ens.ddpmavg, STD_INTRA: ens.std_intra}
        if request.n_seeds > 1:
            out[STD_INTER] = ens.std_inter
            if request.keep_seeds:
                for k, seed in enumerate(ens.seeds):
                    out[seed_product(DDPM, seed)] = ens.ddpm_seeds[k]
                    out[seed_product(DDPMAVG, seed)] = ens.ddpmavg_seeds[k]
        return out

    def on_validation_epoch_start(self) -> None:
        self._merge_stats()
        clear_stage(self, "val")
        self._val_seen = 0

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any] | None:
        """Sample the batch's patches with id < ``val_num_patches`` (the same patches on any number of ranks).

        Returns what was sampled — ``bf``, ``fl`` ``(b, 1, Z, Y, X)``, ``index`` ``(b,)`` and the
        :class:`Prediction` — for callbacks (``outputs`` of ``on_validation_batch_end``); None when nothing was.
        """
        keep = torch.as_tensor(batch["index"]) < self.hparams.val_num_patches
        if not bool(keep.any()):
            return None
        self._val_seen += int(keep.sum())
        ids = torch.as_tensor(batch["index"])[keep]
        bf, fl = batch["bf"][keep], batch["fl"][keep]
        pred = self.predict_fluorescence(bf, ids, self.val_settings)
        self._log_metrics("val", fl, {DDPM: pred.ddpm, DDPMAVG: pred.ddpmavg}, ids)
        return {"bf": bf, "fl": fl, "index": ids, "prediction": pred}

    def on_validation_epoch_end(self) -> None:
        log_scores(self, "val", prog_bar="ddpmavg_pcc")

    def on_test_epoch_start(self) -> None:
        self._merge_stats()
        clear_stage(self, "test")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Predict a test batch; returns ``(B, Z, Y, X)`` float32 arrays by product name, plus ``name``."""
        bf, gt = batch["bf"], batch["fl"]
        request = PredictRequest(settings=self.usable_settings(self.test_settings))
        products = self.predict_products(bf, batch["index"], request)
        products[LINEAR] = self.linear_baseline(bf)
        self._log_metrics("test", gt, {k: products[k] for k in (DDPM, DDPMAVG, LINEAR)}, batch["index"])
        arrays = {BF: bf, GT: gt, **products}
        return {"name": list(batch["name"]), **{k: v[:, 0].float().cpu().numpy() for k, v in arrays.items()}}

    def on_test_epoch_end(self) -> None:
        log_scores(self, "test")

    def _log_metrics(
        self, stage: str, gt: torch.Tensor, preds: Mapping[str, torch.Tensor], ids: torch.Tensor | Sequence[int]
    ) -> None:
        """Score every patch and product once (:func:`score_patches`: logged at epoch end as
        ``<stage>/<product>_<score>``, written by the prediction writer, the arrays to the metrics callback)."""
        gt_np = gt[:, 0].float().cpu().numpy()
        preds_np = {name: pred[:, 0].float().cpu().numpy() for name, pred in preds.items()}
        score_patches(self, stage, gt_np, preds_np, torch.as_tensor(ids).tolist())
