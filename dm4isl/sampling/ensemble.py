"""Seed ensembles: K independent reverse processes per patch in batched passes → inter-process std (SPEC §3)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dm4isl.data.normalize import TargetRange
from dm4isl.sampling.reverse import EpsFn
from dm4isl.sampling.sampler import SamplerSettings, sample
from dm4isl.sampling.schedule import NoiseSchedule

log = logging.getLogger(__name__)
#: Delta degrees of freedom of the inter-process std across the seeds' DDPMavg: 0 (population), as the reference's
#: NumPy ``std(axis=0)`` over its 5 seeds.
INTER_STD_DDOF = 0
#: Text of the RuntimeError that PyTorch raises when an allocation fails (CUDA, MPS and CPU allocators).
OOM_MESSAGE = "out of memory"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator failure (``torch.cuda.OutOfMemoryError`` or a RuntimeError saying so)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and OOM_MESSAGE in str(error).lower()
    )


@dataclass
class EnsemblePrediction:
    """Products of a K-seed ensemble for a batch of B patches.

    Per-seed tensors are ``(K, B, C, Z, Y, X)``; summaries ``(B, C, Z, Y, X)``. ``ddpmavg`` is the mean of the
    per-seed DDPMavg, ``std_inter`` their population std across seeds (ddof 0, as the reference; the inter-process
    uncertainty) and ``std_intra`` the mean over seeds of the intra-process std maps. ``ddpm`` is the final sample
    of the first seed.
    """

    ddpm_seeds: torch.Tensor
    ddpmavg_seeds: torch.Tensor
    std_intra_seeds: torch.Tensor
    seeds: list[int]
    n_calls: int
    timesteps: torch.Tensor

    @property
    def ddpm(self) -> torch.Tensor:
        return self.ddpm_seeds[0]

    @property
    def ddpmavg(self) -> torch.Tensor:
        return self.ddpmavg_seeds.mean(dim=0)

    @property
    def std_inter(self) -> torch.Tensor:
        return self.ddpmavg_seeds.std(dim=0, correction=INTER_STD_DDOF)

    @property
    def std_intra(self) -> torch.Tensor:
        return self.std_intra_seeds.mean(dim=0)


def ensemble_seeds(base_seed: int, n_seeds: int) -> list[int]:
    """The K seeds of an ensemble: ``base_seed, base_seed + 1, …`` (seed k of patch p is (base_seed + k, p))."""
    if n_seeds < 1:
        raise ValueError(f"n_seeds={n_seeds}; expected at least 1")
    return [int(base_seed) + k for k in range(n_seeds)]


@torch.no_grad()
def sample_ensemble(
    eps_fn: EpsFn,
    cond: torch.Tensor,
    patch_ids: Sequence[int] | torch.Tensor,
    schedule: NoiseSchedule,
    settings: SamplerSettings,
    n_seeds: int,
    target: TargetRange | None = None,
    target_mean: float | None = None,
    max_batch: int | None = None,
) -> EnsemblePrediction:
    """Sample every patch of ``cond`` ``(B, Cc, Z, Y, X)`` with ``n_seeds`` seeds, patches × seeds on the batch axis.

    The B·K rows run through the reverse process together, in chunks of at most ``max_batch`` rows (memory
    budget; ``None``: all at once). Each row's noise depends only on (seed, patch id), so the result equals K
    separate runs and does not depend on ``max_batch``. When a chunk runs out of memory, the chunk size is halved
    (a warning is logged) and the chunk retried; an out-of-memory error with chunks of one row is raised.
    """
    target = target or TargetRange()
    ids = [int(i) for i in (patch_ids.tolist() if isinstance(patch_ids, torch.Tensor) else patch_ids)]
    if len(ids) != cond.shape[0]:
        raise ValueError(f"{len(ids)} patch ids for a batch of {cond.shape[0]} patches; expected one each")
    seeds = ensemble_seeds(settings.seed, n_seeds)
    b = cond.shape[0]
    rows_cond = cond.repeat(n_seeds, *([1] * (cond.ndim - 1)))  # row k·B + i = patch i, seed k
    rows_ids = ids * n_seeds
    rows_seeds = [s for s in seeds for _ in range(b)]
    step = max_batch or len(rows_ids)
    parts = []
    n_calls = 0
    start = 0
    while start < len(rows_ids):
        stop = start + step
        try:
            pred = sample(
                eps_fn, rows_cond[start:stop], rows_ids[start:stop], schedule, settings, target, target_mean,
                seeds=rows_seeds[start:stop],
            )
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error) or step == 1:
                raise
            pred = None
        if pred is None:  # outside the except block, so the failed chunk's tensors can be freed
            tried = len(rows_ids[start:stop])
            step = max(1, tried // 2)
            log.warning("out of memory sampling %d rows at once; retrying in chunks of %d rows", tried, step)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        parts.append(pred)
        n_calls += pred.n_calls
        start = stop

    def gather(name: str) -> torch.Tensor:
        stacked = torch.cat([getattr(p, name) for p in parts], dim=0)
        return stacked.reshape(n_seeds, b, *stacked.shape[1:])

    return EnsemblePrediction(
        ddpm_seeds=gather("ddpm"),
        ddpmavg_seeds=gather("ddpmavg"),
        std_intra_seeds=gather("std_intra"),
        seeds=seeds,
        n_calls=n_calls,
        timesteps=parts[0].timesteps,
    )
