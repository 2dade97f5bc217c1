"""Std thresholds are valid only for the sampling setting they were published or calibrated for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dm4isl.errors import DataError
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.uncertainty.thresholds import (
    PUBLISHED_SETTING,
    describe,
    read_calibration,
    resolve_threshold,
    same_setting,
    sampling_setting,
    write_calibration,
)

NUCENV = {"name": "nuclear_envelope", "intra_std_threshold": 0.055, "inter_std_threshold": 0.1}
PAPER_SAMPLER = SamplerSettings(method="ddpm", mean_correction=False).to_dict()
DDIM_SAMPLER = SamplerSettings(method="ddim", num_steps=50, eta=1.0, mean_correction=True).to_dict()


def test_paper_sampler_on_unit_targets_is_the_published_setting() -> None:
    assert same_setting(sampling_setting(PAPER_SAMPLER, (0.0, 1.0)), PUBLISHED_SETTING)
    assert not same_setting(sampling_setting(PAPER_SAMPLER, (-1.0, 1.0)), PUBLISHED_SETTING)
    assert not same_setting(sampling_setting({**PAPER_SAMPLER, "window": [200, 800]}, (0.0, 1.0)), PUBLISHED_SETTING)
    assert not same_setting(sampling_setting({**PAPER_SAMPLER, "mean_correction": True}, (0, 1)), PUBLISHED_SETTING)
    # DDPM ignores eta; DDIM is described by step count and eta
    assert same_setting(sampling_setting({**PAPER_SAMPLER, "eta": 0.7}, (0, 1)), PUBLISHED_SETTING)
    ddim = sampling_setting(DDIM_SAMPLER, (-1.0, 1.0))
    assert ddim["num_steps"] == 50 and ddim["eta"] == 1.0
    assert not same_setting(ddim, sampling_setting({**DDIM_SAMPLER, "eta": 0.0}, (-1.0, 1.0)))
    assert describe(ddim) == ("ddim-50 eta 1, window [300, 800), targets [-1, 1], x̂0 clip [-1, 1], "
                              "mean correction on")


def test_resolve_published_given_calibrated_or_none() -> None:
    paper = sampling_setting(PAPER_SAMPLER, (0.0, 1.0))
    found, reason = resolve_threshold("intra", paper, NUCENV)
    assert found is not None and (found.value, found.source) == (0.055, "published")
    ddim = sampling_setting(DDIM_SAMPLER, (-1.0, 1.0))
    found, reason = resolve_threshold("intra", ddim, NUCENV)
    assert found is None
    assert "no intra-process std threshold valid for ddim-50 eta 1" in reason
    assert "the organelle's 0.055 is for ddpm-1000, window [300, 800), targets [0, 1]" in reason
    entries = [{"map": "inter", "threshold": 0.03, "setting": ddim}, {"map": "intra", "threshold": 0.021,
                                                                     "setting": ddim}]
    found, _ = resolve_threshold("intra", ddim, NUCENV, entries)
    assert found is not None and (found.value, found.source) == (0.021, "calibrated")
    found, _ = resolve_threshold("intra", sampling_setting({**DDIM_SAMPLER, "num_steps": 20}, (-1, 1)), NUCENV,
                                 entries)
    assert found is None
    found, reason = resolve_threshold("intra", ddim, NUCENV, entries, given=0.5)
    assert found is not None and (found.value, found.source) == (0.5, "given")
    # an organelle threshold may state its own setting
    own = {**NUCENV, "std_thresholds_for": {"method": "ddim", "num_steps": 50, "eta": 1.0, "mean_correction": True,
                                            "target_range": [-1.0, 1.0]}}
    found, _ = resolve_threshold("intra", ddim, own)
    assert found is not None and found.source == "organelle"
    mito = {"name": "mitochondria", "intra_std_threshold": None, "inter_std_threshold": 0.1}
    found, reason = resolve_threshold("intra", paper, mito)
    assert found is None and "the organelle's" not in reason


def test_calibration_file_roundtrip_replaces_same_setting(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt.thresholds.json"
    ddim = sampling_setting(DDIM_SAMPLER, (-1.0, 1.0))
    paper = sampling_setting(PAPER_SAMPLER, (0.0, 1.0))
    assert read_calibration(path) == []
    write_calibration(path, [{"map": "intra", "threshold": 0.02, "setting": ddim}], "abc")
    write_calibration(path, [{"map": "intra", "threshold": 0.05, "setting": paper}], "abc")
    write_calibration(path, [{"map": "intra", "threshold": 0.03, "setting": ddim}], "abc")
    entries = read_calibration(path, "abc")
    assert sorted(e["threshold"] for e in entries) == [0.03, 0.05]
    with pytest.raises(DataError, match="calibrated for checkpoint abc, not for this one"):
        read_calibration(path, "other")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="unreadable threshold calibration"):
        read_calibration(path)


def test_setting_without_clip_or_mean_correction_and_its_description() -> None:
    sampler = {"method": "ddim", "num_steps": 20, "eta": 0.0, "window": [0, 1000], "clip_x0": None}
    setting = sampling_setting(sampler, (0, 1))
    assert setting["clip_x0"] is None and setting["mean_correction"] is False
    assert describe(setting) == ("ddim-20 eta 0, window [0, 1000), targets [0, 1], no x̂0 clip, "
                                 "mean correction off")


def test_setting_comparison_tolerates_rounding_only() -> None:
    paper = sampling_setting(PAPER_SAMPLER, (0.0, 1.0))
    ddim = sampling_setting(DDIM_SAMPLER, (-1.0, 1.0))
    assert same_setting({**ddim, "eta": 1.0 + 1e-7}, ddim)  # within the relative tolerance 1e-6
    assert not same_setting({**ddim, "eta": 1.0 + 1e-5}, ddim)
    assert same_setting({**ddim, "eta": 1e-13}, {**ddim, "eta": 0.0})  # absolute tolerance near zero
    assert not same_setting({**ddim, "eta": 0.5}, paper | {"method": "ddim", "num_steps": 50})
    assert not same_setting(paper, {**paper, "clip_x0": None}) and not same_setting({**paper, "clip_x0": None}, paper)
    assert same_setting({**paper, "clip_x0": None}, {**paper, "clip_x0": None})
    assert not same_setting(paper, {**paper, "window": 300})  # a list is never a number
    assert not same_setting(paper, {**paper, "eta": 0.5}) and not same_setting({**paper, "eta": 0.5}, paper)


def test_calibration_file_checks(tmp_path: Path) -> None:
    ddim = sampling_setting(DDIM_SAMPLER, (-1.0, 1.0))
    path = tmp_path / "a.thresholds.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="not a threshold calibration file"):
        read_calibration(path)
    path.write_text('{"format": "dm4isl-std-thresholds/1"}', encoding="utf-8")
    assert read_calibration(path) == []
    # NumPy thresholds are written as numbers; a file of another checkpoint is never overwritten
    write_calibration(path, [{"map": "intra", "threshold": np.float32(0.25), "setting": ddim}], "abc")
    assert json.loads(path.read_text(encoding="utf-8"))["entries"][0]["threshold"] == 0.25
    with pytest.raises(DataError, match="calibrated for checkpoint abc"):
        write_calibration(path, [{"map": "inter", "threshold": 0.1, "setting": ddim}], "other")
    found, _ = resolve_threshold("intra", ddim, NUCENV, read_calibration(path, "abc"))
    assert found is not None and found.setting is not None and same_setting(found.setting, ddim)
