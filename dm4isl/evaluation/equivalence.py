"""Non-inferiority of a cheaper method against a comparator on the same patches: paired bootstrap CIs of differences.

Per-patch metrics (PCC, MS-SSIM of DDPMavg, ``(N,)`` each) are compared by their mean difference; voxel AUROCs of
std maps by the difference of the pooled AUROCs. Both resample patches (never voxels: voxels of one patch are not
independent) with the same draws, so every interval is paired. A candidate counts as non-inferior when the lower
end of every interval lies above its margin (a negative number: the largest loss accepted); an interval that
cannot be formed (NaN) never passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dm4isl.metrics.table import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, DEFAULT_SEED, bootstrap_ci, mean_difference
from dm4isl.uncertainty.evaluation import AurocPairCounts


@dataclass(frozen=True)
class DeltaCI:
    """Candidate − comparator for one metric: point difference on all patches, percentile CI, margin."""

    name: str
    delta: float
    low: float
    high: float
    margin: float

    @property
    def passes(self) -> bool:
        """True when the CI's lower end lies above the margin (NaN never passes)."""
        return math.isfinite(self.low) and self.low > self.margin

    def describe(self) -> str:
        """e.g. ``ΔPCC -0.0042 [-0.0081, -0.0003] vs margin -0.01 pass``."""
        mark = "pass" if self.passes else "FAIL"
        return f"Δ{self.name} {self.delta:+.4f} [{self.low:+.4f}, {self.high:+.4f}] vs margin {self.margin:+g} {mark}"


@dataclass(frozen=True)
class NonInferiority:
    """The intervals of one candidate against the comparator; it counts when every interval passes."""

    deltas: tuple[DeltaCI, ...]

    @property
    def passes(self) -> bool:
        return bool(self.deltas) and all(d.passes for d in self.deltas)

    def failures(self) -> list[str]:
        """Names of the metrics whose interval does not clear its margin."""
        return [d.name for d in self.deltas if not d.passes]

    def __getitem__(self, name: str) -> DeltaCI:
        for d in self.deltas:
            if d.name == name:
                return d
        raise KeyError(f"no interval for {name!r}; have {[d.name for d in self.deltas]}")


def resample_multiplicities(n: int, n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``(n_resamples, n)`` counts of each patch in each bootstrap resample.

    The draws are those of :func:`dm4isl.metrics.table.bootstrap_ci` with the same ``seed`` and ``n`` (patch indices
    from ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``), so AUROC and mean-metric intervals
    resample the same patches.
    """
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    return counts


def mean_delta_ci(
    name: str, candidate: Sequence[float], comparator: Sequence[float], margin: float,
    confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = DEFAULT_SEED,
) -> DeltaCI:
    """Mean over patches of ``candidate − comparator`` (per-patch values ``(N,)``) with its paired bootstrap CI.

    Patches where either value is not finite are dropped (as :func:`bootstrap_ci` does).
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(comparator, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{name}: {a.shape} candidate values and {b.shape} comparator values; expected equal (N,)")
    keep = np.isfinite(a) & np.isfinite(b)
    delta = float(np.mean(a[keep] - b[keep])) if keep.any() else math.nan
    low, high = bootstrap_ci(mean_difference, [a, b], confidence, n_resamples, seed, vectorized=True)
    return DeltaCI(name, delta, low, high, margin)


def auroc_delta_ci(
    name: str, candidate: AurocPairCounts, comparator: AurocPairCounts, margin: float,
    confidence: float = DEFAULT_CONFIDENCE, n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = DEFAULT_SEED,
) -> DeltaCI:
    """Pooled-voxel AUROC of the candidate minus the comparator's, with a paired patch-bootstrap CI.

    Each resample pools the voxels of the same drawn patches for both; resamples where either AUROC is undefined
    (one class only) are ignored. NaN bounds for fewer than 2 patches or when no resample is defined.
    """
    n = len(candidate.n_pos)
    if len(comparator.n_pos) != n:
        raise ValueError(f"{name}: {n} candidate and {len(comparator.n_pos)} comparator patches; expected equal")
    delta = float(candidate.auroc() - comparator.auroc())
    if n < 2:
        return DeltaCI(name, delta, math.nan, math.nan, margin)
    weights = resample_multiplicities(n, n_resamples, seed)
    diffs = candidate.auroc(weights) - comparator.auroc(weights)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return DeltaCI(name, delta, math.nan, math.nan, margin)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return DeltaCI(name, delta, float(low), float(high), margin)


def non_inferiority(
    per_patch: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    aurocs: Mapping[str, tuple[AurocPairCounts, AurocPairCounts]],
    margins: Mapping[str, float],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> NonInferiority:
    """Intervals for every metric: ``per_patch[name] = (candidate (N,), comparator (N,))`` and
    ``aurocs[name] = (candidate counts, comparator counts)``; ``margins[name]`` for each (a missing one raises)."""
    missing = sorted((set(per_patch) | set(aurocs)) - set(margins))
    if missing:
        raise ValueError(f"no non-inferiority margin for {missing}; margins given for {sorted(margins)}")
    deltas = [mean_delta_ci(k, a, b, margins[k], confidence, n_resamples, seed) for k, (a, b) in per_patch.items()]
    deltas += [auroc_delta_ci(k, a, b, margins[k], confidence, n_resamples, seed) for k, (a, b) in aurocs.items()]
    return NonInferiority(tuple(deltas))
