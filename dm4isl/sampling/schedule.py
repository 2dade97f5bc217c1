"""The diffusion noise schedule (betas, cumulative alphas) and the forward noising q(x_t | x_0)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

#: Beta schedules: "linear" (Ho et al. 2020) and "scaled_linear" (betas linear in their square root; SPEC §2).
SCHEDULE_KINDS = ("linear", "scaled_linear")


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance schedule of ``num_train_timesteps`` steps, t = 0 … T-1.

    Coefficients are computed in float64 and applied in float32 (the network may run in reduced precision; the
    schedule arithmetic never does). Defaults are the paper's: 1000 steps, scaled-linear betas 0.0005 … 0.0195.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0005
    beta_end: float = 0.0195
    kind: str = "scaled_linear"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"noise schedule kind {self.kind!r}; expected one of {SCHEDULE_KINDS}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps = {self.num_train_timesteps}; expected ≥ 1")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(
                f"betas from {self.beta_start} to {self.beta_end}; expected 0 < beta_start ≤ beta_end < 1"
            )

    @cached_property
    def betas(self) -> torch.Tensor:
        """``(T,)`` float64 betas."""
        n = self.num_train_timesteps
        if self.kind == "scaled_linear":
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        return torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """``(T,)`` float64 ᾱ_t = ∏_{s ≤ t} (1 − β_s)."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def abar(self, t: int) -> float:
        """ᾱ_t for one timestep; ``t = -1`` (after the last step) gives 1."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε for ``x0``, ``noise`` ``(B, C, Z, Y, X)``, ``t`` ``(B,)``."""
        abar = self.alphas_cumprod.to(x0.device)[t.long()].to(torch.float32)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return abar.sqrt().view(shape) * x0.float() + (1.0 - abar).sqrt().view(shape) * noise.float()

    def to_dict(self) -> dict[str, Any]:
        """Plain-container description (stored in checkpoints)."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "kind": self.kind,
        }
