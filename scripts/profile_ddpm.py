"""Profile the diffusion U-Net against a plain MONAI U-Net of similar width: FLOPs, seconds, top operators."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import UNet
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import dm4isl
from dm4isl.models.nets import build_net

#: Default timing repetitions after one warm-up step.
REPEATS = 5
#: Rows of the operator table printed per network.
TOP_OPS = 12
GIGA = 1e9
#: Plain MONAI U-Net of similar width (the comparison the cost question was raised against).
PLAIN_UNET = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 1}

#: Net configs profiled, relative to the package's conf/model/net/ folder.
NET_DIR = Path(dm4isl.__file__).parent / "conf" / "model" / "net"
#: Variants of the tiny net isolating one cost factor each.
TINY_VARIANTS = {
    "diffusion tiny (16,32,64)": {},
    "diffusion tiny, 2 res blocks": {"num_res_blocks": 2},
    "diffusion tiny (8,16,32)": {"channels": [8, 16, 32]},
}


def _net_config(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(NET_DIR / f"{name}.yaml"))


def _train_step(net: torch.nn.Module, x: torch.Tensor, diffusion: bool) -> Callable[[], None]:
    """A closure doing forward + L1 backward on ``x`` ``(B, C, Z, Y, X)``."""
    t = torch.randint(0, 1000, (x.shape[0],))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = net(x, timesteps=t) if diffusion else net(x)
        out.abs().mean().backward()
        opt.step()

    return step


def _forward(net: torch.nn.Module, x: torch.Tensor, diffusion: bool) -> Callable[[], None]:
    t = torch.randint(0, 1000, (x.shape[0],))

    @torch.no_grad()
    def fwd() -> None:
        net(x, timesteps=t) if diffusion else net(x)

    return fwd


def _seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _flops(fn: Callable[[], None]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def profile_net(
    label: str,
    net: torch.nn.Module,
    x: torch.Tensor,
    diffusion: bool,
    table: bool,
    repeats: int = REPEATS,
    train_flops: bool = True,
) -> None:
    """Print parameters, GFLOP and seconds of a forward pass and a training step; optionally the op table."""
    n_params = sum(p.numel() for p in net.parameters())
    fwd, step = _forward(net, x, diffusion), _train_step(net, x, diffusion)
    step_gflop = f"{_flops(step) / GIGA:7.2f} GFLOP " if train_flops else ""
    print(f"{label:32s} params {n_params / 1e6:7.3f} M | forward {_flops(fwd) / GIGA:7.2f} GFLOP "
          f"{_seconds(fwd, repeats):6.3f} s | train step {step_gflop}{_seconds(step, repeats):6.3f} s", flush=True)
    if table:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=TOP_OPS))


def main() -> None:
    """Command line: ``python scripts/profile_ddpm.py --shape 16 32 32 --batch 4 [--table] [--paper]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 32, 32], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--table", action="store_true", help="print the top operators by self CPU time")
    parser.add_argument("--paper", action="store_true", help="also time the paper net at batch 1 (minutes)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed repetitions after one warm-up")
    parser.add_argument("--paper-shape", type=int, nargs=3, default=[16, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"input (B, C, Z, Y, X) = ({args.batch}, 2, {', '.join(map(str, args.shape))}); "
          f"torch threads {torch.get_num_threads()}")
    x = torch.rand(args.batch, 2, *args.shape)
    plain = UNet(spatial_dims=3, in_channels=2, out_channels=1, **PLAIN_UNET)
    profile_net("plain MONAI UNet (16,32,64,128)", plain, x, diffusion=False, table=args.table, repeats=args.repeats)
    tiny = _net_config("tiny")
    for label, change in TINY_VARIANTS.items():
        net = build_net({**tiny, **change})
        profile_net(label, net, x, diffusion=True, table=args.table and not change, repeats=args.repeats)
    if args.paper:
        paper = build_net(_net_config("paper"))
        xp = torch.rand(1, 2, *args.paper_shape)
        profile_net(f"paper net (batch 1, {args.paper_shape})", paper, xp, diffusion=True, table=False, repeats=1,
                    train_flops=False)


if __name__ == "__main__":
    main()
