"""Network builders for the conditional DDPM: MONAI's DiffusionModelUNet from a plain config dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet

#: Spatial dimensionality of every network here: tensors are ``(B, C, Z, Y, X)``.
SPATIAL_DIMS = 3
#: Keys a ``diffusion_unet`` config may hold (MONAI ``DiffusionModelUNet`` arguments).
DIFFUSION_UNET_KEYS = (
    "channels",
    "attention_levels",
    "num_res_blocks",
    "num_head_channels",
    "norm_num_groups",
    "resblock_updown",
    "use_flash_attention",
)


def build_diffusion_unet(
    config: Mapping[str, Any], in_channels: int, out_channels: int
) -> DiffusionModelUNet:
    """Build MONAI ``DiffusionModelUNet`` (3-D) from ``config`` (keys of :data:`DIFFUSION_UNET_KEYS`).

    The network maps ``x`` ``(B, in_channels, Z, Y, X)`` and ``timesteps`` ``(B,)`` to
    ``(B, out_channels, Z, Y, X)``. Z, Y and X must be divisible by ``2 ** (len(channels) - 1)``.
    """
    unknown = sorted(set(config) - set(DIFFUSION_UNET_KEYS) - {"name"})
    if unknown:
        raise ValueError(
            f"net config has unknown keys {unknown}; expected a subset of {list(DIFFUSION_UNET_KEYS)}"
        )
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "name"}
    return DiffusionModelUNet(
        spatial_dims=SPATIAL_DIMS, in_channels=in_channels, out_channels=out_channels, **kwargs
    )


def downsampling_factor(config: Mapping[str, Any]) -> int:
    """Factor by which the network halves each spatial axis overall; Z, Y, X must be multiples of it."""
    return 2 ** (len(config["channels"]) - 1)


def count_parameters(net: torch.nn.Module) -> int:
    """Number of parameters of ``net`` (works on the meta device)."""
    return sum(p.numel() for p in net.parameters())
