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
