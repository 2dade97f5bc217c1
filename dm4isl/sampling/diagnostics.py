"""The mean-brightness defect of an ε-predictor, measured: how ε̂ follows the mean of x_t, and what the fix buys.

``DiffusionModelUNet`` ends in GroupNorm → SiLU → convolution, which can make ε̂ nearly blind to the mean of its
input; then each patch's brightness drifts with the starting noise (../shared/MEASURED.md). Two measurements on
any model, both on ``(B, 1, Z, Y, X)`` tensors in data units [0, 1]:

* :func:`mean_response` — the finite-difference slope d mean(ε̂) / d mean(x_t) at several timesteps, next to the
  slope an exact ε-predictor has, 1 / √(1 − ᾱ_t) (a shift δ of x_t's mean can only be noise when the clean
  image's mean is fixed: it is δ / √(1 − ᾱ_t) of ε).
* :func:`correction_effect` — DDPMavg sampled with and without the ε̂ mean correction on the same patches and
  noise: per-patch brightness error (mean(DDPMavg) − mean(truth)), PCC and MSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from dm4isl.data.normalize import TargetRange
from dm4isl.metrics.basic import mse, pcc
from dm4isl.sampling.reverse import EpsFn
from dm4isl.sampling.sampler import SamplerSettings, sample
from dm4isl.sampling.schedule import NoiseSchedule

#: Where in the schedule the response of ε̂ to the mean of x_t is measured by default (fractions of T; with the
#: paper's T = 1000: t = 50, 200, 400, 600, 800, 950).
DEFAULT_FRACTIONS = (0.05, 0.2, 0.4, 0.6, 0.8, 0.95)
#: Size of the shift of x_t's mean (model units) used for the finite difference.
DEFAULT_DELTA = 0.1


@dataclass(frozen=True)
class MeanResponse:
    """Response of ε̂ to a shift of the mean of x_t at one timestep (means over patches)."""

    t: int
    slope: float
    ideal: float

    @property
    def ratio(self) -> float:
        """Measured / ideal slope: ≈ 1 for an exact ε-predictor, ≈ 0 when ε̂ ignores the mean of x_t."""
        return self.slope / self.ideal


@torch.no_grad()
def mean_response(
    eps_fn: EpsFn,
    fl: torch.Tensor,
    bf: torch.Tensor,
    schedule: NoiseSchedule,
    target: TargetRange,
    timesteps: Sequence[int] | None = None,
    delta: float = DEFAULT_DELTA,
    seed: int = 0,
) -> list[MeanResponse]:
    """Slope d mean(ε̂)/d mean(x_t) at each timestep, by central differences ±``delta`` on noised ``fl``.

    ``fl`` and ``bf`` are ``(B, 1, Z, Y, X)`` in data units; the noise is drawn from ``seed``. ``timesteps``
    default to :data:`DEFAULT_FRACTIONS` of the schedule.
    """
    if timesteps is None:
        timesteps = [round(f * schedule.num_train_timesteps) for f in DEFAULT_FRACTIONS]
    x0 = target.to_model(fl.float())
    gen = torch.Generator(device=fl.device).manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=gen, device=fl.device)
    dims = tuple(range(1, x0.ndim))
    out = []
    for t in timesteps:
        t_batch = torch.full((x0.shape[0],), int(t), dtype=torch.int64, device=fl.device)
        x_t = schedule.add_noise(x0, noise, t_batch)
        up = eps_fn(x_t + delta, t_batch, bf).float().mean(dim=dims)
        down = eps_fn(x_t - delta, t_batch, bf).float().mean(dim=dims)
        slope = float(((up - down) / (2.0 * delta)).mean())
        out.append(MeanResponse(int(t), slope, 1.0 / (1.0 - schedule.abar(int(t))) ** 0.5))
    return out


@dataclass(frozen=True)
class CorrectionEffect:
    """Per-patch figures ``(B,)`` of DDPMavg without (``off``) and with (``on``) the ε̂ mean correction."""

    brightness_error_off: np.ndarray
    brightness_error_on: np.ndarray
    pcc_off: np.ndarray
    pcc_on: np.ndarray
    mse_off: np.ndarray
    mse_on: np.ndarray


def correction_effect(
    eps_fn: EpsFn,
    fl: torch.Tensor,
    bf: torch.Tensor,
    patch_ids: Sequence[int],
    schedule: NoiseSchedule,
    settings: SamplerSettings,
    target: TargetRange,
    target_mean: float,
) -> CorrectionEffect:
    """Sample ``bf`` ``(B, 1, Z, Y, X)`` twice — correction off, then on — with the same noise; score vs ``fl``.

    ``target_mean`` is the training-set fluorescence mean (data units) the correction pins each patch to.
    """
    gt = fl[:, 0].float().cpu().numpy()
    results = {}
    for on in (False, True):
        pred = sample(eps_fn, bf.float(), list(patch_ids), schedule, replace(settings, mean_correction=on), target,
                      target_mean)
        avg = pred.ddpmavg[:, 0].float().cpu().numpy()
        results[on] = (
            avg.mean(axis=(1, 2, 3)) - gt.mean(axis=(1, 2, 3)),
            np.array([pcc(g, p) for g, p in zip(gt, avg, strict=True)]),
            np.array([mse(g, p) for g, p in zip(gt, avg, strict=True)]),
        )
    return CorrectionEffect(results[False][0], results[True][0], results[False][1], results[True][1],
                            results[False][2], results[True][2])
