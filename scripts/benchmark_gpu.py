"""GPU benchmark of the paper's DDPM: training throughput, memory and FLOP utilisation per setting, then sampling cost.

For every combination of batch size and variant (bf16 autocast, channels_last_3d, torch.compile, SDPA attention)
it trains the conditional DDPM (the LightningModule's own ``training_step``, Adam) for a few hundred steps on
random 16 × 64 × 64 (Z, Y, X) patches and records patches per second, peak GPU memory and model FLOP utilisation
(MFU = FLOPs of a training step by torch's FLOP counter / step time / the card's dense bf16 peak). Then, with the
fastest setting, it times DDPMavg + intra- and inter-process uncertainty (seed ensemble) per patch for DDPM-1000
and DDIM. Prints tables and writes them as JSON.

    python scripts/benchmark_gpu.py --out outputs/benchmark_gpu.json          # the paper net, on a CUDA GPU
    python scripts/benchmark_gpu.py --smoke                                   # tiny net, tiny sizes, CPU: a check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

import dm4isl
from dm4isl.models.ddpm import DDPMModule
from dm4isl.sampling import SamplerSettings
from dm4isl.sampling.ensemble import is_out_of_memory, sample_ensemble

NET_DIR = Path(dm4isl.__file__).parent / "conf" / "model" / "net"
#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of ``torch.cuda.get_device_name()``.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
#: Variants: name → (bf16 autocast, channels_last_3d, torch.compile, SDPA attention).
VARIANTS = {
    "fp32": (False, False, False, False),
    "bf16": (True, False, False, False),
    "bf16+sdpa": (True, False, False, True),
    "bf16+sdpa+cl3d": (True, True, False, True),
    "bf16+sdpa+compile": (True, False, True, True),
    "bf16+sdpa+cl3d+compile": (True, True, True, True),
}
#: MFU the paper-size training should reach on a datacentre GPU.
TARGET_MFU = 0.40
TERA = 1e12
MIB = 2**20
#: Paper-size defaults and the smoke-test sizes.
DEFAULTS = {"net": "paper", "shape": [16, 64, 64], "batch_sizes": [1, 2, 4, 8], "variants": list(VARIANTS),
            "steps": 300, "warmup": 20, "sample_patches": 8, "sample_seeds": 5, "ddim_steps": 50, "ddpm_steps": True}
SMOKE = {"net": "tiny", "shape": [8, 16, 16], "batch_sizes": [1, 2], "variants": ["fp32", "bf16+sdpa+cl3d"],
         "steps": 2, "warmup": 1, "sample_patches": 2, "sample_seeds": 2, "ddim_steps": 4, "ddpm_steps": False}
#: Paper sampler settings (SPEC §3): DDPMavg window [300, 800).
WINDOW = (300, 800)


@dataclass
class TrainResult:
    """One (variant, batch size) training measurement; ``status`` is ``ok``, ``oom`` or an error name."""

    variant: str
    batch: int
    status: str
    step_s: float = math.nan
    patches_per_s: float = math.nan
    peak_mib: float = math.nan
    tflops_per_step: float = math.nan
    achieved_tflops: float = math.nan
    mfu: float = math.nan


def net_config(name: str, sdpa: bool) -> dict[str, Any]:
    """The ``conf/model/net/<name>.yaml`` network config, with MONAI's SDPA attention switched on or off."""
    config = OmegaConf.to_container(OmegaConf.load(NET_DIR / f"{name}.yaml"))
    return {**config, "use_flash_attention": bool(sdpa)}


def build_model(net: str, shape: Sequence[int], variant: str, device: torch.device) -> DDPMModule:
    """A DDPMModule with the paper's schedule and loss, prepared as ``variant`` says (memory format, compile)."""
    _, channels_last, compile_net, sdpa = VARIANTS[variant]
    model = DDPMModule(net=net_config(net, sdpa), patch_size=list(shape)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if compile_net:
        model.net.compile()  # in place, as train.py's compile=true does
    return model


def random_batch(batch: int, shape: Sequence[int], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Random brightfield/fluorescence patches ``(B, 1, Z, Y, X)`` in [0, 1] (cost does not depend on content)."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    bf = torch.rand(batch, 1, *shape, device=device).contiguous(memory_format=fmt)
    return {"bf": bf, "fl": torch.rand_like(bf), "index": torch.arange(batch)}


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled`` (the scheduler arithmetic inside the model stays float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_fn(model: DDPMModule, batch: dict[str, Any], device: torch.device, bf16: bool) -> Callable[[], None]:
    """One optimisation step of ``model.training_step`` (Adam, the paper's learning rate) on a fixed batch."""
    opt = model.configure_optimizers()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = model.training_step(batch, 0)
        loss.backward()
        opt.step()

    return step


def step_flops(step: Callable[[], None]) -> float:
    """FLOPs of one call of ``step`` by torch's FLOP counter (matrix multiplications and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """The card's dense bf16 peak in FLOP/s (``--peak-tflops`` or :data:`PEAK_BF16_TFLOPS`); None when unknown."""
    if override_tflops:
        return override_tflops * TERA
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * TERA
    return None


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Silence the LightningModule's warning about ``self.log`` outside a Trainer (the loop here is plain torch)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        warnings.filterwarnings("ignore", message=".*trainer.*")
        yield


def bench_train(args: argparse.Namespace, variant: str, batch: int, device: torch.device,
                peak: float | None) -> TrainResult:
    """Time ``args.steps`` training steps after ``args.warmup`` warm-up steps (compilation happens in warm-up)."""
    bf16, channels_last, _, _ = VARIANTS[variant]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model = build_model(args.net, args.shape, variant, device)
        data = random_batch(batch, args.shape, device, channels_last)
        step = train_step_fn(model, data, device, bf16)
        with quiet_logging():
            for _ in range(args.warmup):
                step()
            flops = step_flops(step)
            sync(device)
            tic = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
        seconds = (time.perf_counter() - tic) / args.steps
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        return TrainResult(variant, batch, "oom")
    peak_mib = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else math.nan
    achieved = flops / seconds
    return TrainResult(
        variant, batch, "ok", seconds, batch / seconds, peak_mib, flops / TERA, achieved / TERA,
        achieved / peak if peak else math.nan,
    )


def bench_sampling(args: argparse.Namespace, variant: str, device: torch.device) -> list[dict[str, Any]]:
    """Seconds per patch for DDPMavg + intra/inter std (``args.sample_seeds`` seeds) with DDIM and DDPM-1000."""
    bf16, channels_last, _, _ = VARIANTS[variant]
    model = build_model(args.net, args.shape, variant, device).eval()
    model.data_stats += torch.tensor([1.0, 0.5, 0.3, 0.3, 0.2], dtype=torch.float64, device=device)
    bf = random_batch(args.sample_patches, args.shape, device, channels_last)["bf"]
    samplers = {f"ddim-{args.ddim_steps}": {"method": "ddim", "num_steps": args.ddim_steps}}
    if args.ddpm_steps:
        samplers["ddpm-1000"] = {"method": "ddpm"}
    rows = []
    for name, spec in samplers.items():
        settings = SamplerSettings.from_dict({**spec, "window": list(WINDOW)})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        tic = time.perf_counter()
        with torch.no_grad(), autocast(device, bf16):
            ens = sample_ensemble(model.eps, bf, list(range(args.sample_patches)), model.schedule, settings,
                                  args.sample_seeds, model.target, model.fl_mean, max_batch=args.max_batch)
        sync(device)
        seconds = time.perf_counter() - tic
        rows.append({
            "sampler": name, "variant": variant, "patches": args.sample_patches, "seeds": args.sample_seeds,
            "network_calls": ens.n_calls, "seconds": seconds, "seconds_per_patch": seconds / args.sample_patches,
            "peak_mib": torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else math.nan,
            "finite": bool(torch.isfinite(ens.ddpmavg).all() and torch.isfinite(ens.std_inter).all()),
        })
    return rows


def format_train(rows: Sequence[TrainResult]) -> str:
    header = f"{'variant':<24}{'batch':>6}{'status':>8}{'s/step':>10}{'patch/s':>10}{'peak MiB':>10}" \
             f"{'TFLOP/st':>10}{'TFLOP/s':>9}{'MFU':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.variant:<24}{r.batch:>6}{r.status:>8}{r.step_s:>10.4f}{r.patches_per_s:>10.2f}"
                     f"{r.peak_mib:>10.0f}{r.tflops_per_step:>10.3f}{r.achieved_tflops:>9.2f}{r.mfu:>7.1%}")
    return "\n".join(lines)


def format_sampling(rows: Sequence[dict[str, Any]]) -> str:
    header = f"{'sampler':<12}{'variant':<24}{'patches':>8}{'seeds':>6}{'calls':>7}{'s/patch':>10}{'peak MiB':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['sampler']:<12}{r['variant']:<24}{r['patches']:>8}{r['seeds']:>6}{r['network_calls']:>7}"
                     f"{r['seconds_per_patch']:>10.3f}{r['peak_mib']:>10.0f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny net and sizes: checks the script end to end")
    parser.add_argument("--net", choices=["paper", "tiny"], default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per setting")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--sample-patches", type=int, default=None)
    parser.add_argument("--sample-seeds", type=int, default=None, help="seeds of the ensemble (inter-process std)")
    parser.add_argument("--ddim-steps", type=int, default=None)
    parser.add_argument("--no-ddpm", action="store_true", help="skip the 1000-step DDPM sampling timing")
    parser.add_argument("--max-batch", type=int, default=None, help="rows per sampling call (None: all at once)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (TFLOP/s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the tables")
    args = parser.parse_args(argv)
    base = SMOKE if args.smoke else DEFAULTS
    for key, value in base.items():
        if key == "ddpm_steps":
            args.ddpm_steps = value and not args.no_ddpm
        elif getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"device", "train": [...], "sampling": [...]}`` (also written to ``--out``)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; net {args.net}; patch {args.shape} (Z, Y, X); dense bf16 peak "
          f"{peak / TERA if peak else 'unknown'} TFLOP/s; MFU target {TARGET_MFU:.0%}")
    train_rows = [bench_train(args, v, b, device, peak) for v in args.variants for b in args.batch_sizes]
    print(format_train(train_rows))
    done = [r for r in train_rows if r.status == "ok"]
    if not done:
        raise RuntimeError("no training setting fitted in memory; try smaller --batch-sizes")
    best = max(done, key=lambda r: r.patches_per_s)
    print(f"fastest: {best.variant} at batch {best.batch}: {best.patches_per_s:.2f} patches/s, MFU {best.mfu:.1%}")
    sampling_rows = bench_sampling(args, best.variant, device)
    print(format_sampling(sampling_rows))
    result = {"device": name, "net": args.net, "shape": args.shape, "peak_tflops": peak / TERA if peak else None,
              "train": [asdict(r) for r in train_rows], "sampling": sampling_rows}
    if args.out is not None:
        from dm4isl.io.atomic import write_text

        write_text(args.out, json.dumps(result, indent=2, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
