"""Image-comparison metrics on ``(Z, Y, X)`` arrays in [0, 1]: plain functions, no Lightning inside."""

from dm4isl.metrics.basic import mae, ms_ssim, ms_ssim_batch, mse, pcc, pooled_mse, pooled_pcc
from dm4isl.metrics.instances import (
    area_error,
    centroid_distance,
    compare_instances,
    hausdorff,
    instance_f1,
    nn_distance_error,
)
from dm4isl.metrics.intensity import jsd, jsd_histogram, mi, mi_fixed_range, psnr, ssim
from dm4isl.metrics.objects import link_objects, volume_error
from dm4isl.metrics.overlap import dice, hausdorff_3d, iou, precision, recall, volume_error_relative
from dm4isl.metrics.probabilistic import SpreadSkill, crps, crps_map, spread_skill
from dm4isl.metrics.registry import (
    METRIC_SETS,
    METRICS,
    MetricSpec,
    dataset_metrics,
    patch_metrics,
    resolve_metric_names,
)
from dm4isl.metrics.segmentation import segment_volume
from dm4isl.metrics.table import best_baseline, bootstrap_ci, improvement_pct, paired_wilcoxon, summarize
from dm4isl.metrics.texture import glcm_correlation, glcm_feature, hog_distance, perceptual_distance
from dm4isl.metrics.volume import VolumeFeatures

__all__ = [
    "METRICS",
    "METRIC_SETS",
    "MetricSpec",
    "SpreadSkill",
    "VolumeFeatures",
    "area_error",
    "best_baseline",
    "bootstrap_ci",
    "centroid_distance",
    "compare_instances",
    "crps",
    "crps_map",
    "dataset_metrics",
    "dice",
    "glcm_correlation",
    "glcm_feature",
    "hausdorff",
    "hausdorff_3d",
    "hog_distance",
    "improvement_pct",
    "instance_f1",
    "iou",
    "jsd",
    "jsd_histogram",
    "link_objects",
    "mae",
    "mi",
    "mi_fixed_range",
    "ms_ssim",
    "ms_ssim_batch",
    "mse",
    "nn_distance_error",
    "paired_wilcoxon",
    "patch_metrics",
    "pcc",
    "perceptual_distance",
    "pooled_mse",
    "pooled_pcc",
    "precision",
    "psnr",
    "recall",
    "resolve_metric_names",
    "segment_volume",
    "spread_skill",
    "ssim",
    "summarize",
    "volume_error",
    "volume_error_relative",
]
