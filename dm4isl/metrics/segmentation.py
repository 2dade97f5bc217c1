"""Per-slice segmentation of ``(Z, Y, X)`` volumes into foreground masks and instances, and instance matching."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

#: Gaussian smoothing before Otsu thresholding (SPEC §5), in pixels.
SMOOTHING_SIGMA_PX = 1.0
#: Radius of the disk used for the morphological opening (SPEC §5), in pixels.
OPENING_RADIUS_PX = 1
#: Objects smaller than this fraction of the slice area are dropped (SPEC §5: 1 %; 40.96 px on 64 × 64 slices).
MIN_OBJECT_FRACTION = 0.01
#: Minimum distance between watershed seeds (maxima of the distance transform), in pixels: SPEC §5's variant, and
#: the benchmark protocol (the authors' newest ``SegParams.peak_min_distance``).
WATERSHED_MIN_PEAK_DISTANCE_PX = 5
BENCHMARK_MIN_PEAK_DISTANCE_PX = 10
#: Instances are matched when their IoU reaches this value (SPEC §5).
MATCH_IOU_THRESHOLD = 0.6
#: A slice whose smoothed intensity range is below this value is constant: it has no foreground.
CONSTANT_RANGE_EPS = 1e-8


@dataclass(frozen=True)
class SliceSettings:
    """How :func:`segment_slice` splits a slice's foreground into instances.

    ``peak_min_distance_px``: least distance between watershed seeds (maxima of the distance transform).
    ``seed_every_component``: a connected component without a seed becomes one seed (else it stays unlabelled).
    ``merge_small``: instances smaller than :data:`MIN_OBJECT_FRACTION` of the slice lose their seed and the
    watershed is run once more, so their pixels join a neighbour.
    """

    peak_min_distance_px: int = WATERSHED_MIN_PEAK_DISTANCE_PX
    seed_every_component: bool = False
    merge_small: bool = False


#: SPEC §5's description (``segmentation=spec``).
SPEC_SLICES = SliceSettings()
#: The benchmark protocol: the default ``SegParams`` of the authors' newest ``src/MetricsFunctions.py``.
BENCHMARK_SLICES = SliceSettings(BENCHMARK_MIN_PEAK_DISTANCE_PX, seed_every_component=True, merge_small=True)


@dataclass(frozen=True)
class Segmentation:
    """Segmentation of one volume: ``mask`` bool ``(Z, Y, X)`` and per-slice instance ``labels`` int32 ``(Z, Y, X)``.

    Instance labels are numbered 1..n independently in every Z slice (0 = background).
    """

    mask: np.ndarray
    labels: np.ndarray


def segment_slice(
    image: np.ndarray, settings: SliceSettings = SPEC_SLICES
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one ``(Y, X)`` slice in [0, 1]; returns ``(mask bool (Y, X), labels int32 (Y, X))``.

    Steps (SPEC §5): Gaussian σ = 1 px → Otsu threshold of the slice → fill holes → opening with disk(1) → drop
    objects smaller than 1 % of the slice area → watershed of the negated distance transform, seeded at its
    local maxima (at least ``settings.peak_min_distance_px`` apart), to split touching objects; with
    ``settings`` of the benchmark protocol every component is seeded and instances below 1 % of the slice are
    re-flooded into their neighbours. Labels are 1..n. A constant slice has no foreground.
    """
    smoothed = gaussian(np.asarray(image, dtype=np.float64), sigma=SMOOTHING_SIGMA_PX, preserve_range=True)
    if float(smoothed.max() - smoothed.min()) < CONSTANT_RANGE_EPS:
        empty = np.zeros(smoothed.shape, dtype=bool)
        return empty, np.zeros(smoothed.shape, dtype=np.int32)
    mask = smoothed > threshold_otsu(smoothed)
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_opening(mask, structure=disk(OPENING_RADIUS_PX))
    min_size = MIN_OBJECT_FRACTION * mask.size
    mask = remove_small_objects(mask, max_size=math.ceil(min_size) - 1)
    if not mask.any():
        return mask, np.zeros(mask.shape, dtype=np.int32)
    return mask, split_instances(mask, settings, min_size)


def _seed_components(markers: np.ndarray, components: np.ndarray, n_components: int) -> np.ndarray:
    """Give every connected component of ``components`` without a seed in ``markers`` ``(Y, X)`` one seed (the whole
    component), numbered on from the largest marker, in component order; modifies and returns ``markers``."""
    seeded = np.zeros(n_components + 1, dtype=bool)
    seeded[components[markers > 0]] = True
    next_id = int(markers.max()) + 1
    for c in np.flatnonzero(~seeded[1:]) + 1:
        markers[components == c] = next_id
        next_id += 1
    return markers


def split_instances(mask: np.ndarray, settings: SliceSettings, min_size: float) -> np.ndarray:
    """Instance labels int32 ``(Y, X)`` of a non-empty foreground ``mask``: distance-transform watershed
    (:func:`skimage.segmentation.watershed`) seeded at :func:`skimage.feature.peak_local_max` of the distance map,
    with the component seeding and small-instance merging of ``settings`` (instances under ``min_size`` pixels)."""
    distance = ndi.distance_transform_edt(mask)
    components, n_components = ndi.label(mask)
    peaks = peak_local_max(
        distance, min_distance=settings.peak_min_distance_px, labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    if settings.seed_every_component:
        markers = _seed_components(markers, components, n_components)
    labels = watershed(-distance, markers, mask=mask)
    if settings.merge_small:
        small = np.flatnonzero(np.bincount(labels.ravel()) < min_size)
        small = small[small > 0]
        if small.size:
            markers[np.isin(markers, small)] = 0
            labels = watershed(-distance, _seed_components(markers, components, n_components), mask=mask)
        labels = relabel_sequential(labels)[0]
    return labels.astype(np.int32)


def segment_volume(volume: np.ndarray, settings: SliceSettings = SPEC_SLICES) -> Segmentation:
    """Segment a ``(Z, Y, X)`` volume slice by slice with :func:`segment_slice` and ``settings``."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) volume to segment, got shape {volume.shape}")
    mask = np.zeros(volume.shape, dtype=bool)
    labels = np.zeros(volume.shape, dtype=np.int32)
    for z in range(volume.shape[0]):
        mask[z], labels[z] = segment_slice(volume[z], settings)
    return Segmentation(mask=mask, labels=labels)


@dataclass(frozen=True)
class SliceMatch:
    """Hungarian matching of the instances of one ``(Y, X)`` slice at IoU ≥ :data:`MATCH_IOU_THRESHOLD`.

    ``pairs`` holds ``(gt_label, pred_label)`` of matched instances; ``n_gt`` and ``n_pred`` count all instances.
    """

    pairs: list[tuple[int, int]]
    n_gt: int
    n_pred: int


def match_instances(gt_labels: np.ndarray, pred_labels: np.ndarray, threshold_first: bool = False) -> SliceMatch:
    """Match instances of two label images ``(Y, X)`` (labels 1..n, 0 = background) one-to-one.

    The pairwise IoU matrix is maximised with :func:`scipy.optimize.linear_sum_assignment`; assigned pairs with
    IoU below :data:`MATCH_IOU_THRESHOLD` are discarded. ``threshold_first`` (the benchmark protocol) sets the
    IoUs below the threshold to 0 before the assignment, so that a sub-threshold overlap cannot take an instance
    away from a pair that would match.
    """
    n_gt, n_pred = int(gt_labels.max()), int(pred_labels.max())
    if n_gt == 0 or n_pred == 0:
        return SliceMatch(pairs=[], n_gt=n_gt, n_pred=n_pred)
    joint = np.bincount(
        gt_labels.ravel().astype(np.int64) * (n_pred + 1) + pred_labels.ravel(), minlength=(n_gt + 1) * (n_pred + 1)
    ).reshape(n_gt + 1, n_pred + 1)
    inter = joint[1:, 1:].astype(np.float64)
    area_gt = joint[1:, :].sum(axis=1, keepdims=True)
    area_pred = joint[:, 1:].sum(axis=0, keepdims=True)
    union = area_gt + area_pred - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if threshold_first:
        iou[iou < MATCH_IOU_THRESHOLD] = 0.0
    rows, cols = linear_sum_assignment(iou, maximize=True)
    pairs = [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= MATCH_IOU_THRESHOLD]
    return SliceMatch(pairs=pairs, n_gt=n_gt, n_pred=n_pred)


# --- 8-bit operations of the reference's segmentation (``segmentation_pipeline_per_patch``) ----------------------

#: Grey levels of the reference's 8-bit images: ``(x * 255).astype("uint8")``.
UINT8_MAX = 255
#: 8-connected components (OpenCV's contour tracing and connected components).
CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] as the reference's 8-bit image: ``(x · 255)`` truncated (not rounded) to uint8."""
    return (np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * UINT8_MAX).astype(np.uint8)


def otsu_threshold_8bit(values: np.ndarray) -> int:
    """Otsu's threshold of 8-bit ``values`` (any shape) with OpenCV's conventions: the grey level t maximising the
    between-class variance of {≤ t} and {> t} (the first one on ties); 0 for a constant image, so that every
    non-zero voxel of a constant image lies above it. Foreground is ``values > t``."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=UINT8_MAX + 1).astype(np.float64)
    scale = 1.0 / hist.sum()
    p = hist * scale
    mu = 0.0
    for t in range(UINT8_MAX + 1):
        mu += t * hist[t]
    mu *= scale
    best_t, best_sigma = 0, 0.0
    q1 = mu1 = 0.0
    eps = float(np.finfo(np.float32).eps)
    for t in range(UINT8_MAX + 1):
        weighted = mu1 * q1 + t * p[t]
        q1 += p[t]
        q2 = 1.0 - q1
        if min(q1, q2) < eps or max(q1, q2) > 1.0 - eps:
            mu1 = weighted / q1 if q1 > 0 else 0.0
            continue
        mu1 = weighted / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) ** 2
        if sigma > best_sigma:
            best_t, best_sigma = t, sigma
    return best_t


def outline_area(component: np.ndarray) -> float:
    """Area (px²) enclosed by the outer boundary of one 8-connected ``(Y, X)`` component, traced through the centres
    of its border pixels — OpenCV's ``contourArea`` of its outer contour. Holes count as enclosed; a line one pixel
    wide encloses 0. Computed as the 2×2 windows of the hole-filled component: 1 per window of four pixels,
    1/2 per window of three."""
    filled = ndi.binary_fill_holes(np.asarray(component, dtype=bool))
    window = (
        filled[:-1, :-1].astype(np.int8) + filled[1:, :-1] + filled[:-1, 1:] + filled[1:, 1:]
    )
    return float((window == 4).sum()) + 0.5 * float((window == 3).sum())


def drop_small_outlines(mask: np.ndarray, max_area: float) -> np.ndarray:
    """The reference's small-object rule on a boolean ``(Y, X)`` slice: keep every 8-connected component whose
    :func:`outline_area` exceeds ``max_area`` px², with its holes filled (the reference redraws each kept contour
    with ``fillPoly``); drop the others."""
    components, n = ndi.label(np.asarray(mask, dtype=bool), structure=CONNECTIVITY_8)
    out = np.zeros(components.shape, dtype=bool)
    for i in range(1, n + 1):
        filled = ndi.binary_fill_holes(components == i)
        if outline_area(filled) > max_area:
            out |= filled
    return out


#: How the foreground masks of the metrics are made: SPEC §5's pipeline, or the reference's newest one.
SEGMENTATION_METHODS = ("spec", "reference")
#: Median filter of the reference's segmentation, by organelle config name where it differs from 3×3 (DNA: 5×5,
#: ``SegmentationParams('DNA').filter_kernel``).
REFERENCE_MEDIAN_SIZE = 3
ORGANELLE_MEDIAN_SIZE = {"dna": 5}
#: Outline area (px²) up to which the reference drops an object (``cv2.contourArea(c) > 15`` keeps it).
REFERENCE_MAX_SMALL_AREA = 15
#: Background connectivity of the reference's hole filling (``binary_fill_holes(x, np.ones((3, 3)))``).
REFERENCE_FILL_STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SegmentationSettings:
    """Which segmentation the mask and instance metrics use: ``reference`` (default: :func:`segment_volume_reference`
    with ``median_size``, what the paper's numbers used) or ``spec`` (:func:`segment_volume`, SPEC §5's
    description)."""

    method: str = "reference"
    median_size: int = REFERENCE_MEDIAN_SIZE

    def __post_init__(self) -> None:
        if self.method not in SEGMENTATION_METHODS:
            raise ValueError(f"segmentation {self.method!r}; expected one of {SEGMENTATION_METHODS}")

    def describe(self) -> str:
        """One phrase for reports, e.g. ``reference pipeline (8-bit, median 3 × 3, one Otsu level per patch, …)``."""
        if self.method == "reference":
            return (f"the reference's pipeline (8-bit, median {self.median_size} × {self.median_size} per slice, one "
                    f"Otsu level per patch, outlines ≤ {REFERENCE_MAX_SMALL_AREA} px² dropped, holes filled)")
        return "SPEC §5's pipeline (segmentation=spec)"

    @classmethod
    def for_organelle(cls, method: str, organelle: str | None) -> SegmentationSettings:
        """``method`` with the reference's median size for ``organelle`` (a config name such as ``dna``)."""
        return cls(method, ORGANELLE_MEDIAN_SIZE.get(str(organelle), REFERENCE_MEDIAN_SIZE))


def segment_volume_reference(volume: np.ndarray, median_size: int = REFERENCE_MEDIAN_SIZE) -> Segmentation:
    """Segment a ``(Z, Y, X)`` volume in [0, 1] as the reference's newest ``segmentation_pipeline_per_patch``.

    8-bit image (``x · 255`` truncated) → median filter per Z slice (``median_size``) → one Otsu level for the whole
    patch (:func:`otsu_threshold_8bit`) → per slice, objects whose outline encloses ≤ 15 px² dropped
    (:func:`drop_small_outlines`) → holes filled (3×3 structure). Instances: the 4-connected components of each
    slice's mask (``scipy.ndimage.label``, as the reference's ``avg_hd_per_slice``).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) volume to segment, got shape {volume.shape}")
    filtered = np.stack([
        ndi.median_filter(s, size=median_size) if median_size > 1 else s for s in to_uint8(volume)
    ])
    above = filtered > otsu_threshold_8bit(filtered)
    mask = np.zeros(volume.shape, dtype=bool)
    labels = np.zeros(volume.shape, dtype=np.int32)
    for z in range(volume.shape[0]):
        mask[z] = ndi.binary_fill_holes(drop_small_outlines(above[z], REFERENCE_MAX_SMALL_AREA),
                                        structure=REFERENCE_FILL_STRUCTURE)
        labels[z] = ndi.label(mask[z])[0]
    return Segmentation(mask=mask, labels=labels)


def segment(volume: np.ndarray, settings: SegmentationSettings | None = None) -> Segmentation:
    """Segment a ``(Z, Y, X)`` volume with the method of ``settings`` (default: the reference's pipeline)."""
    settings = settings or SegmentationSettings()
    if settings.method == "reference":
        return segment_volume_reference(volume, settings.median_size)
    return segment_volume(volume)
