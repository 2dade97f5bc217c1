"""Check the synthetic z-stacks per organelle: generation time, BF–FL voxel correlation, std_th pass rate, learnability.

Learnability: a small MONAI 3-D ``UNet`` (channels 16/32/64/128, strides 2/2/2, MSE, Adam 1e-3) trained on random
crops of training FOVs for a time budget must predict held-out FOVs far better than the best voxel-wise linear map
from brightfield to fluorescence.

    python scripts/check_synthetic.py --organelles nuclear_envelope dna --budget-s 60
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import UNet
from omegaconf import OmegaConf

from dm4isl.data.normalize import clip_raw, unit_std_threshold, window_normalize, zscore_per_patch
from dm4isl.data.patches import Volume, crop_slices, passes_filter, random_corner, sample_crop
from dm4isl.data.synthetic import ORGANELLES, load_fov, synthetic_dataset
from dm4isl.metrics.basic import pcc, pooled_pcc

REPO_ROOT = Path(__file__).resolve().parents[1]
ORGANELLE_CONF_DIR = REPO_ROOT / "dm4isl" / "conf" / "organelle"
#: Fraction of cells planted as surprises: the synthetic data config's.
SURPRISE_FRACTION = float(OmegaConf.load(REPO_ROOT / "dm4isl" / "conf" / "data" / "synthetic.yaml").ambiguous_fraction)
UNET_CHANNELS = (16, 32, 64, 128)
UNET_STRIDES = (2, 2, 2)
LEARNING_RATE = 1e-3
FILTER_CROP_ZYX = (16, 64, 64)  # SPEC §1 training patch, used for the std_th pass rate
FILTER_SAMPLES = 200
FILTER_MAX_TRIES = 50


def organelle_config(organelle: str, conf_dir: Path = ORGANELLE_CONF_DIR) -> dict[str, Any]:
    """The organelle's ``bf_window``, ``fl_window`` and ``std_th`` from ``<conf_dir>/<organelle>.yaml``."""
    path = Path(conf_dir) / f"{organelle}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: organelle config not found (expected keys bf_window, fl_window, std_th)")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cfg = cfg.get("organelle", cfg)
    missing = [k for k in ("bf_window", "fl_window", "std_th") if k not in cfg]
    if missing:
        raise KeyError(f"{path}: missing keys {missing}; found {sorted(cfg)}")
    return {
        "bf_window": tuple(float(v) for v in cfg["bf_window"]),
        "fl_window": tuple(float(v) for v in cfg["fl_window"]),
        "std_th": float(cfg["std_th"]),
    }


def random_crop(
    rng: np.random.Generator, volumes: Sequence[Volume], size: Sequence[int], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bf, fl, mask)`` of a random ``size`` crop (Z, Y, X) whose FL passes the empty-patch filter.

    Falls back to the best of ``FILTER_MAX_TRIES`` tries when none passes (:func:`dm4isl.data.patches.sample_crop`).
    """
    vi, corner, _ = sample_crop(rng, volumes, size, threshold, FILTER_MAX_TRIES)
    sl = crop_slices(corner, size)
    return volumes[vi].bf[sl], volumes[vi].fl[sl], volumes[vi].mask[sl]


def filter_pass_rate(
    fls: Sequence[np.ndarray], fl_window: Sequence[float], std_th: float, rng: np.random.Generator
) -> float:
    """Fraction of random 16×64×64 crops of raw ``(Z, Y, X)`` FL volumes kept by the SPEC §1 empty-patch rule."""
    size = [min(s, d) for s, d in zip(FILTER_CROP_ZYX, fls[0].shape, strict=True)]
    kept = 0
    for _ in range(FILTER_SAMPLES):
        fl = fls[int(rng.integers(len(fls)))]
        crop = fl[crop_slices(random_corner(rng, fl.shape, size), size)]
        kept += passes_filter(clip_raw(crop, fl_window), std_th)
    return kept / FILTER_SAMPLES


def probe_organelle(
    organelle: str,
    *,
    bf_window: Sequence[float],
    fl_window: Sequence[float],
    std_th: float,
    cache_dir: Path,
    shape_zyx: Sequence[int] = (32, 128, 128),
    n_train: int = 8,
    n_test: int = 2,
    seed: int = 0,
    crop_zyx: Sequence[int] = (16, 32, 32),
    batch_size: int = 4,
    n_test_crops: int = 32,
    budget_s: float = 60.0,
    max_steps: int | None = None,
    zscore: bool = True,
    ambiguous_fraction: float = SURPRISE_FRACTION,
) -> dict[str, float]:
    """Generate a dataset, measure it, train the U-Net probe and return the numbers (see the module docstring).

    ``zscore``: the probe (and the linear baseline) see each brightfield crop standardised on its own
    (:func:`~dm4isl.data.normalize.zscore_per_patch`, as ``recipe=fast``'s networks): the calibrated data vary in
    brightfield level from FOV to FOV as real data do, and a probe fed the window-normalised grey levels of a few
    training FOVs learns their levels, not the cells.

    Keys: ``gen_s_per_fov``, ``gen_s_dataset``, ``pcc_bf_fl`` (voxel-wise, all FOVs pooled), ``pass_rate``,
    ``linear_pcc`` and ``unet_pcc`` (pooled over the held-out crops), ``unet_pcc_median`` (per crop), ``steps``,
    ``train_s``, ``err_in_mask`` / ``err_out_mask`` (mean |error| inside / outside the planted-ambiguity mask).
    """
    t0 = time.perf_counter()
    paths = synthetic_dataset(
        organelle,
        n_train + n_test,
        shape_zyx,
        seed,
        bf_window=tuple(bf_window),
        fl_window=tuple(fl_window),
        ambiguous_fraction=ambiguous_fraction,
        cache_dir=cache_dir,
    )
    gen_s = time.perf_counter() - t0
    fovs = [load_fov(p) for p in paths]
    raw_fl = [f.fl for f in fovs]
    vols = [
        Volume(path.stem, window_normalize(f.bf, bf_window), window_normalize(f.fl, fl_window),
               f.ambiguous.astype(np.uint8))
        for path, f in zip(paths, fovs, strict=True)
    ]
    rng = np.random.default_rng(seed)
    threshold = unit_std_threshold(std_th, fl_window)
    train, test = vols[:n_train], vols[n_train:]

    def prepare(bf: np.ndarray) -> np.ndarray:
        """``(..., Z, Y, X)`` brightfield crops as the probe sees them."""
        if not zscore:
            return bf
        batch = torch.from_numpy(np.ascontiguousarray(bf, np.float32)).reshape(-1, 1, *bf.shape[-3:])
        return zscore_per_patch(batch).reshape(bf.shape).numpy()

    test_crops = [(prepare(c[0]), c[1], c[2]) for c in (random_crop(rng, test, crop_zyx, threshold)
                                                        for _ in range(n_test_crops))]

    bf_train = np.concatenate([prepare(v.bf).ravel() for v in train])
    fl_train = np.concatenate([v.fl.ravel() for v in train])
    slope = float(np.cov(bf_train, fl_train)[0, 1] / bf_train.var(ddof=1))
    intercept = float(fl_train.mean() - slope * bf_train.mean())
    linear_pcc = pooled_pcc([c[1] for c in test_crops], [slope * c[0] + intercept for c in test_crops])

    torch.manual_seed(seed)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=UNET_CHANNELS, strides=UNET_STRIDES)
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    steps, t_train = 0, time.perf_counter()
    net.train()
    while time.perf_counter() - t_train < budget_s and (max_steps is None or steps < max_steps):
        batch = [random_crop(rng, train, crop_zyx, threshold) for _ in range(batch_size)]
        bf = torch.from_numpy(prepare(np.stack([b[0] for b in batch]))[:, None])
        fl = torch.from_numpy(np.stack([b[1] for b in batch])[:, None])
        loss = torch.nn.functional.mse_loss(net(bf), fl)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    train_s = time.perf_counter() - t_train
    net.eval()
    with torch.no_grad():
        preds = [net(torch.from_numpy(c[0])[None, None])[0, 0].numpy() for c in test_crops]
    err = [np.abs(p - c[1]) for p, c in zip(preds, test_crops, strict=True)]
    in_mask = np.concatenate([e[c[2] > 0] for e, c in zip(err, test_crops, strict=True)])
    out_mask = np.concatenate([e[c[2] == 0] for e, c in zip(err, test_crops, strict=True)])
    return {
        "gen_s_per_fov": gen_s / len(paths),
        "gen_s_dataset": gen_s,
        "pcc_bf_fl": pooled_pcc([v.bf for v in vols], [v.fl for v in vols]),
        "pass_rate": filter_pass_rate(raw_fl, fl_window, std_th, rng),
        "linear_pcc": linear_pcc,
        "unet_pcc": pooled_pcc([c[1] for c in test_crops], preds),
        "unet_pcc_median": float(np.median([pcc(c[1], p) for c, p in zip(test_crops, preds, strict=True)])),
        "steps": float(steps),
        "train_s": train_s,
        "err_in_mask": float(in_mask.mean()) if in_mask.size else float("nan"),
        "err_out_mask": float(out_mask.mean()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organelles", nargs="+", default=list(ORGANELLES), choices=ORGANELLES)
    parser.add_argument("--budget-s", type=float, default=60.0, help="U-Net training time per organelle (s)")
    parser.add_argument("--max-steps", type=int, default=None, help="also stop after this many training steps")
    parser.add_argument("--n-train", type=int, default=8, help="training FOVs")
    parser.add_argument("--n-test", type=int, default=2, help="held-out FOVs")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--crop", type=int, nargs=3, default=[16, 32, 32], metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscribing a shared machine)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse a cache (default: a fresh temp folder)")
    parser.add_argument("--conf-dir", type=Path, default=ORGANELLE_CONF_DIR, help="folder of <organelle>.yaml")
    parser.add_argument("--no-zscore", action="store_true", help="feed the probe window-normalised brightfield")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    header = (
        f"{'organelle':17s} {'gen s/FOV':>9s} {'gen s/set':>9s} {'PCC(BF,FL)':>10s} {'pass':>5s} "
        f"{'linear':>7s} {'U-Net':>6s} {'median':>6s} {'steps':>6s} {'|err| in/out mask':>18s}"
    )
    print(header)
    with tempfile.TemporaryDirectory(prefix="dm4isl-synthetic-") as tmp:
        cache = args.cache_dir if args.cache_dir is not None else Path(tmp)
        for organelle in args.organelles:
            res = probe_organelle(
                organelle,
                **organelle_config(organelle, args.conf_dir),
                cache_dir=cache,
                shape_zyx=args.shape,
                n_train=args.n_train,
                n_test=args.n_test,
                seed=args.seed,
                crop_zyx=args.crop,
                budget_s=args.budget_s,
                max_steps=args.max_steps,
                zscore=not args.no_zscore,
            )
            print(
                f"{organelle:17s} {res['gen_s_per_fov']:9.3f} {res['gen_s_dataset']:9.2f} {res['pcc_bf_fl']:+10.3f} "
                f"{res['pass_rate']:5.2f} {res['linear_pcc']:+7.3f} {res['unet_pcc']:6.3f} "
                f"{res['unet_pcc_median']:6.3f} {int(res['steps']):6d} "
                f"{res['err_in_mask']:8.3f}/{res['err_out_mask']:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
