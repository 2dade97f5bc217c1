"""Intensity metrics on ``(Z, Y, X)`` volumes in [0, 1]: mutual information, Jensen–Shannon distance, PSNR, SSIM."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dm4isl.metrics.volume import VolumeFeatures, as_pair

#: Bins per axis of the joint histogram of the mutual information (SPEC §5).
MI_BINS = 20
#: Logarithm base of MI and JSD: results in bits.
LOG_BASE = 2
#: Intensity range of normalised data, used by PSNR and SSIM.
DATA_RANGE = 1.0


def _mutual_information(joint: np.ndarray) -> float:
    """``H(G) + H(P) − H(G, P)`` in bits from a joint histogram ``(bins, bins)`` of counts (never below 0)."""
    h_g = entropy(joint.sum(axis=1), base=LOG_BASE)
    h_p = entropy(joint.sum(axis=0), base=LOG_BASE)
    h_gp = entropy(joint.ravel(), base=LOG_BASE)
    return float(max(h_g + h_p - h_gp, 0.0))


def mi(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Mutual information of ground truth and prediction ``(Z, Y, X)``, in bits, as the reference computes it.

    Definition: ``MI = H(G) + H(P) - H(G, P)`` from the 20 × 20 joint histogram of all voxel pairs, each axis
    binned over *its own data range* (NumPy ``histogram2d`` without ``range``, the reference's ``mi`` in
    ``src/MetricsFunctions.py``). Higher is better. Ideal value for a perfect prediction: ``H(G)``, the entropy of
    the ground truth's 20-bin histogram over its own range (0 for a constant ground truth). Because the bins
    follow each volume's range, a prediction with a different range (e.g. one bright outlier) is binned
    differently from the ground truth; :func:`mi_fixed_range` bins both on [0, 1]. Volumes of 8-bit grey levels
    are binned at the reference's float64 precision (:attr:`VolumeFeatures.exact`), which reproduces its values
    on its saved patches exactly.
    """
    g, p = as_pair(gt, pred)
    joint, _, _ = np.histogram2d(g.exact.ravel(), p.exact.ravel(), bins=MI_BINS)
    return _mutual_information(joint)


def mi_fixed_range(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Mutual information (bits) from the 20 × 20 joint histogram on the fixed range [0, 1] × [0, 1].

    Variant of :func:`mi` whose bins do not depend on the data, so values are comparable between methods and
    patches. Higher is better; ideal value ``H(G)`` of the ground truth's 20-bin histogram on [0, 1].
    """
    g, p = as_pair(gt, pred)
    joint, _, _ = np.histogram2d(
        g.volume.ravel(), p.volume.ravel(), bins=MI_BINS, range=((0.0, 1.0), (0.0, 1.0))
    )
    return _mutual_information(joint)


def jsd(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Jensen–Shannon distance between ground truth and prediction ``(Z, Y, X)`` seen as distributions over voxels.

    Definition (the reference's ``jsd`` in ``src/MetricsFunctions.py``, every stored version):
    :func:`scipy.spatial.distance.jensenshannon` (base 2) of the two flattened volumes, which SciPy normalises to
    sum 1 — each volume becomes a probability distribution over voxel positions, so the metric compares *where*
    the intensity is, not the intensity histogram. Lower is better; unitless, in [0, 1]; 0 for volumes that are
    equal up to a positive factor. NaN (documented) when either volume sums to 0. :func:`jsd_histogram` compares
    intensity histograms instead.
    """
    g, p = as_pair(gt, pred)
    a = g.volume.ravel().astype(np.float64)
    b = p.volume.ravel().astype(np.float64)
    if a.sum() <= 0 or b.sum() <= 0:
        return float("nan")
    return float(jensenshannon(a, b, base=LOG_BASE))


def jsd_histogram(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Jensen–Shannon distance between the 256-bin intensity histograms on [0, 1] of ground truth and prediction.

    :func:`scipy.spatial.distance.jensenshannon` (base 2) of the histograms, i.e. the square root of the
    Jensen–Shannon divergence of the two intensity distributions. Lower is better; unitless, in [0, 1]; 0 for
    identical histograms, 1 for histograms with disjoint support.
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
