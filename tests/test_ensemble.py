"""Seed ensembles: one batched pass equals K separate runs; chunking does not change results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dm4isl.data.normalize import TargetRange
from dm4isl.sampling import NoiseSchedule, SamplerSettings, sample
from dm4isl.sampling.ensemble import ensemble_seeds, is_out_of_memory, sample_ensemble


def _eps(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """A smooth, non-trivial ε-predictor that depends on x_t, t and the condition."""
    return 0.3 * x + 0.2 * torch.tanh(cond) * (t.view(-1, 1, 1, 1, 1).float() / 1000.0)


def test_batched_ensemble_equals_separate_runs() -> None:
    torch.manual_seed(0)
    cond = torch.rand(3, 1, 4, 8, 8)
    ids = [7, 3, 11]
    schedule = NoiseSchedule()
    settings = SamplerSettings(method="ddim", num_steps=20, eta=1.0, window=(300, 800), seed=5, mean_correction=False)
    target = TargetRange(-1.0, 1.0)
    ens = sample_ensemble(_eps, cond, ids, schedule, settings, n_seeds=4, target=target)
    assert ens.ddpmavg_seeds.shape == (4, 3, 1, 4, 8, 8) and ens.seeds == [5, 6, 7, 8]
    assert ens.n_calls == 20  # all 12 rows share each network call
    singles = []
    for k, seed in enumerate(ens.seeds):
        single = sample(_eps, cond, ids, schedule, dataclasses.replace(settings, seed=seed), target)
        torch.testing.assert_close(ens.ddpmavg_seeds[k], single.ddpmavg, rtol=0, atol=1e-6)
        torch.testing.assert_close(ens.std_intra_seeds[k], single.std_intra, rtol=0, atol=1e-6)
        torch.testing.assert_close(ens.ddpm_seeds[k], single.ddpm, rtol=0, atol=1e-6)
        singles.append(single.ddpmavg.double().numpy())
    # inter-process std against an independent computation: NumPy's population std (ddof 0, the reference's
    # np.std over seeds) of four separately sampled DDPMavg, and its mean against their average
    np.testing.assert_allclose(ens.std_inter.numpy(), np.std(np.stack(singles), axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ens.ddpmavg.numpy(), np.mean(np.stack(singles), axis=0), rtol=0, atol=1e-6)
    two = dataclasses.replace(ens, ddpmavg_seeds=ens.ddpmavg_seeds[:2])
    np.testing.assert_allclose(two.std_inter.numpy(), np.abs(singles[0] - singles[1]) / 2, rtol=0, atol=1e-6)
    assert float(ens.std_inter.mean()) > 0  # eta = 1: seeds really differ
    chunked = sample_ensemble(_eps, cond, ids, schedule, settings, n_seeds=4, target=target, max_batch=5)
    torch.testing.assert_close(chunked.ddpmavg, ens.ddpmavg, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.std_inter, ens.std_inter, rtol=0, atol=1e-6)
    assert chunked.n_calls == 20 * 3  # ceil(12 / 5) chunks


def test_ensemble_seeds_and_out_of_memory_errors() -> None:
    assert ensemble_seeds(3, 2) == [3, 4] and ensemble_seeds(0, 1) == [0]
    with pytest.raises(ValueError, match=r"n_seeds=0; expected at least 1"):
        ensemble_seeds(0, 0)
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: Out Of Memory"))  # any case
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_out_of_memory(ValueError("out of memory"))  # an allocator failure is a RuntimeError
