"""Proper scoring of ensembles: fair-ensemble CRPS per patch and the spread–skill (calibration) curve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scoringrules

#: CRPS estimator of ``scoringrules``: the fair (unbiased for the ensemble's distribution) energy form.
CRPS_ESTIMATOR = "fair"
#: Default number of spread bins of the spread–skill curve (equally populated: quantiles of the spread).
SPREAD_SKILL_BINS = 10
#: Fewest ensemble members for a spread (sample standard deviation) to exist.
MIN_MEMBERS = 2


def _check(gt: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    members = np.asarray(members, dtype=np.float64)
    if members.ndim != gt.ndim + 1 or members.shape[1:] != gt.shape:
        raise ValueError(
            f"ensemble members of shape {members.shape} do not fit a ground truth of shape {gt.shape}; "
            "expected (M, *ground-truth shape)"
        )
    if members.shape[0] < 1:
        raise ValueError("an ensemble needs at least one member")
    return gt, members


def crps_map(gt: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Voxel-wise CRPS of an ensemble ``(M, Z, Y, X)`` for the ground truth ``(Z, Y, X)``; returns ``(Z, Y, X)``.

    Fair-ensemble estimator (``scoringrules.crps_ensemble(estimator="fair")``):
    ``CRPS = 1/M Σ|x_i − y| − 1/(2 M (M − 1)) Σ_{i,j} |x_i − x_j|``, an unbiased estimate of the CRPS of the
    distribution the M members are drawn from (Ferro 2014, QJRMS 140:1917). With one member (a point forecast)
    the CRPS is the absolute error ``|x − y|``. Unit: the intensity's (normalised, [0, 1]); lower is better.
    """
    gt, members = _check(gt, members)
    if members.shape[0] < MIN_MEMBERS:
        return np.abs(members[0] - gt)
    return np.asarray(
        scoringrules.crps_ensemble(gt, np.moveaxis(members, 0, -1), estimator=CRPS_ESTIMATOR, backend="numpy"),
        dtype=np.float64,
    )


def crps(gt: np.ndarray, members: np.ndarray) -> float:
    """Mean over voxels of :func:`crps_map`: the patch's CRPS (``(Z, Y, X)`` ground truth, ``(M, Z, Y, X)``
    members). For one member, the mean absolute error of that point forecast. Lower is better; 0 for a perfect
    deterministic forecast."""
    return float(np.mean(crps_map(gt, members)))


@dataclass(frozen=True)
class SpreadSkill:
    """Spread–skill curve of an ensemble: per spread bin, the predicted and the observed error (intensity units).

    ``spread[b]`` = √(mean ensemble variance · (M + 1)/M) and ``rmse[b]`` = √(mean squared error of the
    ensemble mean) over the voxels of bin b; ``count[b]`` voxels; ``edges`` the ``(n_bins + 1,)`` bin edges of the
    voxel-wise ensemble standard deviation. A calibrated ensemble has ``rmse ≈ spread`` in every bin.
    """

    spread: np.ndarray
    rmse: np.ndarray
    count: np.ndarray
    edges: np.ndarray
    n_members: int

    @property
    def ratio(self) -> float:
        """Overall RMSE / spread over all voxels (1 for a calibrated ensemble, > 1 over-confident, < 1
        over-dispersed). Unlike the binned curve it carries no selection bias: binning by the members' own noisy
        spread makes even a calibrated ensemble of few members look over-confident in its low-spread bins and
        over-dispersed in its high ones (regression to the mean)."""
        total = float(self.count.sum())
        mse = float((self.count * self.rmse**2).sum()) / total
        var = float((self.count * self.spread**2).sum()) / total
        return float(np.sqrt(mse / var)) if var > 0 else float("nan")


def spread_skill(
    gts: Sequence[np.ndarray], ensembles: Sequence[np.ndarray], n_bins: int = SPREAD_SKILL_BINS
) -> SpreadSkill:
    """Bin every voxel of every patch by its ensemble spread and compare it with the ensemble mean's error.

    ``gts[i]`` is ``(Z, Y, X)`` and ``ensembles[i]`` its ``(M, Z, Y, X)`` members (same M for all patches). The
    voxel-wise spread is the sample standard deviation of the members (ddof 1); bins are equally populated
    (quantiles of the spread). The predicted error of a bin is √(mean variance · (M + 1)/M) — the expected RMSE
    of the mean of M members drawn from the same distribution as the truth (Leutbecher & Palmer 2008, J Comput
    Phys 227:3515; Fortin et al. 2014, Mon Wea Rev 142:1395) — and the observed error the RMSE of the ensemble
    mean. Bins that collapse (many equal spreads) are merged. With few members, read the binned curve together
    with :attr:`SpreadSkill.ratio` (see there).
    """
    if len(gts) != len(ensembles) or not gts:
        raise ValueError(f"spread–skill needs one ensemble per ground truth, got {len(gts)} and {len(ensembles)}")
    pairs = [_check(g, e) for g, e in zip(gts, ensembles, strict=True)]
    sizes = {e.shape[0] for _, e in pairs}
    if len(sizes) != 1 or min(sizes) < MIN_MEMBERS:
        raise ValueError(f"spread–skill needs ensembles of one size ≥ {MIN_MEMBERS}, got sizes {sorted(sizes)}")
    m = sizes.pop()
    var = np.concatenate([e.var(axis=0, ddof=1).ravel() for _, e in pairs])
    sq_err = np.concatenate([((e.mean(axis=0) - g) ** 2).ravel() for g, e in pairs])
    std = np.sqrt(var)
    edges = np.unique(np.quantile(std, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.size < 2:
        edges = np.array([std.min(), std.max()])
    which = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, edges.size - 2)
    count = np.bincount(which, minlength=edges.size - 1)
    keep = count > 0
    mean_var = np.bincount(which, weights=var, minlength=edges.size - 1)[keep] / count[keep]
    mse = np.bincount(which, weights=sq_err, minlength=edges.size - 1)[keep] / count[keep]
    return SpreadSkill(
        spread=np.sqrt(mean_var * (m + 1) / m), rmse=np.sqrt(mse), count=count[keep], edges=edges, n_members=m
    )
