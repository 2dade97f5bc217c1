"""Per-volume descriptors that metrics compare: intensity histograms, HOG, GLCM and random-network features."""

from __future__ import annotations

import functools

import numpy as np
import torch
from skimage.feature import graycomatrix, graycoprops, hog

#: Bins of the intensity histograms compared by the Jensen–Shannon distance (SPEC §5), on [0, 1].
HISTOGRAM_BINS = 256
#: Grey levels of the GLCM (SPEC §5); intensities in [0, 1] are quantised to 0..255.
GLCM_LEVELS = 256
#: GLCM pixel-pair distance (SPEC §5), in pixels.
GLCM_DISTANCE_PX = 1
#: GLCM offset angle: π/2 pairs each pixel with the one below it (vertical offset, along Y; SPEC §5).
GLCM_ANGLE_RAD = np.pi / 2
#: HOG settings (SPEC §5), applied to every Z slice.
HOG_ORIENTATIONS = 9
HOG_PIXELS_PER_CELL = (8, 8)
HOG_CELLS_PER_BLOCK = (2, 2)
#: Fixed random-feature 3-D network of the perceptual distance: channels per stage, kernel size, seed.
FEATURE_CHANNELS = (8, 16, 32)
FEATURE_KERNEL_SIZE = 3
FEATURE_SEED = 0
#: In-plane (Y, X) down-sampling between stages; Z is kept so 16-slice patches keep their depth.
FEATURE_POOL = (1, 2, 2)
#: Guards the per-voxel channel normalisation against all-zero feature vectors.
FEATURE_NORM_EPS = 1e-10
#: 8-bit grey levels of normalised data (``value / 255``), and how close to a level a value must lie to count as one.
UINT8_MAX = 255
UINT8_LEVEL_TOL = 1e-3


def exact_levels(volume: np.ndarray) -> np.ndarray:
    """``volume`` in float64; 8-bit grey levels / 255 stored as float32 become exactly ``k / 255`` in float64, as the
    reference holds its saved uint8 patches — so voxels on a histogram edge or an Otsu level fall as in its code."""
    v = np.asarray(volume, dtype=np.float64)
    levels = v * UINT8_MAX
    rounded = np.rint(levels)
    return rounded / UINT8_MAX if np.all(np.abs(levels - rounded) < UINT8_LEVEL_TOL) else v


def intensity_histogram(volume: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Counts of the voxel intensities of a ``(Z, Y, X)`` volume in ``bins`` equal bins on [0, 1]; shape ``(bins,)``."""
    counts, _ = np.histogram(np.asarray(volume).ravel(), bins=bins, range=(0.0, 1.0))
    return counts.astype(np.float64)


def to_grey_levels(volume: np.ndarray, levels: int = GLCM_LEVELS) -> np.ndarray:
    """Quantise a ``(Z, Y, X)`` volume in [0, 1] to integer grey levels 0..levels-1 (uint8 for 256 levels)."""
    scaled = np.rint(np.clip(np.asarray(volume, dtype=np.float64), 0.0, 1.0) * (levels - 1))
    return scaled.astype(np.uint8 if levels <= 256 else np.uint16)


def glcm_counts(volume: np.ndarray) -> np.ndarray:
    """Grey-level co-occurrence counts of a ``(Z, Y, X)`` volume in [0, 1], summed over Z slices.

    Every slice contributes the pairs (y, x) → (y + 1, x) (distance 1, vertical offset, 256 levels, skimage
    :func:`~skimage.feature.graycomatrix`, not symmetrised). Returns shape ``(256, 256, 1, 1)``.
    """
    grey = to_grey_levels(volume)
    total = np.zeros((GLCM_LEVELS, GLCM_LEVELS, 1, 1), dtype=np.float64)
    for z in range(grey.shape[0]):
        total += graycomatrix(grey[z], [GLCM_DISTANCE_PX], [GLCM_ANGLE_RAD], levels=GLCM_LEVELS)
    return total


def glcm_feature(volume: np.ndarray) -> float:
    """GLCM correlation (Haralick) of a ``(Z, Y, X)`` volume in [0, 1]: skimage ``graycoprops(P, "correlation")``
    of the slice-summed co-occurrence matrix :func:`glcm_counts`. Unitless, in [-1, 1]; skimage returns 1 for a
    constant volume (zero variance)."""
    return float(graycoprops(glcm_counts(volume), "correlation")[0, 0])


def hog_descriptor(volume: np.ndarray) -> np.ndarray:
    """HOG descriptors of every Z slice of a ``(Z, Y, X)`` volume, shape ``(Z, F)``.

    skimage :func:`~skimage.feature.hog`, 9 orientations, 8×8-pixel cells, 2×2-cell blocks, L2-Hys block norm.
    """
    volume = np.asarray(volume, dtype=np.float64)
    return np.stack(
        [
            hog(
                volume[z],
                orientations=HOG_ORIENTATIONS,
                pixels_per_cell=HOG_PIXELS_PER_CELL,
                cells_per_block=HOG_CELLS_PER_BLOCK,
                feature_vector=True,
            )
            for z in range(volume.shape[0])
        ]
    )


@functools.lru_cache(maxsize=4)
def feature_network(seed: int = FEATURE_SEED) -> torch.nn.Sequential:
    """The fixed random-feature 3-D CNN of the perceptual distance, built deterministically from ``seed``.

    Stages of 3×3×3 convolution (He-normal weights drawn from a seeded generator, zero bias) + ReLU, each followed
    by (1, 2, 2) average pooling; channels :data:`FEATURE_CHANNELS`. No weights are downloaded or trained:
    random convolutional features are known to capture local image statistics (He, Wang & Hopcroft, NeurIPS 2016,
    "A powerful generative model using random weights for the deep image representation").
    """
    generator = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    in_ch = 1
    for out_ch in FEATURE_CHANNELS:
        conv = torch.nn.Conv3d(in_ch, out_ch, FEATURE_KERNEL_SIZE, padding=FEATURE_KERNEL_SIZE // 2)
        fan_in = in_ch * FEATURE_KERNEL_SIZE**3
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * np.sqrt(2.0 / fan_in))
            conv.bias.zero_()
        layers += [conv, torch.nn.ReLU(), torch.nn.AvgPool3d(FEATURE_POOL, ceil_mode=True)]
        in_ch = out_ch
    net = torch.nn.Sequential(*layers).eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net


def network_features(volumes: np.ndarray, seed: int = FEATURE_SEED) -> list[torch.Tensor]:
    """Unit-normalised feature maps of each stage of :func:`feature_network` for ``(N, Z, Y, X)`` volumes.

    Returns one tensor ``(N, C, Z, Y', X')`` per stage; at every voxel the C-vector has unit L2 norm (or is zero).
    """
    x = torch.as_tensor(np.asarray(volumes, dtype=np.float32))[:, None]
    feats = []
    with torch.no_grad():
        for layer in feature_network(seed):
            x = layer(x)
            if isinstance(layer, torch.nn.ReLU):
                norm = torch.sqrt((x * x).sum(dim=1, keepdim=True)) + FEATURE_NORM_EPS
                feats.append(x / norm)
    return feats
