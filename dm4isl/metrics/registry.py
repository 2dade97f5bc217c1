"""Registry of all metrics (function, direction, unit, level, pooling) and the named metric sets of SPEC §5."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from dm4isl.metrics import basic, intensity, objects, overlap, texture
from dm4isl.metrics.instances import InstanceComparison, compare_instances
from dm4isl.metrics.overlap import DEFAULT_VOXEL_SIZE_UM
from dm4isl.metrics.perceptual import ClassifierFeatures
from dm4isl.metrics.segmentation import SegmentationSettings
from dm4isl.metrics.slices import SliceComparison, compare_slices
from dm4isl.metrics.volume import VolumeFeatures, as_features, as_pair

PATCH = "patch"
DATASET = "dataset"
#: The paper's perceptual distance in a trained organelle classifier (computed when a classifier is given).
CLS_LPIPS = "cls_lpips"
#: The metric after which CLS-LPIPS is listed when a classifier is given.
CLS_LPIPS_AFTER = "perceptual_distance"
#: Torch threads while metrics are computed: per-patch tensors are small, so extra threads cost more in
#: synchronisation than they gain (measured ≈ 7× slower with 2 threads on a busy 2-core machine).
DEFAULT_TORCH_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class PairContext:
    """One ground-truth/prediction pair ``(Z, Y, X)`` with the voxel size (Z, Y, X, µm) and, for CLS-LPIPS, the
    classifier's feature extractor; caches pair-level work."""

    def __init__(
        self,
        gt: np.ndarray | VolumeFeatures,
        pred: np.ndarray | VolumeFeatures,
        voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
        classifier: ClassifierFeatures | None = None,
    ) -> None:
        self.gt, self.pred = as_pair(gt, pred)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.classifier = classifier

    def require_classifier(self) -> ClassifierFeatures:
        """The classifier's feature extractor; ``ValueError`` when none was given."""
        if self.classifier is None:
            raise ValueError(f"{CLS_LPIPS} needs an organelle classifier: pass classifier= (dm4isl-evaluate "
                             "perceptual.classifier=<checkpoint>)")
        return self.classifier

    @cached_property
    def instances(self) -> InstanceComparison:
        """Matched-instance statistics, computed once for all instance metrics."""
        return compare_instances(self.gt, self.pred, self.voxel_size)

    @cached_property
    def slices(self) -> SliceComparison:
        """Per-slice values of the benchmark protocol's segmentation metrics, computed once for all of them.

        Their distances use one square pixel (the reference's ``SegParams.pixel_size_um``): the voxel size's Y and
        X must agree."""
        _, y, x = self.voxel_size
        if not np.isclose(y, x, rtol=1e-6):
            raise ValueError(f"the benchmark protocol's distances need square pixels (as the reference's "
                             f"pixel_size_um); got Y {y:g} µm and X {x:g} µm (voxel_size); use the metric voxel size "
                             f"{list(DEFAULT_VOXEL_SIZE_UM)}")
        return compare_slices(self.gt.slice_segmentation, self.pred.slice_segmentation, y)


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is: how to compute it and how to read it.

    ``fn`` maps a :class:`PairContext` to the per-patch value. Dataset-level metrics have no ``fn``; their
    ``dataset_fn`` maps the ``(N,)`` per-patch values of their ``companion`` metric on the ground truths and on
    the predictions to one number. ``higher_is_better`` is ``None`` for values
    that are descriptors rather than scores (no improvement or statistics). ``pooled_fn`` computes the value over
    all voxels of all patches where the reference reports it pooled. ``ideal`` is the value for a perfect
    prediction (``None`` when it depends on the ground truth, e.g. MI). ``title`` is the table heading when the
    name alone would mislead; ``needs_classifier`` marks metrics computed only when an organelle classifier is
    given (CLS-LPIPS).
    """

    name: str
    higher_is_better: bool | None
    unit: str
    level: str = PATCH
    fn: Callable[[PairContext], float] | None = None
    dataset_fn: Callable[[np.ndarray, np.ndarray], float] | None = None
    companion: str | None = None
    pooled_fn: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float] | None = None
    ideal: float | None = None
    title: str = ""
    needs_classifier: bool = False

    @property
    def label(self) -> str:
        """Table heading: :attr:`title`, else the name."""
        return self.title or self.name

    @property
    def pooled(self) -> bool:
        """True if the metric also has a value pooled over all voxels of all patches."""
        return self.pooled_fn is not None

    @property
    def is_score(self) -> bool:
        """True if the metric has a direction (so improvement % and statistics apply)."""
        return self.higher_is_better is not None


_SPECS = [
    MetricSpec("pcc", True, "", fn=lambda c: basic.pcc(c.gt.volume, c.pred.volume), pooled_fn=basic.pooled_pcc,
               ideal=1.0),
    MetricSpec("mse", False, "intensity²", fn=lambda c: basic.mse(c.gt.volume, c.pred.volume),
               pooled_fn=basic.pooled_mse, ideal=0.0),
    MetricSpec("ms_ssim", True, "", fn=lambda c: basic.ms_ssim(c.gt.volume, c.pred.volume), ideal=1.0),
    MetricSpec("mi", True, "bit", fn=lambda c: intensity.mi(c.gt, c.pred)),
    MetricSpec("mi_fixed_range", True, "bit", fn=lambda c: intensity.mi_fixed_range(c.gt, c.pred)),
    MetricSpec("jsd", False, "", fn=lambda c: intensity.jsd(c.gt, c.pred), ideal=0.0),
    MetricSpec("jsd_histogram", False, "", fn=lambda c: intensity.jsd_histogram(c.gt, c.pred), ideal=0.0),
    MetricSpec("glcm_feature", None, "", fn=lambda c: c.pred.glcm_feature),
    MetricSpec("glcm_correlation", True, "", level=DATASET,
               dataset_fn=texture.correlation_across_patches, companion="glcm_feature", ideal=1.0),
    MetricSpec("hog_distance", False, "", fn=lambda c: texture.hog_distance(c.gt, c.pred), ideal=0.0),
    MetricSpec("perceptual_distance", False, "", fn=lambda c: texture.perceptual_distance(c.gt, c.pred), ideal=0.0,
               title="perceptual_distance (random features)"),
    MetricSpec(CLS_LPIPS, False, "", fn=lambda c: texture.perceptual_distance(c.gt, c.pred, c.require_classifier()),
               ideal=0.0, title="cls_lpips (classifier features)", needs_classifier=True),
    MetricSpec("iou", True, "", fn=lambda c: overlap.iou(c.gt, c.pred), ideal=1.0),
    MetricSpec("dice", True, "", fn=lambda c: overlap.dice(c.gt, c.pred), ideal=1.0),
    MetricSpec("precision", True, "", fn=lambda c: overlap.precision(c.gt, c.pred), ideal=1.0),
    MetricSpec("recall", True, "", fn=lambda c: overlap.recall(c.gt, c.pred), ideal=1.0),
    MetricSpec("hausdorff", False, "µm", fn=lambda c: c.instances.mean_hausdorff, ideal=0.0),
    MetricSpec("hausdorff_3d", False, "µm", fn=lambda c: overlap.hausdorff_3d(c.gt, c.pred, c.voxel_size),
               ideal=0.0),
    MetricSpec("volume_error", False, "µm³", fn=lambda c: objects.volume_error(c.gt, c.pred, c.voxel_size),
               ideal=0.0),
    MetricSpec("volume_error_relative", False, "fraction", fn=lambda c: overlap.volume_error_relative(c.gt, c.pred),
               ideal=0.0),
    MetricSpec("psnr", True, "dB", fn=lambda c: intensity.psnr(c.gt, c.pred), ideal=float("inf")),
    MetricSpec("ssim", True, "", fn=lambda c: intensity.ssim(c.gt, c.pred), ideal=1.0),
    MetricSpec("instance_f1", True, "", fn=lambda c: c.instances.f1, ideal=1.0),
    MetricSpec("centroid_distance", False, "µm", fn=lambda c: c.instances.mean_centroid_distance, ideal=0.0),
    MetricSpec("nn_distance_error", False, "µm", fn=lambda c: c.instances.mean_nn_distance_error, ideal=0.0),
    MetricSpec("area_error", False, "fraction", fn=lambda c: c.instances.mean_area_error, ideal=0.0),
    MetricSpec("crps", False, "intensity", fn=lambda c: basic.mae(c.gt.volume, c.pred.volume), ideal=0.0),
    MetricSpec("iou_2d", True, "", fn=lambda c: c.slices.patch_value("iou"), ideal=1.0),
    MetricSpec("f1_2d", True, "", fn=lambda c: c.slices.patch_value("f1"), ideal=1.0),
    MetricSpec("centroid_2d", False, "µm", fn=lambda c: c.slices.patch_value("centroid"), ideal=0.0),
    MetricSpec("min_distance_2d", False, "µm", fn=lambda c: c.slices.patch_value("min_distance"), ideal=0.0),
    MetricSpec("area_2d", False, "µm²", fn=lambda c: c.slices.patch_value("area"), ideal=0.0),
    MetricSpec("hausdorff_2d", False, "µm", fn=lambda c: c.slices.patch_value("hausdorff"), ideal=0.0),
]

#: Every metric by name.
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}
#: Metrics computed on the masks chosen by ``segmentation`` (reference | spec); the benchmark protocol's ``*_2d``
#: metrics always use its own per-slice segmentation.
SEGMENTED = (
    "iou", "dice", "precision", "recall", "hausdorff", "hausdorff_3d", "volume_error", "volume_error_relative",
    "instance_f1", "centroid_distance", "nn_distance_error", "area_error",
)

#: The named metric sets (also the ``metrics/`` config group): validation, the paper's 14, the benchmark protocol's
#: 11, everything. The paper's 14 follow the reference's earlier definitions; ``*_fixed_range``, ``*_histogram``,
#: ``*_3d`` and ``*_relative`` are the named variants (docs/metrics.md). ``crps`` of a single prediction is its mean
#: absolute error (the CRPS of a point forecast); ``dm4isl-evaluate`` scores seed ensembles with the fair-ensemble
#: CRPS.
FAST = ("pcc", "mse", "ms_ssim")
PAPER = (
    "pcc", "mse", "ms_ssim", "mi", "jsd",
    "glcm_correlation", "hog_distance", "perceptual_distance",
    "iou", "dice", "precision", "recall", "hausdorff", "volume_error",
)
#: The 11 columns of the authors' newest ``calc_metrics`` (the benchmark protocol, :mod:`dm4isl.metrics.slices`): its
#: JSD is the histogram form, its segmentation metrics are per-slice (``*_2d``).
BENCHMARK = (
    "pcc", "mse", "ms_ssim", "jsd_histogram", "mi",
    "iou_2d", "f1_2d", "centroid_2d", "min_distance_2d", "area_2d", "hausdorff_2d",
)
ALL = tuple(name for name, spec in METRICS.items() if not spec.needs_classifier)
METRIC_SETS: dict[str, tuple[str, ...]] = {"fast": FAST, "paper": PAPER, "benchmark": BENCHMARK, "all": ALL}

def resolve_metric_names(names: str | Iterable[str], with_classifier: bool = False) -> list[str]:
    """Expand a set name (``fast``, ``paper``, ``benchmark``, ``all``) or a list of metric names into a checked,
    ordered list.

    A dataset-level metric brings its per-patch ``companion`` (``glcm_correlation`` → ``glcm_feature``).
    ``with_classifier``: an organelle classifier is available, so ``cls_lpips`` joins the list (after
    ``perceptual_distance`` when that is listed, else at the end); without one, asking for it is an error.
    """
    requested = list(METRIC_SETS[names]) if isinstance(names, str) and names in METRIC_SETS else (
        [names] if isinstance(names, str) else list(names)
    )
    unknown = [n for n in requested if n not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {unknown}; expected names from {sorted(METRICS)} or a set from {sorted(METRIC_SETS)}"
        )
    needing = [n for n in requested if METRICS[n].needs_classifier]
    if needing and not with_classifier:
        raise ValueError(f"metric(s) {needing} need an organelle classifier: pass one (dm4isl-evaluate "
                         "perceptual.classifier=<checkpoint>) or leave them out")
    out: list[str] = []
    for name in requested:
        for item in (name, METRICS[name].companion):
            if item is not None and item not in out:
                out.append(item)
    if with_classifier and CLS_LPIPS not in out:
        out.insert(out.index(CLS_LPIPS_AFTER) + 1 if CLS_LPIPS_AFTER in out else len(out), CLS_LPIPS)
    return out


def patch_metrics(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    names: str | Iterable[str] = "paper",
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
    n_threads: int = DEFAULT_TORCH_THREADS,
    classifier: ClassifierFeatures | None = None,
    segmentation: SegmentationSettings | None = None,
) -> dict[str, float]:
    """Per-patch values of the patch-level metrics among ``names`` for one ``(Z, Y, X)`` pair.

    Pass :class:`VolumeFeatures` for a ground truth compared with several predictions to reuse its descriptors.
    ``segmentation`` (for arrays) chooses the masks of the segmentation metrics. Torch runs with ``n_threads``
    threads meanwhile. With an organelle ``classifier`` ``cls_lpips`` is added.
    """
    ctx = PairContext(as_features(gt, "ground truth", segmentation), as_features(pred, "prediction", segmentation),
                      voxel_size, classifier)
    with torch_threads(n_threads):
        return {
            n: float(METRICS[n].fn(ctx))
            for n in resolve_metric_names(names, with_classifier=classifier is not None)
            if METRICS[n].level == PATCH
        }


def dataset_metrics(
    gts: Sequence[np.ndarray | VolumeFeatures],
    preds: Sequence[np.ndarray | VolumeFeatures],
    names: str | Iterable[str] = "paper",
) -> dict[str, float]:
    """Values over a whole set of ``(Z, Y, X)`` pairs: ``"<metric>"`` for dataset-level metrics and
    ``"<metric>_pooled"`` for metrics the reference pools over all voxels (PCC, MSE)."""
    pairs = [as_pair(g, p) for g, p in zip(gts, preds, strict=True)]
    g_feats = [g for g, _ in pairs]
    p_feats = [p for _, p in pairs]
    out: dict[str, float] = {}
    for name in resolve_metric_names(names):
        spec = METRICS[name]
        if spec.level == DATASET:
            companion = METRICS[spec.companion]
            f_gt = np.array([companion.fn(PairContext(g, g)) for g in g_feats])
            f_pred = np.array([companion.fn(PairContext(g, p)) for g, p in zip(g_feats, p_feats, strict=True)])
            out[name] = float(spec.dataset_fn(f_gt, f_pred))
        elif spec.pooled:
            out[f"{name}_pooled"] = float(spec.pooled_fn([g.volume for g in g_feats], [p.volume for p in p_feats]))
    return out
