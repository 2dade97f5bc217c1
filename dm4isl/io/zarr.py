"""OME-Zarr output (NGFF 0.4 or 0.5): one multi-channel image per input, chunked for napari, with voxel sizes."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dm4isl.errors import DataError
from dm4isl.io.layout import BF, DDPM, DDPMAVG, ERROR_MASK, GAN, GT, STD_INTER, STD_INTRA, UNET

#: How to install the OME-Zarr writer.
FORMATS_HINT = 'pip install -e ".[formats]"'

#: Modules the OME-Zarr writer imports (the formats extra), by the name pip installs them under.
WRITER_MODULES = {"bioio_ome_zarr": "bioio-ome-zarr", "dask": "dask"}

#: NGFF version → Zarr format (0.4: Zarr v2, read by every OME-Zarr viewer; 0.5: Zarr v3).
NGFF_ZARR_FORMAT = {"0.4": 2, "0.5": 3}
#: Chunk shape (C, Z, Y, X): one channel per chunk, so napari loads only the channels shown; ≤ 4 MiB of float32.
DEFAULT_CHUNKS = (1, 16, 256, 256)
#: Suffix of the output images.
ZARR_SUFFIX = ".ome.zarr"
#: Attribute (beside ``multiscales``/``omero``) that holds the run's provenance, as the OME-TIFF ``Description`` does.
PROVENANCE_KEY = "dm4isl"
#: Display colours (RRGGBB) of the products; others are grey.
CHANNEL_COLORS = {BF: "FFFFFF", GT: "00FF00", DDPM: "FF00FF", DDPMAVG: "FF00FF", UNET: "FF00FF",
                  GAN: "FF00FF", STD_INTRA: "FFFF00", STD_INTER: "FFA500", ERROR_MASK: "FF0000"}


def missing_writer_modules() -> list[str]:
    """The pip names of the OME-Zarr writer's modules that cannot be imported here (empty when it can write)."""
    missing = []
    for module, package in WRITER_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def zarr_path(output_dir: str | os.PathLike, name: str) -> Path:
    """The OME-Zarr image of input ``name``: ``<output_dir>/<name>.ome.zarr``."""
    return Path(output_dir) / f"{name}{ZARR_SUFFIX}"


def write_ome_zarr(
    path: str | os.PathLike,
    channels: Mapping[str, np.ndarray],
    voxel_size_zyx: Sequence[float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    ngff_version: str = "0.4",
    chunks: Sequence[int] = DEFAULT_CHUNKS,
) -> Path:
    """Write ``(Z, Y, X)`` arrays as the channels of one OME-Zarr image ``(C, Z, Y, X)``, atomically.

    Channels keep their order and are named after their keys (OMERO ``label``); they are stored as float32 (a uint8
    error mask as 0/1) with a display window from each channel's range. ``voxel_size_zyx`` (µm) becomes the NGFF
    ``scale`` with unit micrometer; ``metadata`` (JSON-serialisable) is stored under the ``dm4isl`` attribute. The
    image is written by ``bioio-ome-zarr`` into a hidden folder beside ``path`` and renamed into place, so a reader
    never sees half an image; an older image at ``path`` is replaced.
    """
    if ngff_version not in NGFF_ZARR_FORMAT:
        raise ValueError(f"zarr.ngff_version must be one of {sorted(NGFF_ZARR_FORMAT)}, got {ngff_version!r}")
    try:
        import dask.array as da
        from bioio_ome_zarr.writers import Channel, OMEZarrWriter
    except ImportError as err:
        raise ImportError(f"output_format=ome-zarr needs bioio-ome-zarr: {FORMATS_HINT} ({err})") from err
    path = Path(path)
    shapes = {k: np.shape(v) for k, v in channels.items()}
    if not channels or len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 3:
        raise DataError(f"{path}: expected (Z, Y, X) channels of one shape to write, got {shapes}")
    stack = np.stack([np.asarray(v, dtype=np.float32) for v in channels.values()])
    chunk = tuple(min(int(c), n) for c, n in zip(chunks, stack.shape, strict=True))
    vz, vy, vx = (float(v) for v in voxel_size_zyx) if voxel_size_zyx is not None else (1.0, 1.0, 1.0)
    unit = "micrometer" if voxel_size_zyx is not None else None
    labels = [
        Channel(label=name, color=CHANNEL_COLORS.get(name, "808080"),
                window={"min": float(arr.min()), "max": float(arr.max()), "start": float(arr.min()),
                        "end": float(arr.max())})
        for name, arr in zip(channels, stack, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        writer = OMEZarrWriter(
            str(tmp), level_shapes=[stack.shape], dtype=np.float32, chunk_shape=[chunk],
            zarr_format=NGFF_ZARR_FORMAT[ngff_version], image_name=path.name[: -len(ZARR_SUFFIX)], channels=labels,
            axes_names=["c", "z", "y", "x"], axes_types=["channel", "space", "space", "space"],
            axes_units=[None, unit, unit, unit], physical_pixel_size=[1.0, vz, vy, vx],
            attributes={PROVENANCE_KEY: json.loads(json.dumps(dict(metadata or {}), default=str))},
        )
        writer.write_full_volume(da.from_array(stack, chunks=chunk))
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename folder ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed after."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_zarr_info(path: str | os.PathLike) -> tuple[tuple[float, float, float] | None, list[str], dict[str, Any]]:
    """``(voxel size (Z, Y, X) µm or None, channel names, provenance dict)`` of an image written by
    :func:`write_ome_zarr` (NGFF 0.4 or 0.5), read from its JSON metadata only."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
        ome = attrs.get("ome", {})
    else:
        attrs = json.loads((path / ".zattrs").read_text())
        ome = attrs
    multiscale = ome["multiscales"][0]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    units = [ax.get("unit") for ax in multiscale["axes"]]
    voxel = tuple(float(s) for s in scale[-3:]) if units[-1] == "micrometer" else None
    names = [c["label"] for c in ome.get("omero", {}).get("channels", [])]
    return voxel, names, attrs.get(PROVENANCE_KEY, {})
