"""Readers for 3-D TIFF/OME-TIFF volumes and BF/GT patch folders, with errors that name the file."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from dm4isl.data.normalize import to_unit
from dm4isl.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


def _natural_key(path: Path) -> tuple:
    """Sort key that orders ``2.tiff`` before ``10.tiff``."""
    return tuple(int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name))


def is_tiff(path: Path) -> bool:
    """True if ``path`` has a TIFF suffix (``.tif``, ``.tiff``, ``.ome.tif``, ``.ome.tiff``)."""
    return path.name.lower().endswith(TIFF_SUFFIXES)


def tiff_stem(path: Path) -> str:
    """File name without its TIFF suffix: ``cell.01.ome.tiff`` → ``cell.01``."""
    name = path.name
    for suffix in sorted(TIFF_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_tiffs(folder: str | os.PathLike) -> list[Path]:
    """TIFF files directly inside ``folder``, naturally sorted (0, 1, …, 10). Hidden and partial files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of TIFF files, but it does not exist or is not a folder")
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and is_tiff(p) and not p.name.startswith(".")),
        key=_natural_key,
    )


def read_volume(path: str | os.PathLike) -> np.ndarray:
    """Read one 3-D volume as a ``(Z, Y, X)`` array in its stored dtype.

    Singleton axes (e.g. a ``(1, Z, Y, X)`` channel axis) are squeezed. Raises :class:`DataError` naming the file
    when it is missing, unreadable or truncated, not 3-D, or holds NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a 3-D TIFF volume)")
    try:
        arr = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for corrupt files; re-raise with the file named
        raise DataError(f"{path}: unreadable or truncated TIFF ({type(err).__name__}: {err})") from err
    arr = np.asarray(arr)
    if arr.ndim > 3:
        arr = arr.squeeze()
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 3-D (Z, Y, X) volume, got an array of shape {arr.shape} ({arr.ndim}-D)")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: contains {n_bad} NaN/inf voxels; expected finite intensities")
    if arr.dtype.kind not in "uif":
        raise DataError(f"{path}: unsupported dtype {arr.dtype}; expected an unsigned/signed integer or float image")
    return arr


@dataclass(frozen=True)
class PatchPair:
    """One brightfield/fluorescence pair of a patch folder; arrays are ``(Z, Y, X)``."""

    name: str
    bf_path: Path
    gt_path: Path
    bf_window: tuple[float, float] | None = None
    fl_window: tuple[float, float] | None = None

    def read_raw(self) -> tuple[np.ndarray, np.ndarray]:
        """Read both volumes in their stored dtype; checks that their ``(Z, Y, X)`` shapes agree."""
        bf_raw = read_volume(self.bf_path)
        gt_raw = read_volume(self.gt_path)
        if bf_raw.shape != gt_raw.shape:
            raise DataError(
                f"{self.gt_path}: shape {gt_raw.shape} (Z, Y, X) does not match its brightfield partner "
                f"{self.bf_path} of shape {bf_raw.shape}"
            )
        return bf_raw, gt_raw

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Read and normalise both volumes; returns ``(bf, gt)`` float32 ``(Z, Y, X)`` in [0, 1]."""
        bf_raw, gt_raw = self.read_raw()
        return to_unit(bf_raw, self.bf_path, self.bf_window), to_unit(gt_raw, self.gt_path, self.fl_window)


def read_patch_folder(
    root: str | os.PathLike,
    bf: str = "BF",
    gt: str = "GT",
    bf_window: Sequence[float] | None = None,
    fl_window: Sequence[float] | None = None,
) -> list[PatchPair]:
    """Index a patch folder in the reference layout ``root/BF/<i>.tiff`` + ``root/GT/<i>.tiff``.

    Every brightfield file needs a ground-truth partner of the same name and vice versa. Files are only indexed
    here; :meth:`PatchPair.load` reads them (and checks shapes).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: patch folder not found (expected {root}/{bf}/ and {root}/{gt}/ with TIFF files)")
    bf_files = {p.name: p for p in list_tiffs(root / bf)}
    gt_files = {p.name: p for p in list_tiffs(root / gt)}
    if not bf_files:
        raise DataError(f"{root / bf}: empty folder; expected brightfield TIFF files such as 0.tiff")
    for name in bf_files:
        if name not in gt_files:
            raise DataError(f"{bf_files[name]}: no ground-truth partner; expected {root / gt / name}")
    for name in gt_files:
        if name not in bf_files:
            raise DataError(f"{gt_files[name]}: no brightfield partner; expected {root / bf / name}")
    bw = tuple(float(v) for v in bf_window) if bf_window is not None else None
    fw = tuple(float(v) for v in fl_window) if fl_window is not None else None
    return [
        PatchPair(tiff_stem(Path(name)), bf_files[name], gt_files[name], bw, fw)
        for name in sorted(bf_files, key=lambda n: _natural_key(Path(n)))
    ]
