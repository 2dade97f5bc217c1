"""The brightness diagnostic: ε̂'s response to the mean of x_t, and the effect of the ε̂ mean correction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_scripts_sampling import NET, ORGANELLE, load_script

from dm4isl.data.normalize import TargetRange
from dm4isl.models.ddpm import DDPMModule
from dm4isl.sampling import NoiseSchedule, SamplerSettings
from dm4isl.sampling.diagnostics import correction_effect, mean_response

SCHEDULE = NoiseSchedule(num_train_timesteps=50)
TARGET = TargetRange(-1.0, 1.0)


def truth() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.rand((2, 1, 4, 8, 8), generator=gen) * 0.5 + torch.tensor([0.1, 0.4]).view(2, 1, 1, 1, 1)


def oracle(x0_data: torch.Tensor, bias: float = 0.0):
    """The exact ε for clean image ``x0_data`` (data units), shifted by a constant ``bias`` (a brightness defect)."""
    x0 = TARGET.to_model(x0_data)

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        abar = SCHEDULE.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1.0 - abar).sqrt() + bias

    return eps_fn


def test_exact_predictor_has_ratio_one_and_a_mean_blind_one_zero() -> None:
    fl = truth()
    for r in mean_response(oracle(fl), fl, fl, SCHEDULE, TARGET, timesteps=(5, 25, 45)):
        assert r.ratio == pytest.approx(1.0, rel=1e-4)
        assert r.ideal == pytest.approx(1.0 / (1.0 - SCHEDULE.abar(r.t)) ** 0.5)

    def blind(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x_t - x_t.mean(dim=(1, 2, 3, 4), keepdim=True)

    assert all(abs(r.ratio) < 1e-5 for r in mean_response(blind, fl, fl, SCHEDULE, TARGET, timesteps=(5, 45)))


def test_correction_removes_a_constant_eps_bias() -> None:
    """An exact ε̂ plus a constant bias mis-brightens DDPMavg; the correction (true mean) restores it exactly."""
    fl = truth()[:1]
    settings = SamplerSettings(method="ddpm", window=(10, 40), clip_x0=None, mean_correction=False)
    effect = correction_effect(oracle(fl, bias=0.3), fl, fl, [0], SCHEDULE, settings, TARGET, float(fl.mean()))
    assert abs(effect.brightness_error_off[0]) > 0.01
    assert abs(effect.brightness_error_on[0]) < 1e-4
    assert effect.mse_on[0] < 1e-7 < effect.mse_off[0]


def test_script_on_a_random_checkpoint(tmp_path: Path, data_cache_dir: Path, capsys) -> None:
    torch.manual_seed(0)
    model = DDPMModule(NET, organelle=ORGANELLE, patch_size=[16, 32, 32], schedule={"num_train_timesteps": 20},
                       test_sampler={"window": [5, 15]})
    model.data_stats.copy_(torch.tensor([1000.0, 500.0, 300.0, 300.0, 160.0], dtype=torch.float64))
    ckpt = tmp_path / "random.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    script = load_script("diagnose_brightness")
    verdict = script.main(["--ckpt", str(ckpt), "--n", "3", "--batch", "2", "--cache-dir", str(data_cache_dir),
                           "--device", "cpu"])
    out = capsys.readouterr().out
    assert verdict in ("helps", "hurts", "no-effect")
    assert out.strip().splitlines()[-1] == f"correction={verdict}"
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 4, 8, 12, 16, 19]  # DEFAULT_FRACTIONS of T = 20
    assert all(np.isfinite(float(r[1])) for r in rows)
