"""Microscopy image files through bioio: formats, scene/timepoint/channel choice, physical sizes, voxel resampling."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from skimage.transform import resize

from dm4isl.errors import DataError

log = logging.getLogger(__name__)

#: How to install the optional readers (CZI, ND2, LIF, OME-Zarr).
FORMATS_HINT = 'pip install -e ".[formats]"'
#: Suffixes of the plain TIFF family (read with tifffile when they carry no OME metadata).
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
#: Suffixes read through an optional bioio plugin, with the plugin that reads them.
PLUGIN_SUFFIXES = {".czi": "bioio-czi", ".nd2": "bioio-nd2", ".lif": "bioio-lif", ".zarr": "bioio-ome-zarr"}
#: Every suffix dm4isl lists as an image in a folder of inputs.
IMAGE_SUFFIXES = TIFF_SUFFIXES + tuple(PLUGIN_SUFFIXES)
#: Dimensions bioio may report besides T, C, Z, Y, X; each must have length 1 (S > 1: RGB, not a z-stack).
SINGLETON_DIMS = "S"
#: Relative difference of a voxel axis beyond which the brightfield is resampled to the training voxel size.
VOXEL_RTOL = 0.01


def image_suffix(path: str | os.PathLike) -> str | None:
    """The image suffix of ``path`` (``.ome.tiff``, ``.czi``, ``.zarr``, …; a trailing slash is ignored), else None."""
    name = Path(path).name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix: ``cell.01.ome.tiff`` → ``cell.01``, ``plate.ome.zarr`` → ``plate``."""
    name, suffix = Path(path).name, image_suffix(path)
    stem = name[: -len(suffix)] if suffix else Path(path).stem
    return stem[: -len(".ome")] if suffix == ".zarr" and stem.lower().endswith(".ome") else stem


def is_image(path: str | os.PathLike) -> bool:
    """True for an image file (or an OME-Zarr folder) dm4isl can read, judged by its suffix; hidden files are not."""
    path = Path(path)
    if path.name.startswith(".") or image_suffix(path) is None:
        return False
    return path.is_dir() if image_suffix(path) == ".zarr" else path.is_file()


def is_ome_tiff(path: str | os.PathLike) -> bool:
    """True when ``path`` is a TIFF with OME-XML metadata; raises :class:`DataError` for an unreadable TIFF."""
    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except Exception as err:  # tifffile raises many types for corrupt files; re-raise with the file named
        raise DataError(f"{path}: unreadable or truncated TIFF ({type(err).__name__}: {err})") from err


def open_image(path: str | os.PathLike, reader: Any = None) -> Any:
    """Open an image with bioio (``bioio.BioImage``); no pixels are read yet.

    OME-TIFFs are opened with ``bioio-ome-tiff``, other TIFFs with ``bioio-tifffile``; CZI, ND2, LIF and OME-Zarr need
    their plugin (the ``formats`` extra). ``reader`` forces a bioio ``Reader`` class. Errors name the file.
    """
    from bioio import BioImage
    from bioio_base.exceptions import UnsupportedFileFormatError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (expected an image: {', '.join(IMAGE_SUFFIXES)})")
    suffix = image_suffix(path)
    if reader is None and suffix in TIFF_SUFFIXES:
        if is_ome_tiff(path):
            from bioio_ome_tiff import Reader as reader
        else:
            from bioio_tifffile import Reader as reader
    try:
        return BioImage(path, reader=reader)
    except UnsupportedFileFormatError as err:
        plugin = PLUGIN_SUFFIXES.get(suffix or "")
        hint = f"; install its reader {plugin} ({FORMATS_HINT})" if plugin else ""
        raise DataError(f"{path}: no installed bioio reader opens this file{hint} ({err})") from err
    except DataError:
        raise
    except Exception as err:  # plugins raise many types for corrupt files
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def select_scene(image: Any, path: str | os.PathLike, scene: int | str | None) -> str:
    """Make ``scene`` (index or name; None = the first) the image's current scene; returns its name."""
    scenes = list(image.scenes)
    if scene is None:
        return str(scenes[0])
    key = _as_index(scene)
    if isinstance(key, int):
        if not 0 <= key < len(scenes):
            raise DataError(f"{path}: scene index {key} out of range; the file has {len(scenes)} scene(s) "
                            f"(0..{len(scenes) - 1}: {scenes[:10]})")
        image.set_scene(key)
        return str(scenes[key])
    if key not in scenes:
        raise DataError(f"{path}: no scene named {key!r}; scenes: {scenes[:20]}")
    image.set_scene(key)
    return key


def channel_index(image: Any, path: str | os.PathLike, channel: int | str | None) -> int:
    """The 0-based index of ``channel`` (an index, or a channel name: exact, else case-insensitive).

    None picks the only channel of a single-channel image and is refused for several channels.
    """
    names = [str(n) for n in (image.channel_names or [])]
    n_channels = int(image.dims.C)
    key = _as_index(channel)
    if key is None:
        if n_channels == 1:
            return 0
        raise DataError(f"{path}: {n_channels} channels {names}; choose the brightfield with input.channel=<index or "
                        "name> (or the manifest's channel column)")
    if isinstance(key, int):
        if not 0 <= key < n_channels:
            raise DataError(f"{path}: channel index {key} out of range; the file has {n_channels} channels "
                            f"(0..{n_channels - 1}: {names})")
        return key
    if key in names:
        return names.index(key)
    folded = [n.casefold() for n in names]
    if folded.count(key.casefold()) == 1:
        return folded.index(key.casefold())
    raise DataError(f"{path}: no channel named {key!r}; channels: {names}")


def _as_index(value: int | str | None) -> int | str | None:
    """An integer index from an int or a string of digits; other strings stay names."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def physical_voxel_size(image: Any) -> tuple[float, float, float] | None:
    """``(Z, Y, X)`` µm from the file's metadata, or None unless all three are known and positive.

    bioio-tifffile reports a placeholder of 1 for Y and X of TIFFs without OME metadata; those count as unknown.
    """
    reader = type(getattr(image, "reader", None)).__module__
    if reader.startswith("bioio_tifffile"):
        return None
    sizes = image.physical_pixel_sizes
    values = (sizes.Z, sizes.Y, sizes.X)
    if any(v is None or not np.isfinite(v) or v <= 0 for v in values):
        return None
    return float(values[0]), float(values[1]), float(values[2])


def check_stack(image: Any, path: str | os.PathLike, timepoint: int | None = None) -> int:
    """Check that the current scene is a 3-D stack with the time point asked for; returns the time point to read.

    ``timepoint`` None accepts only single-timepoint images (the strict choice for training data).
    """
    dims = image.dims
    shape = dict(zip(dims.order, dims.shape, strict=True))
    if shape.get("Z", 1) < 2:
        raise DataError(f"{path}: dimensions {shape}; expected a 3-D stack with Z, Y, X (and C) axes, found a single "
                        "Z plane")
    extra = {d: n for d, n in shape.items() if d in SINGLETON_DIMS and n != 1}
    if extra:
        raise DataError(f"{path}: dimensions {shape}; expected only Z, C, Y, X besides axes of length 1, found "
                        f"{extra} (RGB samples are not a brightfield z-stack)")
    n_t = shape.get("T", 1)
    if timepoint is None:
        if n_t != 1:
            raise DataError(f"{path}: dimensions {shape}; expected only Z, C, Y, X besides axes of length 1, found "
                            f"{n_t} time points (choose one with a timepoint setting)")
        timepoint = 0
    if not 0 <= int(timepoint) < n_t:
        raise DataError(f"{path}: time point {timepoint} out of range; the file has {n_t} (0..{n_t - 1})")
    return int(timepoint)


def read_zyx(
    image: Any, path: str | os.PathLike, channels: Sequence[int], timepoint: int | None = None
) -> list[np.ndarray]:
    """Read the given channels (0-based) of the current scene, each a ``(Z, Y, X)`` array in its stored dtype.

    ``timepoint`` as in :func:`check_stack`. Errors name the file: a 2-D image, a time point out of range, RGB
    samples, an unsupported dtype, NaN/inf voxels.
    """
    timepoint = check_stack(image, path, timepoint)
    out = []
    for c in channels:
        try:
            vol = np.asarray(image.get_image_dask_data("ZYX", T=int(timepoint), C=int(c)).compute())
        except Exception as err:  # plugins raise many types for truncated data
            raise DataError(f"{path}: unreadable or truncated image data, channel {c} ({type(err).__name__}: "
                            f"{err})") from err
        if vol.dtype.kind not in "uif":
            raise DataError(f"{path}: unsupported dtype {vol.dtype}; expected an unsigned/signed integer or float "
                            "image")
        if vol.dtype.kind == "f" and not np.isfinite(vol).all():
            n_bad = int((~np.isfinite(vol)).sum())
            raise DataError(f"{path}: channel {c} contains {n_bad} NaN/inf voxels; expected finite intensities")
        out.append(np.ascontiguousarray(vol))
    return out


def needs_resampling(
    found: Sequence[float] | None, target: Sequence[float] | None, rtol: float = VOXEL_RTOL
) -> bool:
    """True when both voxel sizes ``(Z, Y, X)`` are known and some axis differs by more than ``rtol`` (relative)."""
    if found is None or target is None:
        return False
    return any(abs(f - t) > rtol * t for f, t in zip(found, target, strict=True))


def resample_to_voxel(
    volume: np.ndarray, found: Sequence[float], target: Sequence[float]
) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` volume of voxel size ``found`` to voxel size ``target`` (µm), keeping its extent.

    Each axis gets ``round(n × found / target)`` voxels (at least 1); linear interpolation, with Gaussian
    anti-aliasing along axes that shrink (``skimage.transform.resize``). Returns float32 in the input's units.
    """
    shape = tuple(max(1, round(n * f / t)) for n, f, t in zip(volume.shape, found, target, strict=True))
    shrinks = any(s < n for s, n in zip(shape, volume.shape, strict=True))
    out = resize(volume.astype(np.float32), shape, order=1, mode="edge", anti_aliasing=shrinks, preserve_range=True)
    return out.astype(np.float32)
