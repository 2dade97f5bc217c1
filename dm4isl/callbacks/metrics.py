"""Lightning callback that logs a metric set on the predictions a LightningModule collected at validation/test."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch.distributed as dist

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

#: Attribute of the LightningModule holding the outputs of each stage.
OUTPUT_ATTRS = {"val": "val_outputs", "test": "test_outputs"}
#: Attribute of the LightningModule holding the per-patch scores of each stage (see :func:`collect_scores`).
SCORES_ATTR = "_patch_scores"


def gather_by_index(items: Mapping[int, Any]) -> dict[int, Any]:
    """Union over all processes of ``{patch id: item}``, sorted by patch id, each patch once.

    Under DDP, Lightning's ``DistributedSampler`` pads the last batches with repeated patches so that every rank
    gets the same number; keying by patch id drops the repeats (their items are identical: noise is seeded by patch
    id). Collective: every rank must call it. In a single process it only sorts.
    """
    merged: dict[int, Any] = {}
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, dict(items))
        for part in parts:
            for key, value in part.items():
                merged.setdefault(int(key), value)
    else:
        merged = {int(key): value for key, value in items.items()}
    return dict(sorted(merged.items()))


def stack_outputs(outputs: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{method: (gts, preds)}`` stacks from :func:`collect_outputs`' ``{method: {patch id: (gt, pred)}}``.

    Gathers across processes and drops repeated patches (:func:`gather_by_index`); values that already are
    ``(gts, preds)`` pairs of ``(N, Z, Y, X)`` stacks pass through unchanged.
    """
    stacked = {}
    for method, value in outputs.items():
        if isinstance(value, Mapping):
            pairs = list(gather_by_index(value).values())
            stacked[method] = (np.stack([g for g, _ in pairs]), np.stack([p for _, p in pairs]))
        else:
            stacked[method] = value
    return stacked


def compute_stage_metrics(
    outputs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    metrics: str | Iterable[str] = "fast",
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> dict[str, float]:
    """Summaries of ``outputs[method] = (gts, preds)``, two ``(N, Z, Y, X)`` stacks in [0, 1].

    Keys ``"<method>_<metric>"``: mean over patches of patch-level metrics (NaN patches left out; descriptors
    such as ``glcm_feature`` are skipped), ``"<method>_<metric>_pooled"`` for pooled metrics (PCC, MSE) and
    ``"<method>_<metric>"`` for dataset-level metrics (GLCM correlation).
    """
    names = resolve_metric_names(metrics)
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
        rows = [patch_metrics(g, p, names, voxel_size) for g, p in zip(g_feats, p_feats, strict=True)]
        for name in names:
            spec = METRICS[name]
            if spec.level == PATCH and spec.is_score:
                values = np.array([r[name] for r in rows], dtype=np.float64)
                values = values[~np.isnan(values)]
                logged[f"{method}_{name}"] = float(values.mean()) if values.size else float("nan")
        for key, value in dataset_metrics(g_feats, p_feats, names).items():
            logged[f"{method}_{key}"] = value
    return logged


class MetricsCallback(pl.Callback):
    """Log a metric set (``fast``, ``paper``, ``all`` or a list of names) at the end of validation and test.

    Contract with the LightningModule: during a validation (test) epoch it fills ``pl_module.val_outputs``
    (``pl_module.test_outputs``) with :func:`collect_outputs`, a dict ``{method: {patch id: (gt, pred)}}`` of
    numpy ``(Z, Y, X)`` float patches in [0, 1] — e.g. ``{"ddpm": …, "ddpmavg": …}`` (``{method: (gts, preds)}``
    ``(N, Z, Y, X)`` stacks are accepted too). Under DDP the patches of all ranks are gathered and each patch id
    counted once, so the metrics equal those of one process. At epoch end this callback logs
    ``"<stage>/<prefix><method>_<metric>"`` (see :func:`compute_stage_metrics`) with ``pl_module.log`` and empties
    the dict. Modules fill the dict with :func:`collect_outputs`. A module without the attribute, or with an
    empty dict, is left alone.
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
        with torch_threads(self.n_threads):
            values = compute_stage_metrics(stacked, self.metrics, self.voxel_size)
        logged = {f"{stage}/{self.prefix}{key}": value for key, value in values.items()}
        pl_module.log_dict(logged, sync_dist=True)
        outputs.clear()
        return logged

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the metrics of ``pl_module.val_outputs``."""
        self._log_stage(pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the metrics of ``pl_module.test_outputs``."""
        self._log_stage(pl_module, "test")


def collect_outputs(
    pl_module: pl.LightningModule,
    stage: str,
    gt: np.ndarray,
    preds: Mapping[str, np.ndarray],
    ids: Sequence[int],
) -> None:
    """Record a batch in ``pl_module.<stage>_outputs`` for :class:`MetricsCallback`.

    ``gt`` and every ``preds[method]`` are ``(B, Z, Y, X)`` arrays in [0, 1], ``ids`` the B patch ids; the dict maps
    each method to ``{patch id: (gt, pred)}`` (a repeated patch id overwrites: DDP padding repeats patches).
    """
    store = getattr(pl_module, OUTPUT_ATTRS[stage], None)
    if store is None:
        store = {}
        setattr(pl_module, OUTPUT_ATTRS[stage], store)
    gt = np.asarray(gt, dtype=np.float32)
    for method, pred in preds.items():
        entries = store.setdefault(method, {})
        pred = np.asarray(pred, dtype=np.float32)
        for b, patch_id in enumerate(ids):
            entries[int(patch_id)] = (gt[b], pred[b])


def collect_scores(pl_module: pl.LightningModule, stage: str, ids: Sequence[int], scores: Mapping[str, Any]) -> None:
    """Record per-patch scores for :func:`log_scores`: ``scores[key][b]`` is the value of patch ``ids[b]``.

    Keys are logged as ``<stage>/<key>`` (e.g. ``val/ddpmavg_pcc``); NaN values are kept and left out of the mean.
    """
    stages = getattr(pl_module, SCORES_ATTR, None)
    if stages is None:
        stages = {}
        setattr(pl_module, SCORES_ATTR, stages)
    store = stages.setdefault(stage, {})
    for b, patch_id in enumerate(ids):
        store.setdefault(int(patch_id), {}).update({key: float(values[b]) for key, values in scores.items()})


def log_scores(pl_module: pl.LightningModule, stage: str, prog_bar: str | None = None) -> dict[str, float]:
    """Log the mean over patches (NaN left out) of every score :func:`collect_scores` recorded, then forget them.

    Under DDP the scores of every rank are gathered and each patch id counted once (collective: all ranks call
    it), so the logged means equal those of one process. ``prog_bar`` names the key shown in the progress bar.
    Returns the logged ``{"<stage>/<key>": mean}``.
    """
    store = getattr(pl_module, SCORES_ATTR, {}).pop(stage, {})
    rows = list(gather_by_index(store).values())
    keys = list(dict.fromkeys(key for row in rows for key in row))
    logged = {}
    for key in keys:
        values = np.array([row[key] for row in rows if key in row], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size:
            logged[f"{stage}/{key}"] = float(values.mean())
    for name, value in logged.items():
        # identical on every rank after the gather: the mean over ranks only keeps Lightning's epoch-level bookkeeping
        pl_module.log(name, value, sync_dist=True, prog_bar=name == f"{stage}/{prog_bar}")
    return logged
