"""Uncertainty scoring: AUROC, flag precision/recall and threshold calibration on hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dm4isl.uncertainty.annotations import ErrorAnnotations, annotations, flag_report
from dm4isl.uncertainty.evaluation import (
    auroc,
    auroc_pair_counts,
    calibrate_threshold,
    error_truth,
    evaluate_uncertainty,
)
from dm4isl.uncertainty.masks import MaskSettings, patch_flag


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


def test_error_truth_is_the_absolute_difference_above_tau() -> None:
    """|pred − gt| > tau on hand values: equal non-zero intensities are no error, and a difference of exactly tau
    (0.25, exact in float32) is not above it."""
    preds = np.array([0.5, 0.5, 0.9, 0.1], np.float32)
    gts = np.array([0.5, 0.25, 0.5, 0.6], np.float32)
    assert error_truth(preds, gts, 0.25).tolist() == [False, False, True, True]


def test_evaluation_uses_the_given_truth_tau_and_mask_settings() -> None:
    """Ground truth that is not zero, a tau that is not the default, and mask settings that change the flags."""
    std, preds, gts, _ = _case()
    rep = evaluate_uncertainty(std, preds + 0.5, gts + 0.5, threshold=0.1)
    assert (rep.n_flagged, rep.n_erroneous) == (2, 2)  # the same errors, lifted by 0.5
    assert evaluate_uncertainty(std, preds, gts, threshold=0.1, tau=0.9).n_erroneous == 0  # 0.8 ≤ 0.9: no error
    # 10×10 blocks (100 px per slice) dropped by a 100-pixel small-object rule: nothing flagged, nothing erroneous
    dropped = evaluate_uncertainty(std, preds, gts, 0.1, settings=MaskSettings.binary(min_object_area=100))
    assert (dropped.n_flagged, dropped.n_erroneous) == (0, 0)
    # each block covers 100 / 1024 ≈ 9.8 % of its patch: above a 5 % flag fraction, below a 10 % one
    assert evaluate_uncertainty(std, preds, gts, 0.1, settings=MaskSettings(flag_fraction=0.05)).n_flagged == 2
    high = evaluate_uncertainty(std, preds, gts, 0.1, settings=MaskSettings(flag_fraction=0.1))
    assert (high.n_flagged, high.n_erroneous) == (0, 0)
    assert math.isnan(high.flag_precision) and math.isnan(high.flag_recall)  # nothing flagged, no error
    with pytest.raises(ValueError):  # three std maps for four patches
        evaluate_uncertainty(std[:3], preds, gts, threshold=0.1)


def test_calibration_uses_truth_tau_default_quantiles_and_a_strict_threshold() -> None:
    std, preds, gts, _ = _case()
    std[2, :, 10:20, 10:20] = 0.25
    std[1] = 0.01
    # the lowest std value as a candidate: ``std > 0.01`` is exactly the error voxels (``≥`` would be all)
    assert calibrate_threshold(std, preds, gts, candidates=[0.01]) == (0.01, pytest.approx(1.0))
    assert calibrate_threshold(std, preds + 0.5, gts + 0.5, candidates=[0.01])[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="> 0.9"):
        calibrate_threshold(std, preds, gts, tau=0.9)
    # default candidates: the 64 quantiles from the median to the 99.9th percentile of the pooled std values
    rng = np.random.default_rng(3)
    std = rng.random((2, 2, 16, 16)).astype(np.float32)
    preds = np.where(std > 0.8, 1.0, 0.0).astype(np.float32)
    thr, f1 = calibrate_threshold(std, preds, np.zeros_like(preds))
    grid = np.quantile(std.ravel(), np.linspace(0.5, 0.999, 64))
    truth = (preds > 0.2).ravel()
    f1s = [2 * (truth & (std.ravel() > t)).sum() / ((std.ravel() > t).sum() + truth.sum()) for t in grid]
    assert thr == pytest.approx(grid[int(np.argmax(f1s))]) and f1 == pytest.approx(max(f1s))


def test_pair_counts_by_hand() -> None:
    """Patch 0: positives (0.5, 0.5), negatives (0.5, 0.2); patch 1: no positive, negatives (0.1, 0.9); patch 2: one
    positive (0.4), one negative (0.6). wins[i, j] counts positive-of-i above negative-of-j, ties ½."""
    scores = np.array([[0.5, 0.5, 0.5, 0.2], [0.1, 0.9, 0.0, 0.0], [0.4, 0.6, 0.0, 0.0]])
    labels = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    labels[1:, 2:] = False
    counts = auroc_pair_counts(scores[:, None, :], labels[:, None, :])  # (N, Z, V) and (N, V) alike
    # patch 1 holds four negatives (0.1, 0.9, 0, 0), patch 2 three (0.6, 0, 0)
    np.testing.assert_array_equal(counts.n_pos, [2, 0, 1])
    np.testing.assert_array_equal(counts.n_neg, [2, 4, 3])
    expected = np.array([
        [2 * (0.5 + 1), 2 * 3, 2 * 2],  # 0.5 vs (0.5, 0.2): ½ + 1; vs (0.1, 0.9, 0, 0): 3; vs (0.6, 0, 0): 2
        [0, 0, 0],
        [1, 3, 2],  # 0.4 vs (0.5, 0.2): 1; vs (0.1, 0.9, 0, 0): 3; vs (0.6, 0, 0): 2
    ])
    np.testing.assert_allclose(counts.wins, expected)
    assert np.allclose(auroc_pair_counts(scores, labels).wins, expected)  # (N, V) input
    # one positive and one negative voxel in all: patch 2 alone
    single = auroc_pair_counts(scores[2:, :2], labels[2:, :2])
    assert single.auroc() == 0.0 and auroc_pair_counts(scores[2:, :2][:, ::-1], labels[2:, :2][:, ::-1]).auroc() == 0
    assert auroc_pair_counts(-scores[2:, :2], labels[2:, :2]).auroc() == 1.0
    assert counts.auroc() == pytest.approx(auroc(scores, labels))
    assert counts.auroc(np.array([0, 0, 1])) == pytest.approx(2 / 3)  # patch 2 alone: 0.4 beats 0 and 0, not 0.6
    with pytest.raises(ValueError, match="equal"):
        auroc_pair_counts(scores, labels[:, :3])


def test_flag_report_on_hand_made_annotations() -> None:
    """Six patches evaluated of a hand-made annotation set: every summary entry counted by hand."""
    ann = ErrorAnnotations(
        "Toy", unet_errors=frozenset({0, 1, 6}), dm4isl_errors=frozenset({1, 2, 3, 6}), caught=frozenset({1, 2}),
        false_alarms=frozenset({5}), missed=frozenset({3}), recovered=frozenset({4}),
        out_of_distribution=frozenset({0}))
    assert ann.within(6).organelle == "Toy" and 6 not in ann.within(6).unet_errors  # patch 6 is not evaluated
    report = flag_report(ann, [True, True, False, True, True, True])  # patches 0, 1, 3, 4, 5 flagged
    assert report.caught == [1, 3] and report.missed == [2] and report.unannotated_flags == [0, 4, 5]
    assert [report.flag_kind(p) for p in (0, 4, 5, 2)] == ["out_of_distribution", "recovered", "false_alarm",
                                                          "unannotated"]
    assert report.summary() == {
        "organelle": "Toy", "patches": 6, "flagged": 5, "unet_errors": 2, "dm4isl_errors": 3,
        "errors_flagged": 2, "errors_missed": 1, "recall": pytest.approx(2 / 3), "flags_without_error": 3,
        "of_which_recovered": 1, "of_which_out_of_distribution": 1, "of_which_false_alarm": 1,
        "of_which_unannotated": 0, "agree_with_authors_caught": 1, "authors_caught": 2,
        "agree_with_authors_missed": 0, "authors_missed": 1,
    }
    assert report.patch_rows()[0] == {"patch": 0, "flagged": 1, "annotations": "unet_errors;out_of_distribution"}
    assert annotations()["DNA"].organelle == "DNA"
    with pytest.raises(ValueError, match=r"expected every index 0\.\.1$"):
        flag_report(ann, {0: True, 2: False})


def test_patch_flag_uses_its_settings() -> None:
    """A 10×10 block of high std in a 32×32 patch, less the four corners the 3×3 median rounds off, covers
    96 / 1024 = 9.4 %: flagged at a 5 % flag fraction, not at 10 %, and dropped by a 100-pixel small-object rule."""
    std, *_ = _case()
    assert patch_flag(std[0], 0.1)[0] is True
    assert patch_flag(std[0], 0.1, MaskSettings(flag_fraction=0.1)) == (False, pytest.approx(96 / 1024))
    assert patch_flag(std[0], 0.1, MaskSettings.binary(min_object_area=100)) == (False, 0.0)
