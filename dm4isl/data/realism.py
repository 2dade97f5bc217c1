"""How close synthetic patches are to real ones: image statistics of paired BF/FL patches and their tolerances."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dm4isl.data.patches import PatchSet, fixed_patch_set
from dm4isl.errors import DataError

#: In-slice spatial frequencies (cycles per pixel) that split a slice's power spectrum into bands.
LOW_CUTOFF = 0.04
MID_BAND = (0.05, 0.15)
HIGH_CUTOFF = 0.25
#: Bins of the joint BF/FL histogram for the mutual information (the paper's MI uses 20).
MI_BINS = 20
#: Levels of the real reference patches (uint8 files, value / 255): synthetic patches are quantised the same way.
QUANTISATION_LEVELS = 255
#: Salt of the random stream that draws the synthetic crops (distinct from the validation and test sets' salts).
REALISM_SALT = 7


def quantise(patches: np.ndarray, levels: int = QUANTISATION_LEVELS) -> np.ndarray:
    """``(N, Z, Y, X)`` intensities in [0, 1] rounded to ``levels`` steps, as 8-bit files store them."""
    return np.round(np.clip(patches, 0.0, 1.0) * levels) / levels


def _per_slice_std(x: np.ndarray) -> np.ndarray:
    """``(N, Z)`` standard deviation of every slice of ``(N, Z, Y, X)`` patches."""
    return x.std(axis=(2, 3))


def _band_fraction(x: np.ndarray, lo: float, hi: float) -> float:
    """Median over slices of the fraction of a slice's (mean-free) power at radial frequencies in ``(lo, hi]``."""
    centred = x - x.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    fy = np.fft.fftfreq(x.shape[-2])[:, None]
    fx = np.fft.fftfreq(x.shape[-1])[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    band = (radius > lo) & (radius <= hi)
    total = power.sum(axis=(-2, -1))
    return float(np.median(power[..., band].sum(axis=-1) / np.maximum(total, 1e-12)))


def _adjacent_slice_corr(x: np.ndarray) -> float:
    """Median over patches of the mean Pearson r between neighbouring slices (Z correlation of the texture)."""
    centred = x - x.mean(axis=(-2, -1), keepdims=True)
    unit = centred / np.maximum(centred.std(axis=(-2, -1), keepdims=True), 1e-12)
    r = (unit[:, 1:] * unit[:, :-1]).mean(axis=(-2, -1))
    return float(np.median(r.mean(axis=1)))


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = MI_BINS) -> float:
    """Mutual information (bits) of two arrays' values from a ``bins`` × ``bins`` joint histogram over their ranges."""
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (px @ py)[nz])).sum())


@dataclass(frozen=True)
class Statistic:
    """One realism statistic of a patch set: ``compute(bf, fl)`` on ``(N, Z, Y, X)`` arrays, and its tolerance.

    ``tolerance`` is the largest accepted |synthetic − real|: half the range the statistic spans over the real
    patches one by one (``why``; rounded), so that a synthetic value within it would not stand out among them.
    """

    name: str
    description: str
    compute: Callable[[np.ndarray, np.ndarray], float]
    tolerance: float
    why: str


def _slice_std_ratio(x: np.ndarray) -> float:
    """Median over patches of the largest over the smallest per-slice std (the profile through Z)."""
    per_slice = _per_slice_std(x)
    return float(np.median(per_slice.max(axis=1) / np.maximum(per_slice.min(axis=1), 1e-6)))


#: Measures of one channel's ``(N, Z, Y, X)`` patches: name suffix, description, function.
_MEASURES: dict[str, tuple[str, Callable[[np.ndarray], float]]] = {
    "patch_std": ("median over patches of the patch's std", lambda x: float(np.median(x.std(axis=(1, 2, 3))))),
    "mean_spread": ("std across patches of the patch means", lambda x: float(x.mean(axis=(1, 2, 3)).std())),
    "patch_mean": ("median over patches of the patch mean", lambda x: float(np.median(x.mean(axis=(1, 2, 3))))),
    "median": ("median over patches of the median voxel (background and haze)",
               lambda x: float(np.median(np.median(x.reshape(len(x), -1), axis=1)))),
    "p99": ("median over patches of the 99th percentile (brightest structures)",
            lambda x: float(np.median(np.percentile(x.reshape(len(x), -1), 99, axis=1)))),
    "min_slice_std": ("median over patches of the flattest slice's std",
                      lambda x: float(np.median(_per_slice_std(x).min(axis=1)))),
    "slice_std_ratio": ("median over patches of max/min per-slice std (profile through Z)", _slice_std_ratio),
    "adjacent_slice_r": ("median r between neighbouring slices", _adjacent_slice_corr),
    "low_band_power": (f"fraction of slice power below {LOW_CUTOFF} cycles/px",
                       lambda x: _band_fraction(x, -1.0, LOW_CUTOFF)),
    "mid_band_power": (f"fraction of slice power at {MID_BAND[0]}-{MID_BAND[1]} cycles/px",
                       lambda x: _band_fraction(x, *MID_BAND)),
    "high_band_power": (f"fraction of slice power above {HIGH_CUTOFF} cycles/px",
                        lambda x: _band_fraction(x, HIGH_CUTOFF, 1.0)),
}


def _of(channel: str, measure: str, tolerance: float, why: str) -> Statistic:
    """The statistic ``<channel>_<measure>`` of :data:`_MEASURES` on the BF or the FL patches."""
    description, fn = _MEASURES[measure]
    index = ("bf", "fl").index(channel)
    return Statistic(f"{channel}_{measure}", f"{channel.upper()}: {description}",
                     lambda bf, fl: fn((bf, fl)[index]), tolerance, why)


STATISTICS: tuple[Statistic, ...] = (
    _of("bf", "patch_std", 0.011, "real patches 0.031-0.054"),
    _of("bf", "mean_spread", 0.070,
        "5 real patches 0.180; the reference's 128 training patches imply ~0.13 (pooled std 0.136)"),
    _of("bf", "min_slice_std", 0.01, "real patches 0.025-0.046"),
    _of("bf", "slice_std_ratio", 0.17, "real patches 1.08-1.42"),
    _of("bf", "adjacent_slice_r", 0.064, "real patches 0.77-0.90"),
    _of("bf", "low_band_power", 0.013, "real patches 0.013-0.038"),
    _of("bf", "mid_band_power", 0.092, "real patches 0.36-0.55"),
    _of("bf", "high_band_power", 0.061, "real patches 0.13-0.25"),
    _of("fl", "patch_std", 0.026, "real patches 0.132-0.185"),
    _of("fl", "patch_mean", 0.03, "real patches 0.137-0.197"),
    _of("fl", "median", 0.018, "real patches 0.094-0.129"),
    _of("fl", "p99", 0.147, "real patches 0.68-0.98"),
    _of("fl", "slice_std_ratio", 0.54, "real patches 1.27-2.35"),
    _of("fl", "adjacent_slice_r", 0.021, "real patches 0.900-0.942"),
    _of("fl", "low_band_power", 0.154, "real patches 0.19-0.50"),
    _of("fl", "mid_band_power", 0.061, "real patches 0.28-0.40"),
    _of("fl", "high_band_power", 0.029, "real patches 0.074-0.131"),
    Statistic("bf_fl_mutual_information", f"BF-FL mutual information (bits, {MI_BINS} bins), median over patches",
              lambda bf, fl: float(np.median([mutual_information(b, f) for b, f in zip(bf, fl, strict=True)])),
              0.0105, "real patches 0.019-0.040"),
)


@dataclass(frozen=True)
class Comparison:
    """One row of a realism table."""

    name: str
    description: str
    real: float
    synthetic: float
    tolerance: float
    why: str

    @property
    def within(self) -> bool:
        return bool(abs(self.synthetic - self.real) <= self.tolerance)


def compare(real_bf: np.ndarray, real_fl: np.ndarray, syn_bf: np.ndarray, syn_fl: np.ndarray) -> list[Comparison]:
    """Every :data:`STATISTICS` entry on real and synthetic ``(N, Z, Y, X)`` BF/FL patch sets in [0, 1].

    The synthetic patches are quantised to the real files' 8-bit levels first (:func:`quantise`).
    """
    for name, a in (("real_bf", real_bf), ("real_fl", real_fl), ("syn_bf", syn_bf), ("syn_fl", syn_fl)):
        if np.ndim(a) != 4:
            raise ValueError(f"{name}: expected (N, Z, Y, X) patches, got shape {np.shape(a)}")
    syn_bf, syn_fl = quantise(np.asarray(syn_bf, np.float64)), quantise(np.asarray(syn_fl, np.float64))
    real_bf, real_fl = np.asarray(real_bf, np.float64), np.asarray(real_fl, np.float64)
    return [
        Comparison(s.name, s.description, s.compute(real_bf, real_fl), s.compute(syn_bf, syn_fl), s.tolerance, s.why)
        for s in STATISTICS
    ]


def real_patches(root: str | os.PathLike, organelle: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(bf, fl)`` ``(N, Z, Y, X)`` of a patch folder (``root/BF``, ``root/GT``; 8-bit files read as value / 255)."""
    from dm4isl.data.datamodule import PatchFolderDataModule

    volumes = PatchFolderDataModule(organelle, root=root).load_volumes()
    shapes = {v.bf.shape for v in volumes}
    if len(shapes) != 1:
        raise DataError(f"{root}: patches of one shape expected, found {sorted(shapes)}")
    return np.stack([v.bf for v in volumes]), np.stack([v.fl for v in volumes])


def synthetic_patches(
    organelle: Mapping[str, Any],
    generator: Mapping[str, Any] | None,
    *,
    n: int,
    size: Sequence[int],
    seed: int,
    n_fovs: int,
    fov_shape: Sequence[int],
    cache_dir: str | os.PathLike,
    ambiguous_fraction: float,
) -> PatchSet:
    """``n`` crops of ``size`` (Z, Y, X) that pass the organelle's empty-patch filter, drawn from all ``n_fovs`` FOVs
    of a synthetic dataset (``generator``: :class:`~dm4isl.data.synthetic.GeneratorSettings` mapping; None: the
    calibrated defaults) — the same kind of crops as a test set, from every FOV instead of one split."""
    from dm4isl.data.datamodule import SyntheticDataModule

    dm = SyntheticDataModule(organelle, n_fovs=n_fovs, fov_shape=fov_shape, ambiguous_fraction=ambiguous_fraction,
                             generator=generator, seed=seed, cache_dir=cache_dir)
    return fixed_patch_set(dm.load_volumes(), n, size, dm.threshold, seed, REALISM_SALT, dm.filter_max_tries,
                           "realism")
