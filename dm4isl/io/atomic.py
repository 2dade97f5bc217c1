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

#: Permissions of a new file before the umask (as ``open`` creates them).
NEW_FILE_MODE = 0o666


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    On any exception (a full disk, a killed computation, a bad value) the temporary file is removed and
    whatever was at ``path`` before is left untouched. The file gets the usual permissions of a new file
    (``0o666`` less the umask), not the owner-only mode of temporary files.
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
        os.chmod(tmp_path, NEW_FILE_MODE & ~_umask())
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
    channel_name: str | None = None,
) -> Path:
    """Write a 3-D ``(Z, Y, X)`` array as an OME-TIFF atomically.

    ``voxel_size_zyx`` (µm) is stored as OME PhysicalSize{Z,Y,X} — it must be the true voxel size of ``array``;
    ``channel_name`` (e.g. ``DDPMavg (nuclear envelope)``) as the OME Channel Name; ``metadata`` (JSON-serialisable)
    is stored twice:
    as one JSON object in the image's OME ``Description`` (read back whole by :func:`read_tiff_info`) and as an OME
    ``MapAnnotation`` of key → value strings (non-string values as JSON), which Fiji/Bio-Formats and OMERO list as
    key-value pairs. Readable by tifffile, napari and Fiji.
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
    if channel_name:
        ome["Channel"] = {"Name": str(channel_name)}
    if metadata:
        ome["Description"] = json.dumps(dict(metadata), default=str)
        ome["MapAnnotation"] = {
            str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in metadata.items()
        }
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, ome=True, metadata=ome, photometric="minisblack")
    return Path(path)


def _ome_image(path: str | os.PathLike) -> dict[str, Any]:
    """The first OME ``Image`` element of a TIFF as a dict (empty for a plain TIFF)."""
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        return {}
    image = tifffile.xml2dict(xml).get("OME", {}).get("Image", {})
    return image[0] if isinstance(image, list) else image


def read_channel_names(path: str | os.PathLike) -> list[str]:
    """OME channel names of a TIFF (empty for a plain TIFF or unnamed channels)."""
    channels = _ome_image(path).get("Pixels", {}).get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    return [str(c["Name"]) for c in channels if isinstance(c, dict) and "Name" in c]


def read_tiff_info(path: str | os.PathLike) -> tuple[tuple[float, float, float] | None, dict[str, Any]]:
    """``(voxel size (Z, Y, X) in µm or None, metadata dict)`` of a TIFF written by :func:`write_tiff` or any OME-TIFF.

    The voxel size comes from OME ``PhysicalSize{Z,Y,X}`` (None unless all three are present); the metadata from
    the JSON ``Description`` (empty when absent or not JSON). Plain TIFFs give ``(None, {})``.
    """
    image = _ome_image(path)
    if not image:
        return None, {}
    pixels = image.get("Pixels", {})
    sizes = [pixels.get(f"PhysicalSize{axis}") for axis in "ZYX"]
    voxel = tuple(float(v) for v in sizes) if all(v is not None for v in sizes) else None
    try:
        meta = json.loads(image.get("Description", ""))
    except json.JSONDecodeError:
        meta = {}
    return voxel, meta if isinstance(meta, dict) else {}
