"""Per-patch random noise: one generator per patch seeded by (seed, patch id), independent of batch-mates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: How noise is shared between patches: an independent stream per patch id (default) or the reference's
#: single stream reused for every patch.
NOISE_MODES = ("per_patch", "shared")
#: Keep derived seeds within the signed 64-bit range torch generators accept.
_SEED_MASK = (1 << 63) - 1


def patch_seed(seed: int, patch_id: int) -> int:
    """A 63-bit seed derived from ``(seed, patch_id)`` (NumPy ``SeedSequence`` hashing; both must be ≥ 0)."""
    if seed < 0 or patch_id < 0:
        raise ValueError(f"seed {seed} and patch id {patch_id}; expected non-negative integers")
    words = np.random.SeedSequence([int(seed), int(patch_id)]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & _SEED_MASK


def patch_generators(
    seed: int, patch_ids: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu", mode: str = "per_patch"
) -> list[torch.Generator]:
    """One ``torch.Generator`` per patch on ``device``; ``mode="shared"`` seeds them all alike (reference)."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode {mode!r}; expected one of {NOISE_MODES}")
    ids = [int(i) for i in (patch_ids.tolist() if isinstance(patch_ids, torch.Tensor) else patch_ids)]
    gens = []
    for pid in ids:
        gen = torch.Generator(device=device)
        gen.manual_seed(patch_seed(seed, 0 if mode == "shared" else pid))
        gens.append(gen)
    return gens


def randn_per_patch(
    generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard normal noise ``(B, *shape)`` float32, row b drawn from ``generators[b]`` alone."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=g, device=device, dtype=torch.float32) for g in generators]
    )


def training_noise(
    patch_ids: torch.Tensor, like: torch.Tensor, num_timesteps: int, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise ``(B, C, Z, Y, X)`` (shaped like ``like``) and timesteps ``(B,)`` of one training batch.

    Row ``b`` comes from its own generator seeded by ``(seed, patch_ids[b])`` — the sample's global id, itself a
    function of (epoch, index) — so a resumed run draws exactly the noise of an uninterrupted one, whatever the
    global random state. ``seed`` defaults to ``torch.initial_seed()`` (the run's ``seed_everything`` value).
    """
    gens = patch_generators(torch.initial_seed() if seed is None else int(seed), patch_ids)
    timesteps = torch.stack([torch.randint(0, int(num_timesteps), (), generator=g) for g in gens])
    noise = randn_per_patch(gens, like.shape[1:])
    return noise.to(device=like.device, dtype=like.dtype), timesteps.to(like.device)
