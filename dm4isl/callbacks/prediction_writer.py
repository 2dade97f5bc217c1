"""Write test predictions as float32 OME-TIFFs (one folder per output), a per-patch metrics CSV and a preview PNG."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist

import dm4isl
from dm4isl.io.atomic import write_csv, write_text
from dm4isl.io.figures import GridRow, prediction_grid
from dm4isl.io.layout import (
    BF,
    DDPM,
    DDPMAVG,
    GAN,
    GT,
    LINEAR,
    STD_INTER,
    STD_INTRA,
    UNET,
    compared,
    write_products,
)
from dm4isl.io.provenance import file_fingerprint, source_revision
from dm4isl.models.outputs import PATCH_SCORES, gather_by_index, patch_rows, patch_scores

log = logging.getLogger(__name__)

#: Preferred order of the preview panels (mid-Z slice of each); baselines' folders are placed before the std maps.
PREVIEW_ORDER = (BF, GT, UNET, GAN, DDPM, DDPMAVG, STD_INTRA, STD_INTER)


def preview_panels(folders: Sequence[str]) -> list[str]:
    """Panels of the preview figure: the known folders in :data:`PREVIEW_ORDER`, then any other prediction."""
    known = [f for f in PREVIEW_ORDER if f in folders]
    return known + [f for f in compared(folders) if f not in known and f != LINEAR]
METRIC_KEYS = PATCH_SCORES


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean (ignoring NaN) of each metric per method over the per-patch ``rows`` (columns patch, method, …)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "n_patches": len(sel)}
        for key in METRIC_KEYS:
            values = [float(r[key]) for r in sel if not math.isnan(float(r[key]))]
            entry[key] = float(np.mean(values)) if values else math.nan
        out.append(entry)
    return out


def format_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of :func:`summarize` output."""
    header = f"{'method':<10}{'n':>4}" + "".join(f"{k:>10}" for k in METRIC_KEYS)
    lines = [header, "-" * len(header)]
    for row in summary:
        lines.append(f"{row['method']:<10}{row['n_patches']:>4}" + "".join(f"{row[k]:>10.4f}" for k in METRIC_KEYS))
    return "\n".join(lines)


def test_provenance(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """What ``dm4isl-predict`` records with every file, for a test run: model, sampler and seeds (diffusion
    models), the checkpoint tested (path and SHA-256 prefix; empty for in-memory weights) and the source revision."""
    settings = getattr(pl_module, "test_settings", None)
    ckpt = getattr(trainer, "ckpt_path", None) or ""
    return {
        "model": type(pl_module).__name__,
        "sampler": settings.to_dict() if settings is not None else None,
        "seeds": [int(settings.seed)] if settings is not None else [],
        "checkpoint": str(ckpt),
        "checkpoint_sha256_16": file_fingerprint(ckpt) if ckpt and Path(ckpt).is_file() else "",
        "revision": source_revision(dm4isl.__version__),
    }


class PredictionWriter(L.Callback):
    """Collect ``test_step`` outputs (``(B, Z, Y, X)`` arrays by folder name + ``name``) and write them.

    Files: ``<output_dir>/<folder>/<name>.ome.tiff`` (float32 OME-TIFF with the true voxel size, a channel name such
    as ``DDPMavg (nuclear envelope)`` and the provenance of :func:`test_provenance` in its metadata, as
    ``dm4isl-predict`` writes, through the same :func:`~dm4isl.io.layout.write_products`) for every output of
    ``test_step`` (every key but ``name``); ``metrics.csv`` (one row per patch and method: the scores the model
    computed once per patch, :func:`~dm4isl.models.outputs.patch_rows`), ``metrics_summary.csv`` and the table;
    ``preview.png`` (mid-Z slices of the first ``preview_patches`` patches). ``organelle`` (a config name) names the
    channels; default: the model's.
    """

    def __init__(
        self,
        output_dir: str,
        voxel_size: Sequence[float] | None = None,
        preview_patches: int = 4,
        print_table: bool = True,
        organelle: str | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.voxel_size = list(voxel_size) if voxel_size is not None else None
        self.preview_patches = preview_patches
        self.print_table = print_table
        self.organelle = organelle
        self._rows: list[dict[str, Any]] = []
        self._names: dict[int, str] = {}
        self._preview: list[dict[str, np.ndarray]] = []
        self._provenance: dict[str, Any] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._names, self._preview = [], {}, []
        self._provenance = test_provenance(trainer, pl_module)
        if self.organelle is None:
            self.organelle = (pl_module.hparams.get("organelle") or {}).get("name")

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Mapping[str, Any] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not outputs:
            return
        folders = [k for k in outputs if k != "name"]
        ids = [int(i) for i in batch["index"]] if isinstance(batch, Mapping) and "index" in batch else []
        for b, name in enumerate(outputs["name"]):
            arrays = {folder: np.asarray(outputs[folder][b]) for folder in folders}
            write_products(self.output_dir, name, arrays, self.voxel_size, {**self._provenance, "patch": name},
                           self.organelle, product_key="output")
            if b < len(ids):
                self._names[ids[b]] = name
            else:  # a module that records no patch ids: score here
                for method in compared(folders):
                    self._rows.append({"patch": name, "method": method,
                                       **patch_scores(arrays[GT], arrays[method])})
            if len(self._preview) < self.preview_patches:
                self._preview.append({k: arrays[k] for k in preview_panels(folders)} | {"name": name})

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = gather_by_index(self._names)
        scored = patch_rows(pl_module, "test")  # collective under DDP; computed by the model, once per patch
        rows = self._gather(self._rows) + [
            {"patch": names[pid], "method": method, **scores}
            for pid, by_method in scored.items() if pid in names for method, scores in by_method.items()
        ]
        if not trainer.is_global_zero or not rows:
            return
        summary = summarize(rows)
        write_csv(self.output_dir / "metrics.csv", rows)
        write_csv(self.output_dir / "metrics_summary.csv", summary)
        table = format_table(summary)
        write_text(self.output_dir / "metrics_table.txt", table + "\n")
        if self.print_table:
            print(f"\nTest patches, mean over patches ({self.output_dir}):\n{table}\n")
        if self._preview:
            self._write_preview(self.output_dir / "preview.png")
        log.info("predictions, metrics and preview written to %s", self.output_dir)

    @staticmethod
    def _gather(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not (dist.is_available() and dist.is_initialized()):
            return rows
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, rows)
        # DDP pads the last batches with repeated patches: keep each (patch, method) once
        unique = {(r["patch"], r["method"]): r for part in parts for r in part}
        return list(unique.values())

    def _write_preview(self, path: Path) -> None:
        rows = [GridRow(str(item["name"]), {k: v for k, v in item.items() if k != "name"}) for item in self._preview]
        prediction_grid(rows, [k for k in self._preview[0] if k != "name"], path)
