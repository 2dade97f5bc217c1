"""Sampling benchmark: the reference inference procedure vs ours (batched, running statistics, batched seeds, DDIM).

Same weights, same synthetic test patches, one run. By default each setting runs in its own spawned process so
that its peak resident memory (CPU) or peak allocated memory (CUDA) is its own. Prints one table; the last line
is ``speedup_vs_reference=<x>``: reference wall time / wall time of the fastest setting of ours whose DDPMavg PCC
is within 0.01 of the reference procedure's, for the full product (DDPMavg + intra std + inter std over the
seeds). Every figure is measured; nothing is extrapolated. On a 2-core CPU the last example below (with
``--ddim 50,100 --threads 1``) takes ≈ 11 min.

The reference procedure, exactly: for each patch separately, batch 1, fp32, 1000-step ancestral DDPM with MONAI's
``DDPMScheduler``, every x̂0(t) for t in the window appended to a Python list and stacked at the end for mean and
std; then ``n_seeds`` further full runs (seeds 0 … n_seeds − 1) for the inter-process std. Its noise is drawn
from the same per-(seed, patch) generator as ours (x_T first, then one draw per step, as MONAI's ``step`` does),
so at equal settings both procedures must agree voxel for voxel up to floating-point rounding: the
``vs_ref_*`` columns (PCC with the reference's DDPMavg, intra and inter std) and ``maxdiff_avg`` (largest
absolute DDPMavg difference) check exactly that.

    python scripts/benchmark_sampling.py                       # trains a tiny checkpoint first (CPU: minutes)
    python scripts/benchmark_sampling.py --ckpt model.ckpt --device cuda --net paper
    python scripts/benchmark_sampling.py --ckpt model.ckpt --n-patches 1 --patch-size 8,32,32 --n-seeds 2 --eta 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm4isl.data.patches import PatchSet
from dm4isl.metrics.basic import pcc
from dm4isl.sampling import SamplerSettings, correct_eps_mean, patch_generators, randn_per_patch
from dm4isl.sampling.ensemble import ensemble_seeds, sample_ensemble

#: Tolerance on DDPMavg PCC for a setting to count as "as good as the reference".
PCC_TOLERANCE = 0.01
KIB_PER_MIB = 1024.0
BYTES_PER_MIB = 2**20
#: Experiment whose data settings describe a checkpoint that has no Hydra run folder (the quick-train path).
FALLBACK_EXPERIMENT = "demo"
#: Data-module keys taken from the run configuration (the rest is set here: organelle, cache, split file, n).
_RUN_DATA_KEYS = ("n_fovs", "fov_shape", "ambiguous_fraction", "split_fractions", "split_seed", "eval_patch_size",
                  "filter_max_tries", "seed")
#: Products compared with the reference, in table order.
PRODUCTS = ("ddpmavg", "std_intra", "std_inter")


def train_quick_checkpoint(out: Path, minutes: float) -> Path:
    """Train the tiny diffusion net on synthetic nuclear envelope for ``minutes`` and return its last checkpoint."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import dm4isl
    from dm4isl.train import train

    conf = Path(dm4isl.__file__).parent / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose("train", overrides=[f"experiment={FALLBACK_EXPERIMENT}", "test=false",
                                          f"trainer.max_time={{minutes: {minutes}}}"])
    with open_dict(cfg):
        cfg.paths.root_dir = str(out)
        cfg.paths.data_dir = str(out / "data")
        cfg.paths.log_dir = str(out)
        cfg.paths.output_dir = str(out / "run")
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"


def run_data_settings(ckpt: Path) -> dict[str, Any]:
    """Data-module settings of the run that wrote ``ckpt`` (``<run>/checkpoints/<name>.ckpt``).

    Read from ``<run>/.hydra/config.yaml`` when present, else from the ``demo`` experiment (what
    :func:`train_quick_checkpoint` trains with); ``<run>/split.csv`` is reused when present, so the test patches
    are the run's own test split, never training data.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import dm4isl

    run_dir = ckpt.resolve().parent.parent
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        cfg = OmegaConf.load(saved)
    else:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(Path(dm4isl.__file__).parent / "conf")):
            cfg = compose("train", overrides=[f"experiment={FALLBACK_EXPERIMENT}"])
        GlobalHydra.instance().clear()
    out = {}
    for key in _RUN_DATA_KEYS:
        if key in cfg.data:
            value = cfg.data[key]
            out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    split = run_dir / "split.csv"
    out["split_file"] = str(split) if split.is_file() else None
    return out


def center_crop(arrays: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Centre crop ``(N, Z, Y, X)`` to ``(N, *size)``; raises ValueError when ``size`` exceeds the patch."""
    shape = arrays.shape[1:]
    if any(s > h for s, h in zip(size, shape, strict=True)):
        raise ValueError(f"crop {list(size)} (Z, Y, X) is larger than the test patches {list(shape)}")
    starts = [(h - s) // 2 for s, h in zip(size, shape, strict=True)]
    return arrays[:, starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]


def checkpoint_test_set(ckpt: Path, n: int, cache: Path, crop: Sequence[int] | None = None) -> PatchSet:
    """The first ``n`` synthetic test patches of the checkpoint's run (arrays ``(N, Z, Y, X)``), centre-cropped."""
    from dm4isl.data.datamodule import SyntheticDataModule
    from dm4isl.prediction.checkpoint import read_checkpoint

    hp = read_checkpoint(ckpt)["hyper_parameters"]
    dm = SyntheticDataModule(hp["organelle"], patch_size=hp["patch_size"], n_test_patches=n, n_val_patches=1,
                             cache_dir=cache, **run_data_settings(ckpt))
    dm.setup("test")
    ts = dm.test_set
    if len(ts) < n:
        raise ValueError(f"{ckpt}: its test split gave {len(ts)} patches; expected {n}")
    arrays = [ts.bf[:n], ts.fl[:n], ts.mask[:n]]
    if crop is not None:
        arrays = [center_crop(a, crop) for a in arrays]
    return PatchSet(bf=arrays[0], fl=arrays[1], mask=arrays[2], names=list(ts.names[:n]),
                    sources=list(ts.sources[:n]), corners=ts.corners[:n])


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
    """Our procedure on ``bf`` ``(N, Z, Y, X)``: patches × seeds batched, running statistics; products, passes."""
    cond = torch.from_numpy(np.ascontiguousarray(bf))[:, None].to(device)
    ens = sample_ensemble(model.eps, cond, list(range(len(bf))), model.schedule, settings, n_seeds, model.target,
                          model.fl_mean, max_batch)
    return {
        "ddpmavg": ens.ddpmavg_seeds[0][:, 0].cpu().numpy(), "ddpmavg_mean": ens.ddpmavg[:, 0].cpu().numpy(),
        "std_intra": ens.std_intra_seeds[0][:, 0].cpu().numpy(), "std_inter": ens.std_inter[:, 0].cpu().numpy(),
        "passes": ens.n_calls, "row_passes": len(ens.timesteps) * len(bf) * n_seeds,
    }


def _peak_mb(device: torch.device, isolated: bool) -> float:
    """Peak memory of this setting: CUDA peak allocated, or the process's peak RSS (only when run in isolation)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
    if isolated:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB
    return float("nan")


@torch.no_grad()
def execute(job: dict, isolated: bool = False) -> dict:
    """Load the checkpoint and run one setting (``job["kind"]`` reference | ours); adds seconds and peak_mb."""
    from dm4isl.prediction.checkpoint import load_model

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(job["device"])
    model = load_model(job["ckpt"], device)
    settings = SamplerSettings.from_dict(job["settings"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    if job["kind"] == "reference":
        out = run_reference(model, job["bf"], settings, job["n_seeds"], device)
    else:
        out = run_ours(model, job["bf"], settings, job["n_seeds"], device, job["max_batch"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["seconds"] = time.perf_counter() - tic
    out["peak_mb"] = _peak_mb(device, isolated)
    return out


def _child(job: dict, queue: mp.Queue) -> None:
    queue.put(execute(job, isolated=True))


def run_job(job: dict, in_process: bool = False) -> dict:
    """Run one setting, by default in a fresh spawned process (its own peak memory); returns products, timings."""
    if in_process:
        return execute(job)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, queue), daemon=True)
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark child for {job['kind']} exited with code {proc.exitcode}; expected 0")
    return out


def mean_pcc(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over patches of the per-patch PCC of two ``(N, Z, Y, X)`` stacks."""
    return float(np.mean([pcc(x, y) for x, y in zip(a, b, strict=True)]))


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint (default: train a tiny one first)")
    parser.add_argument("--net", choices=["tiny", "paper"], default="tiny", help="label only, the checkpoint decides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n-patches", type=int, default=8)
    parser.add_argument("--patch-size", type=_ints, default=None, help="Z,Y,X centre crop of the test patches")
    parser.add_argument("--n-seeds", type=int, default=5)
    parser.add_argument("--ddim", type=_ints, default=[50, 100, 250], help="comma-separated DDIM step counts")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta of the DDIM settings (0: deterministic)")
    parser.add_argument("--window", type=_ints, default=None, help="t_low,t_high (default: the checkpoint's)")
    parser.add_argument("--max-batch", type=int, default=None, help="rows per network call (memory budget)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per setting")
    parser.add_argument("--train-minutes", type=float, default=4.0)
    parser.add_argument("--workdir", type=Path, default=None, help="quick-train run and data cache")
    parser.add_argument("--in-process", action="store_true", help="no child processes (peak RSS not reported)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark, print the table; returns the speedup (NaN when no setting of ours qualifies)."""
    args = parse_args(argv)
    from dm4isl.prediction.checkpoint import read_checkpoint

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dm4isl-bench-"))
    ckpt = args.ckpt or train_quick_checkpoint(work, args.train_minutes)
    patches = checkpoint_test_set(ckpt, args.n_patches, work / "cache", args.patch_size)
    base = dict(read_checkpoint(ckpt)["hyper_parameters"].get("test_sampler") or {})
    base.update(method="ddpm", num_steps=None, eta=0.0)
    if args.window:
        base["window"] = list(args.window)
    common = {"ckpt": str(ckpt), "bf": patches.bf, "n_seeds": args.n_seeds, "device": args.device,
              "max_batch": args.max_batch, "threads": args.threads}
    print(f"# {len(patches)} patches {list(patches.bf.shape[1:])} (Z, Y, X), {args.n_seeds} seeds, net={args.net}, "
          f"device={args.device}, threads={args.threads or torch.get_num_threads()}, window={base['window']}, "
          f"checkpoint={ckpt}", flush=True)
    rows = [("reference DDPM", run_job({**common, "kind": "reference", "settings": base}, args.in_process))]
    ddim_tag = f" eta{args.eta:g}" if args.eta else ""
    jobs = [("ours DDPM", base)] + [
        (f"ours DDIM-{n}{ddim_tag}", {**base, "method": "ddim", "num_steps": n, "eta": args.eta}) for n in args.ddim
    ]
    for label, settings in jobs:
        rows.append((label, run_job({**common, "kind": "ours", "settings": settings}, args.in_process)))
    ref = rows[0][1]
    ref_pcc = mean_pcc(patches.fl, ref["ddpmavg"])
    print(f"{'setting':<20}{'calls':>7}{'row_passes':>11}{'wall_s':>9}{'peak_MB':>9}{'pcc_avg':>9}{'pcc_avgK':>9}"
          f"{'vs_ref_avg':>11}{'vs_ref_intra':>13}{'vs_ref_inter':>13}{'maxdiff_avg':>12}")
    best = None
    for label, out in rows:
        p = mean_pcc(patches.fl, out["ddpmavg"])
        agree = [mean_pcc(ref[k], out[k]) for k in PRODUCTS]
        print(f"{label:<20}{out['passes']:>7}{out['row_passes']:>11}{out['seconds']:>9.1f}{out['peak_mb']:>9.0f}"
              f"{p:>9.4f}{mean_pcc(patches.fl, out['ddpmavg_mean']):>9.4f}"
              f"{agree[0]:>11.4f}{agree[1]:>13.4f}{agree[2]:>13.4f}"
              f"{np.abs(out['ddpmavg'] - ref['ddpmavg']).max():>12.2e}", flush=True)
        if label.startswith("ours") and p >= ref_pcc - PCC_TOLERANCE and (best is None or out["seconds"] < best):
            best = out["seconds"]
    speedup = ref["seconds"] / best if best else float("nan")
    print(f"speedup_vs_reference={speedup:.2f}", flush=True)
    return speedup


if __name__ == "__main__":
    main()
    sys.exit(0)
