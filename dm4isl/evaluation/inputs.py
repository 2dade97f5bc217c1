"""Find and validate the inputs of an evaluation: ``GT/`` plus one folder per method with the same patch files."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dm4isl.data.normalize import to_unit
from dm4isl.data.readers import list_tiffs, read_volume, tiff_stem
from dm4isl.errors import DataError

log = logging.getLogger(__name__)

#: Sub-folders that hold no predictions: brightfield inputs, uncertainty maps (the benchmark's ``DDPMstd``), error
#: masks and the per-seed members of ensembles (``<method>_seeds/``, scored with the CRPS) — glob patterns.
DEFAULT_EXCLUDE = ("BF", "DDPMstd", "FLavg_std*", "std_*", "error_mask*", "uncertainty*", "*_seeds")
#: Folder names recognised as the baselines (U-Net and GAN spellings).
DEFAULT_BASELINES = ("Unet", "UNet", "unet", "U-Net", "GAN", "gan")
#: At most this many problems are listed in one validation error.
MAX_LISTED_PROBLEMS = 20


@dataclass
class EvaluationInputs:
    """Validated inputs: ``patches`` names in natural order; ``gts[i]`` and ``predictions[method][i]`` are float32
    ``(Z, Y, X)`` arrays in [0, 1] of patch ``patches[i]``; ``files`` maps ``(method or gt_name, patch)`` → path."""

    input_dir: Path
    gt_name: str
    patches: list[str]
    gts: list[np.ndarray]
    predictions: dict[str, list[np.ndarray]]
    files: dict[tuple[str, str], Path]

    @property
    def methods(self) -> list[str]:
        """Method names (folder names) in evaluation order."""
        return list(self.predictions)


def discover_methods(
    input_dir: str | os.PathLike, gt_name: str = "GT", exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> dict[str, Path]:
    """Method folders of ``input_dir``: every visible sub-folder except ``gt_name``, folders matching an
    ``exclude`` glob pattern, and folders without TIFF files (skipped with a log message). Sorted by name."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: input folder not found (expected {input_dir}/{gt_name}/ and method folders)")
    methods: dict[str, Path] = {}
    for sub in sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name == gt_name or any(fnmatch.fnmatchcase(sub.name, pat) for pat in exclude):
            continue
        if not list_tiffs(sub):
            log.warning("%s: no TIFF files, not a method folder; skipped", sub)
            continue
        methods[sub.name] = sub
    return methods


def _index_folder(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Patch name → TIFF path for ``folder``; two files with one patch name are a problem."""
    index: dict[str, Path] = {}
    for path in list_tiffs(folder):
        stem = tiff_stem(path)
        if stem in index:
            problems.append(f"{path}: patch name {stem!r} also used by {index[stem]}; expected one file per patch")
        index[stem] = path
    return index


def _load(path: Path, window: Sequence[float] | None, problems: list[str]) -> np.ndarray | None:
    """Read one volume as float32 ``(Z, Y, X)`` in [0, 1]; on a :class:`DataError` record it and return None."""
    try:
        return to_unit(read_volume(path), path, window)
    except DataError as err:
        problems.append(str(err))
        return None


def load_inputs(
    input_dir: str | os.PathLike,
    gt_name: str = "GT",
    methods: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    gt_window: Sequence[float] | None = None,
    pred_window: Sequence[float] | None = None,
) -> EvaluationInputs:
    """Read and validate every ground-truth and prediction volume before anything is computed or written.

    ``methods`` lists method folder names (default: :func:`discover_methods`). Intensities are converted with
    :func:`dm4isl.data.normalize.to_unit` (uint8 → /255, float in [0, 1] kept, raw integers need a window).
    Every problem — a prediction without a ground-truth partner, a missing prediction, a shape mismatch, an
    unreadable/corrupt TIFF, NaN — is collected; one :class:`DataError` lists them all, each naming its file.
    """
    input_dir = Path(input_dir)
    gt_dir = input_dir / gt_name
    if not gt_dir.is_dir():
        raise DataError(f"{gt_dir}: ground-truth folder not found (expected TIFF files such as {gt_dir}/0.tiff)")
    method_dirs = (
        {m: input_dir / m for m in methods} if methods is not None else discover_methods(input_dir, gt_name, exclude)
    )
    problems: list[str] = []
    for method, folder in method_dirs.items():
        if not folder.is_dir():
            problems.append(f"{folder}: method folder {method!r} not found")
    if not method_dirs:
        raise DataError(f"{input_dir}: no method folders found beside {gt_name}/ (excluded patterns: {list(exclude)})")
    gt_index = _index_folder(gt_dir, problems)
    if not gt_index:
        raise DataError(f"{gt_dir}: no TIFF files; expected ground-truth volumes such as {gt_dir}/0.tiff")
    patches = list(gt_index)
    files: dict[tuple[str, str], Path] = {(gt_name, p): gt_index[p] for p in patches}
    gts = [_load(gt_index[p], gt_window, problems) for p in patches]
    predictions: dict[str, list[np.ndarray | None]] = {}
    for method, folder in method_dirs.items():
        if not folder.is_dir():
            continue
        index = _index_folder(folder, problems)
        for stem, path in index.items():
            if stem not in gt_index:
                problems.append(f"{path}: no ground-truth partner; expected {gt_dir}/{path.name}")
        loaded = []
        for i, p in enumerate(patches):
            if p not in index:
                problems.append(f"{folder}/{gt_index[p].name}: missing prediction for ground truth {gt_index[p]}")
                loaded.append(None)
                continue
            files[(method, p)] = index[p]
            arr = _load(index[p], pred_window, problems)
            if arr is not None and gts[i] is not None and arr.shape != gts[i].shape:
                problems.append(
                    f"{index[p]}: shape {arr.shape} (Z, Y, X) differs from its ground truth {gt_index[p]} "
                    f"of shape {gts[i].shape}"
                )
            loaded.append(arr)
        predictions[method] = loaded
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        suffix = f"\n  … and {more} more" if more > 0 else ""
        raise DataError(f"{input_dir}: {len(problems)} invalid input(s), nothing was written:\n  {listed}{suffix}")
    return EvaluationInputs(input_dir, gt_name, patches, gts, predictions, files)
