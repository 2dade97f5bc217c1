"""Write test predictions as float32 TIFFs (one folder per output), a per-patch metrics CSV and a preview PNG."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist

from dm4isl.io.atomic import atomic_path, write_csv, write_text, write_tiff
from dm4isl.models.ddpm import patch_metrics

log = logging.getLogger(__name__)

#: Output folders written per patch, in this order; each holds ``<name>.tiff`` for every test patch.
FOLDERS = ("BF", "GT", "DDPM", "DDPMavg", "std_intra", "linear")
#: Predictions compared with GT in the metrics table (folder names).
COMPARED = ("DDPM", "DDPMavg", "linear")
#: Panels of the preview figure (mid-Z slice of each).
PREVIEW = ("BF", "GT", "DDPM", "DDPMavg", "std_intra")
METRIC_KEYS = ("pcc", "mse", "ms_ssim")
#: Preview panel size in inches.
PANEL_INCHES = 2.2


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


class PredictionWriter(L.Callback):
    """Collect ``test_step`` outputs (``(B, Z, Y, X)`` arrays by folder name + ``name``) and write them.

    Files: ``<output_dir>/<folder>/<name>.tiff`` (float32 OME-TIFF with voxel size) for every folder in
    :data:`FOLDERS`; ``metrics.csv`` (one row per patch and method), ``metrics_summary.csv`` and the printed
    table; ``preview.png`` (mid-Z slices of the first ``preview_patches`` patches).
    """

    def __init__(
        self,
        output_dir: str,
        voxel_size: Sequence[float] | None = None,
        preview_patches: int = 4,
        print_table: bool = True,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.voxel_size = list(voxel_size) if voxel_size is not None else None
        self.preview_patches = preview_patches
        self.print_table = print_table
        self._rows: list[dict[str, Any]] = []
        self._preview: list[dict[str, np.ndarray]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._preview = [], []

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
        for b, name in enumerate(outputs["name"]):
            arrays = {folder: np.asarray(outputs[folder][b], dtype=np.float32) for folder in FOLDERS}
            for folder, array in arrays.items():
                write_tiff(self.output_dir / folder / f"{name}.tiff", array, self.voxel_size,
                           metadata={"patch": name, "output": folder})
            for method in COMPARED:
                self._rows.append({"patch": name, "method": method, **patch_metrics(arrays["GT"], arrays[method])})
            if len(self._preview) < self.preview_patches:
                self._preview.append({k: arrays[k] for k in PREVIEW} | {"name": name})

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self._gather(self._rows)
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
        return [r for part in parts for r in part]

    def _write_preview(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self._preview)
        fig, axes = plt.subplots(n, len(PREVIEW), figsize=(PANEL_INCHES * len(PREVIEW), PANEL_INCHES * n),
                                 squeeze=False)
        for i, item in enumerate(self._preview):
            mid = item["BF"].shape[0] // 2
            for j, key in enumerate(PREVIEW):
                ax = axes[i, j]
                vmax = None if key == "std_intra" else 1.0
                ax.imshow(item[key][mid], cmap="magma" if key == "std_intra" else "gray", vmin=0.0, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(key)
                if j == 0:
                    ax.set_ylabel(str(item["name"]))
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
