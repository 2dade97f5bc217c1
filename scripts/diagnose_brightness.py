"""Does the ε̂ mean correction help this checkpoint? Measure the mean-brightness defect before switching it on.

    python scripts/diagnose_brightness.py --ckpt model.ckpt                      # synthetic validation patches
    python scripts/diagnose_brightness.py --ckpt model.ckpt --patches val_patches/ --n 32 --method ddim --steps 50

Prints (1) the slope d mean(ε̂)/d mean(x_t) at several timesteps next to an exact ε-predictor's 1/√(1 − ᾱ_t)
(ratio ≈ 0: the network ignores the mean of its input — the defect; ≈ 1: no defect), and (2) on validation
patches (``--patches``: a folder with BF/ and GT/, else the synthetic validation split of the checkpoint's organelle),
DDPMavg without and with the correction — per-patch brightness error, PCC, MSE — with a paired bootstrap 95 % CI of
the MSE change. The last line is the verdict: ``correction=helps|hurts|no-effect``. Sampler: the checkpoint's
test sampler unless ``--method``/``--steps``/``--eta`` adjust it (the effect depends on the sampler too).
Never use test patches here: the choice is a tuned setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dm4isl.metrics.table import bootstrap_ci, mean_difference
from dm4isl.models.checkpoint import load_model
from dm4isl.sampling.diagnostics import correction_effect, mean_response
from dm4isl.sampling.sampler import adjust_settings


def validation_patches(model, patches: Path | None, n: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, Z, Y, X)`` brightfield and fluorescence in [0, 1]: a patch folder, else the synthetic validation split."""
    organelle = dict(model.hparams["organelle"])
    if patches is not None:
        from dm4isl.prediction.runner import collect_inputs

        inputs = [i for i in collect_inputs(patches, organelle.get("bf_window"), organelle.get("fl_window"))
                  if i.gt is not None][:n]
        if not inputs:
            raise SystemExit(f"{patches}: no BF/GT pairs found (expected {patches}/BF/*.tiff and {patches}/GT/*.tiff)")
        return np.stack([i.bf for i in inputs]), np.stack([i.gt for i in inputs])
    from dm4isl.data.datamodule import SyntheticDataModule

    size = list(model.hparams["patch_size"])
    dm = SyntheticDataModule(organelle, patch_size=size, eval_patch_size=size, n_val_patches=n, n_test_patches=1,
                             cache_dir=cache_dir, split_file=None)
    dm.setup("fit")
    return dm.val_set.bf, dm.val_set.fl


def verdict(mse_off: np.ndarray, mse_on: np.ndarray) -> tuple[str, tuple[float, float]]:
    """``helps`` when the 95 % CI of mean(MSE_on − MSE_off) lies below 0, ``hurts`` above, else ``no-effect``."""
    low, high = bootstrap_ci(mean_difference, [mse_on, mse_off], vectorized=True)
    if high < 0:
        return "helps", (low, high)
    if low > 0:
        return "hurts", (low, high)
    return "no-effect", (low, high)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--patches", type=Path, default=None, help="validation patch folder (BF/, GT/)")
    parser.add_argument("--n", type=int, default=16, help="number of validation patches")
    parser.add_argument("--method", choices=["ddpm", "ddim"], default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    args = parser.parse_args(argv)

    model = load_model(args.ckpt, args.device)
    if model.fl_mean is None:
        raise SystemExit(f"{args.ckpt}: holds no training statistics (the correction needs the training-set mean)")
    changes = {"method": args.method, "eta": args.eta}
    if args.method == "ddpm":
        changes["num_steps"] = None
    settings = adjust_settings(model.test_settings, changes)
    if args.steps is not None:
        settings = adjust_settings(settings, {"num_steps": args.steps})
    bf_np, fl_np = validation_patches(model, args.patches, args.n, args.cache_dir)
    bf = torch.from_numpy(bf_np)[:, None].to(args.device)
    fl = torch.from_numpy(fl_np)[:, None].to(args.device)
    print(f"checkpoint {args.ckpt}: prediction_type={model.hparams.get('prediction_type')}, "
          f"target_range={list(model.hparams.get('target_range'))}, {len(bf)} validation patches {list(bf.shape[2:])}")
    print("\n  t   d mean(eps)/d mean(x_t)   exact   ratio")
    for r in mean_response(model.eps, fl[: args.batch], bf[: args.batch], model.schedule, model.target):
        print(f"{r.t:4d}   {r.slope:22.4f}   {r.ideal:5.3f}   {r.ratio:5.3f}")
    parts = [correction_effect(model.eps, fl[i : i + args.batch], bf[i : i + args.batch],
                               list(range(i, min(i + args.batch, len(bf)))), model.schedule, settings, model.target,
                               model.fl_mean) for i in range(0, len(bf), args.batch)]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    print(f"\nDDPMavg on validation ({settings.method}"
          f"{'' if settings.method == 'ddpm' else f'-{settings.num_steps} eta {settings.eta:g}'}), mean over patches:")
    print("correction   |brightness error|      PCC       MSE")
    for label, key in (("off", "off"), ("on", "on")):
        error = np.abs(cat(f"brightness_error_{key}")).mean()
        print(f"{label:>10}   {error:18.4f}   {np.nanmean(cat(f'pcc_{key}')):6.3f}   {cat(f'mse_{key}').mean():.5f}")
    result, (low, high) = verdict(cat("mse_off"), cat("mse_on"))
    print(f"MSE change with the correction: {cat('mse_on').mean() - cat('mse_off').mean():+.5f} "
          f"(95 % CI {low:+.5f} … {high:+.5f})")
    print(f"correction={result}")
    return result


if __name__ == "__main__":
    main()
