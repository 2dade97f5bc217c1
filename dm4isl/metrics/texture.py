"""Texture metrics on ``(Z, Y, X)`` volumes in [0, 1]: GLCM correlation, HOG distance, perceptual distance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dm4isl.metrics.perceptual import ClassifierFeatures, cls_lpips_from_features
from dm4isl.metrics.volume import VolumeFeatures, as_features, as_pair

#: Fewest patches for which a Pearson correlation across patches is defined.
MIN_PATCHES_FOR_CORRELATION = 2


def glcm_feature(volume: np.ndarray | VolumeFeatures) -> float:
    """Per-patch GLCM feature of one ``(Z, Y, X)`` volume (ground truth or prediction): the Haralick correlation
    of its grey-level co-occurrence matrix (distance 1, vertical offset, 256 levels, counts summed over Z
    slices; skimage ``graycomatrix``/``graycoprops``). Unitless, in [-1, 1]; 1 for a constant volume (skimage's
    convention). Not a comparison by itself: see :func:`glcm_correlation`."""
    return as_features(volume).glcm_feature


def glcm_correlation(
    gts: Sequence[np.ndarray | VolumeFeatures], preds: Sequence[np.ndarray | VolumeFeatures]
) -> float:
    """Dataset-level GLCM correlation (SPEC §5): Pearson r across patches between the ground truths' and the
    predictions' :func:`glcm_feature`.

    ``gts`` and ``preds`` are equally long sequences of ``(Z, Y, X)`` volumes. Higher is better; unitless, in
    [-1, 1]. NaN (documented, no warning) for fewer than 2 patches or when either feature list is constant.
    """
    if len(gts) != len(preds):
        raise ValueError(
            f"glcm_correlation needs paired lists, got {len(gts)} ground truths and {len(preds)} predictions"
        )
    pairs = [as_pair(g, p) for g, p in zip(gts, preds, strict=True)]
    return correlation_across_patches(
        np.array([g.glcm_feature for g, _ in pairs]), np.array([p.glcm_feature for _, p in pairs])
    )


def correlation_across_patches(gt_values: np.ndarray, pred_values: np.ndarray) -> float | np.ndarray:
    """Pearson r between per-patch feature vectors along the last axis (patches).

    ``(N,)`` inputs give a float; ``(..., N)`` inputs (e.g. bootstrap resamples) give an array. NaN (documented,
    no warning) where N < 2 or either vector is constant. Same value as :func:`scipy.stats.pearsonr`.
    """
    g = np.asarray(gt_values, dtype=np.float64)
    p = np.asarray(pred_values, dtype=np.float64)
    if g.shape[-1] < MIN_PATCHES_FOR_CORRELATION:
        out = np.full(np.broadcast_shapes(g.shape, p.shape)[:-1], np.nan)
        return float(out) if out.ndim == 0 else out
    g = g - g.mean(axis=-1, keepdims=True)
    p = p - p.mean(axis=-1, keepdims=True)
    denom = np.sqrt((g * g).sum(axis=-1) * (p * p).sum(axis=-1))
    num = (g * p).sum(axis=-1)
    safe = denom > 0
    r = np.where(safe, num / np.where(safe, denom, 1.0), np.nan)
    r = np.clip(r, -1.0, 1.0)
    return float(r) if r.ndim == 0 else r


def hog_distance(gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures) -> float:
    """Mean absolute difference of the per-slice HOG descriptors of ground truth and prediction ``(Z, Y, X)``.

    HOG per Z slice: 9 orientations, 8×8-pixel cells, 2×2-cell blocks, L2-Hys (skimage ``hog``); the distance is
    the mean of |HOG(G) − HOG(P)| over all descriptor entries of all slices. Lower is better; unitless (block-
    normalised gradient histograms), 0 for identical inputs. Needs Y and X ≥ 16 pixels.
    """
    g, p = as_pair(gt, pred)
    return float(np.mean(np.abs(g.hog - p.hog)))


def perceptual_distance(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    classifier: ClassifierFeatures | torch.nn.Module | None = None,
) -> float:
    """Feature-space distance between ground truth and prediction ``(Z, Y, X)``: random features, or CLS-LPIPS.

    Without ``classifier`` (the default; tables call it ``perceptual_distance (random features)``): the network is
    :func:`dm4isl.metrics.descriptors.feature_network` — three 3×3×3 convolution + ReLU stages with seeded
    He-normal random weights (no pretrained or downloaded weights). Distance in the style of LPIPS (Zhang et al.,
    CVPR 2018) without learned weights: feature vectors are unit-normalised over channels at every voxel; the
    squared L2 difference is averaged over voxels and then over the three stages. Unitless, in [0, 4].

    With ``classifier`` (tables call it ``cls_lpips``): the paper's perceptual metric, in a trained organelle
    classifier (:class:`~dm4isl.metrics.perceptual.ClassifierFeatures`; a bare network is wrapped with its defaults):
    the mean squared difference of the two feature tensors at each of layer1–layer4 and the final layer (class
    logits), averaged over the five layers. Unitless, unbounded.

    Lower is better; 0 for identical inputs.
    """
    g, p = as_pair(gt, pred)
    if classifier is not None:
        if not isinstance(classifier, ClassifierFeatures):
            classifier = ClassifierFeatures(classifier)
        return cls_lpips_from_features(g.classifier_features(classifier), p.classifier_features(classifier))
    per_stage = [
        float(((fg - fp) ** 2).sum(dim=1).mean())
        for fg, fp in zip(g.network_features, p.network_features, strict=True)
    ]
    return float(np.mean(per_stage))
