"""3-D regression U-Net for the baselines (fnet-style widths): MONAI ``UNet`` from a plain config dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import UNet

#: Spatial dimensionality: tensors are ``(B, C, Z, Y, X)``.
SPATIAL_DIMS = 3
#: Every level halves Z, Y and X (strided convolution down, transposed convolution up).
LEVEL_STRIDE = 2
#: Channel count doubles from one level to the next (fnet: 32, 64, 128, 256, 512 for depth 4).
CHANNEL_GROWTH = 2
#: Keys of a ``unet3d`` config and their defaults (fnet, Ounkomol et al. 2018: depth 4, 32 base channels).
UNET3D_DEFAULTS: dict[str, Any] = {
    "depth": 4,
    "base_channels": 32,
    "num_res_units": 2,
    "norm": "batch",
    "act": "relu",
    "dropout": 0.0,
    "output_activation": None,
}
#: Output activations by config name: ``null`` (linear, fnet) or ``sigmoid`` (outputs in (0, 1)).
OUTPUT_ACTIVATIONS = {None: torch.nn.Identity, "sigmoid": torch.nn.Sigmoid}


def unet3d_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` completed with :data:`UNET3D_DEFAULTS`; raises ``ValueError`` on unknown keys or bad values."""
    unknown = sorted(set(config) - set(UNET3D_DEFAULTS) - {"name"})
    if unknown:
        raise ValueError(f"unet3d config has unknown keys {unknown}; expected a subset of {list(UNET3D_DEFAULTS)}")
    settings = {**UNET3D_DEFAULTS, **{k: v for k, v in config.items() if k != "name"}}
    if int(settings["depth"]) < 1 or int(settings["base_channels"]) < 1:
        raise ValueError(
            f"unet3d depth {settings['depth']} and base_channels {settings['base_channels']}; expected both >= 1"
        )
    if settings["output_activation"] not in OUTPUT_ACTIVATIONS:
        raise ValueError(
            f"unet3d output_activation {settings['output_activation']!r}; expected one of {list(OUTPUT_ACTIVATIONS)}"
        )
    return settings


def unet3d_channels(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Channels per level, ``base_channels · 2^level`` for levels ``0 … depth`` (the last is the bottleneck)."""
    settings = unet3d_settings(config)
    return tuple(int(settings["base_channels"]) * CHANNEL_GROWTH**level for level in range(int(settings["depth"]) + 1))


def downsampling_factor(config: Mapping[str, Any]) -> int:
    """Overall reduction of each spatial axis, ``2^depth``: Z, Y and X of a network input must be multiples of it."""
    return LEVEL_STRIDE ** int(unet3d_settings(config)["depth"])


def build_unet3d(config: Mapping[str, Any], in_channels: int = 1, out_channels: int = 1) -> torch.nn.Module:
    """Build a 3-D U-Net mapping ``(B, in_channels, Z, Y, X)`` to ``(B, out_channels, Z, Y, X)``.

    MONAI ``UNet`` with ``depth`` stride-2 levels of ``num_res_units`` residual units each and channels
    :func:`unet3d_channels`, followed by the optional ``output_activation``. Z, Y and X must be multiples of
    :func:`downsampling_factor`.
    """
    settings = unet3d_settings(config)
    unet = UNet(
        spatial_dims=SPATIAL_DIMS,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=unet3d_channels(settings),
        strides=(LEVEL_STRIDE,) * int(settings["depth"]),
        num_res_units=int(settings["num_res_units"]),
        act=settings["act"],
        norm=settings["norm"],
        dropout=float(settings["dropout"]),
    )
    return torch.nn.Sequential(unet, OUTPUT_ACTIVATIONS[settings["output_activation"]]())
