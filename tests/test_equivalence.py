"""Non-inferiority by paired patch bootstrap: pooled-AUROC pair counts, interval arithmetic, pass/fail decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import MultiScaleSSIMMetric

from dm4isl.evaluation.equivalence import (
    auroc_delta_ci,
    mean_delta_ci,
    non_inferiority,
    resample_multiplicities,
)
from dm4isl.metrics.basic import max_ms_ssim_scales, ms_ssim_batch, ms_ssim_min_size
from dm4isl.metrics.table import bootstrap_ci, mean_difference
from dm4isl.uncertainty.evaluation import auroc, auroc_pair_counts

#: The margins the sampling benchmark states: PCC and MS-SSIM of DDPMavg, AUROC of the std maps.
MARGINS = {"pcc": -0.01, "ms_ssim": -0.01, "auroc_intra": -0.02, "auroc_inter": -0.02}
N_PATCHES = 16
SHAPE = (N_PATCHES, 2, 6, 6)


def _std_maps(rng: np.random.Generator, errors: np.ndarray, signal: float) -> np.ndarray:
    """Std maps ``(N, Z, Y, X)`` that are higher on error voxels by ``signal`` (in noise units)."""
    return rng.normal(size=errors.shape) + signal * errors


def test_pair_counts_equal_pooled_auroc_with_and_without_repeats() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(SHAPE) < 0.2
    scores = np.round(_std_maps(rng, labels, 1.0), 1)  # rounding makes ties, which count 1/2 in both
    counts = auroc_pair_counts(scores, labels)
    assert counts.auroc() == pytest.approx(auroc(scores, labels), abs=1e-6)
    picks = np.array([3, 3, 0, 7, 7, 7, 1] + [2] * 9)
    weights = np.bincount(picks, minlength=N_PATCHES)
    assert counts.auroc(weights) == pytest.approx(auroc(scores[picks], labels[picks]), abs=1e-6)
    both = counts.auroc(np.stack([np.ones(N_PATCHES), weights]))
    assert both.shape == (2,) and both[1] == pytest.approx(auroc(scores[picks], labels[picks]), abs=1e-6)
    with pytest.raises(ValueError, match="expected equal"):
        auroc_pair_counts(scores, labels[:-1])


def test_resampling_matches_bootstrap_ci_draws() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=N_PATCHES), rng.normal(size=N_PATCHES)
    weights = resample_multiplicities(N_PATCHES, 999, seed=3)
    assert weights.shape == (999, N_PATCHES) and np.all(weights.sum(axis=1) == N_PATCHES)
    means = weights @ (a - b) / N_PATCHES
    low, high = bootstrap_ci(mean_difference, [a, b], n_resamples=999, seed=3, vectorized=True)
    assert np.quantile(means, [0.025, 0.975]) == pytest.approx([low, high], abs=1e-12)


def test_non_inferior_candidate_passes_and_a_worse_one_fails() -> None:
    rng = np.random.default_rng(2)
    gt_pcc = rng.uniform(0.7, 0.9, N_PATCHES)
    gt_ssim = rng.uniform(0.6, 0.8, N_PATCHES)
    errors = rng.random(SHAPE) < 0.15
    ref_maps = {k: _std_maps(rng, errors, 1.5) for k in ("auroc_intra", "auroc_inter")}
    ref_std = {k: auroc_pair_counts(v, errors) for k, v in ref_maps.items()}
    # the candidate's std maps: the comparator's plus a little independent noise (two samplers of one model)
    good = non_inferiority(
        {"pcc": (gt_pcc + rng.normal(0, 0.002, N_PATCHES), gt_pcc),
         "ms_ssim": (gt_ssim + rng.normal(0, 0.002, N_PATCHES), gt_ssim)},
        {k: (auroc_pair_counts(ref_maps[k] + rng.normal(0, 0.1, errors.shape), errors), v)
         for k, v in ref_std.items()},
        MARGINS, n_resamples=999,
    )
    assert good.passes, [d.describe() for d in good.deltas]
    assert [d.name for d in good.deltas] == list(MARGINS)
    assert all(d.low <= d.delta <= d.high for d in good.deltas)
    assert abs(good["pcc"].delta) < 0.002 and good["pcc"].low > -0.01
    # PCC 0.03 lower on every patch: the PCC interval sits far below its margin; the rest still passes
    bad = non_inferiority(
        {"pcc": (gt_pcc - 0.03 + rng.normal(0, 0.002, N_PATCHES), gt_pcc), "ms_ssim": (gt_ssim, gt_ssim)},
        {k: (v, v) for k, v in ref_std.items()}, MARGINS, n_resamples=999,
    )
    assert not bad.passes and bad.failures() == ["pcc"]
    assert bad["pcc"].high < -0.02 and bad["pcc"].describe().endswith("FAIL")
    assert bad["ms_ssim"].delta == 0.0 and bad["ms_ssim"].low == bad["ms_ssim"].high == 0.0
    # a std map with half the signal ranks errors worse: the AUROC interval fails its margin
    weak = auroc_pair_counts(_std_maps(rng, errors, 0.5), errors)
    worse = auroc_delta_ci("auroc_intra", weak, ref_std["auroc_intra"], MARGINS["auroc_intra"], n_resamples=999)
    assert worse.delta < -0.1 and worse.high < -0.02 and not worse.passes


def test_intervals_that_cannot_be_formed_never_pass() -> None:
    nan_pcc = mean_delta_ci("pcc", [math.nan, 0.5], [0.5, 0.5], -0.01)
    assert math.isnan(nan_pcc.low) and not nan_pcc.passes
    no_errors = np.zeros((4, 2, 3, 3), dtype=bool)
    counts = auroc_pair_counts(np.random.default_rng(0).random(no_errors.shape), no_errors)
    undefined = auroc_delta_ci("auroc_intra", counts, counts, -0.02, n_resamples=99)
    assert math.isnan(undefined.delta) and not undefined.passes
    with pytest.raises(ValueError, match=r"no non-inferiority margin for \['auroc_inter'\]"):
        non_inferiority({}, {"auroc_inter": (counts, counts)}, {"pcc": -0.01})


def test_ms_ssim_scales_for_small_patches() -> None:
    assert [ms_ssim_min_size(n) for n in (1, 2, 3, 4, 5)] == [4, 4, 16, 36, 64]
    assert [max_ms_ssim_scales(s) for s in (3, 16, 32, 36, 63, 64, 128)] == [0, 3, 3, 4, 4, 5, 5]
    rng = np.random.default_rng(4)
    gt = rng.random((2, 4, 64, 64)).astype(np.float32)
    pred = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    monai = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=4)(torch.from_numpy(pred),
                                                                               torch.from_numpy(gt))
    np.testing.assert_allclose(ms_ssim_batch(gt, pred), monai.reshape(-1).numpy(), rtol=1e-6)
    small_gt, small_pred = gt[:, :, :32, :32], pred[:, :, :32, :32]
    assert np.all(np.isnan(ms_ssim_batch(small_gt, small_pred)))
    three = ms_ssim_batch(small_gt, small_pred, n_scales=3)
    assert np.all((three > 0) & (three < 1))
    assert ms_ssim_batch(small_gt, small_gt, n_scales=3) == pytest.approx([1.0, 1.0], abs=1e-5)
