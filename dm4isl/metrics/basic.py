"""Basic intensity metrics (SPEC §5): Pearson correlation, mean squared error and 2-D MS-SSIM over Z-slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric

#: MS-SSIM settings of the reference: MONAI 2-D MS-SSIM, Z slices as channels, data range 1, kernel size 4.
MS_SSIM_KERNEL_SIZE = 4
MS_SSIM_DATA_RANGE = 1.0
MS_SSIM_SCALES = 5
#: MONAI's default scale weights (Wang et al. 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: MONAI's MS-SSIM needs Y and X of at least kernel · 2^(scales − 1) = 64 voxels.
MS_SSIM_MIN_SIZE = MS_SSIM_KERNEL_SIZE * 2 ** (MS_SSIM_SCALES - 1)


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    return gt, pred


def pcc(gt: np.ndarray, pred: np.ndarray) -> float:
    """Pearson correlation coefficient over all voxels of two same-shape arrays (e.g. ``(Z, Y, X)``).

    Higher is better; unitless, in [-1, 1]. NaN (documented, no error) when either array is constant.
    """
    gt, pred = _check_pair(gt, pred)
    a = gt.ravel() - gt.mean()
    b = pred.ravel() - pred.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0:
        return float("nan")
    return float((a * b).sum() / denom)


def mse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error over all voxels. Lower is better; unit: squared normalised intensity."""
    gt, pred = _check_pair(gt, pred)
    return float(np.mean((gt - pred) ** 2))


def mae(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error over all voxels (= the CRPS of a point forecast). Lower is better; unit: intensity."""
    gt, pred = _check_pair(gt, pred)
    return float(np.mean(np.abs(gt - pred)))


def mean_pcc(gts: np.ndarray, preds: np.ndarray) -> float:
    """Mean over patches of the per-patch PCC of two ``(N, Z, Y, X)`` stacks (NaN when any patch's PCC is NaN)."""
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth patches and {len(preds)} predictions; expected as many")
    return float(np.mean([pcc(g, p) for g, p in zip(gts, preds, strict=True)]))


def pooled_pcc(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> float:
    """Pearson correlation of all voxels of all patches pooled (the reference's reporting)."""
    return pcc(np.concatenate([np.ravel(g) for g in gts]), np.concatenate([np.ravel(p) for p in preds]))


def pooled_mse(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> float:
    """Mean squared error over all voxels of all patches pooled."""
    return mse(np.concatenate([np.ravel(g) for g in gts]), np.concatenate([np.ravel(p) for p in preds]))


def ms_ssim_min_size(n_scales: int = MS_SSIM_SCALES) -> int:
    """Smallest Y and X (voxels) MONAI's MS-SSIM accepts with ``n_scales`` scales of kernel size 4.

    MONAI requires ``size // max(1, n_scales − 1)² > kernel − 1``: 64 px for 5 scales, 36 for 4, 16 for 3, 4 for 2.
    """
    if not 1 <= n_scales <= MS_SSIM_SCALES:
        raise ValueError(f"MS-SSIM scales {n_scales}; expected 1 to {MS_SSIM_SCALES}")
    return MS_SSIM_KERNEL_SIZE * max(1, (n_scales - 1) ** 2)


def max_ms_ssim_scales(size: int) -> int:
    """Most MS-SSIM scales (≤ 5) that patches of ``size`` voxels in Y and X allow; 0 when none does."""
    return max((n for n in range(1, MS_SSIM_SCALES + 1) if ms_ssim_min_size(n) <= size), default=0)


def ms_ssim_batch(
    gts: np.ndarray | torch.Tensor, preds: np.ndarray | torch.Tensor, n_scales: int = MS_SSIM_SCALES
) -> np.ndarray:
    """MS-SSIM per patch for a stack of patches ``(N, Z, Y, X)``; returns ``(N,)``.

    Definition (reference): MONAI ``MultiScaleSSIMMetric(spatial_dims=2, data_range=1, kernel_size=4)`` with the
    Z slices as channels, default 5 scale weights. Higher is better; unitless. Undefined (NaN, documented) when Y
    or X is below ``MS_SSIM_MIN_SIZE`` = 64 px (5 scales of kernel 4); 64×64 patches work. ``n_scales`` < 5 keeps
    the finest ``n_scales`` of the default weights, renormalised to sum 1 — a variant for small patches (e.g. 3
    scales from 16 px, :func:`ms_ssim_min_size`), not the paper's metric; say so wherever it is reported.
    """
    g = torch.as_tensor(np.asarray(gts, dtype=np.float32))
    p = torch.as_tensor(np.asarray(preds, dtype=np.float32))
    if g.shape != p.shape or g.ndim != 4:
        raise ValueError(f"expected two (N, Z, Y, X) stacks of equal shape, got {tuple(g.shape)} and {tuple(p.shape)}")
    if min(g.shape[-2:]) < ms_ssim_min_size(n_scales):
        return np.full(g.shape[0], np.nan)
    weights = np.asarray(MS_SSIM_WEIGHTS[:n_scales], dtype=np.float64)
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=MS_SSIM_DATA_RANGE, kernel_size=MS_SSIM_KERNEL_SIZE,
                                  weights=tuple(weights / weights.sum()) if n_scales < MS_SSIM_SCALES
                                  else MS_SSIM_WEIGHTS)
    return metric(p, g).reshape(-1).double().numpy()


def ms_ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    """MS-SSIM of one ``(Z, Y, X)`` patch (see :func:`ms_ssim_batch`). Higher is better."""
    return float(ms_ssim_batch(np.asarray(gt)[None], np.asarray(pred)[None])[0])
