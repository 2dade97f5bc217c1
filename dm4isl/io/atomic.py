"""Atomic writes: every file appears complete under its final name or not at all."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dm4isl.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    On any exception (a full disk, a killed computation, a bad value) the temporary file is removed and
    whatever was at ``path`` before is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, f"cannot write into folder {path.parent}: {err.strerror}") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
) -> Path:
    """Write a list of dicts as a CSV file atomically; columns are ``fieldnames`` or the keys of the first row."""
    if fieldnames is None:
        fieldnames = list(rows[0].keys()) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def write_tiff(
    path: str | os.PathLike,
    array: np.ndarray,
    voxel_size_zyx: Sequence[float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a 3-D ``(Z, Y, X)`` array as an OME-TIFF atomically.

    ``voxel_size_zyx`` (µm) is stored as OME PhysicalSize{Z,Y,X}; ``metadata`` (JSON-serialisable) is stored in the
    OME description's free-text annotation so that it travels with the file. Readable by tifffile, napari and Fiji.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3-D (Z, Y, X) array to write, got shape {array.shape}")
    ome: dict[str, Any] = {"axes": "ZYX"}
    if voxel_size_zyx is not None:
        vz, vy, vx = (float(v) for v in voxel_size_zyx)
        ome.update(
            PhysicalSizeZ=vz,
            PhysicalSizeY=vy,
            PhysicalSizeX=vx,
            PhysicalSizeZUnit="µm",
            PhysicalSizeYUnit="µm",
            PhysicalSizeXUnit="µm",
        )
    if metadata:
        ome["Description"] = json.dumps(dict(metadata), default=str)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, ome=True, metadata=ome, photometric="minisblack")
    return Path(path)
