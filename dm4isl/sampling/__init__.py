"""Reverse diffusion processes in plain PyTorch: DDPM, DDIM, DDPMavg and the intra-process std map."""

from dm4isl.sampling.noise import patch_generators, patch_seed, randn_per_patch
from dm4isl.sampling.reverse import (
    EpsFn,
    ReverseResult,
    correct_eps_mean,
    ddim_step,
    ddpm_step,
    predict_x0,
    reverse_process,
    sampling_timesteps,
)
from dm4isl.sampling.sampler import Prediction, SamplerSettings, sample, window_products
from dm4isl.sampling.schedule import NoiseSchedule
from dm4isl.sampling.stats import RunningStats, WindowStats

__all__ = [
    "EpsFn",
    "NoiseSchedule",
    "Prediction",
    "ReverseResult",
    "RunningStats",
    "SamplerSettings",
    "WindowStats",
    "correct_eps_mean",
    "ddim_step",
    "ddpm_step",
    "patch_generators",
    "patch_seed",
    "predict_x0",
    "randn_per_patch",
    "reverse_process",
    "sample",
    "sampling_timesteps",
    "window_products",
]
