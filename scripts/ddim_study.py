"""DDIM study: DDPMavg quality and uncertainty AUROC vs sampler (DDIM steps, eta, 1000-step DDPM) and x̂0 window.

On the synthetic test split of a checkpoint's run (:func:`dm4isl.utils.run_data.checkpoint_test_set`), each sampler
runs once over all patches × seeds; the sampler hands the x̂0(t) of every visited timestep to running statistics
for every window at once (:class:`dm4isl.sampling.WindowStats`; the trajectory does not depend on the window), so a
window costs no extra network call. Per
(sampler, window): DDPMavg PCC and MS-SSIM vs ground truth (seed 0, and the mean over seeds), the final sample's
PCC, and the voxel AUROC of the intra-process std map (and the inter-process std map with ≥ 2 seeds) for
``|DDPMavg − GT| > tau`` and for the planted-ambiguity mask (:mod:`dm4isl.uncertainty.evaluation`).
Writes ``ddim_study.csv`` and ``ddim_study.png`` atomically into ``--out``.

    python scripts/ddim_study.py --ckpt outputs/demo/runs/<run>/checkpoints/<best>.ckpt --out outputs/ddim_study
    python scripts/ddim_study.py --ckpt model.ckpt --samplers ddim-10,ddim-50,ddpm --windows 300-800,0-500
"""

from __future__ import annotations

import argparse
import io
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm4isl.io.atomic import atomic_path, write_csv
from dm4isl.metrics.basic import mean_pcc, ms_ssim_batch
from dm4isl.models.checkpoint import load_model
from dm4isl.sampling import SamplerSettings, WindowStats, sample, window_products
from dm4isl.sampling.ensemble import ensemble_seeds
from dm4isl.uncertainty.evaluation import ERROR_TAU, evaluate_uncertainty
from dm4isl.utils.run_data import checkpoint_test_set

#: Sampler names: ``ddpm`` (ancestral, all T steps) or ``ddim-<steps>[-eta<eta>]``.
SAMPLER_PATTERN = re.compile(r"ddpm|ddim-(?P<steps>\d+)(?:-eta(?P<eta>\d+(?:\.\d+)?))?")
DEFAULT_SAMPLERS = "ddim-10,ddim-20,ddim-50,ddim-100,ddim-250,ddpm"
DEFAULT_WINDOWS = "300-800,0-500,100-900"
#: Figure size (inches) of the study plot, one panel per quantity.
FIGSIZE = (13.0, 3.8)
PLOTTED = (("ddpmavg_pcc", "DDPMavg PCC"), ("ddpmavg_ms_ssim", "DDPMavg MS-SSIM"),
           ("intra_auroc_error", "intra-std AUROC, |error| > tau"), ("intra_auroc_planted", "intra-std AUROC, planted"))


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler of the study: method, DDIM step count and eta."""

    name: str
    method: str
    num_steps: int | None
    eta: float


def parse_sampler(name: str) -> SamplerSpec:
    """``ddpm`` or ``ddim-<steps>[-eta<eta>]`` → :class:`SamplerSpec`; anything else raises ValueError."""
    match = SAMPLER_PATTERN.fullmatch(name.strip())
    if match is None:
        raise ValueError(f"sampler {name!r}; expected 'ddpm' or 'ddim-<steps>[-eta<eta>]' (e.g. ddim-50-eta1.0)")
    if name.strip() == "ddpm":
        return SamplerSpec("ddpm", "ddpm", None, 0.0)
    return SamplerSpec(name.strip(), "ddim", int(match["steps"]), float(match["eta"] or 0.0))


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"300-800,0-500"`` → ``[(300, 800), (0, 500)]`` (each a [t_low, t_high) window)."""
    windows = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not high or not 0 <= int(low) < int(high):
            raise ValueError(f"window {part!r}; expected '<t_low>-<t_high>' with 0 ≤ t_low < t_high")
        windows.append((int(low), int(high)))
    return windows


def run_sampler(model: Any, bf: np.ndarray, spec: SamplerSpec, base: SamplerSettings, n_seeds: int,
                windows: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Sample ``bf`` ``(N, Z, Y, X)`` with K seeds in one batch; per window the products in data units.

    Returns ``{"seconds", "calls", "ddpm" (K, N, Z, Y, X), "windows": {w: {"ddpmavg", "std_intra"} (K, N, Z, Y, X)
    or None when no visited timestep lies in w}}``.
    """
    settings = SamplerSettings.from_dict({**base.to_dict(), "method": spec.method, "num_steps": spec.num_steps,
                                          "eta": spec.eta})
    record = WindowStats(windows)
    n = len(bf)
    cond = torch.from_numpy(np.ascontiguousarray(bf))[:, None].repeat(n_seeds, 1, 1, 1, 1)
    seeds = [s for s in ensemble_seeds(settings.seed, n_seeds) for _ in range(n)]
    tic = time.perf_counter()
    # the sampler's own window is widened to all t so that every sampler runs, whatever the study's windows
    run_settings = SamplerSettings.from_dict({**settings.to_dict(), "window": [0, model.schedule.num_train_timesteps]})
    pred = sample(model.eps, cond, list(range(n)) * n_seeds, model.schedule, run_settings, model.target,
                  model.fl_mean, seeds=seeds, record=record)
    seconds = time.perf_counter() - tic

    def per_seed(x: torch.Tensor) -> np.ndarray:
        return x[:, 0].reshape(n_seeds, n, *x.shape[2:]).numpy()

    out: dict[str, Any] = {"seconds": seconds, "calls": pred.n_calls, "ddpm": per_seed(pred.ddpm), "windows": {}}
    for window, stats in record.windows.items():
        if stats.count == 0:
            out["windows"][window] = None
            continue
        avg, std = window_products(stats.mean, stats.std, model.target, settings.output)
        out["windows"][window] = {"ddpmavg": per_seed(avg), "std_intra": per_seed(std), "n_avg": stats.count}
    return out


def score(products: dict[str, Any], gt: np.ndarray, planted: np.ndarray, threshold: float, tau: float,
          inter_threshold: float) -> dict[str, float]:
    """Quality and uncertainty figures of one (sampler, window); arrays ``(K, N, Z, Y, X)`` vs ``(N, Z, Y, X)``."""
    avg = products["ddpmavg"]
    k = avg.shape[0]
    intra = products["std_intra"].mean(axis=0)
    rep = evaluate_uncertainty(intra, avg[0], gt, threshold, planted=planted, tau=tau)
    row = {
        "ddpmavg_pcc": mean_pcc(gt, avg[0]),
        "ddpmavg_ms_ssim": float(np.nanmean(ms_ssim_batch(gt, avg[0]))),
        "ddpmavg_seedmean_pcc": mean_pcc(gt, avg.mean(axis=0)),
        "intra_auroc_error": rep.auroc_error,
        "intra_auroc_planted": rep.auroc_planted,
        "intra_flag_precision": rep.flag_precision,
        "intra_flag_recall": rep.flag_recall,
        "inter_auroc_error": math.nan,
        "inter_auroc_planted": math.nan,
    }
    if k > 1:
        inter = evaluate_uncertainty(avg.std(axis=0), avg.mean(axis=0), gt, inter_threshold, planted=planted, tau=tau)
        row.update(inter_auroc_error=inter.auroc_error, inter_auroc_planted=inter.auroc_planted)
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per quantity vs network calls (log axis), one line per window (eta 0 samplers); PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=FIGSIZE)
    for window in dict.fromkeys(r["window"] for r in rows):
        sel = sorted((r for r in rows if r["window"] == window and r["eta"] == 0.0), key=lambda r: r["calls"])
        for ax, (key, title) in zip(axes, PLOTTED, strict=True):
            ax.plot([r["calls"] for r in sel], [r[key] for r in sel], marker="o", label=f"window [{window})")
            ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("network calls (DDIM steps; 1000 = DDPM)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for ddim_study.csv and ddim_study.png")
    parser.add_argument("--n-patches", type=int, default=8)
    parser.add_argument("--n-seeds", type=int, default=1)
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="ddpm and/or ddim-<steps>[-eta<eta>]")
    parser.add_argument("--windows", default=DEFAULT_WINDOWS, help="comma-separated <t_low>-<t_high>")
    parser.add_argument("--patch-size", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="Z,Y,X centre crop of the test patches (MS-SSIM needs Y, X ≥ 64)")
    parser.add_argument("--tau", type=float, default=ERROR_TAU, help="|DDPMavg − GT| above this is an error")
    parser.add_argument("--cache", type=Path, default=None, help="data cache (default: <out>/cache)")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the study, print and write the table and plot; returns the rows."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [parse_sampler(s) for s in args.samplers.split(",")]
    windows = parse_windows(args.windows)
    patches = checkpoint_test_set(args.ckpt, args.n_patches, args.cache or args.out / "cache", args.patch_size)
    model = load_model(args.ckpt, "cpu")
    organelle = model.hparams.organelle
    base = SamplerSettings.from_dict(model.hparams.get("test_sampler"))
    print(f"# {len(patches)} test patches {list(patches.bf.shape[1:])} (Z, Y, X), {args.n_seeds} seed(s), "
          f"planted voxels {int(patches.mask.sum())}, tau={args.tau}, threads={torch.get_num_threads()}, "
          f"checkpoint={args.ckpt}", flush=True)
    rows = []
    for spec in specs:
        res = run_sampler(model, patches.bf, spec, base, args.n_seeds, windows)
        ddpm_pcc = mean_pcc(patches.fl, res["ddpm"][0])
        for window in windows:
            prod = res["windows"][window]
            row = {"sampler": spec.name, "method": spec.method, "eta": spec.eta,
                   "window": f"{window[0]}, {window[1]}", "n_avg": prod["n_avg"] if prod else 0,
                   "calls": res["calls"], "seconds": round(res["seconds"], 1), "ddpm_pcc": ddpm_pcc}
            if prod is None:
                row.update(dict.fromkeys(
                    ("ddpmavg_pcc", "ddpmavg_ms_ssim", "ddpmavg_seedmean_pcc", "intra_auroc_error",
                     "intra_auroc_planted", "intra_flag_precision", "intra_flag_recall", "inter_auroc_error",
                     "inter_auroc_planted"), math.nan))
            else:
                row.update(score(prod, patches.fl, patches.mask, organelle["intra_std_threshold"] or 0.0, args.tau,
                                 organelle["inter_std_threshold"]))
            rows.append(row)
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(args.out / "ddim_study.csv", rows)  # rewritten after every sampler: a cut-short run keeps its rows
    plot(rows, args.out / "ddim_study.png")
    print(f"wrote {args.out / 'ddim_study.csv'} and {args.out / 'ddim_study.png'}", flush=True)
    return rows


if __name__ == "__main__":
    main()
