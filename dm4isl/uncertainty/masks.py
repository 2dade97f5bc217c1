"""Uncertainty maps → binary error masks → flagged patches (SPEC §3).

Pipeline on a std map ``(Z, Y, X)``: threshold, then slice by slice a 3×3 median filter, Otsu's threshold, removal of
objects of at most ``min_object_area`` pixels and hole filling. A patch is flagged when its mask covers more than
``flag_fraction`` of its voxels. The reference's own rule (median + Otsu only, and — by mistake — slices taken along
Y for the intra-process map) is available as ``faithful=True`` / ``slice_axis=1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects

#: Defaults of SPEC §3.
MEDIAN_SIZE = 3
MIN_OBJECT_AREA = 15
FLAG_FRACTION = 0.01
Z_AXIS = 0


@dataclass(frozen=True)
class MaskSettings:
    """How a thresholded std map becomes an error mask (all per 2-D slice along ``slice_axis``)."""

    median_size: int = MEDIAN_SIZE
    min_object_area: int = MIN_OBJECT_AREA  # objects with this many pixels or fewer are removed; 0 keeps all
    fill_holes: bool = True
    slice_axis: int = Z_AXIS
    flag_fraction: float = FLAG_FRACTION

    @classmethod
    def faithful(cls, slice_axis: int = Z_AXIS) -> MaskSettings:
        """The reference's rule: median and Otsu only (``slice_axis=1`` reproduces its intra-process masks)."""
        return cls(min_object_area=0, fill_holes=False, slice_axis=slice_axis)


def _segment_slice(binary: np.ndarray, settings: MaskSettings) -> np.ndarray:
    """One 2-D slice ``(H, W)`` of a thresholded map → cleaned boolean mask."""
    smoothed = ndi.median_filter(binary.astype(np.uint8), size=settings.median_size)
    if smoothed.min() == smoothed.max():  # Otsu is undefined on a constant slice: nothing stands out
        return np.zeros(binary.shape, dtype=bool)
    mask = smoothed > threshold_otsu(smoothed)
    if settings.min_object_area > 0:
        mask = remove_small_objects(mask, max_size=settings.min_object_area)
    if settings.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    return mask


def segment_binary(binary: np.ndarray, settings: MaskSettings | None = None) -> np.ndarray:
    """Clean a thresholded ``(Z, Y, X)`` map slice by slice; returns a boolean ``(Z, Y, X)`` mask."""
    settings = settings or MaskSettings()
    binary = np.asarray(binary) > 0
    if binary.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) map, got shape {binary.shape}")
    moved = np.moveaxis(binary, settings.slice_axis, 0)
    out = np.stack([_segment_slice(s, settings) for s in moved])
    return np.moveaxis(out, 0, settings.slice_axis)


def error_mask(std_map: np.ndarray, threshold: float, settings: MaskSettings | None = None) -> np.ndarray:
    """Error mask of a continuous std map ``(Z, Y, X)``: ``std > threshold``, then :func:`segment_binary`."""
    std_map = np.asarray(std_map, dtype=np.float32)
    if not np.isfinite(std_map).all():
        raise ValueError("std map contains NaN/inf; expected finite standard deviations")
    return segment_binary(std_map > float(threshold), settings)


def flag(mask: np.ndarray, flag_fraction: float = FLAG_FRACTION) -> tuple[bool, float]:
    """``(flagged, covered fraction)``: a patch is flagged when its mask covers more than ``flag_fraction``."""
    fraction = float(np.count_nonzero(mask)) / float(np.asarray(mask).size)
    return fraction > flag_fraction, fraction
