"""The benchmark protocol's segmentation metrics: per Z slice, binary IoU, instance F1 and per matched instance the
centroid distance, nearest-neighbour gap error, area difference and contour Hausdorff distance; nan-mean over slices.

Definitions follow ``calc_metrics`` of the authors' newest ``src/MetricsFunctions.py`` (zaritskylab/DM4ISL, the
version with the ``SegParams`` dataclass) with its default ``SegParams``: each slice of ground truth and prediction is
segmented on its own (:data:`~dm4isl.metrics.segmentation.BENCHMARK_SLICES`), instances are matched one-to-one at
IoU ≥ 0.6, a slice's instance values are the mean over its matched ground-truth instances, and a patch's value is the
mean over the slices where it is defined (NaN where it is defined in none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from dm4isl.metrics.segmentation import Segmentation, match_instances

#: Fewest instances in a slice for an instance to have a nearest neighbour.
MIN_INSTANCES_FOR_NN = 2


@dataclass(frozen=True)
class SliceComparison:
    """Per-slice values ``(Z,)`` of one ground-truth/prediction pair; NaN where a slice has no value.

    ``iou``: binary IoU of the two foreground masks (NaN when both are empty). ``f1``: ``2 TP / (2 TP + FP + FN)``
    of the matched instances (NaN when neither slice has an instance). The others are means over the slice's
    matched instance pairs (NaN when none matched): ``centroid`` (µm), ``min_distance`` (µm: |gap to the nearest
    other instance in the prediction − in the ground truth|), ``area`` (µm²: |area difference|), ``hausdorff``
    (µm: symmetric Hausdorff distance of the two instances' contours).
    """

    iou: np.ndarray
    f1: np.ndarray
    centroid: np.ndarray
    min_distance: np.ndarray
    area: np.ndarray
    hausdorff: np.ndarray

    def patch_value(self, name: str) -> float:
        """Mean over the slices where ``name`` (a field) is defined; NaN when it is defined in none."""
        return nanmean(getattr(self, name))


def nanmean(values: np.ndarray | list[float]) -> float:
    """Mean of the finite values; NaN (no warning) when there are none."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean ``(Y, X)`` mask: pixels removed by one erosion, where the slice border counts as
    foreground (an object cut by the border has no contour along it)."""
    return mask & ~ndi.binary_erosion(mask, border_value=1)


def contour_hausdorff(a: np.ndarray, b: np.ndarray, pixel_um: float) -> float:
    """Symmetric Hausdorff distance (µm) between the contours (:func:`contour`) of two boolean ``(Y, X)`` masks;
    NaN when either has no contour."""
    ca, cb = contour(a), contour(b)
    if not ca.any() or not cb.any():
        return float("nan")
    worst = max(ndi.distance_transform_edt(~cb)[ca].max(), ndi.distance_transform_edt(~ca)[cb].max())
    return float(worst) * pixel_um


def neighbour_gap(labels: np.ndarray, label: int, pixel_um: float) -> float:
    """Gap (µm) between instance ``label`` of a ``(Y, X)`` label image and the nearest other instance: the least
    distance between their pixels minus one pixel, so touching instances have gap 0. NaN when it has no other
    instance."""
    others = (labels > 0) & (labels != label)
    if not others.any():
        return float("nan")
    return (float(ndi.distance_transform_edt(~others)[labels == label].min()) - 1.0) * pixel_um


def _slice_values(
    gt_mask: np.ndarray, gt_labels: np.ndarray, pred_mask: np.ndarray, pred_labels: np.ndarray, pixel_um: float
) -> tuple[float, float, float, float, float, float]:
    """``(iou, f1, centroid, min_distance, area, hausdorff)`` of one ``(Y, X)`` slice pair (see
    :class:`SliceComparison`)."""
    union = int(np.count_nonzero(gt_mask | pred_mask))
    iou = np.count_nonzero(gt_mask & pred_mask) / union if union else float("nan")
    match = match_instances(gt_labels, pred_labels, threshold_first=True)
    tp = len(match.pairs)
    counted = match.n_gt + match.n_pred
    f1 = 2 * tp / counted if counted else float("nan")
    if not tp:
        return iou, f1, *(float("nan"),) * 4
    ids_gt, ids_pred = np.arange(1, match.n_gt + 1), np.arange(1, match.n_pred + 1)
    c_gt = np.asarray(ndi.center_of_mass(np.ones(gt_labels.shape), gt_labels, ids_gt)).reshape(-1, 2)
    c_pred = np.asarray(ndi.center_of_mass(np.ones(pred_labels.shape), pred_labels, ids_pred)).reshape(-1, 2)
    area_gt = np.bincount(gt_labels.ravel(), minlength=match.n_gt + 1)
    area_pred = np.bincount(pred_labels.ravel(), minlength=match.n_pred + 1)
    values = []
    for a, b in match.pairs:
        gap_gt = neighbour_gap(gt_labels, a, pixel_um) if match.n_gt >= MIN_INSTANCES_FOR_NN else float("nan")
        gap_pred = neighbour_gap(pred_labels, b, pixel_um) if match.n_pred >= MIN_INSTANCES_FOR_NN else float("nan")
        values.append((
            float(np.hypot(*(c_pred[b - 1] - c_gt[a - 1]))) * pixel_um,
            abs(gap_pred - gap_gt),
            abs(int(area_pred[b]) - int(area_gt[a])) * pixel_um**2,
            contour_hausdorff(gt_labels == a, pred_labels == b, pixel_um),
        ))
    return iou, f1, *(nanmean(column) for column in zip(*values, strict=True))


def compare_slices(gt: Segmentation, pred: Segmentation, pixel_um: float) -> SliceComparison:
    """Compare two per-slice segmentations of ``(Z, Y, X)`` volumes (instances labelled 1..n in every slice, e.g.
    :func:`~dm4isl.metrics.segmentation.segment_volume` with
    :data:`~dm4isl.metrics.segmentation.BENCHMARK_SLICES`) slice by slice; ``pixel_um`` is the square pixel's side."""
    if gt.mask.shape != pred.mask.shape:
        raise ValueError(f"segmentations of shapes {gt.mask.shape} and {pred.mask.shape}; expected one (Z, Y, X) shape")
    rows = [
        _slice_values(gt.mask[z], gt.labels[z], pred.mask[z], pred.labels[z], pixel_um)
        for z in range(gt.mask.shape[0])
    ]
    columns = np.asarray(rows, dtype=np.float64).reshape(len(rows), 6).T
    return SliceComparison(*columns)
