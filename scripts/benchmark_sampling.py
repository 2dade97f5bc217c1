"""Sampling benchmark: the reference inference procedure vs ours (batched, running statistics, batched seeds, DDIM).

Same weights, same synthetic test patches, one run. Each setting runs in its own child process so that its peak
resident memory (CPU) or peak allocated memory (CUDA) is its own. Prints one table; the last line is
``speedup_vs_reference=<x>``: reference wall time / wall time of the fastest setting of ours whose DDPMavg PCC is
within 0.01 of the reference procedure's, for the full product (DDPMavg + intra std + inter std over the seeds).

The reference procedure, exactly: for each patch separately, batch 1, fp32, 1000-step ancestral DDPM with MONAI's
``DDPMScheduler``, every x̂0(t) for t in the window appended to a Python list and stacked at the end for mean and
std; then ``n_seeds`` further full runs (seeds 0 … n_seeds − 1) for the inter-process std.

    python scripts/benchmark_sampling.py                       # trains a tiny checkpoint first (CPU: minutes)
    python scripts/benchmark_sampling.py --ckpt model.ckpt --device cuda --net paper
    python scripts/benchmark_sampling.py --n-patches 2 --ddim 50,100   # a short CPU run
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm4isl.metrics.basic import pcc
from dm4isl.sampling import SamplerSettings, correct_eps_mean
from dm4isl.sampling.ensemble import sample_ensemble

#: Tolerance on DDPMavg PCC for a setting to count as "as good as the reference".
PCC_TOLERANCE = 0.01
KIB_PER_MIB = 1024.0


def train_quick_checkpoint(out: Path, minutes: float) -> Path:
    """Train the tiny diffusion net on synthetic nuclear envelope for ``minutes`` and return its last checkpoint."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import dm4isl
    from dm4isl.train import train

    conf = Path(dm4isl.__file__).parent / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose("train", overrides=["experiment=demo", "test=false", f"trainer.max_time={{minutes: {minutes}}}"])
    with open_dict(cfg):
        cfg.paths.root_dir = str(out)
        cfg.paths.data_dir = str(out / "data")
        cfg.paths.log_dir = str(out)
        cfg.paths.output_dir = str(out / "run")
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


def test_patches(ckpt: Path, n: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` cached synthetic test patches ``(N, Z, Y, X)`` (bf, fl) of the checkpoint's organelle."""
    from dm4isl.data.datamodule import SyntheticDataModule
    from dm4isl.prediction.checkpoint import read_checkpoint

    hp = read_checkpoint(ckpt)["hyper_parameters"]
    dm = SyntheticDataModule(hp["organelle"], patch_size=hp["patch_size"], eval_patch_size=[16, 64, 64],
                             n_test_patches=n, n_val_patches=1, cache_dir=cache, split_file=None)
    dm.setup("test")
    return dm.test_set.bf[:n], dm.test_set.fl[:n]


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def run_reference(model: Any, bf: np.ndarray, settings: SamplerSettings, n_seeds: int, device: torch.device) -> dict:
    """The reference procedure (see module docstring); returns products ``(N, Z, Y, X)`` and the pass count."""
    from monai.networks.schedulers import DDPMScheduler

    sched = model.schedule
    scheduler = DDPMScheduler(
        num_train_timesteps=sched.num_train_timesteps, schedule="scaled_linear_beta", beta_start=sched.beta_start,
        beta_end=sched.beta_end, clip_sample=settings.clip_x0 is not None,
    )
    target_mean = model.target.to_model(model.fl_mean) if settings.mean_correction else None
    t_low, t_high = settings.window
    avg, intra, inter = [], [], []
    passes = 0

    def one_run(cond: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal passes
        torch.manual_seed(seed)
        x = torch.randn((1, 1, *cond.shape[2:]), device=device)
        chain = []
        for t in scheduler.timesteps.tolist():
            eps = model.eps(x, torch.tensor([t], device=device), cond).float()
            passes += 1
            if target_mean is not None:
                eps = correct_eps_mean(eps, x, sched.abar(t), target_mean)
            x, x0 = scheduler.step(eps, t, x)
            if t_low <= t < t_high:
                chain.append(model.target.to_data(x0).cpu())
        stack = torch.stack(chain)
        return stack.mean(0), stack.std(0, unbiased=False)

    for patch in bf:
        cond = torch.from_numpy(patch)[None, None].to(device)
        mean, std = one_run(cond, settings.seed)
        avg.append(mean.clamp(0, 1)[0, 0].numpy())
        intra.append(std[0, 0].numpy())
        seeds = torch.stack([one_run(cond, s)[0].clamp(0, 1) for s in range(n_seeds)])
        inter.append(seeds.std(0, unbiased=False)[0, 0].numpy())
    return {"ddpmavg": np.stack(avg), "std_intra": np.stack(intra), "std_inter": np.stack(inter), "passes": passes}


def run_ours(model: Any, bf: np.ndarray, settings: SamplerSettings, n_seeds: int, device: torch.device,
             max_batch: int | None) -> dict:
    """Our procedure: all patches × seeds batched, running statistics; returns products and pass count."""
    cond = torch.from_numpy(bf)[:, None].to(device)
    ens = sample_ensemble(model.eps, cond, list(range(len(bf))), model.schedule, settings, n_seeds, model.target,
                          model.fl_mean, max_batch)
    return {
        "ddpmavg": ens.ddpmavg_seeds[0][:, 0].cpu().numpy(), "ddpmavg_mean": ens.ddpmavg[:, 0].cpu().numpy(),
        "std_intra": ens.std_intra_seeds[0][:, 0].cpu().numpy(), "std_inter": ens.std_inter[:, 0].cpu().numpy(),
        "passes": ens.n_calls,
    }


def _child(job: dict, queue: mp.Queue) -> None:
    from dm4isl.prediction.checkpoint import load_model

    torch.set_grad_enabled(False)
    device = torch.device(job["device"])
    model = load_model(job["ckpt"], device)
    settings = SamplerSettings.from_dict(job["settings"])
    tic = time.perf_counter()
    if job["kind"] == "reference":
        out = run_reference(model, job["bf"], settings, job["n_seeds"], device)
    else:
        out = run_ours(model, job["bf"], settings, job["n_seeds"], device, job["max_batch"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["seconds"] = time.perf_counter() - tic
    out["peak_mb"] = _memory_mb(device)
    queue.put(out)


def run_job(job: dict) -> dict:
    """Run one setting in a fresh spawned process (own peak memory); returns its products and timings."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def _pcc_stack(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([pcc(x, y) for x, y in zip(a, b, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: train a tiny one first)")
    parser.add_argument("--net", choices=["tiny", "paper"], default="tiny", help="label only, the checkpoint decides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-patches", type=int, default=8)
    parser.add_argument("--n-seeds", type=int, default=5)
    parser.add_argument("--ddim", default="50,100,250", help="comma-separated DDIM step counts")
    parser.add_argument("--max-batch", type=int, default=None, help="rows per network call (memory budget)")
    parser.add_argument("--train-minutes", type=float, default=4.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dm4isl-bench-"))
    ckpt = args.ckpt or train_quick_checkpoint(work, args.train_minutes)
    bf, gt = test_patches(ckpt, args.n_patches, work / "cache")
    from dm4isl.prediction.checkpoint import read_checkpoint

    base = dict(read_checkpoint(ckpt)["hyper_parameters"].get("test_sampler") or {})
    base.update(method="ddpm", num_steps=None)
    common = {"ckpt": str(ckpt), "bf": bf, "n_seeds": args.n_seeds, "device": args.device, "max_batch": args.max_batch}
    print(f"# {len(bf)} patches {bf.shape[1:]} (Z, Y, X), {args.n_seeds} seeds, net={args.net}, device={args.device}",
          flush=True)
    ref = run_job({**common, "kind": "reference", "settings": base})
    rows = [("reference DDPM-1000", ref)]
    jobs = [("ours DDPM-1000", base)] + [
        (f"ours DDIM-{n}", {**base, "method": "ddim", "num_steps": int(n)}) for n in args.ddim.split(",")
    ]
    for label, settings in jobs:
        rows.append((label, run_job({**common, "kind": "ours", "settings": settings})))
    ref_pcc = _pcc_stack(gt, ref["ddpmavg"])
    header = (f"{'setting':<22}{'passes':>8}{'wall_s':>10}{'peak_MB':>10}{'pcc_avg':>9}{'pcc_avg5':>9}"
              f"{'vs_ref_avg':>11}{'vs_ref_intra':>13}{'vs_ref_inter':>13}")
    print(header)
    best = None
    for label, out in rows:
        p = _pcc_stack(gt, out["ddpmavg"])
        p5 = _pcc_stack(gt, out["ddpmavg_mean"]) if "ddpmavg_mean" in out else float("nan")
        agree = [_pcc_stack(ref[k], out[k]) for k in ("ddpmavg", "std_intra", "std_inter")]
        print(f"{label:<22}{out['passes']:>8}{out['seconds']:>10.1f}{out['peak_mb']:>10.0f}{p:>9.4f}{p5:>9.4f}"
              f"{agree[0]:>11.4f}{agree[1]:>13.4f}{agree[2]:>13.4f}", flush=True)
        if label.startswith("ours") and p >= ref_pcc - PCC_TOLERANCE and (best is None or out["seconds"] < best):
            best = out["seconds"]
    speedup = ref["seconds"] / best if best else float("nan")
    print(f"speedup_vs_reference={speedup:.2f}")


if __name__ == "__main__":
    sys.exit(main())
