"""Time ``evaluate_folder`` on synthetic patches (default 128 patches × 4 methods of 16 × 64 × 64, all metrics)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from dm4isl.evaluation import evaluate_folder

METHODS = ("DDPM", "DDPMavg", "Unet", "GAN")
#: Per-method (blur σ in px, additive noise std) that degrade the ground truth into a "prediction".
DEGRADATION = {"DDPM": (0.5, 0.08), "DDPMavg": (1.0, 0.03), "Unet": (1.5, 0.04), "GAN": (0.8, 0.06)}
SHAPE_ZYX = (16, 64, 64)
N_BLOBS = 12
BLOB_SIGMA_PX = (1.5, 4.0, 4.0)
UINT8_MAX = 255


def synth_ground_truth(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A ``(Z, Y, X)`` float volume in [0, 1]: Gaussian blobs at random positions plus faint background noise."""
    vol = np.zeros(shape, dtype=np.float64)
    idx = tuple(rng.integers(0, s, N_BLOBS) for s in shape)
    vol[idx] = 1.0
    vol = ndi.gaussian_filter(vol, BLOB_SIGMA_PX)
    vol /= vol.max()
    return np.clip(vol + rng.normal(0.0, 0.02, shape), 0.0, 1.0)


def write_dataset(root: Path, n_patches: int, methods: tuple[str, ...], seed: int = 0) -> None:
    """Write ``root/GT/<i>.tiff`` and ``root/<method>/<i>.tiff`` (uint8, value/255 = intensity)."""
    rng = np.random.default_rng(seed)
    for name in ("GT", *methods):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n_patches):
        gt = synth_ground_truth(rng, SHAPE_ZYX)
        tifffile.imwrite(root / "GT" / f"{i}.tiff", np.rint(gt * UINT8_MAX).astype(np.uint8))
        for m in methods:
            sigma, noise = DEGRADATION[m]
            pred = np.clip(ndi.gaussian_filter(gt, sigma) + rng.normal(0.0, noise, gt.shape), 0.0, 1.0)
            tifffile.imwrite(root / m / f"{i}.tiff", np.rint(pred * UINT8_MAX).astype(np.uint8))


def main() -> None:
    """Synthesise a dataset, evaluate it and print the wall-clock time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=128)
    parser.add_argument("--metrics", default="all", help="metric set: fast, paper or all")
    parser.add_argument("--workers", type=int, default=1, help="worker processes over patches")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        write_dataset(work / "input", args.patches, METHODS)
        start = time.perf_counter()
        evaluate_folder(work / "input", work / "output", metrics=args.metrics, n_workers=args.workers)
        elapsed = time.perf_counter() - start
    print(
        f"evaluated {args.patches} patches x {len(METHODS)} methods ({args.metrics} metrics, {args.workers} "
        f"worker(s)) in {elapsed:.1f} s"
    )


if __name__ == "__main__":
    main()
