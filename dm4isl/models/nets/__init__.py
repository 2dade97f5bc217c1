"""Network builders: a plain config dict (``name`` + arguments) in, a ``torch.nn.Module`` out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dm4isl.models.nets.diffusion_unet import build_diffusion_unet, count_parameters, downsampling_factor

#: Builders by the ``name`` key of a net config.
BUILDERS = {"diffusion_unet": build_diffusion_unet}


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Put the 5-D weights of ``module`` (3-D convolutions) in channels-last memory order, in place; returns it.

    Convolutions then run channels-last whatever the input's layout (oneDNN on CPU): the same values up to float
    rounding (≈ 1e-6 relative), faster where the kernels favour it — on CPU mostly together with bf16
    (docs/performance.md). State-dict keys and values are unchanged.
    """
    return module.to(memory_format=torch.channels_last_3d)


def build_net(config: Mapping[str, Any], in_channels: int = 2, out_channels: int = 1) -> torch.nn.Module:
    """Build the network named by ``config["name"]`` with the remaining keys as its arguments.

    Default channels: brightfield + noisy fluorescence in, predicted noise out; tensors ``(B, C, Z, Y, X)``.
    """
    name = config.get("name")
    if name not in BUILDERS:
        raise ValueError(f"net config names network {name!r}; expected one of {sorted(BUILDERS)}")
    return BUILDERS[name](config, in_channels, out_channels)


__all__ = ["BUILDERS", "build_net", "count_parameters", "downsampling_factor", "to_channels_last"]
