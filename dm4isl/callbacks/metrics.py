"""Lightning callback that logs a metric set on the predictions a LightningModule collected at validation/test."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np

from dm4isl.metrics.overlap import DEFAULT_VOXEL_SIZE_UM
from dm4isl.metrics.registry import (
    DEFAULT_TORCH_THREADS,
    METRICS,
    PATCH,
    dataset_metrics,
    patch_metrics,
    resolve_metric_names,
    torch_threads,
)
from dm4isl.metrics.volume import VolumeFeatures
from dm4isl.models.outputs import OUTPUT_ATTRS, patch_rows, stack_outputs


def compute_stage_metrics(
    outputs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    metrics: str | Iterable[str] = "fast",
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
    known: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> dict[str, float]:
    """Summaries of ``outputs[method] = (gts, preds)``, two ``(N, Z, Y, X)`` stacks in [0, 1].

    Keys ``"<method>_<metric>"``: mean over patches of patch-level metrics (NaN patches left out; descriptors
    such as ``glcm_feature`` are skipped), ``"<method>_<metric>_pooled"`` for pooled metrics (PCC, MSE) and
    ``"<method>_<metric>"`` for dataset-level metrics (GLCM correlation). ``known[method][metric]`` holds per-patch
    values (stack order) already computed elsewhere: those are averaged, not computed again.
    """
    names = resolve_metric_names(metrics)
    known = known or {}
    logged: dict[str, float] = {}
    for method, (gts, preds) in outputs.items():
        gts, preds = np.asarray(gts), np.asarray(preds)
        if gts.shape != preds.shape or gts.ndim != 4:
            raise ValueError(
                f"{method}: expected ground truths and predictions as two (N, Z, Y, X) stacks of equal shape, "
                f"got {gts.shape} and {preds.shape}"
            )
        g_feats = [VolumeFeatures(g, f"{method} ground truth {i}") for i, g in enumerate(gts)]
        p_feats = [VolumeFeatures(p, f"{method} prediction {i}") for i, p in enumerate(preds)]
        given = {name: values for name, values in known.get(method, {}).items()
                 if name in names and len(values) == len(gts)}
        todo = [name for name in names if name not in given]
        rows = [patch_metrics(g, p, todo, voxel_size) if todo else {}
                for g, p in zip(g_feats, p_feats, strict=True)]
        for name in names:
            spec = METRICS[name]
            if spec.level == PATCH and spec.is_score:
                values = np.array(given[name] if name in given else [r[name] for r in rows], dtype=np.float64)
                values = values[~np.isnan(values)]
                logged[f"{method}_{name}"] = float(values.mean()) if values.size else float("nan")
        for key, value in dataset_metrics(g_feats, p_feats, names).items():
            logged[f"{method}_{key}"] = value
    return logged


def known_scores(pl_module: pl.LightningModule, stage: str) -> dict[str, dict[str, list[float]]]:
    """The per-patch scores the module computed itself (:func:`~dm4isl.models.outputs.score_patches`), as
    ``{output key: {score: values in patch-id order}}`` under the keys of its recorded outputs (lower case for
    the diffusion model's products). Collective under DDP."""
    rows = patch_rows(pl_module, stage)
    known: dict[str, dict[str, list[float]]] = {}
    for by_product in rows.values():
        for product, scores in by_product.items():
            entry = known.setdefault(product, {})
            for name, value in scores.items():
                entry.setdefault(name, []).append(value)
    return {key: value for product, value in known.items() for key in {product, product.lower()}}


class MetricsCallback(pl.Callback):
    """Log a metric set (``fast``, ``paper``, ``all`` or a list of names) at the end of validation and test.

    Contract with the LightningModule: during a validation (test) epoch it fills ``pl_module.val_outputs``
    (``pl_module.test_outputs``) with :func:`collect_outputs`, a dict ``{method: {patch id: (gt, pred)}}`` of
    numpy ``(Z, Y, X)`` float patches in [0, 1] — e.g. ``{"ddpm": …, "ddpmavg": …}`` (``{method: (gts, preds)}``
    ``(N, Z, Y, X)`` stacks are accepted too). Under DDP the patches of all ranks are gathered and each patch id
    counted once, so the metrics equal those of one process. At epoch end this callback logs
    ``"<stage>/<prefix><method>_<metric>"`` (see :func:`compute_stage_metrics`) with ``pl_module.log`` and empties
    the dict. The scores the module computed and logged itself (``<stage>/<method>_<score>``: PCC, MSE, MS-SSIM of
    the diffusion model) are reused, not logged a second time under the prefix. Modules fill the dict with
    :func:`collect_outputs`. A module without the attribute, or with an empty dict, is left alone.
    """

    def __init__(
        self,
        metrics: str | Iterable[str] = "fast",
        voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
        n_threads: int = DEFAULT_TORCH_THREADS,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.metrics = resolve_metric_names(metrics if isinstance(metrics, str) else list(metrics))
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.n_threads = n_threads

    def _log_stage(self, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        outputs = getattr(pl_module, OUTPUT_ATTRS[stage], None)
        if not outputs:
            return {}
        stacked = stack_outputs(outputs)
        known = known_scores(pl_module, stage)
        with torch_threads(self.n_threads):
            values = compute_stage_metrics(stacked, self.metrics, self.voxel_size, known)
        own = {f"{method}_{name}" for method, scores in known.items() for name in scores}  # logged by the module
        logged = {f"{stage}/{self.prefix}{key}": value for key, value in values.items() if key not in own}
        pl_module.log_dict(logged, sync_dist=True)
        outputs.clear()
        return logged

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the metrics of ``pl_module.val_outputs``."""
        self._log_stage(pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the metrics of ``pl_module.test_outputs``."""
        self._log_stage(pl_module, "test")
