"""Is the uncertainty right? AUROC of std maps against errors, flag precision/recall, threshold calibration.

All stacks are ``(N, Z, Y, X)`` float arrays (N patches). Thresholds are calibrated on the validation split only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from dm4isl.uncertainty.masks import MaskSettings, error_mask, flag, segment_binary

#: Default |prediction − truth| (normalised intensity) above which a voxel counts as wrong.
ERROR_TAU = 0.2
#: Number of candidate thresholds tried by the calibration (quantiles of the pooled std values).
N_CANDIDATES = 64


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of voxel ``scores`` for binary ``labels`` (any equal shapes); NaN if one class only."""
    labels = np.asarray(labels).astype(bool).ravel()
    if labels.all() or not labels.any():
        return math.nan
    return float(binary_auroc(torch.as_tensor(np.asarray(scores, np.float32).ravel()), torch.as_tensor(labels)))


def error_truth(preds: np.ndarray, gts: np.ndarray, tau: float = ERROR_TAU) -> np.ndarray:
    """Boolean ``|pred − gt| > tau`` voxel map, ``(N, Z, Y, X)``."""
    return np.abs(np.asarray(preds, np.float32) - np.asarray(gts, np.float32)) > tau


@dataclass
class UncertaintyReport:
    """How well std maps find errors: voxel AUROCs and patch-flag precision/recall."""

    auroc_error: float
    auroc_planted: float
    flag_precision: float
    flag_recall: float
    n_flagged: int
    n_erroneous: int
    n_patches: int


def evaluate_uncertainty(
    std_maps: np.ndarray,
    preds: np.ndarray,
    gts: np.ndarray,
    threshold: float,
    planted: np.ndarray | None = None,
    tau: float = ERROR_TAU,
    settings: MaskSettings | None = None,
) -> UncertaintyReport:
    """Score std maps ``(N, Z, Y, X)`` against the errors of ``preds`` vs ``gts``.

    * ``auroc_error``: voxel AUROC of the std map for ``|pred − gt| > tau``;
    * ``auroc_planted``: voxel AUROC for the planted ambiguous structures (synthetic data; NaN without them);
    * flags: a patch is flagged when its error mask (std > ``threshold``, segmented) covers more than
      ``settings.flag_fraction``; it is erroneous when the same segmentation of ``|pred − gt| > tau`` does.
    """
    settings = settings or MaskSettings()
    errors = error_truth(preds, gts, tau)
    flagged, erroneous = [], []
    for s, e in zip(std_maps, errors, strict=True):
        flagged.append(flag(error_mask(s, threshold, settings), settings.flag_fraction)[0])
        erroneous.append(flag(segment_binary(e, settings), settings.flag_fraction)[0])
    f, e = np.asarray(flagged), np.asarray(erroneous)
    tp = int((f & e).sum())
    return UncertaintyReport(
        auroc_error=auroc(std_maps, errors),
        auroc_planted=auroc(std_maps, planted) if planted is not None else math.nan,
        flag_precision=tp / int(f.sum()) if f.any() else math.nan,
        flag_recall=tp / int(e.sum()) if e.any() else math.nan,
        n_flagged=int(f.sum()),
        n_erroneous=int(e.sum()),
        n_patches=len(f),
    )


def calibrate_threshold(
    std_maps: np.ndarray, preds: np.ndarray, gts: np.ndarray, tau: float = ERROR_TAU,
    candidates: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Pick the std threshold whose voxel mask ``std > thr`` best matches ``|pred − gt| > tau`` (max F1).

    Use validation patches only. Candidates default to quantiles of the pooled std values. Returns
    ``(threshold, F1 at that threshold)``; raises ValueError when the validation predictions hold no error at all.
    """
    std = np.asarray(std_maps, np.float32).ravel()
    truth = error_truth(preds, gts, tau).ravel()
    if not truth.any():
        raise ValueError(f"no validation voxel has |prediction − truth| > {tau}; cannot calibrate a threshold")
    if candidates is None:
        candidates = np.unique(np.quantile(std, np.linspace(0.5, 0.999, N_CANDIDATES)))
    best = (float(candidates[0]), -1.0)
    n_true = int(truth.sum())
    for thr in candidates:
        pred_pos = std > thr
        tp = int((pred_pos & truth).sum())
        denom = int(pred_pos.sum()) + n_true
        f1 = 2 * tp / denom if denom else 0.0
        if f1 > best[1]:
            best = (float(thr), f1)
    return best


@dataclass
class AurocPairCounts:
    """Per-patch pair counts from which the pooled voxel AUROC of any multiset of patches follows exactly.

    ``wins[i, j]`` counts the (positive voxel of patch i, negative voxel of patch j) pairs where the positive scores
    higher, ties counting ½; ``n_pos``, ``n_neg`` ``(N,)`` are the positive and negative voxels per patch. Pooling
    the voxels of patches drawn with multiplicities ``w`` ``(N,)`` gives AUROC = wᵀ·wins·w / ((w·n_pos)(w·n_neg)),
    so a patch bootstrap of the pooled AUROC costs a matrix product per resample instead of a voxel sort.
    """

    wins: np.ndarray
    n_pos: np.ndarray
    n_neg: np.ndarray

    def auroc(self, weights: np.ndarray | None = None) -> np.ndarray | float:
        """Pooled AUROC for patch multiplicities ``weights`` ``(N,)`` or ``(R, N)`` (None: every patch once).

        Returns a float for one weight vector, ``(R,)`` for R of them; NaN where the pool holds one class only.
        """
        w = np.ones(len(self.n_pos)) if weights is None else np.asarray(weights, dtype=np.float64)
        single = w.ndim == 1
        w = np.atleast_2d(w)
        num = np.einsum("ri,ij,rj->r", w, self.wins, w)
        den = (w @ self.n_pos) * (w @ self.n_neg)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        return float(out[0]) if single else out


def auroc_pair_counts(scores: np.ndarray, labels: np.ndarray) -> AurocPairCounts:
    """:class:`AurocPairCounts` of voxel ``scores`` for binary ``labels``, both ``(N, Z, Y, X)`` (N patches).

    With every patch once, ``.auroc()`` equals :func:`auroc` of the pooled voxels (ties count ½ in both).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim < 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape}; expected equal (N, Z, Y, X) shapes")
    n = scores.shape[0]
    flat_s, flat_l = scores.reshape(n, -1), labels.reshape(n, -1)
    pos = [s[lab] for s, lab in zip(flat_s, flat_l, strict=True)]
    neg = [np.sort(s[~lab]) for s, lab in zip(flat_s, flat_l, strict=True)]
    wins = np.zeros((n, n))
    for i, p in enumerate(pos):
        if p.size == 0:
            continue
        for j, q in enumerate(neg):
            below = np.searchsorted(q, p, side="left").sum()
            not_above = np.searchsorted(q, p, side="right").sum()
            wins[i, j] = 0.5 * (float(below) + float(not_above))
    return AurocPairCounts(wins=wins, n_pos=np.array([p.size for p in pos], dtype=np.float64),
                           n_neg=np.array([q.size for q in neg], dtype=np.float64))
