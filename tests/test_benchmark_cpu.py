"""Smoke test of the CPU lever benchmark on a minuscule workload (no torch.compile: its warm-up takes minutes)."""

from __future__ import annotations

import math
import os

import pytest
from test_scripts_sampling import load_script


def test_levers_are_timed_side_by_side_and_bf16_changes_the_numbers(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    bench = load_script("benchmark_cpu")
    monkeypatch.setattr(bench, "SAMPLE_WORK", {"tiny": (2, (8, 16, 16))})
    monkeypatch.setattr(bench, "TRAIN_WORK", {"tiny": (1, (8, 16, 16))})
    rows = bench.main(["--nets", "tiny", "--reps", "2", "--warmup", "1", "--no-compile", "--threads", "1"])
    cores = os.cpu_count()  # the baseline runs 1 thread, the thread lever one per core
    sampling = {r["lever"]: r for r in rows if r["task"] == "sampling"}
    training = {r["lever"]: r for r in rows if r["task"] == "training"}
    levers = ["fp32", "inference_mode", "channels_last_3d", "bf16", "bf16+channels_last", f"threads={cores}"]
    assert list(sampling) == levers
    assert list(training) == ["fp32", "channels_last_3d", "bf16", "bf16+channels_last", f"threads={cores}"]
    for part in (sampling, training):
        assert part["fp32"]["ratio"] == 1.0
        for r in part.values():
            assert r["median_s"] > 0 and r["min_s"] <= r["median_s"]
            assert r["ratio"] == pytest.approx(part["fp32"]["median_s"] / r["median_s"])
    # float32 levers keep the numbers (up to summation order); bf16 changes them, by little
    for lever in ("fp32", "inference_mode", "channels_last_3d", f"threads={cores}"):
        assert sampling[lever]["rel_diff"] < 1e-5
    assert 1e-4 < sampling["bf16"]["rel_diff"] < 0.1
    assert all(math.isnan(r["rel_diff"]) for r in training.values())
    out = capsys.readouterr().out
    assert "ATen " in out and "\nsampling, tiny net, rows 2 x 8x16x16" in out and "\ntraining, tiny net, batch 1" in out


def test_no_bf16_leaves_the_emulated_levers_out(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("benchmark_cpu")
    monkeypatch.setattr(bench, "SAMPLE_WORK", {"nano": (1, (8, 16, 16))})
    rows = bench.main(["--nets", "nano", "--tasks", "sampling", "--reps", "1", "--warmup", "1", "--no-compile",
                       "--no-bf16", "--threads", "1"])
    assert [r["lever"] for r in rows] == ["fp32", "inference_mode", "channels_last_3d", f"threads={os.cpu_count()}"]
