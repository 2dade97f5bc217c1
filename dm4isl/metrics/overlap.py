"""Foreground-overlap metrics on the per-slice segmentations of two ``(Z, Y, X)`` volumes (SPEC §5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from torchmetrics.functional.classification import binary_stat_scores

from dm4isl.metrics.volume import VolumeFeatures, as_pair

#: Voxel size (Z, Y, X) in µm of the metrics when none is given: the paper's convention, 0.29 µm per voxel along every
#: axis (SPEC §5). Files record the true voxel size instead (organelle `voxel_size`).
DEFAULT_VOXEL_SIZE_UM = (0.29, 0.29, 0.29)


def _counts(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> tuple[int, int, int]:
    """True-positive, false-positive and false-negative voxel counts of the two foreground masks."""
    g, p = as_pair(gt, pred)
    stats = binary_stat_scores(
        torch.from_numpy(p.segmentation.mask.ravel()), torch.from_numpy(g.segmentation.mask.ravel())
    )
    tp, fp, _, fn, _ = (int(v) for v in stats)
    return tp, fp, fn


def _ratio(num: int, den: int) -> float:
    """``num / den``; 1.0 when both are 0 (both masks empty agree perfectly)."""
    return 1.0 if den == 0 else num / den


def iou(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Intersection over union (Jaccard) of the ground-truth and predicted foreground masks ``(Z, Y, X)``.

    Masks: :func:`dm4isl.metrics.segmentation.segment_volume`; counts: torchmetrics ``binary_stat_scores``.
    ``TP / (TP + FP + FN)``. Higher is better; unitless, in [0, 1]; 1 when both masks are empty.
    """
    tp, fp, fn = _counts(gt, pred)
    return _ratio(tp, tp + fp + fn)


def dice(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Dice coefficient (voxel F1) of the foreground masks: ``2 TP / (2 TP + FP + FN)``.

    Higher is better; unitless, in [0, 1]; 1 when both masks are empty.
    """
    tp, fp, fn = _counts(gt, pred)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def precision(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Voxel precision of the predicted foreground: ``TP / (TP + FP)``.

    Higher is better; unitless, in [0, 1]; 1 when the predicted mask is empty and the ground truth's too,
    0 when only the predicted mask is empty.
    """
    tp, fp, fn = _counts(gt, pred)
    if tp + fp == 0:
        return 1.0 if fn == 0 else 0.0
    return tp / (tp + fp)


def recall(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Voxel recall (sensitivity) of the ground-truth foreground: ``TP / (TP + FN)``.

    Higher is better; unitless, in [0, 1]; 1 when the ground-truth mask is empty and the predicted one too,
    0 when only the ground-truth mask is empty.
    """
    tp, fp, fn = _counts(gt, pred)
    if tp + fn == 0:
        return 1.0 if fp == 0 else 0.0
    return tp / (tp + fn)


def hausdorff_3d(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """Symmetric Hausdorff distance between the whole foreground masks ``(Z, Y, X)`` in 3-D, in µm.

    A variant of the paper's per-instance :func:`dm4isl.metrics.instances.hausdorff`: one distance for the whole
    patch, dominated by its single worst voxel.

    ``max(max_{p∈P} d(p, G), max_{g∈G} d(g, P))`` with Euclidean distances on the voxel grid scaled by
    ``voxel_size`` (Z, Y, X) µm, computed exactly with scipy's Euclidean distance transform (equal to skimage
    ``hausdorff_distance`` × pixel size for isotropic voxels). Lower is better; 0 when both masks are empty or
    equal; NaN (documented) when exactly one mask is empty (the distance is undefined).
    """
    g, p = as_pair(gt, pred)
    mg, mp = g.segmentation.mask, p.segmentation.mask
    if not mg.any() and not mp.any():
        return 0.0
    if not mg.any() or not mp.any():
        return float("nan")
    sampling = tuple(float(v) for v in voxel_size)
    to_gt = ndi.distance_transform_edt(~mg, sampling=sampling)
    to_pred = ndi.distance_transform_edt(~mp, sampling=sampling)
    return float(max(to_gt[mp].max(), to_pred[mg].max()))


def volume_error_relative(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Relative foreground-volume error ``|V_pred − V_gt| / V_gt`` of the masks ``(Z, Y, X)`` (voxel counts).

    A variant of the paper's :func:`dm4isl.metrics.objects.volume_error` (mean object volume difference, µm³):
    the denominator is the ground truth's total foreground volume.

    Lower is better; unitless fraction (0.1 = 10 %); 0 when both masks are empty; NaN (documented) when only the
    ground-truth mask is empty (relative error undefined).
    """
    g, p = as_pair(gt, pred)
    v_gt, v_pred = int(g.segmentation.mask.sum()), int(p.segmentation.mask.sum())
    if v_gt == 0:
        return 0.0 if v_pred == 0 else float("nan")
    return abs(v_pred - v_gt) / v_gt
