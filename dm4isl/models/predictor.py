"""The one prediction interface of every brightfield → fluorescence model.

Every model answers :meth:`Predictor.predict_products`: brightfield ``(B, 1, Z, Y, X)`` in [0, 1], one patch id per
row (the noise of a diffusion model is seeded by it) and a :class:`PredictRequest` → ``{product: (B, 1, Z, Y, X)}``
with the product names of :mod:`dm4isl.io.layout`. Whether a volume larger than the model's tile is tiled, and how,
is decided inside. ``test_step``, ``dm4isl-predict``, threshold calibration, the reproduce script and the benchmarks
all go through this call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.sampling.tiled import TileSettings, effective_tile, needs_tiling


@dataclass(frozen=True)
class PredictRequest:
    """What a caller asks of :meth:`Predictor.predict_products`.

    ``settings``: the sampler of a diffusion model (``None``: the model's test sampler; ignored by baselines);
    ``n_seeds``: independent reverse processes per patch (> 1 adds ``std_inter``); ``max_batch``: rows (patches ×
    seeds) per network call, ``None`` = all; ``tiles``: tiling of volumes larger than a tile; ``keep_seeds``: also
    return every seed's DDPM and DDPMavg (as :func:`dm4isl.io.layout.seed_product` products).
    """

    settings: SamplerSettings | None = None
    n_seeds: int = 1
    max_batch: int | None = None
    tiles: TileSettings = field(default_factory=TileSettings)
    keep_seeds: bool = False


class Predictor:
    """Mixin of the LightningModules that predict fluorescence (the DDPM and the baselines).

    Subclasses implement :meth:`predict_products` and say whether they produce uncertainty maps.
    """

    #: True for models whose products include uncertainty maps (``std_intra``, ``std_inter``).
    has_uncertainty: bool = False

    def predict_products(
        self, bf: torch.Tensor, patch_ids: Sequence[int], request: PredictRequest | None = None
    ) -> dict[str, torch.Tensor]:
        """Products ``{name: (B, 1, Z, Y, X)}`` for brightfield ``bf`` ``(B, 1, Z, Y, X)`` in [0, 1]."""
        raise NotImplementedError

    def tile_for(self, shape: Sequence[int], tiles: TileSettings | None = None) -> tuple[int, ...]:
        """The tile ``(Z, Y, X)`` this model sees on an input of ``shape`` ``(Z, Y, X)``: ``tiles.size``, else the
        checkpoint's training patch size, shrunk to the input along axes where it is smaller."""
        tiles = tiles or TileSettings()
        return effective_tile(shape, tiles.resolve(self.hparams.get("patch_size")))

    def is_tiled(self, shape: Sequence[int], tiles: TileSettings | None = None) -> bool:
        """Whether an input of ``shape`` ``(Z, Y, X)`` is predicted from several tiles."""
        tiles = tiles or TileSettings()
        trained = self.hparams.get("patch_size")
        if tiles.size is None and trained is None:  # no tile size known: one call on the whole input
            return False
        return needs_tiling(shape, tiles.resolve(trained))
