"""Sampler core: steps equal MONAI's, oracle recovery, running statistics, batch independence, output modes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from dm4isl.data.normalize import TargetRange
from dm4isl.sampling import (
    NoiseSchedule,
    RunningStats,
    SamplerSettings,
    WindowStats,
    ddim_step,
    ddpm_step,
    patch_generators,
    randn_per_patch,
    reverse_process,
    sample,
    sampling_timesteps,
    window_products,
)

SCHEDULE = NoiseSchedule()
#: A short schedule keeps full ancestral chains cheap in tests.
SHORT = NoiseSchedule(num_train_timesteps=50)
SHAPE = (1, 4, 8, 8)  # (C, Z, Y, X)
MONAI_SCHEDULE = {"schedule": "scaled_linear_beta", "beta_start": 0.0005, "beta_end": 0.0195}


def _toy_eps_fn(seed: int = 0):
    """A fixed random 3-D convolution on [bf, x_t] plus a timestep term: a deterministic stand-in network."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(1, 2, 3, 3, 3, generator=gen) * 0.2

    def eps_fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv3d(torch.cat([cond, x], dim=1), weight, padding=1)
        return y + 0.5 * x + (t.float() / 1000.0).view(-1, 1, 1, 1, 1)

    return eps_fn


def _oracle(x0_model: torch.Tensor, schedule: NoiseSchedule, bias: float = 0.0):
    """ε-predictor returning the exact noise that links x_t to the known clean image (plus an optional bias)."""

    def eps_fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        abar = schedule.abar(int(t[0]))
        return (x - abar**0.5 * x0_model) / (1.0 - abar) ** 0.5 + bias

    return eps_fn


@pytest.mark.parametrize("t", [999, 640, 1, 0])
def test_ddpm_step_equals_monai(t: int) -> None:
    gen = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(2, *SHAPE, generator=gen), torch.randn(2, *SHAPE, generator=gen)
    monai = DDPMScheduler(num_train_timesteps=1000, clip_sample=True, **MONAI_SCHEDULE)
    prev_ref, x0_ref = monai.step(eps, t, x_t, generator=torch.Generator().manual_seed(7))
    mean, x0, sigma = ddpm_step(SCHEDULE, eps, t, x_t, (-1.0, 1.0))
    noise = torch.randn(eps.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(x0, x0_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean + sigma * noise, prev_ref, rtol=1e-4, atol=1e-5)
    assert (sigma == 0.0) == (t == 0)


@pytest.mark.parametrize(("t", "eta"), [(999, 0.0), (500, 1.0), (260, 0.3), (10, 0.5)])
def test_ddim_step_equals_monai(t: int, eta: float) -> None:
    n_steps = 50
    gen = torch.Generator().manual_seed(t)
    x_t, eps = torch.randn(2, *SHAPE, generator=gen), 0.1 * torch.randn(2, *SHAPE, generator=gen)
    monai = DDIMScheduler(num_train_timesteps=1000, clip_sample=True, **MONAI_SCHEDULE)
    monai.set_timesteps(n_steps)
    prev_ref, x0_ref = monai.step(eps, t, x_t, eta=eta, generator=torch.Generator().manual_seed(3))
    t_prev = t - 1000 // n_steps  # MONAI's own notion of the previous step
    mean, x0, sigma = ddim_step(SCHEDULE, eps, t, max(t_prev, -1), x_t, eta, (-1.0, 1.0))
    noise = torch.randn(eps.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x0, x0_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean + sigma * noise, prev_ref, rtol=1e-4, atol=1e-5)


def test_ddim_timesteps_spacing() -> None:
    steps = sampling_timesteps(SCHEDULE, "ddim", 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0
    assert bool((steps[:-1] > steps[1:]).all())
    # MONAI steps from t to t - 1000 // 50 = t - 20, but its own grid is spaced by 999/49 ≈ 20.39: they disagree.
    mismatched = int(((steps[:-1] - 20) != steps[1:]).sum())
    assert mismatched > 0
    assert torch.equal(sampling_timesteps(SCHEDULE, "ddim", 1000), torch.arange(999, -1, -1))
    assert torch.equal(sampling_timesteps(SCHEDULE, "ddpm"), torch.arange(999, -1, -1))
    with pytest.raises(ValueError, match="ancestral DDPM runs all 1000 steps"):
        sampling_timesteps(SCHEDULE, "ddpm", 50)


def test_ddim_eta1_all_steps_equals_ddpm() -> None:
    cond = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    runs = {}
    for method, eta in (("ddpm", 0.0), ("ddim", 1.0)):
        runs[method] = reverse_process(
            _toy_eps_fn(), cond, SHORT, patch_generators(5, [0, 1]), method=method,
            num_steps=SHORT.num_train_timesteps, eta=eta, window=(10, 40), clip_x0=None,
        )
    a, b = runs["ddpm"], runs["ddim"]
    assert torch.equal(a.timesteps, b.timesteps)
    torch.testing.assert_close(a.sample, b.sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.x0_mean, b.x0_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.x0_std, b.x0_std, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("method", "num_steps", "eta"), [("ddpm", None, 0.0), ("ddim", 20, 0.0), ("ddim", 20, 1.0)])
def test_oracle_predictor_recovers_ground_truth(method: str, num_steps: int | None, eta: float) -> None:
    target = TargetRange(-1.0, 1.0)
    gt = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    settings = SamplerSettings(method=method, num_steps=num_steps, eta=eta, window=(10, 40), mean_correction=False)
    pred = sample(_oracle(target.to_model(gt), SHORT), torch.zeros_like(gt), [0, 1, 2], SHORT, settings, target)
    torch.testing.assert_close(pred.ddpmavg, gt, rtol=0, atol=1e-4)
    torch.testing.assert_close(pred.ddpm, gt, rtol=0, atol=1e-4)
    assert float(pred.std_intra.max()) < 1e-4
    assert pred.n_calls == (SHORT.num_train_timesteps if num_steps is None else num_steps)


def test_oracle_full_schedule_recovers_ground_truth() -> None:
    gt = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(4))
    target = TargetRange(0.0, 1.0)
    settings = SamplerSettings(method="ddpm", mean_correction=False)
    pred = sample(_oracle(gt, SCHEDULE), torch.zeros_like(gt), [9], SCHEDULE, settings, target)
    torch.testing.assert_close(pred.ddpmavg, gt, rtol=0, atol=1e-4)
    torch.testing.assert_close(pred.ddpm, gt, rtol=0, atol=1e-4)
    assert len(pred.window_timesteps) == 500 and int(pred.window_timesteps.min()) == 300


def test_mean_correction_removes_a_noise_bias() -> None:
    target = TargetRange(-1.0, 1.0)
    gt = torch.full((1, *SHAPE), 0.3) + 0.2 * torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(6))
    biased = _oracle(target.to_model(gt), SHORT, bias=0.05)
    kwargs = {"method": "ddim", "num_steps": 25, "window": (10, 40)}
    fixed = sample(biased, torch.zeros_like(gt), [0], SHORT, SamplerSettings(**kwargs, mean_correction=True),
                   target, target_mean=float(gt.mean()))
    off = sample(biased, torch.zeros_like(gt), [0], SHORT, SamplerSettings(**kwargs, mean_correction=False), target)
    torch.testing.assert_close(fixed.ddpmavg, gt, rtol=0, atol=1e-4)
    assert float((off.ddpmavg - gt).abs().mean()) > 1e-3
    with pytest.raises(ValueError, match="target mean"):
        sample(biased, torch.zeros_like(gt), [0], SHORT, SamplerSettings(**kwargs, mean_correction=True), target)


def test_running_stats_equal_stored_chain() -> None:
    chain = torch.randn(37, 2, 3, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1
    stats = RunningStats()
    for x in chain:
        stats.update(x)
    torch.testing.assert_close(stats.mean, chain.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.std, chain.std(0, unbiased=False), rtol=1e-5, atol=1e-5)
    sample_stats = RunningStats(ddof=1)
    for x in chain:
        sample_stats.update(x)
    torch.testing.assert_close(sample_stats.std, chain.std(0, unbiased=True), rtol=1e-5, atol=1e-5)
    one = RunningStats(ddof=1)
    one.update(chain[0])
    assert float(one.std.abs().max()) == 0.0  # a single estimate has no spread
    with pytest.raises(ValueError, match="ddof"):
        RunningStats(ddof=2)


@pytest.mark.parametrize(("method", "num_steps"), [("ddpm", None), ("ddim", 12)])
def test_reverse_process_statistics_equal_explicit_chain(method: str, num_steps: int | None) -> None:
    """Re-run the chain by hand with the public step functions, store every x̂0, compare mean/std/sample, and the
    statistics recorded for further windows on the same trajectory."""
    cond = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(8))
    eps_fn, window, clip = _toy_eps_fn(3), (12, 37), (-1.0, 1.0)
    extra = [window, (0, 50), (40, 50), (0, 12)]
    record = WindowStats(extra)
    result = reverse_process(eps_fn, cond, SHORT, patch_generators(1, [4, 5]), method=method,
                             num_steps=num_steps, eta=0.5, window=window, clip_x0=clip, record=record)
    gens = patch_generators(1, [4, 5])
    x = randn_per_patch(gens, SHAPE)
    steps = sampling_timesteps(SHORT, method, num_steps).tolist()
    stored, every = [], {}
    for i, t in enumerate(steps):
        eps = eps_fn(x, torch.full((2,), t), cond)
        if method == "ddpm":
            mean, x0, sigma = ddpm_step(SHORT, eps, t, x, clip)
        else:
            mean, x0, sigma = ddim_step(SHORT, eps, t, steps[i + 1] if i + 1 < len(steps) else -1, x, 0.5, clip)
        if window[0] <= t < window[1]:
            stored.append(x0)
        every[t] = x0
        x = mean + sigma * randn_per_patch(gens, SHAPE) if sigma > 0 else mean
    chain = torch.stack(stored)
    assert len(stored) == len(result.window_timesteps) > 1
    torch.testing.assert_close(result.x0_mean, chain.mean(0), rtol=1e-5, atol=1e-5)
    # the intra-process std is the sample std (ddof 1) of the window's x̂0(t), as the reference's torch.std
    torch.testing.assert_close(result.x0_std, chain.std(0, unbiased=True), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.sample, x, rtol=1e-5, atol=1e-5)
    # the sampler's own window, recorded again, is bit-identical; the others equal their stored x̂0(t)
    assert torch.equal(record.windows[window].mean, result.x0_mean)
    assert torch.equal(record.windows[window].std, result.x0_std)
    for low, high in extra:
        wanted = torch.stack([x0 for t, x0 in every.items() if low <= t < high])
        stats = record.windows[(low, high)]
        assert stats.count == len(wanted) > 1
        torch.testing.assert_close(stats.mean, wanted.mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats.std, wanted.std(0, unbiased=True), rtol=1e-5, atol=1e-5)


def test_window_stats_in_sample_give_the_sampler_products() -> None:
    cond = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(4))
    target = TargetRange(-1.0, 1.0)
    settings = SamplerSettings(method="ddim", num_steps=6, window=(20, 50), mean_correction=True)
    record = WindowStats([(20, 50), (48, 50)])
    pred = sample(_toy_eps_fn(2), cond, [0, 1], SHORT, settings, target, target_mean=0.3, record=record)
    own = record.windows[(20, 50)]
    assert own.count == len(pred.window_timesteps) == 4  # DDIM-6 of T = 50 visits 49, 39, 29, 20, 10, 0
    ddpmavg, std_intra = window_products(own.mean, own.std, target, settings.output)
    assert torch.equal(ddpmavg, pred.ddpmavg) and torch.equal(std_intra, pred.std_intra)
    assert record.windows[(48, 50)].count == 1 and float(record.windows[(48, 50)].std.abs().max()) == 0.0
    assert float(ddpmavg.min()) >= 0.0 and float(ddpmavg.max()) <= 1.0
    unclipped, _ = window_products(torch.tensor([-3.0, 0.0, 3.0]), torch.ones(3), target, "batch_minmax")
    assert unclipped.tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"x̂0 window \[30, 30\); expected 0 ≤ t_low < t_high"):
        WindowStats([(30, 30)])


@pytest.mark.parametrize(("method", "num_steps"), [("ddpm", None), ("ddim", 10)])
def test_batch_of_four_equals_four_single_runs_with_fewer_calls(method: str, num_steps: int | None) -> None:
    calls = {"n": 0}
    inner = _toy_eps_fn(1)

    def counted(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return inner(x, t, cond)

    cond = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(3))
    ids = [3, 7, 11, 42]
    settings = SamplerSettings(method=method, num_steps=num_steps, window=(10, 40), mean_correction=True)
    batched = sample(counted, cond, ids, SHORT, settings, TargetRange(-1, 1), target_mean=0.4)
    batch_calls, calls["n"] = calls["n"], 0
    singles = [sample(counted, cond[i : i + 1], [ids[i]], SHORT, settings, TargetRange(-1, 1), target_mean=0.4)
               for i in range(4)]
    assert calls["n"] == 4 * batch_calls == 4 * batched.n_calls
    for name in ("ddpm", "ddpmavg", "std_intra"):
        torch.testing.assert_close(getattr(batched, name), torch.cat([getattr(s, name) for s in singles]),
                                   rtol=1e-5, atol=1e-6)


def test_noise_is_per_patch_or_shared() -> None:
    per_patch = randn_per_patch(patch_generators(0, [1, 2]), SHAPE)
    again = randn_per_patch(patch_generators(0, [2]), SHAPE)
    shared = randn_per_patch(patch_generators(0, [1, 2], mode="shared"), SHAPE)
    assert not torch.equal(per_patch[0], per_patch[1])
    assert torch.equal(per_patch[1], again[0])
    assert torch.equal(shared[0], shared[1])
    assert not torch.equal(randn_per_patch(patch_generators(1, [2]), SHAPE)[0], again[0])


def test_target_range_and_settings() -> None:
    target = TargetRange(-1.0, 1.0)
    assert target.to_model(0.25) == -0.5 and target.to_data(-0.5) == 0.25 and target.scale == 2.0
    settings = SamplerSettings.from_dict({"method": "ddim", "num_steps": 25, "window": [300, 800], "clip_x0": None})
    assert settings.window == (300, 800) and settings.clip_x0 is None
    assert SamplerSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="no visited timestep"):
        sample(_toy_eps_fn(), torch.zeros(1, *SHAPE), [0], SCHEDULE,
               SamplerSettings(method="ddim", num_steps=2, window=(300, 800), mean_correction=False))
