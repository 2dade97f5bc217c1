"""Uncertainty maps → binary error masks → flagged patches (SPEC §3).

The reference's order (``rule="reference"``, the default) on a std map ``(Z, Y, X)``: keep the std values above the
threshold (continuous, others 0) as an 8-bit image, median-filter every Z slice (3×3; 5×5 for DNA), threshold the
whole patch at Otsu's level, drop small objects by their outline area (≤ 15 px²) and fill holes — the steps of the
reference's ``segmentation_pipeline_per_patch`` with its per-organelle ``SegmentationParams``. The previous rule
(``rule="binary"``) thresholds first, so the median filter and Otsu see only 0/1 and Otsu has nothing to separate;
it drops objects of at most 15 pixels. In both, a slice whose every voxel is above the threshold is masked whole.
A patch is flagged when its mask covers more than ``flag_fraction`` of its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import remove_small_objects

from dm4isl.metrics.segmentation import ORGANELLE_MEDIAN_SIZE, drop_small_outlines, otsu_threshold_8bit, to_uint8

#: Defaults of SPEC §3 and of the reference's ``SegmentationParams``.
MEDIAN_SIZE = 3
MIN_OBJECT_AREA = 15
FLAG_FRACTION = 0.01
Z_AXIS = 0
#: How std values become a mask: the reference's order, or threshold-first (the previous rule).
RULES = ("reference", "binary")
#: Small-object rules: outline area (the reference: contour area > 15 px² kept), pixel count, or none.
SMALL_OBJECT_RULES = ("outline", "pixels", "none")
#: Background connectivity of the hole filling of the reference rule (``binary_fill_holes(x, np.ones((3, 3)))``).
FILL_STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class MaskSettings:
    """How a std map becomes an error mask (all per 2-D slice along ``slice_axis``, Otsu over the whole patch for
    the reference rule).

    ``min_object_area`` is the largest object dropped: outline area in px² (``small_objects="outline"``) or
    pixel count (``"pixels"``).
    """

    rule: str = "reference"
    median_size: int = MEDIAN_SIZE
    small_objects: str = "outline"
    min_object_area: int = MIN_OBJECT_AREA
    fill_holes: bool = True
    slice_axis: int = Z_AXIS
    flag_fraction: float = FLAG_FRACTION

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"mask rule {self.rule!r}; expected one of {RULES}")
        if self.small_objects not in SMALL_OBJECT_RULES:
            raise ValueError(f"small-object rule {self.small_objects!r}; expected one of {SMALL_OBJECT_RULES}")
        if self.median_size < 1:
            raise ValueError(f"median_size={self.median_size}; expected a window of at least 1 pixel")

    @classmethod
    def for_organelle(cls, organelle: str | None, rule: str = "reference", **overrides: object) -> MaskSettings:
        """Settings of ``rule`` with the reference's median size for ``organelle`` (a config name such as
        ``dna``), then ``overrides``."""
        base = cls.binary() if rule == "binary" else cls(rule=rule)
        return replace(base, median_size=ORGANELLE_MEDIAN_SIZE.get(str(organelle), MEDIAN_SIZE), **overrides)

    @classmethod
    def faithful(cls, slice_axis: int = Z_AXIS) -> MaskSettings:
        """The rule of the reference's shipped nuclear-envelope sample masks: median and Otsu only (its
        ``SegmentationParams`` of the time had the small-object rule and hole filling off); ``slice_axis=1``
        reproduces its intra-process masks, which were sliced along Y by mistake."""
        return cls(small_objects="none", fill_holes=False, slice_axis=slice_axis)

    @classmethod
    def binary(cls, **overrides: object) -> MaskSettings:
        """The previous rule: threshold first, then per slice median, Otsu, objects ≤ 15 px dropped, holes filled."""
        return replace(cls(rule="binary", small_objects="pixels"), **overrides)


def _median(slice_: np.ndarray, size: int) -> np.ndarray:
    return ndi.median_filter(slice_, size=size) if size > 1 else slice_


def _clean_slice(mask: np.ndarray, settings: MaskSettings) -> np.ndarray:
    """Small-object rule and hole filling of one boolean ``(H, W)`` slice."""
    if settings.small_objects == "outline":
        mask = drop_small_outlines(mask, settings.min_object_area)
    elif settings.small_objects == "pixels" and settings.min_object_area > 0:
        mask = remove_small_objects(mask, max_size=settings.min_object_area)
    if settings.fill_holes:
        structure = FILL_STRUCTURE if settings.rule == "reference" else None
        mask = ndi.binary_fill_holes(mask, structure=structure)
    return mask


def segment_map(values: np.ndarray, above: np.ndarray, settings: MaskSettings | None = None) -> np.ndarray:
    """Segment a ``(Z, Y, X)`` map of values in [0, 1] that are 0 wherever ``above`` (bool, same shape) is False.

    Reference rule: 8-bit image (``x · 255`` truncated), median per slice, one Otsu threshold (OpenCV's
    conventions) over all slices, foreground above it. Binary rule: ``above`` median-filtered per slice, Otsu per
    slice (on 0/1 data: everything the median kept). Then, per slice, the small-object rule and hole filling; a
    slice where ``above`` holds everywhere is masked whole. Returns a boolean ``(Z, Y, X)`` mask.
    """
    settings = settings or MaskSettings()
    values = np.asarray(values)
    above = np.asarray(above, dtype=bool)
    if values.ndim != 3 or above.shape != values.shape:
        raise ValueError(f"expected a (Z, Y, X) map and mask of one shape, got {values.shape} and {above.shape}")
    axis = settings.slice_axis
    slices = np.moveaxis(values if settings.rule == "reference" else above, axis, 0)
    filtered = np.stack([_median(to_uint8(s), settings.median_size) for s in slices])
    if settings.rule == "reference":
        masks = filtered > otsu_threshold_8bit(filtered)
    else:
        masks = np.stack([s > otsu_threshold_8bit(s) for s in filtered])
    saturated = np.moveaxis(above, axis, 0).reshape(masks.shape[0], -1).all(axis=1)
    out = np.stack([
        np.ones(m.shape, dtype=bool) if full else _clean_slice(m, settings)
        for m, full in zip(masks, saturated, strict=True)
    ])
    return np.moveaxis(out, 0, axis)


def segment_binary(binary: np.ndarray, settings: MaskSettings | None = None) -> np.ndarray:
    """Segment a thresholded ``(Z, Y, X)`` map (non-zero = above threshold) with :func:`segment_map`; returns bool."""
    above = np.asarray(binary) > 0
    if above.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) map, got shape {above.shape}")
    return segment_map(above.astype(np.float32), above, settings)


def error_mask(std_map: np.ndarray, threshold: float, settings: MaskSettings | None = None) -> np.ndarray:
    """Error mask of a continuous std map ``(Z, Y, X)``: the values above ``threshold`` (others 0) segmented with
    :func:`segment_map`; returns a boolean ``(Z, Y, X)`` mask."""
    std_map = np.asarray(std_map, dtype=np.float32)
    if not np.isfinite(std_map).all():
        raise ValueError("std map contains NaN/inf; expected finite standard deviations")
    above = std_map > float(threshold)
    return segment_map(np.where(above, std_map, 0.0), above, settings)


def flag(mask: np.ndarray, flag_fraction: float = FLAG_FRACTION) -> tuple[bool, float]:
    """``(flagged, covered fraction)``: a patch is flagged when its mask covers more than ``flag_fraction``."""
    fraction = float(np.count_nonzero(mask)) / float(np.asarray(mask).size)
    return fraction > flag_fraction, fraction


def patch_flag(std_map: np.ndarray, threshold: float, settings: MaskSettings | None = None) -> tuple[bool, float]:
    """``(flagged, covered fraction)`` of a std map ``(Z, Y, X)``: its :func:`error_mask` covers more than
    ``settings.flag_fraction`` of the patch. With :meth:`MaskSettings.for_organelle` and the organelle's std
    threshold this is the authors' flag (their BENCHMARK notebook: std above the threshold →
    ``segmentation_pipeline_per_patch`` → more than 1 % of the patch)."""
    settings = settings or MaskSettings()
    return flag(error_mask(std_map, threshold, settings), settings.flag_fraction)
