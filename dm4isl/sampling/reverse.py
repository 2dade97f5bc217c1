"""Reverse diffusion processes (ancestral DDPM, DDIM) with running statistics of x̂0(t): DDPMavg and intra-std.

All tensors are ``(B, C, Z, Y, X)``; everything in this module works in *model space* (the range the network was
trained on, see :class:`dm4isl.data.normalize.TargetRange`). Schedule arithmetic runs in float32 whatever
precision the ε-predictor uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dm4isl.errors import ConfigError
from dm4isl.sampling.noise import randn_per_patch
from dm4isl.sampling.schedule import NoiseSchedule
from dm4isl.sampling.stats import INTRA_STD_DDOF, RunningStats, WindowStats

#: An ε-predictor: ``eps_fn(x_t (B, C, Z, Y, X), t (B,) int64, cond (B, Cc, Z, Y, X)) -> ε̂ (B, C, Z, Y, X)``.
EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: Reverse processes.
METHODS = ("ddpm", "ddim")
#: Precisions of the network calls: None (as the caller runs them: float32, or bf16 inside a bf16-mixed Lightning
#: trainer), "fp32" (autocast switched off) or "bf16" (bfloat16 autocast). Schedule arithmetic is float32 in all.
PRECISIONS = (None, "fp32", "bf16")
#: Axes reduced for a per-patch mean of a ``(B, C, Z, Y, X)`` tensor.
_PATCH_AXES = (1, 2, 3, 4)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    """x̂0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t."""
    return (x_t - (1.0 - abar_t) ** 0.5 * eps) / abar_t**0.5


def correct_eps_mean(eps: torch.Tensor, x_t: torch.Tensor, abar_t: float, target_mean: float) -> torch.Tensor:
    """Shift ε̂ per patch so that the implied x̂0 has mean ``target_mean`` (model space).

    Counters the mean-brightness defect of ``DiffusionModelUNet`` (its output GroupNorm makes ε̂ nearly blind to
    the mean of x_t, so each patch's brightness drifts with the starting noise). Only the per-patch mean of ε̂
    changes; its spatial pattern is untouched.
    """
    dims = tuple(range(1, eps.ndim))
    wanted = (x_t.mean(dim=dims, keepdim=True) - abar_t**0.5 * target_mean) / (1.0 - abar_t) ** 0.5
    return eps - eps.mean(dim=dims, keepdim=True) + wanted


def network_precision(device: torch.device | str, precision: str | None) -> contextlib.AbstractContextManager:
    """Context for the network calls on ``device``: nothing (None), autocast off ("fp32") or bf16 autocast ("bf16")."""
    if precision not in PRECISIONS:
        raise ConfigError(f"network precision {precision!r}; expected one of {PRECISIONS}")
    if precision is None:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=torch.bfloat16)


def _clip(x0: torch.Tensor, clip_x0: Sequence[float] | None) -> torch.Tensor:
    return x0 if clip_x0 is None else x0.clamp(float(clip_x0[0]), float(clip_x0[1]))


def ddpm_step(
    schedule: NoiseSchedule, eps: torch.Tensor, t: int, x_t: torch.Tensor, clip_x0: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One ancestral step t → t−1 (Ho et al. 2020, eq. 7; fixed-small variance).

    Returns ``(mean of x_{t-1}, clipped x̂0, σ_t)``; the caller adds σ_t·z. Equals MONAI ``DDPMScheduler.step``.
    """
    abar_t, abar_prev = schedule.abar(t), schedule.abar(t - 1)
    beta_t = float(schedule.betas[t])
    x0 = _clip(predict_x0(x_t, eps, abar_t), clip_x0)
    coef_x0 = abar_prev**0.5 * beta_t / (1.0 - abar_t)
    coef_xt = (1.0 - beta_t) ** 0.5 * (1.0 - abar_prev) / (1.0 - abar_t)
    sigma = ((1.0 - abar_prev) / (1.0 - abar_t) * beta_t) ** 0.5 if t > 0 else 0.0
    return coef_x0 * x0 + coef_xt * x_t, x0, sigma


def ddim_step(
    schedule: NoiseSchedule,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    eta: float,
    clip_x0: Sequence[float] | None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One DDIM step t → t_prev (Song et al. 2021, eq. 12 and 16); ``t_prev = -1`` means ᾱ_prev = 1.

    Returns ``(mean of x_{t_prev}, clipped x̂0, σ_t(η))``. Equals MONAI ``DDIMScheduler.step`` when MONAI's own
    previous step ``t − T // n`` equals ``t_prev``; here ``t_prev`` is always the next timestep actually visited.
    """
    abar_t, abar_prev = schedule.abar(t), schedule.abar(t_prev)
    x0 = _clip(predict_x0(x_t, eps, abar_t), clip_x0)
    variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
    sigma = eta * max(variance, 0.0) ** 0.5
    direction = max(1.0 - abar_prev - sigma**2, 0.0) ** 0.5 * eps
    return abar_prev**0.5 * x0 + direction, x0, sigma


def sampling_timesteps(schedule: NoiseSchedule, method: str, num_steps: int | None = None) -> torch.Tensor:
    """Timesteps visited, descending, as a ``(n,)`` int64 tensor.

    DDPM visits every t = T−1 … 0. DDIM visits ``round(linspace(T−1, 0, num_steps))`` (MONAI's
    ``set_timesteps``), and each step goes to the next visited timestep — not to MONAI's ``t − T // n``, which
    disagrees with its own spacing whenever (T−1)/(n−1) is not an integer.
    """
    n_train = schedule.num_train_timesteps
    if method == "ddpm":
        if num_steps not in (None, n_train):
            raise ConfigError(
                f"ancestral DDPM runs all {n_train} steps, got num_steps={num_steps}; use method='ddim' for fewer"
            )
        return torch.arange(n_train - 1, -1, -1, dtype=torch.int64)
    if method != "ddim":
        raise ConfigError(f"sampling method {method!r}; expected one of {METHODS}")
    if num_steps is None or not 1 <= num_steps <= n_train:
        raise ConfigError(f"DDIM num_steps={num_steps}; expected an integer in [1, {n_train}]")
    if num_steps == 1:
        return torch.tensor([n_train - 1], dtype=torch.int64)
    steps = torch.linspace(n_train - 1, 0, num_steps, dtype=torch.float64).round().long()
    return torch.unique_consecutive(steps)


@dataclass
class ReverseResult:
    """Outcome of one reverse process over a batch; tensors ``(B, C, Z, Y, X)`` float32 in model space."""

    sample: torch.Tensor
    x0_mean: torch.Tensor
    x0_std: torch.Tensor
    timesteps: torch.Tensor
    window_timesteps: torch.Tensor
    n_calls: int


def reverse_process(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    schedule: NoiseSchedule,
    generators: Sequence[torch.Generator],
    *,
    out_channels: int = 1,
    method: str = "ddpm",
    num_steps: int | None = None,
    eta: float = 0.0,
    window: Sequence[int] = (300, 800),
    clip_x0: Sequence[float] | None = (-1.0, 1.0),
    target_mean: float | None = None,
    precision: str | None = None,
    record: WindowStats | None = None,
) -> ReverseResult:
    """Run a reverse process from pure noise for the batch ``cond`` ``(B, Cc, Z, Y, X)``.

    ``generators[b]`` draws all noise of patch b (x_T first, then one draw per stochastic step), so a patch's
    result does not depend on its batch-mates. x̂0(t) of every visited t with ``window[0] ≤ t < window[1]``
    enters a running mean and sample std (ddof 1, as the reference; nothing of the chain is stored).
    ``target_mean`` (model space) switches on the ε̂ mean correction (:func:`correct_eps_mean`). One ``eps_fn`` call
    per visited timestep, in ``precision`` (:func:`network_precision`); ε̂ is cast to float32 before any schedule
    arithmetic. ``record`` also receives the x̂0(t) of every visited t (statistics of further windows, e.g. a study
    of windows on one trajectory).
    """
    if len(generators) != cond.shape[0]:
        raise ValueError(f"{len(generators)} noise generators for a batch of {cond.shape[0]}; expected one each")
    t_low, t_high = int(window[0]), int(window[1])
    timesteps = sampling_timesteps(schedule, method, num_steps)
    net_precision = network_precision(cond.device, precision)
    shape = (out_channels, *cond.shape[2:])
    x = randn_per_patch(generators, shape, cond.device)
    stats = RunningStats(ddof=INTRA_STD_DDOF)
    in_window = []
    for i, t in enumerate(timesteps.tolist()):
        t_batch = torch.full((cond.shape[0],), t, dtype=torch.int64, device=cond.device)
        with net_precision:
            eps = eps_fn(x, t_batch, cond)
        eps = eps.float()
        if target_mean is not None:
            eps = correct_eps_mean(eps, x, schedule.abar(t), target_mean)
        if method == "ddpm":
            mean, x0, sigma = ddpm_step(schedule, eps, t, x, clip_x0)
        else:
            t_prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
            mean, x0, sigma = ddim_step(schedule, eps, t, t_prev, x, eta, clip_x0)
        if t_low <= t < t_high:
            stats.update(x0)
            in_window.append(t)
        if record is not None:
            record.update(t, x0)
        x = mean + sigma * randn_per_patch(generators, shape, cond.device) if sigma > 0 else mean
    if stats.count == 0:
        raise ValueError(
            f"no visited timestep lies in the averaging window [{t_low}, {t_high}) "
            f"({method}, {len(timesteps)} steps); widen the window or use more steps"
        )
    return ReverseResult(
        sample=x,
        x0_mean=stats.mean,
        x0_std=stats.std,
        timesteps=timesteps,
        window_timesteps=torch.tensor(in_window, dtype=torch.int64),
        n_calls=len(timesteps),
    )
