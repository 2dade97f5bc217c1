"""CPU speed levers, side by side: training steps and sampling calls of the tiny and a mid-size diffusion net.

Each lever is one change from the float32 eager baseline (``torch.no_grad``, contiguous tensors, ``--threads``):
``torch.inference_mode``, channels-last 3-D memory format, ``torch.compile`` (inductor; its compilation happens in
the untimed warm-up and is reported apart), bf16 autocast, and another thread count (1 if the baseline uses more,
else one per core); plus bf16 with channels-last. Every variant has its own copy of the same weights. Timed
repetitions are interleaved
(baseline, lever 1, lever 2, …, baseline, …), so load on a shared machine hits every variant alike; the table gives
the median seconds per call and the speed ratio baseline / variant (> 1: faster), and for sampling the largest
difference of the variant's ε̂ from the baseline's relative to the baseline's largest value (numbers that change
are not safe as a default).

The kernels follow the CPU: bf16 is fast on CPUs with AMX or avx512_bf16 and emulated (slow) on AVX2-only CPUs.
``--isa avx2`` reruns the script with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, which restricts
PyTorch and oneDNN to the AVX2 kernels such a CPU has.

    python scripts/benchmark_cpu.py                          # both nets, training and sampling, native kernels
    python scripts/benchmark_cpu.py --isa avx2 --nets tiny   # as on an AVX2-only CPU
    python scripts/benchmark_cpu.py --nets nano tiny --no-compile --no-bf16   # quick, on an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import dm4isl
from dm4isl.models.ddpm import DDPMModule

#: Network configs: the demo's tiny net and a mid-size one (3 levels, 2 res blocks, no attention).
NET_DIR = Path(dm4isl.__file__).parent / "conf" / "model" / "net"
MID_NET = {"name": "diffusion_unet", "channels": [32, 64, 128], "attention_levels": [False, False, False],
           "num_res_blocks": 2, "num_head_channels": 8, "norm_num_groups": 8}
#: Workloads: sampling rows × (Z, Y, X) per ε call (nano, tiny: the CPU preset's batch of the sampling benchmark, 16
#: patches × 2 seeds of 8 × 32 × 32) and the training batch (the demo's, 4 crops of 16 × 32 × 32).
SAMPLE_WORK = {"nano": (32, (8, 32, 32)), "tiny": (32, (8, 32, 32)), "mid": (8, (16, 32, 32))}
TRAIN_WORK = {"nano": (4, (16, 32, 32)), "tiny": (4, (16, 32, 32)), "mid": (4, (16, 32, 32))}
#: Environment that restricts PyTorch (ATen) and oneDNN to AVX2 kernels.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: The diffusion timestep of the timed sampling calls (cost does not depend on it).
SAMPLE_T = 500
BASELINE = "fp32"


@dataclass(frozen=True)
class Lever:
    """One variant: which levers are on (``threads`` None: the baseline's; -1: the other thread count, see
    :func:`other_threads`)."""

    name: str
    inference_mode: bool = False
    channels_last: bool = False
    compile: bool = False
    bf16: bool = False
    threads: int | None = None


SAMPLE_LEVERS = (
    Lever(BASELINE), Lever("inference_mode", inference_mode=True), Lever("channels_last_3d", channels_last=True),
    Lever("compile", compile=True), Lever("bf16", bf16=True), Lever("bf16+channels_last", bf16=True,
                                                                     channels_last=True),
    Lever("threads", threads=-1),
)
TRAIN_LEVERS = (
    Lever(BASELINE), Lever("channels_last_3d", channels_last=True), Lever("compile", compile=True),
    Lever("bf16", bf16=True), Lever("bf16+channels_last", bf16=True, channels_last=True), Lever("threads", threads=-1),
)


def other_threads(baseline: int) -> int:
    """The thread count the thread lever compares with: 1 when the baseline uses more, else one per core."""
    return 1 if baseline > 1 else (os.cpu_count() or 1)


def with_threads(levers: Sequence[Lever], baseline: int) -> tuple[Lever, ...]:
    """``levers`` with the thread lever made concrete (``threads=<n>``)."""
    n = other_threads(baseline)
    return tuple(Lever(f"threads={n}", threads=n) if lever.threads == -1 else lever for lever in levers)


def net_config(name: str) -> dict[str, Any]:
    """``nano`` or ``tiny`` (conf/model/net/<name>.yaml), or ``mid`` (:data:`MID_NET`)."""
    return dict(MID_NET) if name == "mid" else OmegaConf.to_container(OmegaConf.load(NET_DIR / f"{name}.yaml"))


def memory_format(lever: Lever) -> torch.memory_format:
    return torch.channels_last_3d if lever.channels_last else torch.contiguous_format


def prepared(base: DDPMModule, lever: Lever) -> DDPMModule:
    """A copy of ``base`` (same weights) in the lever's memory format, its network compiled when asked."""
    model = copy.deepcopy(base).to(memory_format=memory_format(lever))
    if lever.compile:
        model.net.compile()
    return model


def grad_mode(lever: Lever) -> contextlib.AbstractContextManager:
    return torch.inference_mode() if lever.inference_mode else torch.no_grad()


def autocast(lever: Lever) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if lever.bf16 else contextlib.nullcontext()


@contextlib.contextmanager
def threads(lever: Lever, default: int) -> Iterator[None]:
    torch.set_num_threads(lever.threads or default)
    try:
        yield
    finally:
        torch.set_num_threads(default)


def sampling_call(model: DDPMModule, lever: Lever, rows: int, shape: Sequence[int]) -> Callable[[], torch.Tensor]:
    """One ε̂ call of the sampler on fixed random inputs ``(rows, 1, Z, Y, X)``; returns ε̂ (float32)."""
    gen = torch.Generator().manual_seed(0)
    fmt = memory_format(lever)
    x_t = torch.randn(rows, 1, *shape, generator=gen).contiguous(memory_format=fmt)
    bf = torch.rand(rows, 1, *shape, generator=gen).contiguous(memory_format=fmt)
    t = torch.full((rows,), SAMPLE_T, dtype=torch.int64)

    def call() -> torch.Tensor:
        with grad_mode(lever), autocast(lever):
            return model.eps(x_t, t, bf).float()

    return call


def training_step(model: DDPMModule, lever: Lever, batch: int, shape: Sequence[int]) -> Callable[[], torch.Tensor]:
    """One optimisation step of the module's own ``training_step`` (Adam) on a fixed random batch."""
    gen = torch.Generator().manual_seed(1)
    bf = torch.rand(batch, 1, *shape, generator=gen).contiguous(memory_format=memory_format(lever))
    data = {"bf": bf, "fl": torch.rand(bf.shape, generator=gen).contiguous(memory_format=memory_format(lever)),
            "index": torch.arange(batch)}
    opt = torch.optim.Adam(model.net.parameters(), lr=model.hparams.lr)
    model.train()

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(lever), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")
            loss = model.training_step(data, 0)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def measure(task: str, net: str, levers: Sequence[Lever], reps: int, warmup: int) -> list[dict[str, Any]]:
    """Interleaved timing of every lever on ``task`` (sampling | training) for ``net``; one row per lever."""
    torch.manual_seed(0)
    base = DDPMModule(net=net_config(net), prediction_type="sample").eval()
    with torch.no_grad():
        for param in base.net.parameters():  # MONAI zero-initialises the last convolution: give every weight a value
            param.add_(0.02 * torch.randn_like(param))
    default_threads = torch.get_num_threads()
    rows, shape = (SAMPLE_WORK if task == "sampling" else TRAIN_WORK)[net]
    calls, warm_s = {}, {}
    for lever in levers:
        model = prepared(base, lever)
        make = sampling_call if task == "sampling" else training_step
        calls[lever.name] = make(model, lever, rows, shape)
        tic = time.perf_counter()
        with threads(lever, default_threads):
            for _ in range(warmup):
                calls[lever.name]()
        warm_s[lever.name] = time.perf_counter() - tic
    times: dict[str, list[float]] = {lever.name: [] for lever in levers}
    for _ in range(reps):
        for lever in levers:
            with threads(lever, default_threads):
                tic = time.perf_counter()
                calls[lever.name]()
                times[lever.name].append(time.perf_counter() - tic)
    reference = calls[BASELINE]() if task == "sampling" else None
    base_s = statistics.median(times[BASELINE])
    out = []
    for lever in levers:
        median = statistics.median(times[lever.name])
        row = {"task": task, "net": net, "rows": rows, "shape": "x".join(map(str, shape)), "lever": lever.name,
               "median_s": median, "ratio": base_s / median, "min_s": min(times[lever.name]),
               "warmup_s": warm_s[lever.name], "rel_diff": float("nan")}
        if reference is not None:
            with threads(lever, default_threads):
                eps = calls[lever.name]()
            row["rel_diff"] = float((eps - reference).abs().max() / reference.abs().max())
        out.append(row)
    return out


def kernel_set() -> str:
    """The CPU kernels in use: ATen's capability and the oneDNN ISA cap, as the environment sets them."""
    cap = torch.backends.cpu.get_cpu_capability()
    return f"ATen {cap}, oneDNN ISA cap {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none (all)')}"


def load_text() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=sorted(SAMPLE_WORK), default=["tiny", "mid"])
    parser.add_argument("--tasks", nargs="+", choices=["sampling", "training"], default=["sampling", "training"])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant (compilation happens here)")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (saves its warm-up)")
    parser.add_argument("--no-bf16", action="store_true", help="leave the bf16 levers out (without AMX or avx512_bf16 "
                        "bf16 is emulated: 64x slower on an AVX2-only CPU, docs/performance.md)")
    parser.add_argument("--threads", type=int, default=None, help="threads of every variant but threads=1 "
                        "(default: torch's, one per core)")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native",
                        help="avx2: rerun restricted to AVX2 kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Measure and print the tables; returns the rows (an ``--isa avx2`` rerun returns [] after its child ends)."""
    args = parse_args(argv)
    if args.isa == "avx2" and os.environ.get("ATEN_CPU_CAPABILITY") != AVX2_ENV["ATEN_CPU_CAPABILITY"]:
        rest = list(argv if argv is not None else sys.argv[1:])
        subprocess.run([sys.executable, __file__, *rest], env={**os.environ, **AVX2_ENV}, check=True)
        return []
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {kernel_set()}, {torch.get_num_threads()} threads, {args.reps} interleaved "
          f"repetitions after {args.warmup} warm-up calls; load average {load_text()}", flush=True)
    rows = []
    for task in args.tasks:
        levers = with_threads(SAMPLE_LEVERS if task == "sampling" else TRAIN_LEVERS, torch.get_num_threads())
        levers = tuple(lever for lever in levers if not (args.no_compile and lever.compile)
                       and not (args.no_bf16 and lever.bf16))
        for net in args.nets:
            part = measure(task, net, levers, args.reps, args.warmup)
            first = part[0]
            unit = "rows" if task == "sampling" else "batch"
            print(f"\n{task}, {net} net, {unit} {first['rows']} x {first['shape']} (load average {load_text()})")
            print(f"{'lever':<22}{'median s':>10}{'ratio':>8}{'min s':>9}{'warm-up s':>11}{'max rel diff':>14}")
            for r in part:
                print(f"{r['lever']:<22}{r['median_s']:>10.3f}{r['ratio']:>8.2f}{r['min_s']:>9.3f}"
                      f"{r['warmup_s']:>11.1f}{r['rel_diff']:>14.1e}", flush=True)
            rows += part
    return rows


if __name__ == "__main__":
    main()
