"""Does a model's uncertainty find what it should? Scores of one seed ensemble on a labelled patch set.

Inputs are ``(N, Z, Y, X)`` arrays of N patches (seed members ``(K, N, Z, Y, X)``): the ground truth, the products
of a K-seed ensemble and, on synthetic data, the planted-structure mask (:data:`dm4isl.data.synthetic.MASK_SURPRISE`,
:data:`~dm4isl.data.synthetic.MASK_AMBIGUITY`). Voxel AUROCs pool every patch's voxels and carry a percentile
bootstrap CI over patches (never voxels: the voxels of one patch are not independent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dm4isl.evaluation.equivalence import resample_multiplicities
from dm4isl.metrics.basic import pcc
from dm4isl.metrics.probabilistic import crps, spread_skill
from dm4isl.metrics.table import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, DEFAULT_SEED
from dm4isl.uncertainty.evaluation import ERROR_TAU, auroc_pair_counts, calibrate_threshold, error_truth
from dm4isl.uncertainty.masks import MaskSettings, error_mask, flag, segment_binary

#: Planted-structure mask values (dm4isl.data.synthetic): surprise (FL and BF disagree) and ambiguity (BF occluded).
SURPRISE, AMBIGUITY = 1, 2


@dataclass(frozen=True)
class AurocCI:
    """Pooled voxel AUROC and its percentile bootstrap CI over patches (NaN where one class is missing)."""

    value: float
    low: float
    high: float


def auroc_ci(
    scores: np.ndarray, labels: np.ndarray, confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = DEFAULT_SEED,
) -> AurocCI:
    """AUROC of voxel ``scores`` for boolean ``labels`` (both ``(N, Z, Y, X)``), CI resampling the N patches."""
    counts = auroc_pair_counts(scores, labels)
    boots = np.asarray(counts.auroc(resample_multiplicities(len(counts.n_pos), n_resamples, seed)))
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return AurocCI(float(counts.auroc()), math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    return AurocCI(float(counts.auroc()), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1.0 - alpha)))


@dataclass(frozen=True)
class FlagScores:
    """The paper's patch flag (error mask of the std map over > 1 % of the patch) against patches that should be
    flagged; precision and recall are NaN when nothing is flagged / nothing should be."""

    threshold: float
    n_flagged: int
    n_positive: int
    precision: float
    recall: float


def flag_scores(
    std_maps: np.ndarray, threshold: float, positive: np.ndarray, settings: MaskSettings | None = None
) -> FlagScores:
    """Flag each patch of ``std_maps`` ``(N, Z, Y, X)`` at ``threshold`` (:func:`~dm4isl.uncertainty.masks.error_mask`
    → :func:`~dm4isl.uncertainty.masks.flag`) and score the flags against ``positive`` ``(N,)`` bool."""
    settings = settings or MaskSettings()
    flagged = np.array([flag(error_mask(s, threshold, settings), settings.flag_fraction)[0] for s in std_maps])
    positive = np.asarray(positive, bool)
    tp = int((flagged & positive).sum())
    return FlagScores(
        threshold=float(threshold),
        n_flagged=int(flagged.sum()),
        n_positive=int(positive.sum()),
        precision=tp / int(flagged.sum()) if flagged.any() else math.nan,
        recall=tp / int(positive.sum()) if positive.any() else math.nan,
    )


def patches_to_flag(
    preds: np.ndarray, gts: np.ndarray, planted: np.ndarray | None, tau: float = ERROR_TAU,
    settings: MaskSettings | None = None,
) -> np.ndarray:
    """``(N,)`` bool: a patch should be flagged when the segmented ``|pred − gt| > tau`` covers more than the flag
    fraction of it, or when planted ambiguities do."""
    settings = settings or MaskSettings()
    errors = error_truth(preds, gts, tau)
    wrong = np.array([flag(segment_binary(e, settings), settings.flag_fraction)[0] for e in errors])
    if planted is None:
        return wrong
    ambiguous = (np.asarray(planted) == AMBIGUITY).reshape(len(wrong), -1).mean(axis=1) > settings.flag_fraction
    return wrong | ambiguous


@dataclass(frozen=True)
class EnsembleProducts:
    """What the scores need of one K-seed ensemble on N patches.

    ``ddpm`` and ``ddpmavg``: ``(K, N, Z, Y, X)`` per-seed final samples and DDPMavg; ``std_intra``: ``(N, Z, Y, X)``
    intra-process std (mean over seeds). The inter-process std across the seeds' DDPMavg (ddof 0, the reference's)
    and across their final samples follow from the members.
    """

    ddpm: np.ndarray
    ddpmavg: np.ndarray
    std_intra: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """The ensemble's DDPMavg (mean over seeds), ``(N, Z, Y, X)``."""
        return self.ddpmavg.mean(axis=0)

    def std_maps(self) -> dict[str, np.ndarray]:
        """``intra``, ``inter`` (across DDPMavg) and ``inter_final`` (across final samples), ``(N, Z, Y, X)`` each."""
        return {"intra": self.std_intra, "inter": self.ddpmavg.std(axis=0), "inter_final": self.ddpm.std(axis=0)}


def calibrate_flag_thresholds(val: EnsembleProducts, val_gt: np.ndarray, tau: float = ERROR_TAU) -> dict[str, float]:
    """Per std map, the threshold that best matches ``|DDPMavg − GT| > tau`` voxels on validation (max F1)."""
    return {name: calibrate_threshold(std, val.mean, val_gt, tau)[0] for name, std in val.std_maps().items()}


def ensemble_uncertainty_scores(
    test: EnsembleProducts, gt: np.ndarray, planted: np.ndarray | None, thresholds: Mapping[str, float],
    tau: float = ERROR_TAU, settings: MaskSettings | None = None, n_resamples: int = DEFAULT_N_RESAMPLES,
) -> dict[str, float]:
    """All scores of one ensemble on a test set, flat (CSV-ready): for every std map ``m`` (intra, inter,
    inter_final) ``auroc_error_m`` (and for the planted kinds ``auroc_planted_m``, ``auroc_surprise_m``) with
    ``_lo``/``_hi`` CI bounds, ``flag_precision_m``/``flag_recall_m`` at the validation threshold; ``crps``
    (fair, of the seeds' DDPMavg), ``spread_skill`` (RMSE / spread of those members), ``crps_final`` and
    ``spread_skill_final`` (of the final samples), ``pcc`` (DDPMavg of one seed, mean over seeds and patches),
    ``pcc_ensemble`` (of the seeds' mean DDPMavg), ``error_fraction`` and the planted fractions."""
    gt = np.asarray(gt, np.float64)
    errors = error_truth(test.mean, gt, tau)
    truths = {"error": errors}
    out: dict[str, float] = {"error_fraction": float(errors.mean())}
    if planted is not None:
        planted = np.asarray(planted)
        truths["planted"], truths["surprise"] = planted == AMBIGUITY, planted == SURPRISE
        out["planted_fraction"] = float(truths["planted"].mean())
        out["surprise_fraction"] = float(truths["surprise"].mean())
    positive = patches_to_flag(test.mean, gt, planted, tau, settings)
    for name, std in test.std_maps().items():
        for label, truth in truths.items():
            ci = auroc_ci(std, truth, n_resamples=n_resamples)
            out.update({f"auroc_{label}_{name}": ci.value, f"auroc_{label}_{name}_lo": ci.low,
                        f"auroc_{label}_{name}_hi": ci.high})
        flags = flag_scores(std, thresholds[name], positive, settings)
        out.update({f"flag_threshold_{name}": flags.threshold, f"flag_precision_{name}": flags.precision,
                    f"flag_recall_{name}": flags.recall, f"n_flagged_{name}": float(flags.n_flagged)})
    out["n_flag_positive"] = float(positive.sum())
    for suffix, members in (("", test.ddpmavg), ("_final", test.ddpm)):
        out[f"crps{suffix}"] = float(np.mean([crps(g, members[:, i]) for i, g in enumerate(gt)]))
        out[f"spread_skill{suffix}"] = spread_skill(list(gt), [members[:, i] for i in range(len(gt))]).ratio
    out["pcc"] = float(np.nanmean([[pcc(g, p) for g, p in zip(gt, seed, strict=True)] for seed in test.ddpmavg]))
    out["pcc_ensemble"] = float(np.nanmean([pcc(g, p) for g, p in zip(gt, test.mean, strict=True)]))
    return out
