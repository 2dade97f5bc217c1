"""Every intensity normalisation rule: raw grey levels → [0, 1] (SPEC §1) and [0, 1] ↔ the model's own space.

Raw side (numpy, volumes ``(Z, Y, X)``): the fixed window (:func:`window_normalize`), the window fitted from
training data (:func:`percentile_window`), the dtype rules (:func:`to_unit`, :func:`auto_window`,
:func:`select_window`) and the empty-patch threshold in [0, 1] units (:func:`unit_std_threshold`).
Model side (torch, batches ``(B, C, Z, Y, X)``): fluorescence to and from the target range (:class:`TargetRange`),
predictions back to [0, 1] (:func:`to_unit_range`) and the per-patch brightfield z-score (:func:`zscore_per_patch`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dm4isl.errors import DataError

#: Largest uint8 grey level: uint8 files hold ``value / 255`` (the reference patch layout).
UINT8_MAX = 255.0
#: Float inputs are accepted as already normalised if they lie in [0, 1] up to this tolerance.
UNIT_RANGE_TOL = 1e-3
#: How a patch folder's grey levels become [0, 1]: ``auto`` (:func:`auto_window`), ``unit`` (never a window:
#: uint8/255 or float in [0, 1]) or ``window`` (always the organelle's window).
INTENSITY_MODES = ("auto", "unit", "window")
#: Voxels per FOV used for percentile windows of float data (a fixed-stride subsample; integer data use all voxels).
PERCENTILE_MAX_VOXELS = 1 << 20
#: Largest unsigned-integer item size (bytes) whose percentiles come from an exact full histogram.
MAX_HISTOGRAM_BYTES = 2
#: How predictions are brought to [0, 1]: per-voxel clipping (batch-independent default) or min–max over the
#: whole batch (the reference's behaviour, kept for faithful reproduction only).
OUTPUT_MODES = ("clip", "batch_minmax")
#: Brightfield conditioning as fed to the network: as normalised (reference) or z-scored per patch (as fnet does).
COND_NORMS = ("none", "zscore")
#: Guards the per-patch z-score of a constant brightfield patch.
ZSCORE_EPS = 1e-6


# --- raw grey levels → [0, 1] ----------------------------------------------------------------------------------
def window_normalize(raw: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Map raw grey levels to [0, 1] by ``(clip(x, lo, hi) - lo) / (hi - lo)``.

    Args:
        raw: array of any shape (typically ``(Z, Y, X)``), any numeric dtype.
        window: ``(lo, hi)`` in the raw units, ``hi > lo``.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"normalisation window must have hi > lo, got {tuple(window)}")
    out = np.clip(np.asarray(raw, dtype=np.float32), lo, hi)
    out -= lo
    out /= hi - lo
    return out


def clip_raw(raw: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip raw grey levels to ``window`` (float32), as used by the empty-patch ``std_th`` filter."""
    return np.clip(np.asarray(raw, dtype=np.float32), float(window[0]), float(window[1]))


def unit_std_threshold(std_th: float, fl_window: Sequence[float]) -> float:
    """Convert the raw-grey-level ``std_th`` (SPEC §1) to normalised [0, 1] units.

    Clipping and the affine window map commute with the standard deviation up to the factor ``hi - lo``, so testing
    the normalised crop against ``std_th / (hi - lo)`` is the same rule as testing the raw clipped crop against
    ``std_th``; it also applies to data that arrive already normalised (uint8 patch folders).
    """
    lo, hi = float(fl_window[0]), float(fl_window[1])
    return float(std_th) / (hi - lo)


def percentile_window(volumes: Sequence[np.ndarray], percentiles: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` = the given percentiles (in %) of all voxels of ``volumes`` (each ``(Z, Y, X)``).

    uint8/uint16 data: exact (inverted-CDF percentile) from a histogram of every voxel. Other data: from a
    fixed-stride subsample of at most :data:`PERCENTILE_MAX_VOXELS` voxels per volume.
    Raises :class:`DataError` when ``hi <= lo`` (no contrast).
    """
    p_lo, p_hi = (float(p) for p in percentiles)
    if not 0 <= p_lo < p_hi <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {list(percentiles)}")
    if not volumes:
        raise DataError("no training FOVs to compute percentile normalisation windows from")
    if all(v.dtype.kind == "u" and v.dtype.itemsize <= MAX_HISTOGRAM_BYTES for v in volumes):
        n_levels = 1 << (8 * max(v.dtype.itemsize for v in volumes))  # one histogram length for uint8 + uint16
        counts = sum(np.bincount(v.ravel(), minlength=n_levels) for v in volumes)
        cdf = np.cumsum(counts) / counts.sum()
        lo, hi = (float(np.searchsorted(cdf, p / 100.0)) for p in (p_lo, p_hi))
    else:
        sample = np.concatenate([v.ravel()[:: max(1, v.size // PERCENTILE_MAX_VOXELS)] for v in volumes])
        lo, hi = (float(x) for x in np.percentile(sample.astype(np.float64), [p_lo, p_hi]))
    if not hi > lo:
        raise DataError(f"training FOVs give an empty normalisation window [{lo}, {hi}] at percentiles "
                        f"{[p_lo, p_hi]}; expected hi > lo (are the images constant?)")
    return lo, hi


def to_unit(
    array: np.ndarray, path: str | os.PathLike = "<array>", window: Sequence[float] | None = None
) -> np.ndarray:
    """Convert a ``(Z, Y, X)`` volume to float32 in [0, 1]; ``path`` names the source in errors.

    * with ``window`` given: fixed-window normalisation of raw grey levels (SPEC §1);
    * uint8 without window: value / 255 (the reference patch layout);
    * float without window: kept if already in [0, 1] (clipped within a tolerance of 1e-3), else an error;
    * other integer types need a window (they are raw camera grey levels).
    """
    if window is not None:
        return window_normalize(array, window)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(UINT8_MAX)
    if array.dtype.kind == "f":
        lo, hi = float(array.min()), float(array.max())
        if lo < -UNIT_RANGE_TOL or hi > 1 + UNIT_RANGE_TOL:
            raise DataError(
                f"{path}: float intensities span [{lo:.4g}, {hi:.4g}]; expected normalised values in [0, 1] "
                "(or give a normalisation window)"
            )
        return np.clip(array, 0.0, 1.0).astype(np.float32)
    raise DataError(
        f"{path}: raw {array.dtype} grey levels need a normalisation window (organelle bf_window/fl_window); "
        "expected uint8 (value/255) or float in [0, 1] otherwise"
    )


def auto_window(raw: np.ndarray, window: Sequence[float] | None) -> Sequence[float] | None:
    """The window :func:`to_unit` should use for ``raw`` ``(Z, Y, X)``.

    None for uint8 (value/255) and for float data already in [0, 1] (normalised); ``window`` for other integer
    data and for float data outside [0, 1] whose range overlaps the window (raw grey levels stored as float, e.g.
    float16/float32 Allen files). Float data that neither lie in [0, 1] nor meet the window get None, so
    :func:`to_unit` refuses them instead of clipping them to a constant.
    """
    if raw.dtype == np.uint8:
        return None
    if raw.dtype.kind == "f" and np.isfinite(raw).all():
        lo, hi = float(raw.min()), float(raw.max())
        if lo >= -UNIT_RANGE_TOL and hi <= 1 + UNIT_RANGE_TOL:
            return None
        if window is None or hi <= window[0] or lo >= window[1]:
            return None
    return window


def select_window(raw: np.ndarray, window: Sequence[float] | None, mode: str = "auto") -> Sequence[float] | None:
    """The window :func:`to_unit` should use for ``raw`` ``(Z, Y, X)`` under an intensity ``mode``.

    ``auto``: :func:`auto_window`; ``unit``: None (the data must be uint8 or float in [0, 1]); ``window``: always
    ``window``. Other modes raise ``ValueError`` naming :data:`INTENSITY_MODES`.
    """
    if mode == "window":
        return window
    if mode == "unit":
        return None
    if mode == "auto":
        return auto_window(raw, window)
    raise ValueError(f"intensity must be auto, unit or window, got {mode!r}")


# --- [0, 1] ↔ model space ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetRange:
    """Affine map between data units (fluorescence in [0, 1]) and model space ``[low, high]``.

    ``(0, 1)`` is the reference (data used as is); ``(-1, 1)`` centres the targets like the noise. The maps act
    element-wise on floats or tensors of any shape (typically ``(B, C, Z, Y, X)``).
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"target range [{self.low}, {self.high}]; expected low < high")

    @property
    def scale(self) -> float:
        """Model-space units per data unit."""
        return self.high - self.low

    def to_model(self, x: torch.Tensor | float) -> torch.Tensor | float:
        """Data units → model space."""
        return self.low + self.scale * x

    def to_data(self, y: torch.Tensor | float) -> torch.Tensor | float:
        """Model space → data units."""
        return (y - self.low) / self.scale

    def std_to_data(self, s: torch.Tensor | float) -> torch.Tensor | float:
        """A spread (std) in model-space units → data units (the offset ``low`` does not apply)."""
        return s / self.scale


def to_unit_range(x: torch.Tensor, mode: str = "clip") -> torch.Tensor:
    """Bring a data-unit batch ``(B, C, Z, Y, X)`` to [0, 1]: per-voxel clip, or min–max over the whole batch."""
    if mode == "clip":
        return x.clamp(0.0, 1.0)
    if mode == "batch_minmax":
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    raise ValueError(f"output mode {mode!r}; expected one of {OUTPUT_MODES}")


def zscore_per_patch(bf: torch.Tensor) -> torch.Tensor:
    """Standardise each patch of a brightfield batch ``(B, C, Z, Y, X)`` to mean 0 and std 1 over ``(C, Z, Y, X)``.

    The std is the unbiased one; :data:`ZSCORE_EPS` guards constant patches (they become 0).
    """
    dims = tuple(range(1, bf.ndim))
    return (bf - bf.mean(dim=dims, keepdim=True)) / (bf.std(dim=dims, keepdim=True) + ZSCORE_EPS)
