"""3-D PatchGAN discriminator (pix2pix, Isola et al. 2017) from a plain config dict: MONAI ``PatchDiscriminator``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import PatchDiscriminator

#: Spatial dimensionality: tensors are ``(B, C, Z, Y, X)``.
SPATIAL_DIMS = 3
#: Stride of the first convolution and of every hidden layer but the last (which has stride 1).
DOWN_STRIDE = 2
#: Slope of the LeakyReLU activations (pix2pix).
LEAKY_SLOPE = 0.2
#: Keys of a ``patchgan`` config and their defaults. Two hidden layers give a 34-voxel receptive field and
#: fit 16-slice patches; pix2pix's three layers (70 voxels) need Z of at least 32.
PATCHGAN_DEFAULTS: dict[str, Any] = {
    "channels": 64,
    "num_layers": 2,
    "kernel_size": 4,
    "padding": 1,
    "norm": "batch",
    "dropout": 0.0,
}


def patchgan_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` completed with :data:`PATCHGAN_DEFAULTS`; raises ``ValueError`` on unknown keys."""
    unknown = sorted(set(config) - set(PATCHGAN_DEFAULTS) - {"name"})
    if unknown:
        raise ValueError(f"patchgan config has unknown keys {unknown}; expected a subset of {list(PATCHGAN_DEFAULTS)}")
    return {**PATCHGAN_DEFAULTS, **{k: v for k, v in config.items() if k != "name"}}


def _conv_size(size: int, kernel: int, padding: int, stride: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def patchgan_output_shape(config: Mapping[str, Any], input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape ``(Z, Y, X)`` of the discriminator's logit map for an input of spatial shape ``(Z, Y, X)``.

    Raises ``ValueError`` naming the input shape when an axis shrinks below one voxel.
    """
    s = patchgan_settings(config)
    kernel, padding, layers = int(s["kernel_size"]), int(s["padding"]), int(s["num_layers"])
    strides = [DOWN_STRIDE] + [DOWN_STRIDE] * (layers - 1) + [1]
    shape = [int(v) for v in input_shape]
    for stride in strides:
        shape = [_conv_size(v, kernel, padding, stride) for v in shape]
    shape = [_conv_size(v, kernel, (kernel - 1) // 2, 1) for v in shape]
    if min(shape) < 1:
        raise ValueError(
            f"patchgan with num_layers={layers}, kernel_size={kernel} maps input (Z, Y, X) {list(input_shape)} to "
            f"{shape}; expected at least one voxel per axis (use fewer layers or larger patches)"
        )
    return tuple(shape)


class PatchGAN(torch.nn.Module):
    """Conditional PatchGAN: ``(B, in_channels, Z, Y, X)`` → real/fake logits ``(B, 1, z, y, x)`` per patch."""

    def __init__(self, config: Mapping[str, Any], in_channels: int) -> None:
        super().__init__()
        s = patchgan_settings(config)
        self.net = PatchDiscriminator(
            spatial_dims=SPATIAL_DIMS,
            channels=int(s["channels"]),
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=int(s["num_layers"]),
            kernel_size=int(s["kernel_size"]),
            activation=("leakyrelu", {"negative_slope": LEAKY_SLOPE}),
            norm=s["norm"],
            padding=int(s["padding"]),
            dropout=float(s["dropout"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, z, y, x)`` of input ``x`` ``(B, C, Z, Y, X)`` (MONAI returns every layer; keep the last)."""
        return self.net(x)[-1]


def build_patchgan(config: Mapping[str, Any], in_channels: int = 2) -> PatchGAN:
    """Build the PatchGAN of ``config`` for ``in_channels`` inputs (default: brightfield and fluorescence)."""
    return PatchGAN(config, in_channels)
