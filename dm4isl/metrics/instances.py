"""Instance metrics: per-slice instances matched at IoU ≥ 0.6 (Hungarian), distances in µm (SPEC §5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist

from dm4isl.metrics.overlap import DEFAULT_VOXEL_SIZE_UM
from dm4isl.metrics.segmentation import match_instances
from dm4isl.metrics.volume import VolumeFeatures, as_pair

#: Fewest instances in a slice for a nearest-neighbour distance to exist.
MIN_INSTANCES_FOR_NN = 2


@dataclass(frozen=True)
class InstanceComparison:
    """Matched-instance statistics of one volume pair, pooled over Z slices (distances in µm).

    ``slice_hausdorff`` holds, for every Z slice with at least one matched pair, the mean Hausdorff distance of its
    matched pairs.
    """

    n_matched: int
    n_gt: int
    n_pred: int
    centroid_distances: np.ndarray
    nn_distance_errors: np.ndarray
    relative_area_errors: np.ndarray
    slice_hausdorff: np.ndarray

    @property
    def f1(self) -> float:
        """``2 M / (N_gt + N_pred)``; 1 when neither volume has instances."""
        total = self.n_gt + self.n_pred
        return 1.0 if total == 0 else 2 * self.n_matched / total

    @property
    def mean_centroid_distance(self) -> float:
        """Mean centroid distance of matched pairs (µm); NaN if nothing matched."""
        return _mean_or_nan(self.centroid_distances)

    @property
    def mean_nn_distance_error(self) -> float:
        """Mean nearest-neighbour distance error (µm); NaN if no matched pair has neighbours on both sides."""
        return _mean_or_nan(self.nn_distance_errors)

    @property
    def mean_area_error(self) -> float:
        """Mean relative area error of matched pairs; NaN if nothing matched."""
        return _mean_or_nan(self.relative_area_errors)

    @property
    def mean_hausdorff(self) -> float:
        """Mean over Z slices with a match of the slice's mean matched-pair Hausdorff distance (µm).

        0 when neither volume has any instance (perfect agreement); NaN when instances exist but none matched.
        """
        if self.n_gt == 0 and self.n_pred == 0:
            return 0.0
        return _mean_or_nan(self.slice_hausdorff)


def _mean_or_nan(values: np.ndarray) -> float:
    """Mean of ``values``; NaN (documented) when empty."""
    return float(values.mean()) if values.size else float("nan")


def _centroids(labels: np.ndarray, n: int, pixel_yx: np.ndarray) -> np.ndarray:
    """Centroids ``(n, 2)`` in µm of labels 1..n of a ``(Y, X)`` label image."""
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, np.arange(1, n + 1))) * pixel_yx


def _nn_distances(centroids: np.ndarray) -> np.ndarray:
    """Distance from each centroid ``(n, 2)`` to its nearest other centroid; NaN when alone."""
    if len(centroids) < MIN_INSTANCES_FOR_NN:
        return np.full(len(centroids), np.nan)
    dist = cdist(centroids, centroids)
    np.fill_diagonal(dist, np.inf)
    return dist.min(axis=1)


def pair_hausdorff(a: np.ndarray, b: np.ndarray, pixel_yx: Sequence[float]) -> float:
    """Symmetric Hausdorff distance (µm) between two non-empty boolean ``(Y, X)`` instance masks.

    ``max(max_{p∈B} d(p, A), max_{q∈A} d(q, B))`` over all pixels of the instances (as skimage
    ``hausdorff_distance``), with Euclidean distances scaled by the pixel size ``pixel_yx`` (Y, X) µm; computed
    exactly by distance transforms on the two instances' joint bounding box.
    """
    rows, cols = np.nonzero(a | b)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    a, b = a[box], b[box]
    sampling = tuple(float(v) for v in pixel_yx)
    to_a = ndi.distance_transform_edt(~a, sampling=sampling)
    to_b = ndi.distance_transform_edt(~b, sampling=sampling)
    return float(max(to_a[b].max(), to_b[a].max()))


def compare_instances(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> InstanceComparison:
    """Match the per-slice instances of two ``(Z, Y, X)`` volumes and collect per-pair errors.

    Per Z slice, instances (:func:`dm4isl.metrics.segmentation.segment_volume`) are matched one-to-one with
    :func:`dm4isl.metrics.segmentation.match_instances` (IoU ≥ 0.6). For every matched pair: centroid distance
    (µm), |nearest-neighbour distance in GT − in prediction| (µm, only where both slices hold ≥ 2 instances)
    and relative area error ``|A_pred − A_gt| / A_gt``. ``voxel_size`` is (Z, Y, X) in µm; Y and X are used.
    """
    g, p = as_pair(gt, pred)
    pixel_yx = np.asarray(voxel_size, dtype=np.float64)[1:]
    n_matched = n_gt = n_pred = 0
    cdists: list[float] = []
    nn_errs: list[float] = []
    area_errs: list[float] = []
    slice_hd: list[float] = []
    for z in range(g.shape[0]):
        lg, lp = g.segmentation.labels[z], p.segmentation.labels[z]
        match = match_instances(lg, lp)
        n_gt += match.n_gt
        n_pred += match.n_pred
        n_matched += len(match.pairs)
        if not match.pairs:
            continue
        cg, cp = _centroids(lg, match.n_gt, pixel_yx), _centroids(lp, match.n_pred, pixel_yx)
        nn_g, nn_p = _nn_distances(cg), _nn_distances(cp)
        area_g = np.bincount(lg.ravel(), minlength=match.n_gt + 1)
        area_p = np.bincount(lp.ravel(), minlength=match.n_pred + 1)
        hds = []
        for a, b in match.pairs:
            cdists.append(float(np.linalg.norm(cg[a - 1] - cp[b - 1])))
            if np.isfinite(nn_g[a - 1]) and np.isfinite(nn_p[b - 1]):
                nn_errs.append(abs(float(nn_g[a - 1] - nn_p[b - 1])))
            area_errs.append(abs(int(area_p[b]) - int(area_g[a])) / int(area_g[a]))
            hds.append(pair_hausdorff(lg == a, lp == b, pixel_yx))
        slice_hd.append(float(np.mean(hds)))
    return InstanceComparison(
        n_matched, n_gt, n_pred, np.asarray(cdists), np.asarray(nn_errs), np.asarray(area_errs), np.asarray(slice_hd)
    )


def instance_f1(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """F1 of matched instances ``2 M / (N_gt + N_pred)`` over all Z slices (M = pairs with IoU ≥ 0.6).

    Higher is better; unitless, in [0, 1]; 1 when neither volume has instances.
    """
    return compare_instances(gt, pred, voxel_size).f1


def centroid_distance(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """Mean in-plane centroid distance of matched instance pairs, in µm. Lower is better; NaN if nothing matched."""
    return compare_instances(gt, pred, voxel_size).mean_centroid_distance


def nn_distance_error(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """Mean |nearest-neighbour distance in GT − in prediction| over matched instances, in µm (spatial
    arrangement). Lower is better; NaN when no matched instance has a neighbour in both slices."""
    return compare_instances(gt, pred, voxel_size).mean_nn_distance_error


def hausdorff(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """Hausdorff distance per matched instance, per Z slice, in µm, averaged (the paper's Hausdorff metric).

    Per slice, the instances of the two ``(Z, Y, X)`` volumes are matched one-to-one at IoU ≥ 0.6 (Hungarian);
    the symmetric Hausdorff distance of every matched pair (:func:`pair_hausdorff`) is averaged within the slice,
    and the slice means are averaged over the slices that have a match. Lower is better; 0 for identical inputs
    and when neither volume has an instance; NaN (documented) when nothing matched.
    """
    return compare_instances(gt, pred, voxel_size).mean_hausdorff


def area_error(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """Mean relative area error ``|A_pred − A_gt| / A_gt`` of matched instance pairs. Lower is better; unitless
    fraction; NaN if nothing matched."""
    return compare_instances(gt, pred, voxel_size).mean_area_error
