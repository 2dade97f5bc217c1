"""Time ``dm4isl-evaluate`` on synthetic patches: by default 128 patches × 4 methods of 16 × 64 × 64 in the authors'
benchmark layout (``<root>/Nuclear_envelope/{BF,GT,Unet,GAN,DDPM,DDPMavg,DDPMstd}/<i>.tiff``, uint8), evaluated with
``protocol=benchmark`` (the 11 columns, paired statistics, the DDPMstd flags and the annotation check), as
``dm4isl-evaluate input_dir=<root>/Nuclear_envelope`` does. Prints the wall time with the machine's load average
before and after (the time depends on what else runs)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from dm4isl.evaluate import run
from dm4isl.io.layout import BENCHMARK_STD, BF, GT
from dm4isl.utils.compose import compose_config

METHODS = ("DDPM", "DDPMavg", "Unet", "GAN")
#: Per-method (blur σ in px, additive noise std) that degrade the ground truth into a "prediction".
DEGRADATION = {"DDPM": (0.5, 0.08), "DDPMavg": (1.0, 0.03), "Unet": (1.5, 0.04), "GAN": (0.8, 0.06)}
SHAPE_ZYX = (16, 64, 64)
N_BLOBS = 12
BLOB_SIGMA_PX = (1.5, 4.0, 4.0)
UINT8_MAX = 255
#: The synthetic DDPMstd: the DDPMavg error smoothed in-plane (σ in px), scaled so that its 90th percentile is a value
#: drawn per patch from this range (around the nuclear envelope's threshold 0.055: some patches flagged, some not).
STD_PEAK = (0.01, 0.09)
STD_SIGMA_PX = (0.0, 2.0, 2.0)
STD_PERCENTILE = 90
ORGANELLE_FOLDER = "Nuclear_envelope"


def synth_ground_truth(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A ``(Z, Y, X)`` float volume in [0, 1]: Gaussian blobs at random positions plus faint background noise."""
    vol = np.zeros(shape, dtype=np.float64)
    idx = tuple(rng.integers(0, s, N_BLOBS) for s in shape)
    vol[idx] = 1.0
    vol = ndi.gaussian_filter(vol, BLOB_SIGMA_PX)
    vol /= vol.max()
    return np.clip(vol + rng.normal(0.0, 0.02, shape), 0.0, 1.0)


def _write(folder: Path, i: int, volume: np.ndarray) -> None:
    """``folder/<i>.tiff`` as uint8 (value / 255 = intensity), the benchmark's file naming."""
    tifffile.imwrite(folder / f"{i}.tiff", np.rint(np.clip(volume, 0.0, 1.0) * UINT8_MAX).astype(np.uint8))


def write_dataset(root: Path, n_patches: int, methods: tuple[str, ...] = METHODS, seed: int = 0) -> Path:
    """Write one benchmark organelle folder ``root/Nuclear_envelope`` with ``BF``, ``GT``, the ``methods`` and
    ``DDPMstd`` (uint8); returns the organelle folder."""
    rng = np.random.default_rng(seed)
    folder = root / ORGANELLE_FOLDER
    for name in (BF, GT, *methods, BENCHMARK_STD):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(n_patches):
        gt = synth_ground_truth(rng, SHAPE_ZYX)
        _write(folder / GT, i, gt)
        _write(folder / BF, i, 1.0 - ndi.gaussian_filter(gt, 2.0))
        for m in methods:
            sigma, noise = DEGRADATION[m]
            pred = ndi.gaussian_filter(gt, sigma) + rng.normal(0.0, noise, gt.shape)
            _write(folder / m, i, pred)
            if m == "DDPMavg":
                error = ndi.gaussian_filter(np.abs(pred - gt), STD_SIGMA_PX)
                _write(folder / BENCHMARK_STD, i, rng.uniform(*STD_PEAK) * error / np.percentile(error, STD_PERCENTILE))
    return folder


def main() -> None:
    """Synthesise the benchmark layout, evaluate it as ``dm4isl-evaluate`` does and print the wall-clock time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=128)
    parser.add_argument("--protocol", default="benchmark", help="benchmark | paper14")
    parser.add_argument("--workers", type=int, default=1, help="worker processes over patches")
    parser.add_argument("--n-resamples", type=int, default=9999, help="bootstrap resamples of the CIs")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        folder = write_dataset(work / "input", args.patches)
        cfg = compose_config("evaluate", [
            f"input_dir={folder}", f"output_dir={work / 'output'}", f"protocol={args.protocol}",
            f"n_workers={args.workers}", f"statistics.n_resamples={args.n_resamples}", "progress=false",
        ], output_dir=work / "output")
        load_before = os.getloadavg()
        start = time.perf_counter()
        result = run(cfg)
        elapsed = time.perf_counter() - start
        load_after = os.getloadavg()
    flagged = sum(result.flags.flagged.values()) if result.flags else 0
    print(
        f"evaluated {args.patches} patches x {len(METHODS)} methods (protocol {args.protocol}, {args.workers} "
        f"worker(s), {len(result.metric_names)} metrics, {flagged} patches flagged) in {elapsed:.1f} s on "
        f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )


if __name__ == "__main__":
    main()
