"""Sampler core: steps equal MONAI's, oracle recovery, running statistics, batch independence, output modes."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from dm4isl.data.normalize import TargetRange
from dm4isl.errors import ConfigError
from dm4isl.sampling import (
    NoiseSchedule,
    RunningStats,
    SamplerSettings,
    WindowStats,
    correct_eps_mean,
    ddim_step,
    ddpm_step,
    patch_generators,
    patch_seed,
    randn_per_patch,
    reverse_process,
    sample,
    sampling_timesteps,
    window_products,
)
from dm4isl.sampling.diagnostics import correction_effect
from dm4isl.sampling.noise import training_noise
from dm4isl.sampling.reverse import network_precision
from dm4isl.sampling.sampler import adjust_settings

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


def test_noise_schedule_by_hand_and_its_bounds() -> None:
    # betas linear in their square root (scaled_linear) or linear, ᾱ_t their running product: NumPy from the formula
    roots = np.linspace(0.0005**0.5, 0.0195**0.5, 1000)
    np.testing.assert_allclose(SCHEDULE.betas.numpy(), roots**2, rtol=1e-12, atol=0)
    np.testing.assert_allclose(SCHEDULE.alphas_cumprod.numpy(), np.cumprod(1.0 - roots**2), rtol=1e-12, atol=0)
    flat = NoiseSchedule(num_train_timesteps=4, beta_start=0.01, beta_end=0.01, kind="linear")  # equal ends allowed
    np.testing.assert_allclose(flat.alphas_cumprod.numpy(), 0.99 ** np.arange(1, 5), rtol=1e-12, atol=0)
    assert flat.abar(-1) == 1.0 and flat.abar(3) == pytest.approx(0.99**4, rel=1e-12)
    one = NoiseSchedule(num_train_timesteps=1)
    assert one.betas.tolist() == pytest.approx([0.0005], rel=1e-12)
    assert NoiseSchedule(beta_end=0.999).betas[-1] == pytest.approx(0.999, rel=1e-12)
    assert flat.to_dict() == {"num_train_timesteps": 4, "beta_start": 0.01, "beta_end": 0.01, "kind": "linear"}
    assert NoiseSchedule(**SHORT.to_dict()) == SHORT
    with pytest.raises(ValueError, match=r"num_train_timesteps = 0; expected ≥ 1"):
        NoiseSchedule(num_train_timesteps=0)
    with pytest.raises(ValueError, match=r"noise schedule kind 'cosine'; expected one of"):
        NoiseSchedule(kind="cosine")
    for start, end in ((0.0, 0.02), (0.001, 1.0), (0.02, 0.01)):
        with pytest.raises(ValueError, match=rf"betas from {start} to {end}; expected 0 < beta_start"):
            NoiseSchedule(beta_start=start, beta_end=end)


def test_add_noise_by_hand() -> None:
    gen = torch.Generator().manual_seed(11)
    x0, noise = torch.rand(3, *SHAPE, generator=gen), torch.randn(3, *SHAPE, generator=gen)
    t = torch.tensor([0, 25, 49])
    abar = np.cumprod(1.0 - np.linspace(0.0005**0.5, 0.0195**0.5, 50) ** 2)[t.numpy()].reshape(-1, 1, 1, 1, 1)
    want = np.sqrt(abar) * x0.double().numpy() + np.sqrt(1.0 - abar) * noise.double().numpy()
    got = SHORT.add_noise(x0, noise, t)
    assert got.dtype == torch.float32  # ᾱ_t is applied in float32: 1 − ᾱ_t near t = 0 keeps ~4 digits
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)


def test_patch_seed_by_hand_and_the_shared_stream() -> None:
    for seed, pid in ((0, 0), (3, 5), (12345, 2**40)):
        words = np.random.SeedSequence([seed, pid]).generate_state(2, dtype=np.uint32)
        want = (int(words[0]) * 2**32 + int(words[1])) % 2**63  # the two words, first one high, in 63 bits
        assert patch_seed(seed, pid) == want
    # "shared" mode: every patch draws the stream of patch id 0 (the reference's single stream)
    shared = randn_per_patch(patch_generators(7, [3, 9], mode="shared"), SHAPE)
    first = randn_per_patch(patch_generators(7, [0]), SHAPE)[0]
    assert torch.equal(shared[0], first) and torch.equal(shared[1], first)
    by_tensor = randn_per_patch(patch_generators(7, torch.tensor([3, 9])), SHAPE)
    assert torch.equal(by_tensor, randn_per_patch(patch_generators(7, [3, 9]), SHAPE))
    for seed, pid in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError, match=rf"seed {seed} and patch id {pid}; expected non-negative integers"):
            patch_seed(seed, pid)
    with pytest.raises(ValueError, match=r"noise mode 'common'; expected one of"):
        patch_generators(0, [1], mode="common")


def _matmul_dtype() -> torch.dtype:
    """The dtype a linear layer computes in under the current autocast state (CPU)."""
    return torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype


def test_network_precision_contexts() -> None:
    with network_precision("cpu", "bf16"):
        assert _matmul_dtype() == torch.bfloat16
    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)  # "bf16" means bfloat16 whatever the device's autocast default
    try:
        with network_precision("cpu", "bf16"):
            assert _matmul_dtype() == torch.bfloat16
    finally:
        torch.set_autocast_dtype("cpu", default)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with network_precision("cpu", "fp32"):  # switches an enclosing autocast off
            assert _matmul_dtype() == torch.float32
        with network_precision(torch.device("cpu"), None):  # leaves it as the caller runs it
            assert _matmul_dtype() == torch.bfloat16
    with network_precision("cpu", "fp32"):
        assert _matmul_dtype() == torch.float32
    with pytest.raises(ConfigError, match=r"network precision 'fp16'; expected one of"):
        network_precision("cpu", "fp16")
    # reverse_process runs every network call in the requested precision
    seen = set()

    def eps_fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        seen.add(_matmul_dtype())
        return 0.5 * x + cond

    reverse_process(eps_fn, torch.rand(1, *SHAPE), SHORT, patch_generators(0, [0]), method="ddim", num_steps=3,
                    window=(0, 50), precision="bf16")
    assert seen == {torch.bfloat16}


def test_reverse_process_defaults_and_generator_count() -> None:
    cond = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(12))
    eps_fn = _toy_eps_fn(4)
    default = reverse_process(eps_fn, cond, SHORT, patch_generators(2, [0, 1]), window=(10, 40))
    ddpm = reverse_process(eps_fn, cond, SHORT, patch_generators(2, [0, 1]), method="ddpm", window=(10, 40))
    assert default.n_calls == 50 and torch.equal(default.sample, ddpm.sample)  # method="ddpm", all T steps
    runs = {eta: reverse_process(eps_fn, cond, SHORT, patch_generators(2, [0, 1]), method="ddim", num_steps=5,
                                 window=(0, 50), **({} if eta is None else {"eta": eta})) for eta in (None, 0.0, 1.0)}
    assert torch.equal(runs[None].sample, runs[0.0].sample)  # eta defaults to 0 (deterministic DDIM)
    assert not torch.allclose(runs[None].sample, runs[1.0].sample)
    with pytest.raises(ValueError, match=r"2 noise generators for a batch of 3; expected one each"):
        reverse_process(eps_fn, torch.rand(3, *SHAPE), SHORT, patch_generators(2, [0, 1]), window=(10, 40))


def test_ddim_timesteps_few_steps_and_exact_rounding() -> None:
    one = sampling_timesteps(SHORT, "ddim", 1)
    assert one.tolist() == [49] and one.dtype == torch.int64
    assert sampling_timesteps(SHORT, "ddim", 2).tolist() == [49, 0]
    assert sampling_timesteps(SHORT, "ddim", 50).tolist() == list(range(49, -1, -1))
    # round(linspace(999, 0, 15)) has the tie 999 · 7/14 = 499.5 at i = 7: rounded half to even, exactly
    want = [round(Fraction(999 * (14 - i), 14)) for i in range(15)]
    assert want[7] == 500 and sampling_timesteps(SCHEDULE, "ddim", 15).tolist() == want
    for steps in (None, 0, 51):
        with pytest.raises(ConfigError, match=rf"DDIM num_steps={steps}; expected an integer in \[1, 50\]"):
            sampling_timesteps(SHORT, "ddim", steps)
    with pytest.raises(ConfigError, match=r"sampling method 'ddpn'; expected one of"):
        sampling_timesteps(SHORT, "ddpn", 5)


def test_mean_correction_shifts_each_patch_by_one_number() -> None:
    gen = torch.Generator().manual_seed(13)
    eps, x_t = torch.randn(2, 2, 3, 4, 4, generator=gen), torch.randn(2, 2, 3, 4, 4, generator=gen) + 0.5
    abar, target_mean = 0.3, -0.2
    got = correct_eps_mean(eps, x_t, abar, target_mean).double().numpy()
    e, x = eps.double().numpy(), x_t.double().numpy()
    axes = (1, 2, 3, 4)  # per patch: channels and voxels together
    wanted = (x.mean(axis=axes) - np.sqrt(abar) * target_mean) / np.sqrt(1.0 - abar)
    shift = (wanted - e.mean(axis=axes)).reshape(-1, 1, 1, 1, 1)
    np.testing.assert_allclose(got, e + shift, rtol=0, atol=1e-5)
    x0 = (x - np.sqrt(1.0 - abar) * got) / np.sqrt(abar)
    np.testing.assert_allclose(x0.mean(axis=axes), [target_mean] * 2, rtol=0, atol=1e-5)


def test_running_stats_accumulate_in_float64_and_need_a_value() -> None:
    # 500 float32 values near 300 with a spread of 0.01: a float32 running sum would be off by ~5e-4 relative
    chain = 300.0 + 0.01 * torch.randn(500, 4, generator=torch.Generator().manual_seed(14))
    stats = RunningStats(ddof=1)
    for x in chain:
        stats.update(x)
    values = chain.double().numpy()
    np.testing.assert_allclose(stats.std.numpy(), np.std(values, axis=0, ddof=1), rtol=1e-5, atol=0)
    np.testing.assert_allclose(stats.mean.numpy(), np.mean(values, axis=0), rtol=1e-7, atol=0)
    for name in ("mean", "std"):
        with pytest.raises(ValueError, match="^running statistics hold no values yet"):
            getattr(RunningStats(), name)


def test_sampler_settings_bounds_and_forms() -> None:
    assert SamplerSettings(window=(0, 1)).window == (0, 1)  # t_low = 0 is allowed
    with pytest.raises(ConfigError, match=r"averaging window \[5, 5\]; expected 0 ≤ t_low < t_high"):
        SamplerSettings(window=(5, 5))
    for key, value in (("method", "ddpx"), ("noise", "common"), ("output", "minmax"), ("precision", "fp16")):
        with pytest.raises(ConfigError, match=rf"sampler {key} '{value}'; expected one of"):
            SamplerSettings(**{key: value})
    with pytest.raises(ConfigError, match=r"sampler settings \['steps'\] unknown; expected some of \['method',"):
        SamplerSettings.from_dict({"steps": 5, "_target_": "x", "name": "ddim"})
    from_lists = SamplerSettings.from_dict({"window": [10, 20], "clip_x0": [-2, 2]})
    assert from_lists.window == (10, 20) and from_lists.clip_x0 == (-2, 2)
    assert SamplerSettings().to_dict() == {
        "method": "ddpm", "num_steps": None, "eta": 0.0, "window": [300, 800], "clip_x0": [-1.0, 1.0],
        "mean_correction": True, "noise": "per_patch", "seed": 0, "output": "clip", "precision": None,
    }


def test_adjust_settings() -> None:
    stored = SamplerSettings(method="ddim", num_steps=20, eta=0.5, seed=3)
    assert adjust_settings(stored, None) is stored
    assert adjust_settings(stored, {"num_steps": None, "eta": None}) is stored
    assert adjust_settings(stored, {"num_steps": 10, "window": [200, 800], "eta": None, "_target_": "x"}) == \
        SamplerSettings(method="ddim", num_steps=10, eta=0.5, seed=3, window=(200, 800))
    # a whole option (with a name) replaces the stored sampler: unset keys take the defaults, not the stored values
    assert adjust_settings(stored, {"name": "ddim10", "method": "ddim", "num_steps": 10}) == \
        SamplerSettings(method="ddim", num_steps=10)


def test_window_products_output_modes() -> None:
    target = TargetRange(-1.0, 1.0)
    mean, std = torch.tensor([-0.5, 0.0, 0.5, 1.4]), torch.full((4,), 0.2)
    clipped, std_data = window_products(mean, std, target)  # output="clip" by default
    assert clipped.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert std_data.tolist() == pytest.approx([0.1] * 4)  # a std scales by the range only: 0.2 / 2
    stretched, _ = window_products(mean, std, target, "batch_minmax")
    assert stretched.tolist() == pytest.approx([0.0, 0.5 / 1.9, 1.0 / 1.9, 1.0])


def test_training_noise_rows_depend_on_their_patch_id_only() -> None:
    like = torch.zeros(3, 1, 2, 4, 4, dtype=torch.float64)
    noise, t = training_noise(torch.tensor([3, 5, 8]), like, num_timesteps=50, seed=9)
    assert noise.shape == like.shape and noise.dtype == torch.float64 and t.shape == (3,) and t.dtype == torch.int64
    alone, t_alone = training_noise(torch.tensor([5]), like[:1], num_timesteps=50, seed=9)
    assert torch.equal(noise[1], alone[0]) and int(t[1]) == int(t_alone[0])  # batch-mates do not matter
    other, _ = training_noise(torch.tensor([3, 5, 8]), like, num_timesteps=50, seed=10)
    assert not torch.equal(noise[0], other[0]) and not torch.equal(noise[0], noise[1])
    torch.manual_seed(9)  # seed=None: the run's seed_everything value
    default, t_default = training_noise(torch.tensor([3, 5, 8]), like, num_timesteps=50)
    assert torch.equal(default, noise) and torch.equal(t_default, t)
    ids = torch.arange(200)
    _, t_many = training_noise(ids, torch.zeros(200, 1, 1, 1, 1), num_timesteps=3, seed=0)
    assert sorted(set(t_many.tolist())) == [0, 1, 2]  # uniform over 0 … T−1
    big, _ = training_noise(torch.tensor([1]), torch.zeros(1, 1, 16, 32, 32), num_timesteps=3, seed=0)
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1.0) < 0.05  # standard normal


def test_correction_effect_figures_by_hand() -> None:
    target = TargetRange(-1.0, 1.0)
    gen = torch.Generator().manual_seed(15)
    # bright patches of two means; the biased predictor pushes x̂0 up, so without the correction DDPMavg clips at 1
    gt = torch.cat([0.75 + 0.25 * torch.rand(1, *SHAPE, generator=gen),
                    0.6 + 0.3 * torch.rand(1, *SHAPE, generator=gen)])
    bf = torch.rand(2, *SHAPE, generator=gen)
    biased = _oracle(target.to_model(gt), SHORT, bias=-0.1)
    settings = SamplerSettings(method="ddim", num_steps=10, window=(10, 40))
    mean = float(gt.mean())
    effect = correction_effect(biased, gt, bf, [0, 1], SHORT, settings, target, mean)
    g = gt[:, 0].double().numpy()
    for on, (bright, pccs, mses) in ((False, (effect.brightness_error_off, effect.pcc_off, effect.mse_off)),
                                     (True, (effect.brightness_error_on, effect.pcc_on, effect.mse_on))):
        pred = sample(biased, bf, [0, 1], SHORT, dataclasses.replace(settings, mean_correction=on), target, mean)
        p = pred.ddpmavg[:, 0].double().numpy()
        np.testing.assert_allclose(bright, p.mean(axis=(1, 2, 3)) - g.mean(axis=(1, 2, 3)), rtol=0, atol=1e-6)
        want_pcc = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(g, p, strict=True)]
        np.testing.assert_allclose(pccs, want_pcc, rtol=0, atol=1e-6)
        np.testing.assert_allclose(mses, ((g - p) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-9)
    assert np.all(effect.brightness_error_off > 1e-2)  # the bias shows without the correction ...
    # ... and with it each patch has the mean it is pinned to, the training mean
    np.testing.assert_allclose(effect.brightness_error_on, mean - g.mean(axis=(1, 2, 3)), rtol=0, atol=1e-4)
    assert abs(effect.pcc_off[0] - effect.pcc_on[0]) > 1e-4  # the brighter patch clips at 1 without the correction
