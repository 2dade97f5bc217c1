"""What a LightningModule keeps of its validation/test batches: per-patch outputs and scores, gathered across processes.

The models record into these stores; :class:`dm4isl.callbacks.metrics.MetricsCallback` and the prediction writer
read them. Arrays are ``(B, Z, Y, X)`` per batch, keyed by patch id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch.distributed as dist

from dm4isl.metrics.basic import ms_ssim, mse, pcc

#: Attribute of the LightningModule holding the outputs of each stage.
OUTPUT_ATTRS = {"val": "val_outputs", "test": "test_outputs"}
#: Attribute of the LightningModule holding the per-patch scores of each stage (see :func:`collect_scores`).
SCORES_ATTR = "_patch_scores"
#: Attribute holding the same scores by patch and product, for the metrics callback and the prediction writer.
ROWS_ATTR = "_patch_rows"
#: The scores every model computes on every validation/test patch (once; logged, written and tabulated from there).
PATCH_SCORES = ("pcc", "mse", "ms_ssim")


def patch_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """PCC, MSE and MS-SSIM of one ``(Z, Y, X)`` patch; MS-SSIM is NaN below 64 px in Y or X (see metrics.basic)."""
    return {"pcc": pcc(gt, pred), "mse": mse(gt, pred), "ms_ssim": ms_ssim(gt, pred)}


def score_patches(
    pl_module: pl.LightningModule,
    stage: str,
    gt: np.ndarray,
    preds: Mapping[str, np.ndarray],
    ids: Sequence[int],
    prefixed: bool = True,
) -> None:
    """Score a batch once and record it for everything that reads scores.

    ``gt`` and ``preds[product]`` are ``(B, Z, Y, X)`` in [0, 1], ``ids`` the B patch ids. :data:`PATCH_SCORES` of
    every patch and product are computed here and only here; they go to the logger (:func:`collect_scores`, keys
    ``<product>_<score>`` in lower case, or ``<score>`` when not ``prefixed``: a single-output baseline), to the
    prediction writer and the metrics callback (:func:`patch_rows`), and the arrays to the metrics callback's wider
    metric sets (:func:`collect_outputs`, under the same lower-case names).
    """
    ids = [int(i) for i in ids]
    key = (lambda product: product.lower()) if prefixed else (lambda product: product)
    collect_outputs(pl_module, stage, gt, {key(p): v for p, v in preds.items()}, ids)
    rows = _stage_store(pl_module, ROWS_ATTR, stage)
    logged: dict[str, list[float]] = {}
    for product, pred in preds.items():
        scores = [patch_scores(g, q) for g, q in zip(gt, pred, strict=True)]
        for patch_id, row in zip(ids, scores, strict=True):
            rows.setdefault(patch_id, {})[product] = row
        prefix = f"{product.lower()}_" if prefixed else ""
        logged.update({f"{prefix}{name}": [r[name] for r in scores] for name in PATCH_SCORES})
    collect_scores(pl_module, stage, ids, logged)


def patch_rows(pl_module: pl.LightningModule, stage: str) -> dict[int, dict[str, dict[str, float]]]:
    """``{patch id: {product: {score: value}}}`` recorded by :func:`score_patches` in this stage, gathered across
    processes (collective), sorted by patch id; empty when the module recorded none."""
    return gather_by_index(getattr(pl_module, ROWS_ATTR, {}).get(stage, {}))


def clear_stage(pl_module: pl.LightningModule, stage: str) -> None:
    """Forget the per-patch rows of ``stage`` (at the start of a validation/test epoch)."""
    getattr(pl_module, ROWS_ATTR, {}).pop(stage, None)


def _stage_store(pl_module: pl.LightningModule, attr: str, stage: str) -> dict[int, Any]:
    stages = getattr(pl_module, attr, None)
    if stages is None:
        stages = {}
        setattr(pl_module, attr, stages)
    return stages.setdefault(stage, {})


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
    store = _stage_store(pl_module, SCORES_ATTR, stage)
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
