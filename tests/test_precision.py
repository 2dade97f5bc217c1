"""Mixed precision and torch.compile switches: the diffusion schedule arithmetic stays float32 under bf16 autocast."""

from __future__ import annotations

import contextlib

import torch

from conftest import MICRO_NET
from dm4isl.models.ddpm import DDPMModule
from dm4isl.sampling.reverse import ddim_step, ddpm_step
from dm4isl.sampling.schedule import NoiseSchedule
from dm4isl.utils.instantiate import build_model

SHAPE = (2, 1, 4, 16, 16)
#: bf16 keeps 8 bits of mantissa (relative error ≈ 4e-3): float32 arithmetic must be far closer to float64.
FP32_TOL = 1e-6


def _bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_add_noise_stays_float32_under_autocast() -> None:
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(SHAPE, generator=gen) * 2 - 1, torch.randn(SHAPE, generator=gen)
    t = torch.tensor([3, 977])
    with _bf16():
        x_t = schedule.add_noise(x0, noise, t)
    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    exact = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    assert x_t.dtype == torch.float32
    assert float((x_t.double() - exact).abs().max()) < FP32_TOL


def test_reverse_steps_stay_float32_under_autocast() -> None:
    schedule = NoiseSchedule()
    gen = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    plain = ddim_step(schedule, eps, 500, 480, x_t, 0.0, (-1.0, 1.0)), ddpm_step(schedule, eps, 500, x_t, None)
    with _bf16():
        mixed = ddim_step(schedule, eps, 500, 480, x_t, 0.0, (-1.0, 1.0)), ddpm_step(schedule, eps, 500, x_t, None)
    for (mean_a, x0_a, _), (mean_b, x0_b, _) in zip(plain, mixed, strict=True):
        assert mean_b.dtype == x0_b.dtype == torch.float32
        assert torch.equal(mean_a, mean_b) and torch.equal(x0_a, x0_b)


def test_ddpm_module_net_in_bf16_schedule_in_float32() -> None:
    model = DDPMModule(net=MICRO_NET, prediction_type="sample")
    gen = torch.Generator().manual_seed(2)
    x_t, bf = torch.randn(SHAPE, generator=gen), torch.rand(SHAPE, generator=gen)
    t = torch.tensor([10, 900])
    with _bf16():
        raw = model.net_output(x_t, t, bf)
        eps = model.eps(x_t, t, bf)
        abar = model._abar(t, x_t)
        target = model.training_target(x_t, torch.randn(SHAPE, generator=gen), t)
    assert raw.dtype == torch.bfloat16  # autocast is active for the network ...
    assert eps.dtype == abar.dtype == target.dtype == torch.float32  # ... and not for the schedule arithmetic
    expected = model.schedule.alphas_cumprod[t].to(torch.float32).view(-1, 1, 1, 1, 1)
    assert torch.equal(abar, expected)


def test_compile_switch_compiles_in_place(compose_cfg) -> None:
    cfg = compose_cfg("train", ["model/net=tiny", "compile=true", "trainer=gpu"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    model = build_model(cfg)
    assert model.net._compiled_call_impl is not None
    plain = build_model(compose_cfg("train", ["model/net=tiny"]))
    assert plain.net._compiled_call_impl is None
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints stay interchangeable


def test_sampler_precision_switch_runs_the_network_in_bf16_and_the_schedule_in_float32() -> None:
    import pytest

    from dm4isl.errors import ConfigError
    from dm4isl.sampling import SamplerSettings, sample

    torch.manual_seed(3)
    model = DDPMModule(net=MICRO_NET, prediction_type="sample", schedule={"num_train_timesteps": 20}).eval()
    with torch.no_grad():
        for param in model.net.parameters():  # MONAI zero-initialises the output convolution
            param.add_(0.05 * torch.randn_like(param))
    seen: list[torch.dtype] = []

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor, bf: torch.Tensor) -> torch.Tensor:
        seen.append(model.net_output(x_t, t, bf).dtype)
        return model.eps(x_t, t, bf)

    bf = torch.rand(SHAPE, generator=torch.Generator().manual_seed(4))
    base = {"method": "ddim", "num_steps": 5, "window": [0, 20], "mean_correction": False, "clip_x0": None}
    runs = {}
    for precision in (None, "bf16", "fp32"):
        seen.clear()
        settings = SamplerSettings.from_dict({**base, "precision": precision})
        outer = _bf16() if precision == "fp32" else contextlib.nullcontext()  # fp32 wins over an outer autocast
        with outer:
            runs[precision] = sample(eps_fn, bf, [0, 1], model.schedule, settings, model.target, 0.3)
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    for precision in ("bf16", "fp32"):
        for name in ("ddpm", "ddpmavg", "std_intra"):
            assert getattr(runs[precision], name).dtype == torch.float32
    assert torch.equal(runs["fp32"].std_intra, runs[None].std_intra)
    scale = float(runs[None].std_intra.abs().max())
    diff = float((runs["bf16"].std_intra - runs[None].std_intra).abs().max())
    # bf16 changes the numbers, by little: 5.5 % of the map's largest value on an AVX2-only CPU (bf16 emulated), less
    # with native bf16 units; an 8-bit mantissa gone wrong would be of the order of the map itself
    assert 0.0 < diff < 0.1 * scale
    with pytest.raises(ConfigError, match=r"sampler precision 'fp16'; expected one of \(None, 'fp32', 'bf16'\)"):
        SamplerSettings(precision="fp16")


def test_channels_last_switch_reorders_weights_and_keeps_values(compose_cfg) -> None:
    cfg = compose_cfg("train", ["model/net=tiny", "channels_last=true"])
    torch.manual_seed(5)
    model = build_model(cfg).eval()
    torch.manual_seed(5)
    plain = build_model(compose_cfg("train", ["model/net=tiny"])).eval()
    convs = [p for p in model.net.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    plain_convs = [p for p in plain.net.parameters() if p.dim() == 5]
    assert not all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in plain_convs)
    state, plain_state = model.state_dict(), plain.state_dict()
    assert list(state) == list(plain_state) and all(torch.equal(state[k], plain_state[k]) for k in state)
    with torch.no_grad():
        for param in (*model.net.parameters(), *plain.net.parameters()):  # a non-zero output convolution, alike
            param.copy_(torch.linspace(-0.05, 0.05, param.numel()).reshape(param.shape))
        gen = torch.Generator().manual_seed(6)
        x_t, bf = torch.randn(SHAPE, generator=gen), torch.rand(SHAPE, generator=gen)
        t = torch.tensor([10, 900])
        reordered, contiguous = model.eps(x_t, t, bf), plain.eps(x_t, t, bf)
    assert float(contiguous.abs().max()) > 0
    assert float((reordered - contiguous).abs().max()) <= 1e-5 * float(contiguous.abs().max())
