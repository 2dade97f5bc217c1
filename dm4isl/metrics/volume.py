"""Lazily computed, cached descriptors of one ``(Z, Y, X)`` volume, shared by all metrics that compare it."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from dm4isl.errors import DataError
from dm4isl.metrics import descriptors
from dm4isl.metrics.perceptual import ClassifierFeatures
from dm4isl.metrics.segmentation import BENCHMARK_SLICES, Segmentation, SegmentationSettings, segment, segment_volume

#: Values may exceed [0, 1] by this much (float rounding) before a volume is rejected.
UNIT_RANGE_TOL = 1e-3


class VolumeFeatures:
    """A ``(Z, Y, X)`` float volume in [0, 1] with its descriptors computed on first use and then kept.

    ``segmentation`` chooses the pipeline of its foreground mask and instances (default: the reference's).
    Comparing one ground truth with several predictions reuses the ground truth's segmentation, histograms,
    HOG and network features. ``name`` (e.g. a file path) appears in error messages.
    """

    def __init__(
        self, volume: np.ndarray, name: str = "<array>", segmentation: SegmentationSettings | None = None
    ) -> None:
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise DataError(f"{name}: expected a (Z, Y, X) volume, got shape {volume.shape}")
        if volume.dtype.kind not in "fiu":
            raise DataError(f"{name}: expected a numeric volume, got dtype {volume.dtype}")
        finite = np.isfinite(volume)
        if not finite.all():
            raise DataError(f"{name}: {int((~finite).sum())} NaN/inf voxels; expected finite intensities in [0, 1]")
        lo, hi = float(volume.min()), float(volume.max())
        if lo < -UNIT_RANGE_TOL or hi > 1 + UNIT_RANGE_TOL:
            raise DataError(f"{name}: intensities span [{lo:.4g}, {hi:.4g}]; expected normalised values in [0, 1]")
        self.volume = volume.astype(np.float32, copy=False)
        self.name = name
        self._classifier_features: dict[int, tuple[ClassifierFeatures, list[torch.Tensor]]] = {}
        self.segmentation_settings = segmentation or SegmentationSettings()

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` shape of the volume."""
        return self.volume.shape

    @cached_property
    def exact(self) -> np.ndarray:
        """The volume in float64, 8-bit levels exactly ``k / 255`` (:func:`.descriptors.exact_levels`)."""
        return descriptors.exact_levels(self.volume)

    @cached_property
    def histogram(self) -> np.ndarray:
        """256-bin intensity histogram on [0, 1], ``(256,)`` counts."""
        return descriptors.intensity_histogram(self.volume)

    @cached_property
    def glcm_feature(self) -> float:
        """GLCM correlation of the volume (:func:`dm4isl.metrics.descriptors.glcm_feature`)."""
        return descriptors.glcm_feature(self.volume)

    @cached_property
    def hog(self) -> np.ndarray:
        """Per-slice HOG descriptors ``(Z, F)``."""
        return descriptors.hog_descriptor(self.volume)

    @cached_property
    def network_features(self) -> list[torch.Tensor]:
        """Unit-normalised random-network feature maps, one ``(1, C, Z, Y', X')`` tensor per stage."""
        return descriptors.network_features(self.volume[None])

    def classifier_features(self, classifier: ClassifierFeatures) -> list[torch.Tensor]:
        """Feature tensors of the volume in ``classifier``'s layers (computed once per classifier)."""
        cached = self._classifier_features.get(id(classifier))
        if cached is None or cached[0] is not classifier:
            cached = (classifier, classifier.features(self.volume[None]))
            self._classifier_features[id(classifier)] = cached
        return cached[1]

    @cached_property
    def segmentation(self) -> Segmentation:
        """Per-slice foreground mask and instance labels (:func:`dm4isl.metrics.segmentation.segment`, with this
        volume's :class:`~dm4isl.metrics.segmentation.SegmentationSettings`)."""
        return segment(self.volume, self.segmentation_settings)

    @cached_property
    def slice_segmentation(self) -> Segmentation:
        """Per-slice foreground mask and instances of the benchmark protocol (:func:`segment_volume` with
        :data:`~dm4isl.metrics.segmentation.BENCHMARK_SLICES`), whatever ``segmentation`` says."""
        return segment_volume(self.exact, BENCHMARK_SLICES)


def as_features(
    volume: np.ndarray | VolumeFeatures, name: str = "<array>", segmentation: SegmentationSettings | None = None
) -> VolumeFeatures:
    """Wrap a ``(Z, Y, X)`` array as :class:`VolumeFeatures` (a :class:`VolumeFeatures` is returned as is)."""
    return volume if isinstance(volume, VolumeFeatures) else VolumeFeatures(volume, name, segmentation)


def as_pair(
    gt: np.ndarray | VolumeFeatures, pred: np.ndarray | VolumeFeatures
) -> tuple[VolumeFeatures, VolumeFeatures]:
    """Wrap ground truth and prediction ``(Z, Y, X)`` and check that their shapes and segmentations agree (an array
    paired with a :class:`VolumeFeatures` gets its segmentation settings)."""
    given = next((v.segmentation_settings for v in (gt, pred) if isinstance(v, VolumeFeatures)), None)
    g, p = as_features(gt, "ground truth", given), as_features(pred, "prediction", given)
    if g.shape != p.shape:
        raise DataError(f"{p.name}: shape {p.shape} (Z, Y, X) differs from {g.name} shape {g.shape}")
    if g.segmentation_settings != p.segmentation_settings:
        raise ValueError(f"{p.name} and {g.name} are segmented differently: {p.segmentation_settings} vs "
                         f"{g.segmentation_settings}")
    return g, p
