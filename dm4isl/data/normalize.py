"""Fixed-window intensity normalisation of raw grey levels to [0, 1] (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_normalize(raw: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Map raw grey levels to [0, 1] by ``(clip(x, lo, hi) - lo) / (hi - lo)``.

    Args:
        raw: array of any shape (typically ``(Z, Y, X)``), any numeric dtype.
        window: ``(lo, hi)`` in the raw units, ``hi > lo``.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"normalisation window must have hi > lo, got {tuple(window)}")
    out = np.clip(np.asarray(raw, dtype=np.float32), lo, hi)
    out -= lo
    out /= hi - lo
    return out


def clip_raw(raw: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip raw grey levels to ``window`` (float32), as used by the empty-patch ``std_th`` filter."""
    return np.clip(np.asarray(raw, dtype=np.float32), float(window[0]), float(window[1]))
