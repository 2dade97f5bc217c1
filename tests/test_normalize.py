"""Normalisation rules: raw grey levels → [0, 1] (windows, percentile windows, dtype rules) and the model-side maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dm4isl.data.normalize import (
    PERCENTILE_MAX_VOXELS,
    ZSCORE_EPS,
    TargetRange,
    auto_window,
    clip_raw,
    percentile_window,
    select_window,
    to_unit,
    to_unit_range,
    unit_std_threshold,
    window_normalize,
    zscore_per_patch,
)
from dm4isl.errors import DataError


def test_window_normalize_maps_the_window_to_unit_and_clips() -> None:
    raw = np.array([[[50, 100, 150, 300, 400]]], np.uint16)
    out = window_normalize(raw, (100, 300))
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert out.ravel().tolist() == [0.0, 0.0, 0.25, 1.0, 1.0]
    assert clip_raw(raw, (100, 300)).ravel().tolist() == [100.0, 100.0, 150.0, 300.0, 300.0]
    with pytest.raises(ValueError, match=r"hi > lo, got \(300, 100\)"):
        window_normalize(raw, (300, 100))


def test_unit_std_threshold_is_the_raw_rule_in_unit_units() -> None:
    assert unit_std_threshold(70, (390, 1500)) == 70 / 1110
    raw = np.random.default_rng(0).integers(300, 1600, (4, 8, 8)).astype(np.uint16)
    unit_std = window_normalize(raw, (390, 1500)).std()
    assert unit_std * 1110 == pytest.approx(float(clip_raw(raw, (390, 1500)).std()), rel=1e-5)


def test_to_unit_rules(tmp_path: Path) -> None:
    raw = np.array([[[300, 390, 945, 1500, 4000]]], np.uint16)
    np.testing.assert_allclose(to_unit(raw, window=(390, 1500))[0, 0], [0, 0, 0.5, 1, 1], atol=1e-6)
    with pytest.raises(DataError, match=r"x\.tiff: raw uint16 grey levels need a normalisation window"):
        to_unit(raw, tmp_path / "x.tiff")
    with pytest.raises(DataError, match=r"f\.tiff: float intensities span \[0, 3\]"):
        to_unit(np.array([[[0.0, 3.0]]], np.float32), tmp_path / "f.tiff")
    np.testing.assert_allclose(to_unit(np.array([[[0.0, 1.0]]], np.float64)), [[[0.0, 1.0]]])


def test_dtype_rules_name_the_file(tmp_path: Path) -> None:
    levels = np.array([[[0, 51, 255]]], np.uint8)
    assert to_unit(levels).ravel().tolist() == [0.0, np.float32(51) / np.float32(255), 1.0]
    assert to_unit(levels, window=(0, 102)).ravel().tolist() == [0.0, 0.5, 1.0]  # a window takes precedence
    near = np.array([[[-0.0009, 0.5, 1.0009]]], np.float32)
    assert to_unit(near).ravel().tolist() == [0.0, 0.5, 1.0]  # within the tolerance: clipped
    with pytest.raises(DataError, match=r"a\.tif: float intensities span \[0, 1\.002\]"):
        to_unit(np.array([[[0.0, 1.002]]], np.float32), tmp_path / "a.tif")
    with pytest.raises(DataError, match=r"b\.tif: raw int16 grey levels need a normalisation window"):
        to_unit(np.zeros((1, 2, 2), np.int16), tmp_path / "b.tif")


def test_auto_window_applies_windows_to_raw_float_grey_levels() -> None:
    window = (100.0, 300.0)
    unit = np.full((2, 4, 4), 0.5, dtype=np.float32)
    raw = np.full((2, 4, 4), 200.0, dtype=np.float32)
    assert auto_window(np.zeros((2, 4, 4), np.uint8), window) is None
    assert auto_window(unit, window) is None  # already normalised
    assert auto_window(raw, window) == window  # raw grey levels stored as float
    assert auto_window(raw.astype(np.uint16), window) == window
    np.testing.assert_allclose(to_unit(raw, "raw.tif", auto_window(raw, window)), 0.5)
    assert auto_window(np.full((2, 4, 4), 3.0, np.float32), window) is None  # neither normalised nor raw: refused


def test_select_window_modes() -> None:
    window = (100.0, 300.0)
    levels = np.zeros((2, 4, 4), np.uint8)
    raw = np.full((2, 4, 4), 200, np.uint16)
    assert select_window(levels, window, "auto") is None and select_window(raw, window, "auto") == window
    assert select_window(levels, window, "window") == window  # uint8 read as raw grey levels
    assert select_window(raw, window, "unit") is None
    with pytest.raises(ValueError, match="intensity must be auto, unit or window, got 'log'"):
        select_window(raw, window, "log")


def test_percentile_window_is_exact_for_uint16() -> None:
    vols = [np.random.default_rng(i).integers(300, 3000, (4, 30, 40)).astype(np.uint16) for i in range(3)]
    lo, hi = percentile_window(vols, [0.1, 99.9])
    ref = np.percentile(np.concatenate([v.ravel() for v in vols]), [0.1, 99.9], method="inverted_cdf")
    assert (lo, hi) == (float(ref[0]), float(ref[1]))
    lo_f, hi_f = percentile_window([v.astype(np.float32) for v in vols], [0.1, 99.9])
    assert lo_f == pytest.approx(lo, abs=2) and hi_f == pytest.approx(hi, abs=2)
    with pytest.raises(DataError, match="empty normalisation window"):
        percentile_window([np.full((2, 4, 4), 7, np.uint16)], [1, 99])


def test_percentile_window_uint8_and_float() -> None:
    vols = [np.random.default_rng(i).integers(0, 256, (3, 20, 20)).astype(np.uint8) for i in range(2)]
    ref = np.percentile(np.concatenate([v.ravel() for v in vols]), [2, 98], method="inverted_cdf")
    assert percentile_window(vols, [2, 98]) == (float(ref[0]), float(ref[1]))
    mixed = [vols[0], vols[1].astype(np.uint16) * 200]  # uint8 and uint16 FOVs share one exact histogram
    ref = np.percentile(np.concatenate([v.ravel().astype(np.uint16) for v in mixed]), [2, 98], method="inverted_cdf")
    assert percentile_window(mixed, [2, 98]) == (float(ref[0]), float(ref[1]))
    small = [np.random.default_rng(5).normal(1000, 50, (3, 20, 20)).astype(np.float32)]
    ref = np.percentile(small[0].astype(np.float64), [1, 99])  # under PERCENTILE_MAX_VOXELS: every voxel, linear
    assert small[0].size < PERCENTILE_MAX_VOXELS
    assert percentile_window(small, [1, 99]) == (float(ref[0]), float(ref[1]))
    with pytest.raises(ValueError, match="0 <= lo < hi <= 100"):
        percentile_window(small, [99, 1])
    with pytest.raises(DataError, match="no training FOVs"):
        percentile_window([], [1, 99])


def test_target_range_round_trip() -> None:
    x = torch.rand(2, 1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    centred = TargetRange(-1.0, 1.0)
    y = centred.to_model(x)
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    assert centred.to_model(0.0) == -1.0 and centred.to_model(1.0) == 1.0 and centred.to_data(0.0) == 0.5
    torch.testing.assert_close(centred.to_data(y), x, rtol=0, atol=1e-7)
    assert torch.equal(TargetRange().to_data(TargetRange().to_model(x)), x)  # the reference range is the identity
    assert centred.std_to_data(0.5) == 0.25 and TargetRange(2.0, 6.0).std_to_data(1.0) == 0.25
    with pytest.raises(ValueError, match=r"target range \[1\.0, 1\.0\]; expected low < high"):
        TargetRange(1.0, 1.0)


def test_output_modes() -> None:
    x = torch.tensor([-0.5, 0.25, 1.5]).view(3, 1, 1, 1, 1)
    assert to_unit_range(x, "clip").flatten().tolist() == [0.0, 0.25, 1.0]
    assert to_unit_range(x, "batch_minmax").flatten().tolist() == [0.0, 0.375, 1.0]
    # Batch min-max makes a patch depend on its batch-mates; clipping does not.
    assert to_unit_range(x[1:2], "batch_minmax").item() == 0.0
    with pytest.raises(ValueError, match="output mode"):
        to_unit_range(x, "sigmoid")


def test_zscore_per_patch() -> None:
    bf = torch.tensor([1.0, 2.0, 3.0, 4.0, 7.0, 7.0, 7.0, 7.0]).view(2, 1, 1, 2, 2)
    out = zscore_per_patch(bf)
    std = (5.0 / 3.0) ** 0.5  # unbiased std of 1, 2, 3, 4
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + ZSCORE_EPS)
    torch.testing.assert_close(out[0].flatten(), expected, rtol=0, atol=1e-6)
    assert out[1].abs().max().item() == 0.0  # a constant patch becomes 0
    x = torch.rand(3, 1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    # gain and offset cancel (up to ZSCORE_EPS against a std of 0.03 · 0.29, a relative 1e-4)
    torch.testing.assert_close(zscore_per_patch(0.03 * x + 0.4), zscore_per_patch(x), rtol=0, atol=5e-4)
    torch.testing.assert_close(zscore_per_patch(x).std(dim=(1, 2, 3, 4)), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(zscore_per_patch(x).mean(dim=(1, 2, 3, 4)), torch.zeros(3), rtol=0, atol=1e-6)
