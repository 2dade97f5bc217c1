"""Figure grids of predictions: one row per example, one column per product, the middle Z slice of each volume.

The one grid maker of the project: the evaluation report, the training-time preview, the validation images (PNG or
W&B) and the reproduce script all draw with :func:`grid_figure`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dm4isl.io.atomic import write_bytes
from dm4isl.io.layout import BF, ERROR_MASK, STD_INTER, STD_INTRA

#: Size of one panel in inches, and the resolution of the PNG.
PANEL_IN = 1.6
GRID_DPI = 110
#: Brightfield panels are contrast-stretched between these percentiles (its signal spans a few % of the window).
BF_PERCENTILES = (1.0, 99.0)
#: Display range of intensity panels (predictions and ground truth are in [0, 1]).
UNIT_RANGE = (0.0, 1.0)
#: Colour maps by panel kind.
CMAPS = {"bf": "gray", "intensity": "gray", "std": "magma", "mask": "gray"}
#: How a column is displayed: brightfield (percentile stretch), std map (0 → its max), mask (0/1), else intensity.
KIND_BY_COLUMN = {BF: "bf", STD_INTRA: "std", STD_INTER: "std", ERROR_MASK: "mask"}
MISSING_TEXT = "n/a"
#: Fixed margins and gaps (figure fractions): no layout engine needed.
GRID_MARGINS = {"left": 0.04, "right": 0.99, "top": 0.93, "bottom": 0.01, "wspace": 0.04, "hspace": 0.06}


@dataclass
class GridRow:
    """One row of a grid: its label and ``(Z, Y, X)`` volumes by column name (a missing column shows ``n/a``)."""

    label: str
    volumes: Mapping[str, np.ndarray]


def mid_z(volume: np.ndarray) -> np.ndarray:
    """The middle Z slice ``(Y, X)`` of a ``(Z, Y, X)`` volume."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) volume, got shape {volume.shape}")
    return volume[volume.shape[0] // 2]


def display_range(image: np.ndarray, kind: str) -> tuple[float, float]:
    """``(vmin, vmax)`` for a ``(Y, X)`` panel of the given kind (see :data:`KIND_BY_COLUMN`)."""
    if kind == "bf":
        low, high = np.percentile(image, BF_PERCENTILES)
        return float(low), float(max(high, low + np.finfo(np.float32).eps))
    if kind == "std":
        return 0.0, float(max(image.max(), np.finfo(np.float32).eps))
    return UNIT_RANGE


def grid_figure(
    rows: Sequence[GridRow], columns: Sequence[str], titles: Mapping[str, str] | None = None
) -> Figure:
    """A matplotlib figure (rows × columns) of the middle Z slice of every volume.

    ``rows[i].volumes[column]`` are ``(Z, Y, X)`` arrays; ``titles`` maps column names to column headings (default:
    the names). Columns are displayed by kind (:data:`KIND_BY_COLUMN`). No display needed (Agg canvas).
    """
    if not rows or not columns:
        raise ValueError(f"a grid needs at least one row and one column, got {len(rows)} and {len(columns)}")
    titles = titles or {}
    fig = Figure(figsize=(PANEL_IN * len(columns), PANEL_IN * len(rows)))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles.get(column, column), fontsize="small")
            if c == 0:
                ax.set_ylabel(row.label, fontsize="small")
            volume = row.volumes.get(column)
            if volume is None:
                ax.text(0.5, 0.5, MISSING_TEXT, ha="center", va="center", transform=ax.transAxes)
                continue
            image = mid_z(volume).astype(np.float32)
            kind = KIND_BY_COLUMN.get(column, "intensity")
            vmin, vmax = display_range(image, kind)
            ax.imshow(image, cmap=CMAPS[kind], vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.subplots_adjust(**GRID_MARGINS)
    return fig


def grid_png(rows: Sequence[GridRow], columns: Sequence[str], titles: Mapping[str, str] | None = None) -> bytes:
    """PNG bytes of :func:`grid_figure`."""
    buffer = io.BytesIO()
    grid_figure(rows, columns, titles).savefig(buffer, format="png", dpi=GRID_DPI)
    return buffer.getvalue()


def grid_image(rows: Sequence[GridRow], columns: Sequence[str], titles: Mapping[str, str] | None = None) -> np.ndarray:
    """:func:`grid_figure` as an RGBA ``(H, W, 4)`` uint8 array (for loggers that take arrays)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = grid_figure(rows, columns, titles)
    fig.set_dpi(GRID_DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def prediction_grid(
    rows: Sequence[GridRow],
    columns: Sequence[str],
    path: str | os.PathLike,
    titles: Mapping[str, str] | None = None,
) -> Path:
    """Write the PNG grid of :func:`grid_figure` to ``path`` atomically; returns the path."""
    if not rows or not columns:
        raise ValueError(f"{path}: a grid needs at least one row and one column, got {len(rows)} and {len(columns)}")
    return write_bytes(path, grid_png(rows, columns, titles))
