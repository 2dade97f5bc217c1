"""Sampling benchmark: cheaper samplers proven as good as our DDPM-1000 (paired CIs); per-patch speed vs the reference.

One run, one or more checkpoints (e.g. one per training recipe). For each checkpoint, on its own synthetic test
patches (``--n-patches`` ≥ 16 for a decision; optionally centre-cropped), every sampler computes the paper's
product — DDPMavg, the intra-process std map and the inter-process std map over ``--n-seeds`` seeds — with patches ×
seeds batched:

* the comparator, **our DDPM-1000** (ancestral, all steps, the checkpoint's window and switches), which equals the
  reference procedure (shown once per run, below);
* the candidates, **DDIM-k** for every ``--ddim`` k and ``--etas`` eta (and their bf16 versions with ``--bf16``).

Each candidate is compared with the comparator of the same checkpoint on the same patches: paired patch-bootstrap
95 % CIs (``dm4isl.evaluation.equivalence``) of ΔPCC and ΔMS-SSIM of DDPMavg and of the Δ pooled-voxel AUROC of the
intra- and inter-process std maps for the errors ``|DDPMavg − GT| > tau``. Every seed's run is used: a patch's PCC
and MS-SSIM are the means over its K seeds' DDPMavgs (the expected quality of one DDPMavg run, its sampling noise
cut by √K), and its AUROC voxel pool holds the errors of all K runs, scored by each run's intra-process std map and
by the patch's inter-process std map. A candidate **counts** when the lower end of every CI lies above its
non-inferiority margin (:data:`MARGINS`). MS-SSIM uses the paper's 5 scales when Y and X are ≥ 64 px, else the most
scales the crop allows (finest weights renormalised; the header says how many).

**Exactness and speed.** The reference procedure (the authors' inference, exactly: per patch, batch 1, MONAI's
``DDPMScheduler``, every x̂0(t) kept in a Python list; 1 + K full runs per patch) runs on the first ``--ref-patches``
patches with the same noise streams: its DDPMavg and std maps must equal our DDPM-1000's for those patches (max
|Δ| and PCCs printed). Its procedure is strictly per patch and per seed, so its seconds per patch measured on that
subset are its per-patch cost; ours are measured on all patches. Speedup = reference s/patch / ours s/patch. The
last line is ``speedup_vs_reference=<x>`` for the fastest candidate that counts on the first checkpoint (our
DDPM-1000 always counts: it is the comparator). Every figure is measured in this run; nothing is extrapolated.
Load averages are printed beside the timings (a shared machine makes wall times upper bounds).

**Memory** (``--memory``): tensor memory peaks, every storage tracked exactly (:class:`PeakTensorMemory`), on real
runs with one batch of rows: a network call, our DDPM-1000 and DDIM-50 (equal: running statistics keep nothing of
the chain) and the reference (which stacks its x̂0 list); then the paper net under ``FakeTensorMode`` (no compute)
for 1, 2 and 4 rows of 16 × 64 × 64, fitted linearly, gives the largest patches × seeds batch within
``--memory-budget-gib``.

    python scripts/benchmark_sampling.py --preset cpu --ckpt <demo run>/checkpoints/last.ckpt   # ≤ 15 min, 2 cores
    python scripts/benchmark_sampling.py --preset cpu-long --ckpt <demo run>/checkpoints/last.ckpt   # ≈ 1 h
    python scripts/benchmark_sampling.py --preset cpu --ckpt fast.ckpt --ckpt paper.ckpt --out bench.csv
    python scripts/benchmark_sampling.py --preset gpu --ckpt fast.ckpt --ckpt paper.ckpt    # full size, CUDA
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dm4isl.evaluation.equivalence import NonInferiority, non_inferiority
from dm4isl.metrics.basic import MS_SSIM_SCALES, max_ms_ssim_scales, mean_pcc, ms_ssim_batch, pcc
from dm4isl.sampling import SamplerSettings, correct_eps_mean, patch_generators, randn_per_patch
from dm4isl.sampling.ensemble import ensemble_seeds, sample_ensemble
from dm4isl.uncertainty.evaluation import ERROR_TAU, AurocPairCounts, auroc_pair_counts
from dm4isl.utils.run_data import FALLBACK_EXPERIMENT, checkpoint_test_set

#: Non-inferiority margins: the largest loss of a candidate against our DDPM-1000 that still counts as equal
#: quality (lower end of the paired 95 % CI of candidate − DDPM-1000 must lie above it).
MARGINS = {"pcc": -0.01, "ms_ssim": -0.01, "auroc_intra": -0.02, "auroc_inter": -0.02}
CONFIDENCE = 0.95
BYTES_PER_MIB = 2**20
MIB_PER_GIB = 1024
#: Presets: ``cpu`` fits ≤ 15 minutes on 2 idle cores with the demo checkpoint (nano net; crops of 16 slices: on
#: 8-slice ones the net lacks z context, DDPMavg PCC 0.55 instead of 0.85); ``cpu-long`` (about an hour there) has
#: the patches and seeds that bound a difference to about ±0.01, for the stochastic candidates (deterministic DDIM,
#: eta 0, lost 0.06 PCC at every k in the ``cpu`` preset); ``gpu`` is the full benchmark (paper patch size, 5 seeds
#: as the paper, more candidates).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"n_patches": 16, "patch_size": [16, 24, 24], "n_seeds": 2, "ddim": [10, 20, 50], "etas": [0.0, 1.0],
            "ref_patches": 1, "device": "cpu", "memory": False, "channels_last": True},
    "cpu-long": {"n_patches": 32, "patch_size": [16, 32, 32], "n_seeds": 4, "ddim": [10, 20, 50], "etas": [1.0],
                 "ref_patches": 1, "device": "cpu", "memory": False, "channels_last": True},
    "gpu": {"n_patches": 32, "patch_size": None, "n_seeds": 5, "ddim": [10, 20, 25, 50, 100, 250],
            "etas": [0.0, 1.0], "ref_patches": 2, "device": "cuda", "memory": True, "channels_last": False},
}
#: Defaults of the options a preset may set (used when neither the preset nor the command line sets them).
DEFAULTS: dict[str, Any] = {"n_patches": 16, "patch_size": None, "n_seeds": 2, "ddim": [10, 20, 50, 100],
                            "etas": [0.0, 1.0], "ref_patches": 1, "device": "cpu", "memory": False,
                            "channels_last": False}
#: The paper's network and patch size, for the memory budget (conf/model/net/paper.yaml, SPEC §2).
PAPER_PATCH = (16, 64, 64)
PAPER_NET_CONFIG = "model/net/paper.yaml"
#: Rows (patches × seeds) of the paper net tracked under FakeTensorMode for the linear memory fit.
MEMORY_FIT_ROWS = (1, 2, 4)
#: DDIM step count compared with DDPM-1000 in the memory section.
MEMORY_DDIM_STEPS = 50
#: Products compared with the reference, in table order.
PRODUCTS = ("ddpmavg", "std_intra", "std_inter")
#: The averaged DDPM-1000 run is the comparator of every candidate.
COMPARATOR = "ddpm-1000"


def train_quick_checkpoint(out: Path, steps: int) -> Path:
    """Train the demo (tiny net, synthetic nuclear envelope) for ``steps`` optimizer steps; returns last.ckpt."""
    from dm4isl.train import train
    from dm4isl.utils.compose import compose_config

    cfg = compose_config("train", [f"experiment={FALLBACK_EXPERIMENT}", "test=false", "trainer.max_time=null",
                                   f"trainer.max_steps={steps}", "trainer.max_epochs=-1"],
                         root_dir=out, data_dir=out / "data", log_dir=out, output_dir=out / "run")
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


@torch.no_grad()
def run_reference(model: Any, bf: np.ndarray, settings: SamplerSettings, n_seeds: int, device: torch.device) -> dict:
    """The reference procedure (module docstring) on ``bf`` ``(N, Z, Y, X)``; products ``(N, Z, Y, X)``, passes."""
    from monai.networks.schedulers import DDPMScheduler

    sched = model.schedule
    clip = settings.clip_x0
    scheduler = DDPMScheduler(
        num_train_timesteps=sched.num_train_timesteps, schedule=f"{sched.kind}_beta", beta_start=sched.beta_start,
        beta_end=sched.beta_end, clip_sample=clip is not None,
        **({} if clip is None else {"clip_sample_min": clip[0], "clip_sample_max": clip[1]}),
    )
    target_mean = model.target.to_model(model.fl_mean) if settings.mean_correction else None
    t_low, t_high = settings.window
    products: dict[str, list[np.ndarray]] = {k: [] for k in ("ddpmavg", "std_intra", "std_inter", "ddpmavg_mean")}
    passes = 0

    def one_run(cond: torch.Tensor, seed: int, patch_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal passes
        gen = patch_generators(seed, [patch_id], device, settings.noise)[0]
        x = randn_per_patch([gen], (1, *cond.shape[2:]), device)
        chain = []
        for t in scheduler.timesteps.tolist():
            eps = model.eps(x, torch.tensor([t], device=device), cond).float()
            passes += 1
            if target_mean is not None:
                eps = correct_eps_mean(eps, x, sched.abar(t), target_mean)
            x, x0 = scheduler.step(eps, t, x, generator=gen)
            if t_low <= t < t_high:
                chain.append(model.target.to_data(x0).cpu())
        stack = torch.stack(chain)
        return stack.mean(0), stack.std(0, unbiased=False)

    for pid, patch in enumerate(bf):
        cond = torch.from_numpy(np.ascontiguousarray(patch))[None, None].to(device)
        mean, std = one_run(cond, settings.seed, pid)
        products["ddpmavg"].append(mean.clamp(0, 1)[0, 0].numpy())
        products["std_intra"].append(std[0, 0].numpy())
        seeds = torch.stack([one_run(cond, s, pid)[0].clamp(0, 1) for s in ensemble_seeds(settings.seed, n_seeds)])
        products["std_inter"].append(seeds.std(0, unbiased=False)[0, 0].numpy())
        products["ddpmavg_mean"].append(seeds.mean(0)[0, 0].numpy())
    out: dict[str, Any] = {k: np.stack(v) for k, v in products.items()}
    out.update(passes=passes, row_passes=passes)
    return out


def run_ours(model: Any, bf: np.ndarray, settings: SamplerSettings, n_seeds: int, device: torch.device,
             max_batch: int | None) -> dict:
    """Our procedure on ``bf`` ``(N, Z, Y, X)``: patches × seeds batched, running statistics.

    Products ``(N, Z, Y, X)``: ``ddpmavg`` and ``std_intra`` of seed 0, ``std_inter`` across seeds; the same per seed
    ``(K, N, Z, Y, X)`` as ``ddpmavg_seeds`` and ``std_intra_seeds``; ``passes``.
    """
    cond = torch.from_numpy(np.ascontiguousarray(bf))[:, None].to(device)
    ens = sample_ensemble(model.eps, cond, list(range(len(bf))), model.schedule, settings, n_seeds, model.target,
                          model.fl_mean, max_batch)
    avg = np.stack([a[:, 0].cpu().numpy() for a in ens.ddpmavg_seeds])
    intra = np.stack([s[:, 0].cpu().numpy() for s in ens.std_intra_seeds])
    return {
        "ddpmavg": avg[0], "std_intra": intra[0], "ddpmavg_seeds": avg, "std_intra_seeds": intra,
        "std_inter": ens.std_inter[:, 0].cpu().numpy(), "passes": ens.n_calls,
        "row_passes": len(ens.timesteps) * len(bf) * n_seeds,
    }


def load_average() -> float:
    """1-minute load average of the machine (NaN where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def timed(fn: Callable[[], dict], device: torch.device) -> dict:
    """Run ``fn``; adds wall ``seconds``, this process's ``cpu_seconds`` (all its threads), the load averages before
    and after, and CUDA ``peak_mb`` (NaN on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    load_before = load_average()
    cpu_tic = time.process_time()
    tic = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["seconds"] = time.perf_counter() - tic
    out["cpu_seconds"] = time.process_time() - cpu_tic
    out["load"] = (load_before, load_average())
    out["peak_mb"] = torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB if device.type == "cuda" else math.nan
    return out


@dataclass
class Scores:
    """Per-patch quality of one sampler's products against the ground truth (``(N,)`` arrays, AUROC pair counts)."""

    pcc: np.ndarray
    ms_ssim: np.ndarray
    auroc_intra: AurocPairCounts
    auroc_inter: AurocPairCounts

    def summary(self) -> dict[str, float]:
        return {"pcc": float(np.nanmean(self.pcc)), "ms_ssim": float(np.nanmean(self.ms_ssim)),
                "auroc_intra": float(self.auroc_intra.auroc()), "auroc_inter": float(self.auroc_inter.auroc())}


def pool_seeds(maps: np.ndarray) -> np.ndarray:
    """``(K, N, Z, Y, X)`` → ``(N, K·Z, Y, X)``: each patch's K seed maps side by side (one voxel pool per patch)."""
    k, n = maps.shape[:2]
    return np.moveaxis(maps, 0, 1).reshape(n, k * maps.shape[2], *maps.shape[3:])


def score(products: dict, gt: np.ndarray, tau: float, n_scales: int) -> Scores:
    """Per-patch quality of one DDPMavg run, averaged over the K seeds' runs; pooled AUROCs of both std maps.

    ``products`` holds ``ddpmavg_seeds`` and ``std_intra_seeds`` ``(K, N, Z, Y, X)`` and ``std_inter``
    ``(N, Z, Y, X)``; ``gt`` is ``(N, Z, Y, X)``. PCC and MS-SSIM (``n_scales``) of each seed's DDPMavg, mean over
    seeds per patch: the expected quality of a single DDPMavg run, with the sampling noise of one run cut by √K. The
    errors are ``|DDPMavg_k − GT| > tau`` of every seed k; each patch's voxel pool holds all K seeds, scored by the
    seed's intra-process std map and by the patch's inter-process std map (the same for every seed).
    """
    avg, intra = products["ddpmavg_seeds"], products["std_intra_seeds"]
    errors = np.abs(avg - gt[None]) > tau
    inter = np.broadcast_to(products["std_inter"][None], avg.shape)
    return Scores(
        pcc=np.array([[pcc(g, p) for g, p in zip(gt, seed, strict=True)] for seed in avg]).mean(0),
        ms_ssim=(np.mean([ms_ssim_batch(gt, seed, n_scales) for seed in avg], axis=0) if n_scales
                 else np.full(len(gt), np.nan)),
        auroc_intra=auroc_pair_counts(pool_seeds(intra), pool_seeds(errors)),
        auroc_inter=auroc_pair_counts(pool_seeds(inter), pool_seeds(errors)),
    )


def compare(candidate: Scores, comparator: Scores, n_resamples: int, seed: int = 0) -> NonInferiority:
    """Paired bootstrap CIs of candidate − comparator for every metric of :data:`MARGINS`."""
    return non_inferiority(
        {"pcc": (candidate.pcc, comparator.pcc), "ms_ssim": (candidate.ms_ssim, comparator.ms_ssim)},
        {"auroc_intra": (candidate.auroc_intra, comparator.auroc_intra),
         "auroc_inter": (candidate.auroc_inter, comparator.auroc_inter)},
        MARGINS, CONFIDENCE, n_resamples, seed,
    )


def candidate_settings(base: dict, steps: Sequence[int], etas: Sequence[float], bf16: bool) -> list[tuple[str, dict]]:
    """``(name, sampler dict)``: DDPM-1000 first, then DDIM-k for every k and eta (and bf16 versions with ``bf16``)."""
    out = [(COMPARATOR, {**base, "method": "ddpm", "num_steps": None, "eta": 0.0})]
    for k in steps:
        for eta in etas:
            out.append((f"ddim-{k} eta{eta:g}", {**base, "method": "ddim", "num_steps": int(k), "eta": float(eta)}))
    if bf16:
        out += [(f"{name} bf16", {**s, "precision": "bf16"}) for name, s in out[1:]]
    return out


def checkpoint_label(ckpt: Path, hparams: dict) -> str:
    """Short label of a checkpoint: prediction type and target range (e.g. ``epsilon[0,1]``) and the run folder."""
    low, high = hparams.get("target_range", (0.0, 1.0))
    return f"{hparams.get('prediction_type', 'epsilon')}[{low:g},{high:g}]@{ckpt.resolve().parent.parent.name}"


@dataclass
class Reference:
    """The reference procedure on a subset: its seconds per patch and its agreement with our DDPM-1000."""

    n_patches: int
    seconds: float
    cpu_seconds: float
    passes: int
    load: tuple[float, float]
    maxdiff: float
    agreement: dict[str, float] = field(default_factory=dict)

    @property
    def per_patch(self) -> float:
        return self.seconds / self.n_patches

    @property
    def cpu_per_patch(self) -> float:
        return self.cpu_seconds / self.n_patches


def reference_check(model: Any, bf: np.ndarray, base: SamplerSettings, n_seeds: int, device: torch.device,
                    ours: dict) -> Reference:
    """Run the reference procedure on ``bf`` (the first patches) and compare with ``ours`` (DDPM-1000, all patches)."""
    ref = timed(lambda: run_reference(model, bf, base, n_seeds, device), device)
    n = len(bf)
    agreement = {k: mean_pcc(ref[k], ours[k][:n]) for k in PRODUCTS}
    maxdiff = float(max(np.abs(ref[k] - ours[k][:n]).max() for k in PRODUCTS))
    return Reference(n, ref["seconds"], ref["cpu_seconds"], ref["passes"], ref["load"], maxdiff, agreement)


class PeakTensorMemory(TorchDispatchMode):
    """Live and peak bytes of the tensor storages alive while the mode is active (exact, any device, fake tensors too).

    Every operator's output storages are counted once, until Python frees them (a weak reference's callback);
    ``track`` counts storages made before (weights, inputs). Views share their base's storage and add nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs and self._refs[key]() is storage:
            return
        nbytes = storage.nbytes()

        def freed(_: weakref.ref, key: int = key, nbytes: int = nbytes) -> None:
            self.live -= nbytes
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, freed)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def track(self, *objects: torch.nn.Module | torch.Tensor) -> PeakTensorMemory:
        """Count the parameters and buffers of modules and the storages of tensors made before the mode."""
        for obj in objects:
            tensors = [*obj.parameters(), *obj.buffers()] if isinstance(obj, torch.nn.Module) else [obj]
            for tensor in tensors:
                self._add(tensor)
        return self

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._add(value)
        return out


def tensor_peak_mib(fn: Callable[[], Any], *external: torch.nn.Module | torch.Tensor) -> float:
    """Peak tensor memory (MiB) while ``fn`` runs, ``external`` modules and tensors (made before) included."""
    with PeakTensorMemory().track(*external) as tracker:
        fn()
    return tracker.peak / BYTES_PER_MIB


def fake_net_call_mib(net_config: dict, rows: int, shape: Sequence[int]) -> float:
    """Peak tensor memory (MiB) of one no-grad call of ``net_config`` on ``rows`` rows of ``shape`` ``(Z, Y, X)``.

    Runs under ``FakeTensorMode``: shapes and allocations without compute or real memory (weights included).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dm4isl.models.nets import build_net

    mode = FakeTensorMode()
    with mode:
        net = build_net(net_config, in_channels=2, out_channels=1).eval()
        x = torch.randn(rows, 2, *shape)
        t = torch.full((rows,), 500, dtype=torch.int64)

    def call() -> None:
        with mode, torch.no_grad():
            net(x, timesteps=t)

    return tensor_peak_mib(call, net, x, t)


def process_rss_mib() -> float:
    """Resident memory of this process now (MiB; Linux ``/proc``, NaN elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def memory_section(model: Any, bf: np.ndarray, base: dict, n_seeds: int, device: torch.device, budget_gib: float,
                   baseline_mib: float) -> dict[str, Any]:
    """Peak tensor memory of a network call, DDPM-1000 and DDIM-50 on ``bf`` × ``n_seeds`` rows and of the reference
    (one patch, batch 1); the paper net's linear fit and its largest batch within ``budget_gib``. Prints, returns."""
    from omegaconf import OmegaConf

    import dm4isl

    rows = len(bf) * n_seeds
    cond = torch.from_numpy(np.ascontiguousarray(bf))[:, None].to(device)
    net_in = torch.cat([cond, cond], dim=1).repeat(n_seeds, 1, 1, 1, 1)
    t = torch.full((rows,), 500, dtype=torch.int64, device=device)
    out: dict[str, Any] = {"rows": rows, "shape": list(bf.shape[1:])}
    one_in, one_t = net_in[:1].clone(), t[:1].clone()
    with torch.no_grad():
        out["net_call"] = tensor_peak_mib(lambda: model.net(net_in, timesteps=t), model, net_in, t)
        out["net_call_1"] = tensor_peak_mib(lambda: model.net(one_in, timesteps=one_t), model, one_in, one_t)
    ddim_steps = min(MEMORY_DDIM_STEPS, model.schedule.num_train_timesteps // 2)
    ddim = f"ddim-{ddim_steps}-eta1"  # eta 1 draws noise at every step, as ancestral DDPM does
    for name, settings in ((COMPARATOR, {**base, "method": "ddpm", "num_steps": None}),
                           (ddim, {**base, "method": "ddim", "num_steps": ddim_steps, "eta": 1.0})):
        s = SamplerSettings.from_dict(settings)
        out[name] = tensor_peak_mib(lambda s=s: run_ours(model, bf, s, n_seeds, device, None), model, cond)
    ref_settings = SamplerSettings.from_dict({**base, "method": "ddpm", "num_steps": None})
    out["reference"] = tensor_peak_mib(lambda: run_reference(model, bf[:1], ref_settings, 1, device), model)
    voxels = int(np.prod(bf.shape[1:]))
    per_row_voxel = max(0.0, out[ddim] - out["net_call"]) * BYTES_PER_MIB / (rows * voxels)
    ref_per_voxel = max(0.0, out["reference"] - out["net_call_1"]) * BYTES_PER_MIB / voxels
    out.update(sampler_bytes_per_row_voxel=per_row_voxel, reference_bytes_per_voxel=ref_per_voxel)
    print(f"# memory (peak tensor MiB, tracked storages; {rows} rows of {list(bf.shape[1:])}): one network call "
          f"{out['net_call']:.3f}; ours {COMPARATOR} {out[COMPARATOR]:.3f}; ours {ddim} {out[ddim]:.3f}; state beyond "
          f"the network call {per_row_voxel:.0f} B per row-voxel. Reference, 1 row: network call "
          f"{out['net_call_1']:.3f}, procedure {out['reference']:.3f}, state {ref_per_voxel:.0f} B per voxel",
          flush=True)
    paper = OmegaConf.to_container(OmegaConf.load(Path(dm4isl.__file__).parent / "conf" / PAPER_NET_CONFIG))
    paper_voxels = int(np.prod(PAPER_PATCH))
    fit_rows = np.array(MEMORY_FIT_ROWS, dtype=np.float64)
    peaks = np.array([fake_net_call_mib(paper, int(r), PAPER_PATCH) for r in MEMORY_FIT_ROWS])
    peaks += fit_rows * paper_voxels * per_row_voxel / BYTES_PER_MIB
    slope, intercept = np.polyfit(fit_rows, peaks, 1)
    residual = float(np.abs(peaks - (slope * fit_rows + intercept)).max())
    budget = budget_gib * MIB_PER_GIB
    out.update(paper_peaks_mib=peaks.tolist(), paper_mib_per_row=float(slope), paper_fixed_mib=float(intercept),
               paper_fit_residual_mib=residual, baseline_rss_mib=baseline_mib,
               paper_max_rows=int((budget - intercept) // slope),
               paper_max_rows_with_process=int((budget - intercept - baseline_mib) // slope))
    print(f"# memory, paper net ({list(PAPER_PATCH)}, fp32, no grad; FakeTensorMode, tracked storages, sampler state "
          f"added): rows {list(MEMORY_FIT_ROWS)} -> {', '.join(f'{p:.0f}' for p in peaks)} MiB = {intercept:.0f} MiB "
          f"+ {slope:.0f} MiB/row (fit residual {residual:.1f} MiB); within {budget_gib:g} GiB: "
          f"{out['paper_max_rows']} rows (patches x seeds) of tensors, {out['paper_max_rows_with_process']} with this "
          f"process's {baseline_mib:.0f} MiB baseline RSS", flush=True)
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``); unset ones take the preset's value, then :data:`DEFAULTS`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="cpu (≤ 15 min, 2 cores) | cpu-long (≈ 1 h) | gpu (full)")
    parser.add_argument("--ckpt", type=Path, action="append", default=None,
                        help="checkpoint (repeat for several; the first gives the last line); default: train a demo")
    parser.add_argument("--device", default=None)
    parser.add_argument("--n-patches", type=int, default=None, help="test patches per checkpoint (≥ 16 to decide)")
    parser.add_argument("--patch-size", type=_ints, default=None, help="Z,Y,X centre crop of the test patches")
    parser.add_argument("--n-seeds", type=int, default=None, help="seeds K of the inter-process std (≥ 2)")
    parser.add_argument("--ddim", type=_ints, default=None, help="comma-separated DDIM step counts")
    parser.add_argument("--etas", type=_floats, default=None, help="comma-separated DDIM etas")
    parser.add_argument("--bf16", action="store_true", help="also every DDIM candidate with bf16 network calls")
    parser.add_argument("--ref-patches", type=int, default=None, help="patches the reference procedure runs on")
    parser.add_argument("--window", type=_ints, default=None, help="t_low,t_high (default: the checkpoint's)")
    parser.add_argument("--mean-correction", choices=["on", "off"], default=None,
                        help="the ε̂ mean correction of every sampler (default: the checkpoint's)")
    parser.add_argument("--tau", type=float, default=ERROR_TAU, help="|DDPMavg − GT| above this is an error")
    parser.add_argument("--n-resamples", type=int, default=9999, help="bootstrap resamples")
    parser.add_argument("--max-batch", type=int, default=None, help="rows per network call (memory budget)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None, help="memory section")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="network weights in channels-last 3-D order, the reference's and ours (speed only)")
    parser.add_argument("--memory-budget-gib", type=float, default=8.0)
    parser.add_argument("--train-steps", type=int, default=300, help="steps of the demo trained without --ckpt")
    parser.add_argument("--workdir", type=Path, default=None, help="quick-train run and data cache")
    parser.add_argument("--out", type=Path, default=None, help="CSV of every row (written atomically)")
    args = parser.parse_args(argv)
    preset = PRESETS.get(args.preset, {})
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    if args.n_seeds < 2:
        parser.error(f"--n-seeds {args.n_seeds}; the inter-process std needs at least 2")
    return args


#: Table columns: per patch wall seconds, speedup vs the reference (wall and CPU time), load average after the run,
#: then per metric the candidate's value and candidate − DDPM-1000 with its CI (AUROCi/e: intra/inter std maps).
TABLE_HEADER = (f"{'checkpoint':<28}{'sampler':<20}{'calls':>6}{'s/patch':>9}{'speedup':>9}{'cpu x':>8}{'load':>6}"
                + "".join(f"{name:>8}  {'d [95% CI]':<27}" for name in ("PCC", "MS-SSIM", "AUROCi", "AUROCe"))
                + f"{'counts':>6}")


def _ci_text(d: Any) -> str:
    return f"{d.delta:+.4f} [{d.low:+.4f},{d.high:+.4f}]"


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark, print the tables; returns the speedup of the last line (NaN when nothing was timed)."""
    args = parse_args(argv)
    from dm4isl.io.atomic import write_csv
    from dm4isl.models.checkpoint import load_model, read_checkpoint
    from dm4isl.models.nets import to_channels_last

    baseline_mib = process_rss_mib()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dm4isl-bench-"))
    ckpts = args.ckpt or [train_quick_checkpoint(work, args.train_steps)]
    print(f"# margins {MARGINS} (lower end of the paired {CONFIDENCE:.0%} CI of candidate − {COMPARATOR} must lie "
          f"above), {args.n_resamples} patch resamples, tau={args.tau}; {args.n_patches} patches x {args.n_seeds} "
          f"seeds per checkpoint; device={device}, threads={torch.get_num_threads()}, load average "
          f"{load_average():.1f}", flush=True)
    rows: list[dict[str, Any]] = []
    speedups: dict[str, float] = {}
    references: dict[str, Reference] = {}
    for index, ckpt in enumerate(ckpts):
        hparams = read_checkpoint(ckpt)["hyper_parameters"]
        label = checkpoint_label(ckpt, hparams)
        model = load_model(ckpt, device)
        if args.channels_last:
            to_channels_last(model)
        patches = checkpoint_test_set(ckpt, args.n_patches, work / "cache", args.patch_size)
        base = dict(hparams.get("test_sampler") or {})
        base.pop("name", None)
        if args.window:
            base["window"] = list(args.window)
        if args.mean_correction:
            base["mean_correction"] = args.mean_correction == "on"
        n_scales = max_ms_ssim_scales(min(patches.bf.shape[-2:]))
        scale_note = "" if n_scales == MS_SSIM_SCALES else f" (MS-SSIM with {n_scales} scales: crop below 64 px)"
        resolved = SamplerSettings.from_dict(base)
        print(f"# {label}: {ckpt}; {len(patches)} patches {list(patches.bf.shape[1:])} (Z, Y, X){scale_note}; "
              f"window {list(resolved.window)}, mean correction {resolved.mean_correction}", flush=True)
        comparator = None
        for name, settings_dict in candidate_settings(base, args.ddim, args.etas, args.bf16):
            settings = SamplerSettings.from_dict(settings_dict)
            out = timed(lambda m=model, bf=patches.bf, s=settings: run_ours(m, bf, s, args.n_seeds, device,
                                                                            args.max_batch), device)
            scores = score(out, patches.fl, args.tau, n_scales)
            if comparator is None:
                comparator = (out, scores)
                net_key = repr(hparams["net"])
                if net_key not in references:
                    sub = patches.bf[: args.ref_patches]
                    references[net_key] = reference_check(model, sub, SamplerSettings.from_dict(settings_dict),
                                                          args.n_seeds, device, out)
                    ref = references[net_key]
                    print(f"# reference procedure on {ref.n_patches} patch(es) x (1 + {args.n_seeds}) runs: "
                          f"{ref.passes} calls of batch 1, {ref.seconds:.1f} s = {ref.per_patch:.2f} s/patch, CPU "
                          f"{ref.cpu_per_patch:.2f} s/patch (load "
                          f"{ref.load[0]:.1f} -> {ref.load[1]:.1f}); vs ours {COMPARATOR}: max |diff| "
                          f"{ref.maxdiff:.2e}, PCC " + ", ".join(f"{k} {v:.6f}" for k, v in ref.agreement.items()),
                          flush=True)
                    print(TABLE_HEADER, flush=True)
            ref = references[repr(hparams["net"])]
            result = compare(scores, comparator[1], args.n_resamples)
            per_patch = out["seconds"] / len(patches)
            speedup = ref.per_patch / per_patch
            cpu_speedup = ref.cpu_per_patch / (out["cpu_seconds"] / len(patches))
            summary = scores.summary()
            counts = result.passes
            print(f"{label[:27]:<28}{name:<20}{out['passes']:>6}{per_patch:>9.3f}{speedup:>9.1f}{cpu_speedup:>8.1f}"
                  f"{out['load'][1]:>6.1f}" + "".join(f"{summary[k]:>8.3f}  {_ci_text(result[k]):<27}" for k in MARGINS)
                  + f"{'yes' if counts else 'no':>6}", flush=True)
            row = {"checkpoint": label, "sampler": name, "calls": out["passes"], "row_passes": out["row_passes"],
                   "seconds": out["seconds"], "s_per_patch": per_patch, "ref_s_per_patch": ref.per_patch,
                   "ref_patches": ref.n_patches, "speedup": speedup, "cpu_seconds": out["cpu_seconds"],
                   "cpu_s_per_patch": out["cpu_seconds"] / len(patches), "ref_cpu_s_per_patch": ref.cpu_per_patch,
                   "cpu_speedup": cpu_speedup, "load_before": out["load"][0],
                   "load_after": out["load"][1], "peak_mb": out["peak_mb"], "counts": counts,
                   "ms_ssim_scales": n_scales, "n_patches": len(patches), "n_seeds": args.n_seeds}
            for key, value in summary.items():
                row[key] = value
                d = result[key]
                row.update({f"d_{key}": d.delta, f"d_{key}_low": d.low, f"d_{key}_high": d.high})
            rows.append(row)
            if counts and (speedup > speedups.get(label, -math.inf)):
                speedups[label] = speedup
        if index == 0 and args.memory:
            memory_section(model, patches.bf[:1], base, args.n_seeds, device, args.memory_budget_gib, baseline_mib)
    if args.out:
        write_csv(args.out, rows)
    for label in speedups:
        best = max((r for r in rows if r["checkpoint"] == label and r["counts"]), key=lambda r: r["speedup"])
        print(f"# {label}: fastest candidate that counts: {best['sampler']}, {best['s_per_patch']:.3f} s/patch vs the "
              f"reference's {best['ref_s_per_patch']:.2f} s/patch on {best['ref_patches']} patch(es): "
              f"{best['speedup']:.2f}x wall time, {best['cpu_speedup']:.2f}x CPU time "
              f"({best['cpu_s_per_patch']:.3f} vs {best['ref_cpu_s_per_patch']:.2f} CPU s/patch)", flush=True)
    first = checkpoint_label(ckpts[0], read_checkpoint(ckpts[0])["hyper_parameters"])
    speedup = speedups.get(first, math.nan)
    print(f"speedup_vs_reference={speedup:.2f}", flush=True)
    return speedup


if __name__ == "__main__":
    main()
    sys.exit(0)
