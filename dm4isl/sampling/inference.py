"""Whole-volume prediction: Gaussian-weighted sliding windows (MONAI ``SlidingWindowInferer``) over large inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer

#: Window blending: each window's output is weighted by a Gaussian centred on it, so window borders fade out.
BLEND_MODE = "gaussian"
#: Gaussian sigma as a fraction of the window size (MONAI's default).
SIGMA_SCALE = 0.125
#: Padding of inputs smaller than a window: repeat the border voxels (no artificial dark frame).
PADDING_MODE = "replicate"

NetFn = Callable[[torch.Tensor], torch.Tensor]


def sliding_window_predict(
    net_fn: NetFn,
    bf: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.25,
    sw_batch_size: int = 4,
) -> torch.Tensor:
    """Apply ``net_fn`` to windows of ``roi_size`` ``(Z, Y, X)`` of ``bf`` ``(B, C, Z, Y, X)`` and blend them.

    Windows overlap by the fraction ``overlap`` per axis and are blended with Gaussian weights normalised by their
    sum, so a constant window output stays constant and a voxel-wise ``net_fn`` gives exactly its whole-volume
    result. ``sw_batch_size`` windows are evaluated per call of ``net_fn``, which maps ``(N, C, *roi_size)`` to
    ``(N, C_out, *roi_size)``. Returns ``(B, C_out, Z, Y, X)`` in ``bf``'s dtype and device.
    """
    if bf.ndim != len(roi_size) + 2:
        raise ValueError(f"input of shape {tuple(bf.shape)}; expected (B, C, Z, Y, X) for roi_size {list(roi_size)}")
    return window_inferer(roi_size, overlap, sw_batch_size)(bf, net_fn).to(bf.dtype)


def window_inferer(roi_size: Sequence[int], overlap: float = 0.25, sw_batch_size: int = 4) -> SlidingWindowInferer:
    """The Gaussian-blending MONAI inferer of :func:`sliding_window_predict` for windows ``roi_size`` ``(Z, Y, X)``.

    Build it once and call it many times (e.g. at every reverse-diffusion step): the blending weights are cached.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"window overlap {overlap}; expected a fraction in [0, 1)")
    if sw_batch_size < 1:
        raise ValueError(f"windows per network call {sw_batch_size}; expected at least 1")
    return SlidingWindowInferer(
        roi_size=[int(s) for s in roi_size],
        sw_batch_size=int(sw_batch_size),
        overlap=float(overlap),
        mode=BLEND_MODE,
        sigma_scale=SIGMA_SCALE,
        padding_mode=PADDING_MODE,
        cache_roi_weight_map=True,
    )


def predict_volume(
    net_fn: NetFn,
    bf: torch.Tensor,
    roi_size: Sequence[int],
    factor: int,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
) -> torch.Tensor:
    """Predict ``bf`` ``(B, C, Z, Y, X)`` in one network call when it fits, else by :func:`sliding_window_predict`.

    It fits when no axis exceeds the training window ``roi_size`` ``(Z, Y, X)`` and every axis is a multiple of
    the network's downsampling ``factor``; larger or odd-sized volumes are tiled with windows of ``roi_size``.
    """
    shape = bf.shape[2:]
    fits = all(s <= r and s % factor == 0 for s, r in zip(shape, roi_size, strict=True))
    if fits:
        return net_fn(bf)
    return sliding_window_predict(net_fn, bf, roi_size, overlap=overlap, sw_batch_size=sw_batch_size)
