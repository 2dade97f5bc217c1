"""Intensity metrics on ``(Z, Y, X)`` volumes in [0, 1]: mutual information, Jensen–Shannon distance, PSNR, SSIM."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dm4isl.metrics.volume import VolumeFeatures, as_pair

#: Bins per axis of the joint histogram of the mutual information (SPEC §5), on [0, 1] × [0, 1].
MI_BINS = 20
#: Logarithm base of MI and JSD: results in bits.
LOG_BASE = 2
#: Intensity range of normalised data, used by PSNR and SSIM.
DATA_RANGE = 1.0


def mi(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Mutual information of ground truth and prediction ``(Z, Y, X)``, in bits. Higher is better.

    Definition: ``MI = H(G) + H(P) - H(G, P)`` from the 20 × 20 joint histogram of all voxel pairs on the fixed
    range [0, 1] × [0, 1] (entropies with :func:`scipy.stats.entropy`, base 2). Ideal value for a perfect
    prediction: ``H(G)``, the entropy of the ground truth's 20-bin histogram (0 for a constant ground truth).
    """
    g, p = as_pair(gt, pred)
    joint, _, _ = np.histogram2d(
        g.volume.ravel(), p.volume.ravel(), bins=MI_BINS, range=((0.0, 1.0), (0.0, 1.0))
    )
    h_g = entropy(joint.sum(axis=1), base=LOG_BASE)
    h_p = entropy(joint.sum(axis=0), base=LOG_BASE)
    h_gp = entropy(joint.ravel(), base=LOG_BASE)
    return float(max(h_g + h_p - h_gp, 0.0))


def jsd(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Jensen–Shannon *distance* between the intensity histograms of ground truth and prediction ``(Z, Y, X)``.

    Definition (as reported by the reference): :func:`scipy.spatial.distance.jensenshannon` (base 2) of the
    256-bin histograms on [0, 1], i.e. the square root of the Jensen–Shannon divergence. Lower is better;
    unitless, in [0, 1]; 0 for identical histograms, 1 for histograms with disjoint support.
    """
    g, p = as_pair(gt, pred)
    return float(jensenshannon(g.histogram, p.histogram, base=LOG_BASE))


def psnr(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Peak signal-to-noise ratio in dB with data range 1 (skimage). Higher is better; ``inf`` for identical inputs."""
    g, p = as_pair(gt, pred)
    if np.array_equal(g.volume, p.volume):
        return float("inf")
    return float(peak_signal_noise_ratio(g.volume, p.volume, data_range=DATA_RANGE))


def ssim(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """3-D structural similarity (skimage ``structural_similarity``, 7×7×7 uniform window, data range 1).

    Higher is better; unitless, at most 1 (identical inputs). Needs every axis ≥ 7 voxels.
    """
    g, p = as_pair(gt, pred)
    return float(structural_similarity(g.volume, p.volume, data_range=DATA_RANGE))
