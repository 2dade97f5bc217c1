"""Whole-volume diffusion sampling: one global reverse process whose ε̂ is assembled from Gaussian-blended tiles.

Sampling each tile with its own chain would let neighbouring chains drift apart and leave seams. Here the noise
field x_t covers the whole volume; at every step the ε-network sees overlapping tiles of x_t and of the
brightfield, and the tile predictions are blended with Gaussian weights (MONAI's sliding-window inferer, the same
blending the baselines use), so the final sample, DDPMavg and the std maps come out seamless. Memory is bounded by
the number of tiles per network call. All tensors are ``(B, C, Z, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from dm4isl.data.normalize import TargetRange
from dm4isl.sampling.ensemble import EnsemblePrediction, sample_ensemble
from dm4isl.sampling.inference import window_inferer
from dm4isl.sampling.reverse import EpsFn, correct_eps_mean
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.sampling.schedule import NoiseSchedule

#: Number of spatial axes of a tile ``(Z, Y, X)``.
TILE_DIMS = 3
#: Where the sampler's ε̂ mean correction applies on a tiled volume: once on the whole volume (default: seamless)
#: or on every tile before blending (pulls empty background tiles to the training mean: tile-shaped plateaus).
MEAN_CORRECTION_SCOPES = ("volume", "tile")


@dataclass(frozen=True)
class TileSettings:
    """How volumes larger than a tile are predicted (one Hydra ``tiling`` config).

    ``size`` ``(Z, Y, X)`` of a tile (``None``: the checkpoint's training patch size); ``overlap`` fraction of a tile
    shared with its neighbour along each axis; ``batch`` tiles per network call (the memory bound);
    ``mean_correction`` where the sampler's ε̂ mean correction applies (:data:`MEAN_CORRECTION_SCOPES`).
    """

    size: tuple[int, int, int] | None = None
    overlap: float = 0.25
    batch: int = 4
    mean_correction: str = "volume"

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != TILE_DIMS or min(self.size) < 1):
            raise ValueError(f"tile size {list(self.size)}; expected three positive integers (Z, Y, X)")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tile overlap {self.overlap}; expected a fraction in [0, 1)")
        if self.batch < 1:
            raise ValueError(f"tiles per network call {self.batch}; expected at least 1")
        if self.mean_correction not in MEAN_CORRECTION_SCOPES:
            raise ValueError(
                f"tiling mean_correction {self.mean_correction!r}; expected one of {MEAN_CORRECTION_SCOPES}"
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> TileSettings:
        """Build from a plain or OmegaConf mapping (``size`` as a list or null)."""
        values = dict(config or {})
        if values.get("size") is not None:
            values["size"] = tuple(int(s) for s in values["size"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-container form (for settings hashes and file metadata)."""
        out = asdict(self)
        out["size"] = None if self.size is None else list(self.size)
        return out

    def resolve(self, trained: Sequence[int] | None) -> tuple[int, int, int]:
        """The tile size ``(Z, Y, X)``: ``size`` if set, else the training patch size ``trained``."""
        size = self.size if self.size is not None else trained
        if size is None:
            raise ValueError("no tile size: the checkpoint stores no training patch size; set tiling.size (Z, Y, X)")
        return tuple(int(s) for s in size)


def effective_tile(shape: Sequence[int], tile: Sequence[int]) -> tuple[int, int, int]:
    """The tile actually used on a volume of ``shape`` ``(Z, Y, X)``: ``tile`` shrunk to the volume where smaller."""
    return tuple(min(int(s), int(t)) for s, t in zip(shape, tile, strict=True))


def needs_tiling(shape: Sequence[int], tile: Sequence[int]) -> bool:
    """True when a volume of ``shape`` ``(Z, Y, X)`` exceeds ``tile`` along some axis."""
    return any(int(s) > int(t) for s, t in zip(shape, tile, strict=True))


class TiledEps:
    """An ε-predictor for whole volumes built from an ε-predictor for tiles (see the module docstring).

    ``eps_fn(x_t, t, cond)`` runs on tiles of ``tile_size`` ``(Z, Y, X)``, ``tile_batch`` tiles per call; the
    timestep travels with each tile as an extra constant channel, so rows of one batch may differ in t. With
    ``target_mean`` (model space) each tile's ε̂ gets the mean correction of
    :func:`dm4isl.sampling.reverse.correct_eps_mean` before blending (the ``"tile"`` scope of
    :data:`MEAN_CORRECTION_SCOPES`). ``n_calls`` counts network calls.
    """

    def __init__(
        self,
        eps_fn: EpsFn,
        tile_size: Sequence[int],
        overlap: float = 0.25,
        tile_batch: int = 4,
        schedule: NoiseSchedule | None = None,
        target_mean: float | None = None,
    ) -> None:
        if target_mean is not None and schedule is None:
            raise ValueError("the per-tile ε̂ mean correction needs the noise schedule; expected schedule=…")
        self.eps_fn = eps_fn
        self.tile_size = tuple(int(s) for s in tile_size)
        self.schedule = schedule
        self.target_mean = target_mean
        self.inferer = window_inferer(self.tile_size, overlap, tile_batch)
        self.n_calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε̂ ``(B, C, Z, Y, X)`` float32 of ``x_t`` ``(B, C, Z, Y, X)``, ``t`` ``(B,)``, ``cond`` ``(B, Cc, Z, Y, X)``.

        Tiles larger than the volume are refused (use :func:`effective_tile`).
        """
        if needs_tiling(self.tile_size, x_t.shape[2:]):
            raise ValueError(
                f"volume {list(x_t.shape[2:])} (Z, Y, X) smaller than the tile {list(self.tile_size)}; "
                "expected a tile no larger than the volume (see effective_tile)"
            )
        t_map = t.to(device=x_t.device, dtype=torch.float32).view(-1, 1, 1, 1, 1).expand(-1, 1, *x_t.shape[2:])
        packed = torch.cat([x_t.float(), cond.float(), t_map], dim=1)
        channels = x_t.shape[1]
        return self.inferer(packed, lambda window: self._tile_eps(window, channels)).float()

    def _tile_eps(self, window: torch.Tensor, channels: int) -> torch.Tensor:
        """ε̂ of a batch of packed tiles ``(N, C + Cc + 1, *tile_size)`` → ``(N, C, *tile_size)``."""
        x, cond = window[:, :channels], window[:, channels:-1]
        t = window[:, -1].flatten(1)[:, 0].round().long()
        eps = self.eps_fn(x, t, cond).float()
        self.n_calls += 1
        if self.target_mean is None:
            return eps
        rows = [
            correct_eps_mean(eps[i : i + 1], x[i : i + 1], self.schedule.abar(int(t[i])), self.target_mean)
            for i in range(eps.shape[0])
        ]
        return torch.cat(rows, dim=0)


@torch.no_grad()
def sample_ensemble_tiled(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    patch_ids: Sequence[int] | torch.Tensor,
    schedule: NoiseSchedule,
    settings: SamplerSettings,
    n_seeds: int,
    tiles: TileSettings,
    tile_size: Sequence[int],
    target: TargetRange | None = None,
    target_mean: float | None = None,
    max_batch: int | None = None,
) -> EnsemblePrediction:
    """:func:`dm4isl.sampling.ensemble.sample_ensemble` on whole volumes ``cond`` ``(B, Cc, Z, Y, X)``, tiled.

    ``tile_size`` ``(Z, Y, X)`` is shrunk to the volume where the volume is smaller; ``tiles`` gives the overlap and
    the tiles per network call. With ``settings.mean_correction`` (``target_mean`` in data units, required then) the
    correction applies to the whole volume, or with ``tiles.mean_correction="tile"`` to every tile. Noise comes from
    the same per-(seed, patch id) generators as untiled sampling, drawn for the whole volume.
    """
    target = target or TargetRange()
    tile = effective_tile(cond.shape[2:], tile_size)
    if settings.mean_correction and target_mean is None:
        raise ValueError("mean_correction is on but no training-set target mean was given; expected a float")
    if not (settings.mean_correction and tiles.mean_correction == "tile"):
        tiled = TiledEps(eps_fn, tile, tiles.overlap, tiles.batch)
        return sample_ensemble(tiled, cond, patch_ids, schedule, settings, n_seeds, target, target_mean, max_batch)
    model_mean = float(target.to_model(target_mean))
    tiled = TiledEps(eps_fn, tile, tiles.overlap, tiles.batch, schedule, model_mean)
    return sample_ensemble(
        tiled, cond, patch_ids, schedule, replace(settings, mean_correction=False), n_seeds, target, None, max_batch
    )
