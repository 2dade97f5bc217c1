"""Uncertainty scoring: AUROC, flag precision/recall and threshold calibration on hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dm4isl.uncertainty.evaluation import auroc, calibrate_threshold, evaluate_uncertainty


def test_auroc_known_values() -> None:
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert math.isnan(auroc(np.ones(4), np.zeros(4)))


def test_auroc_with_ties_against_a_hand_count() -> None:
    """AUROC = P(score of an error voxel > score of a correct voxel) + ½ P(equal). Errors score (0.3, 0.5, 0.5),
    correct voxels (0.1, 0.5, 0.7, 0.2): of the 12 pairs 6 are won, 2 tied, 4 lost → (6 + 2/2) / 12 = 7/12."""
    scores = np.array([0.3, 0.5, 0.5, 0.1, 0.5, 0.7, 0.2])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    assert auroc(scores, labels) == pytest.approx(7 / 12)
    assert auroc(scores.reshape(1, 7), labels.reshape(1, 7)) == pytest.approx(7 / 12)  # any shape


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    gts = np.zeros((4, 2, 32, 32), np.float32)
    preds = gts.copy()
    preds[0, :, 4:14, 4:14] = 0.8  # patch 0: a hallucinated block
    preds[2, :, 10:20, 10:20] = 0.8  # patch 2: another error
    std = np.full_like(gts, 0.01)
    std[0, :, 4:14, 4:14] = 0.3  # found
    std[1, :, 0:10, 0:10] = 0.3  # false alarm on a correct patch
    return std, preds, gts, (np.abs(preds - gts) > 0.2)


def test_flag_precision_recall_and_auroc() -> None:
    std, preds, gts, planted = _case()
    rep = evaluate_uncertainty(std, preds, gts, threshold=0.1, planted=planted)
    assert (rep.n_flagged, rep.n_erroneous, rep.n_patches) == (2, 2, 4)
    assert rep.flag_precision == pytest.approx(0.5) and rep.flag_recall == pytest.approx(0.5)
    assert 0.5 < rep.auroc_error < 1.0 and rep.auroc_planted == pytest.approx(rep.auroc_error)


def test_calibration_picks_separating_threshold() -> None:
    std, preds, gts, _ = _case()
    std[2, :, 10:20, 10:20] = 0.25
    std[1] = 0.01
    thr, f1 = calibrate_threshold(std, preds, gts, candidates=[0.005, 0.02, 0.2, 0.28])
    assert thr == 0.02 and f1 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no validation voxel"):
        calibrate_threshold(std, gts, gts)
