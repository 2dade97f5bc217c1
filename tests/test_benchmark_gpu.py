"""The GPU benchmark script runs end to end on CPU with the tiny net (--smoke) and reports consistent numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_script


def _load_script():
    return load_script("benchmark_gpu")


def test_benchmark_gpu_smoke(tmp_path: Path) -> None:
    bench = _load_script()
    out = tmp_path / "bench.json"
    result = bench.main(["--smoke", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=float))
    train = {(r["variant"], r["batch"]): r for r in result["train"]}
    assert set(train) == {(v, b) for v in bench.SMOKE["variants"] for b in bench.SMOKE["batch_sizes"]}
    assert all(r["status"] == "ok" and r["patches_per_s"] > 0 for r in train.values())
    one, two = train[("fp32", 1)]["tflops_per_step"], train[("fp32", 2)]["tflops_per_step"]
    assert one > 0 and two == pytest.approx(2 * one, rel=1e-3)  # FLOPs of a step scale with the batch
    (sampling,) = result["sampling"]
    assert sampling["finite"] and sampling["network_calls"] == bench.SMOKE["ddim_steps"]
    assert sampling["patches"] == bench.SMOKE["sample_patches"] and sampling["seconds_per_patch"] > 0


def test_paper_net_forward_flops_on_meta_device() -> None:
    """The MFU denominator: the paper net's forward pass on one 16 × 64 × 64 patch costs 1.55 TFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dm4isl.models.nets import build_net

    bench = _load_script()
    with torch.device("meta"):
        net = build_net(bench.net_config("paper", sdpa=False), in_channels=2, out_channels=1)
        x, t = torch.zeros(1, 2, 16, 64, 64), torch.zeros(1, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x, timesteps=t)
    assert counter.get_total_flops() / 1e12 == pytest.approx(1.552, abs=0.005)
