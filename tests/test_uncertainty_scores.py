"""Scores of a seed ensemble's uncertainty on labelled patches: AUROC CIs, patch flags, CRPS, spread-skill, PCC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dm4isl.evaluation.uncertainty_scores import (
    AMBIGUITY,
    SURPRISE,
    EnsembleProducts,
    auroc_ci,
    calibrate_flag_thresholds,
    ensemble_uncertainty_scores,
    flag_scores,
    patches_to_flag,
)
from dm4isl.uncertainty.evaluation import auroc

SHAPE = (4, 16, 16)  # (Z, Y, X) of the hand-made patches


def test_auroc_ci_brackets_the_pooled_value_and_collapses_for_a_perfect_ranking() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random((12, *SHAPE)) < 0.2
    scores = labels + rng.normal(0, 0.8, labels.shape)
    ci = auroc_ci(scores, labels, n_resamples=500)
    assert ci.value == pytest.approx(auroc(scores, labels), abs=1e-6)  # auroc() ranks float32 scores
    assert ci.low < ci.value < ci.high and ci.high - ci.low < 0.1
    perfect = auroc_ci(labels.astype(float), labels, n_resamples=200)
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)
    one_class = auroc_ci(scores, np.zeros_like(labels), n_resamples=50)
    assert math.isnan(one_class.value) and math.isnan(one_class.low)


def test_flags_against_known_patches() -> None:
    """Patches 0 and 1 carry a 6x6 block of high std in every slice (14 % of the patch); 2 and 3 are quiet."""
    std = np.full((4, *SHAPE), 0.01)
    std[:2, :, 4:10, 4:10] = 0.5
    positive = np.array([True, False, True, False])
    f = flag_scores(std, 0.1, positive)
    assert (f.n_flagged, f.n_positive) == (2, 2)
    assert f.precision == 0.5 and f.recall == 0.5  # flagged {0, 1}, truth {0, 2}: one hit
    none = flag_scores(std, 0.9, positive)
    assert none.n_flagged == 0 and math.isnan(none.precision) and none.recall == 0.0


def test_patches_to_flag_are_errors_or_planted_ambiguities() -> None:
    gt = np.zeros((3, *SHAPE))
    pred = gt.copy()
    pred[0, :, 2:10, 2:10] = 0.5  # a large error in patch 0
    planted = np.zeros((3, *SHAPE), np.uint8)
    planted[1, :, 0:8, 0:8] = AMBIGUITY  # an occluded structure in patch 1
    planted[2, :, 0:8, 0:8] = SURPRISE  # a surprise alone does not require a flag
    np.testing.assert_array_equal(patches_to_flag(pred, gt, planted), [True, True, False])
    np.testing.assert_array_equal(patches_to_flag(pred, gt, None), [True, False, False])


def _ensemble(rng: np.random.Generator, centre: np.ndarray, spread: np.ndarray, k: int = 4) -> EnsembleProducts:
    members = centre[None] + spread[None] * rng.normal(size=(k, *centre.shape))
    return EnsembleProducts(ddpm=members + 0.01 * rng.normal(size=members.shape), ddpmavg=members,
                            std_intra=spread + 0.01 * rng.random(centre.shape))


def test_ensemble_scores_on_an_ensemble_that_is_unsure_exactly_where_it_should_be() -> None:
    """Members and truth are draws of one distribution that is spread (std 0.3) only over the planted ambiguities."""
    rng = np.random.default_rng(1)
    centre = rng.random((8, *SHAPE)) * 0.3
    planted = np.zeros(centre.shape, np.uint8)
    planted[:4, :, 3:11, 3:11] = AMBIGUITY
    planted[4:6, :, 0:5, 0:5] = SURPRISE
    spread = np.where(planted == AMBIGUITY, 0.3, 0.0)
    gt = centre + spread * rng.normal(size=centre.shape)
    test = _ensemble(rng, centre, spread)
    thresholds = calibrate_flag_thresholds(_ensemble(rng, centre, spread), gt)
    assert set(thresholds) == {"intra", "inter", "inter_final"}
    s = ensemble_uncertainty_scores(test, gt, planted, thresholds, n_resamples=200)
    assert s["auroc_planted_inter"] > 0.99 and s["auroc_planted_intra"] > 0.99 and s["auroc_planted_inter_final"] > 0.99
    assert s["auroc_planted_inter_lo"] <= s["auroc_planted_inter"] <= s["auroc_planted_inter_hi"]
    assert s["auroc_surprise_inter"] < 0.5  # surprises sit where the members agree
    assert s["planted_fraction"] == pytest.approx(0.5 * 64 / 256)
    assert s["flag_recall_intra"] == 1.0 and s["flag_precision_intra"] == 1.0
    # Calibrated members: RMSE of the mean ≈ predicted spread; CRPS = mean over patches of the fair ensemble CRPS.
    assert 0.8 < s["spread_skill"] < 1.25
    members = test.ddpmavg
    m = members.shape[0]
    fair = np.abs(members - gt).mean(axis=0) - np.abs(members[:, None] - members[None]).sum(axis=(0, 1)) / (
        2 * m * (m - 1))
    assert s["crps"] == pytest.approx(fair.mean(), rel=1e-9)
    per_seed = [np.mean([np.corrcoef(g.ravel(), p.ravel())[0, 1] for g, p in zip(gt, seed, strict=True)])
                for seed in members]
    assert s["pcc"] == pytest.approx(np.mean(per_seed), rel=1e-9)


def test_an_ensemble_whose_spread_ignores_the_ambiguities_ranks_them_at_chance() -> None:
    rng = np.random.default_rng(2)
    gt = rng.random((8, *SHAPE)) * 0.3
    planted = np.zeros(gt.shape, np.uint8)
    planted[:4, :, 3:11, 3:11] = AMBIGUITY
    test = _ensemble(rng, gt, np.full(gt.shape, 0.05))
    s = ensemble_uncertainty_scores(test, gt, planted, {"intra": 1.0, "inter": 1.0, "inter_final": 1.0},
                                    n_resamples=200)
    assert abs(s["auroc_planted_inter"] - 0.5) < 0.05
    assert s["auroc_planted_inter_lo"] < 0.5 < s["auroc_planted_inter_hi"]
