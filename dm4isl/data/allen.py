"""Manifest-driven multi-channel FOVs (Allen ``metadata.csv`` or a plain CSV): parsing, channel reading, resampling."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

from dm4isl.data.images import (
    TIFF_SUFFIXES,
    channel_index,
    check_stack,
    image_suffix,
    is_ome_tiff,
    open_image,
    read_zyx,
    select_scene,
)
from dm4isl.data.readers import list_tiffs, tiff_stem
from dm4isl.errors import DataError
from dm4isl.io.atomic import atomic_path

log = logging.getLogger(__name__)

#: Column names of the Allen Cell ``metadata.csv`` (SPEC §1); each can be renamed in the config.
ALLEN_COLUMNS = {
    "path": "SourceReadPath",
    "bf_channel": "ChannelNumberBrightfield",
    "structure_channel": "ChannelNumberStruct",
    "dna_channel": "ChannelNumber405",
    "gene": "Gene",
    "fov_id": "FOVId",
    "well_id": "WellId",
}
#: Column names of a plain manifest: one row per FOV with its file, brightfield and fluorescence channel.
PLAIN_COLUMNS = {"path": "path", "bf_channel": "bf_channel", "fl_channel": "fl_channel", "fov_id": "fov_id",
                 "well_id": "well_id", "fl_path": "fl_path", "scene": "scene", "timepoint": "timepoint"}
MANIFEST_STYLES = ("allen", "plain")
#: ``organelle.fl_channel`` values: which Allen column holds the fluorescence channel of the organelle.
FL_CHANNEL_COLUMNS = {"structure": "structure_channel", "dna": "dna_channel"}
#: The label-free imaging collection (quilt ``aics/label-free-imaging-collection``) as the authors' loader reads it
#: (``load_organelle_fovs`` of their ``src/LoadSaveFunctions.py``, folder names of their ``src/Config.py``): one folder
#: of multi-channel ``(C, Z, Y, X)`` FOVs per structure, brightfield in channel 0, DNA dye in 1, the structure in 3;
#: DNA comes from the mitochondria FOVs.
COLLECTION_FOLDERS = {
    "nuclear_envelope": "Nuclear-envelope", "nucleoli": "Nucleolus-(Dense-Fibrillar-Component)", "dna": "Mitochondria",
    "actin": "Actin-filaments", "mitochondria": "Mitochondria", "microtubules": "Microtubules",
}
COLLECTION_CHANNELS = {"bf": 0, "dna": 1, "structure": 3}
#: Axes a multi-channel FOV may have besides Z, C, Y, X — each must have length 1 (e.g. T in TCZYX).
SINGLETON_AXES = "TSIQ"
RESAMPLE_METHODS = ("nearest", "linear")
#: Bump when the layout of the prepared-FOV cache changes.
FOV_CACHE_VERSION = 1


@dataclass(frozen=True)
class FovRecord:
    """One field of view of a manifest: its file(s), the 0-based channel indices used, and its grouping keys.

    ``fl_path`` is the fluorescence file when it is not ``path`` (plain manifests with separate BF and FL files).
    A channel is a 0-based index or, for files with channel metadata, a channel name; ``scene`` (index or name) and
    ``timepoint`` choose within multi-position or time-lapse files (None: the first scene; a single time point).
    """

    fov_id: str
    path: Path
    bf_channel: int | str
    fl_channel: int | str
    well_id: str | None = None
    gene: str | None = None
    fl_path: Path | None = None
    scene: int | str | None = None
    timepoint: int | None = None


@dataclass(frozen=True)
class ResampleSettings:
    """XY resampling of a ``(Z, Y, X)`` FOV: a target ``(Y, X)`` size or a factor (one of them), and the method.

    ``nearest``: nearest neighbour with half-pixel centres (source index ``floor((i + 0.5) * in / out)``), the
    same as ``skimage.transform.resize(order=0, anti_aliasing=False)`` and torch ``nearest-exact``; it keeps the
    raw dtype, as the reference's 624 × 924 → 244 × 366 resize did (SPEC §1). ``linear``: bilinear per Z slice
    (torch ``interpolate``, ``align_corners=False``, no antialiasing), float32 output.
    """

    size: tuple[int, int] | None = None
    factor: tuple[float, float] | None = None
    method: str = "nearest"

    @classmethod
    def from_config(
        cls, size: Sequence[int] | None, factor: float | Sequence[float] | None, method: str = "nearest"
    ) -> ResampleSettings:
        """Validate config values; ``factor`` may be one number (same in Y and X) or ``[fy, fx]``."""
        if method not in RESAMPLE_METHODS:
            raise ValueError(f"xy_method must be one of {RESAMPLE_METHODS}, got {method!r}")
        if size is not None and factor is not None:
            raise ValueError(f"give either xy_size or xy_factor, not both (got {list(size)} and {factor})")
        sz = tuple(int(s) for s in size) if size is not None else None
        if sz is not None and (len(sz) != 2 or min(sz) < 1):
            raise ValueError(f"xy_size must be [Y, X] with positive sizes, got {list(size)}")
        fac = None
        if factor is not None:
            fac = (float(factor),) * 2 if np.isscalar(factor) else tuple(float(f) for f in factor)
            if len(fac) != 2 or min(fac) <= 0:
                raise ValueError(f"xy_factor must be a positive number or [fy, fx], got {factor}")
        return cls(sz, fac, method)  # type: ignore[arg-type]

    def out_shape(self, yx: Sequence[int]) -> tuple[int, int]:
        """Output ``(Y, X)`` for an input of size ``yx``."""
        if self.size is not None:
            return self.size
        if self.factor is not None:
            return tuple(max(1, round(n * f)) for n, f in zip(yx, self.factor, strict=True))  # type: ignore[return-value]
        return int(yx[0]), int(yx[1])


def resample_xy(volume: np.ndarray, settings: ResampleSettings) -> np.ndarray:
    """Resize a ``(Z, Y, X)`` volume in Y and X only (Z untouched), as :class:`ResampleSettings` describes."""
    out_y, out_x = settings.out_shape(volume.shape[1:])
    if (out_y, out_x) == volume.shape[1:]:
        return volume
    if settings.method == "nearest":
        iy = np.minimum(((np.arange(out_y) + 0.5) * volume.shape[1] / out_y).astype(np.int64), volume.shape[1] - 1)
        ix = np.minimum(((np.arange(out_x) + 0.5) * volume.shape[2] / out_x).astype(np.int64), volume.shape[2] - 1)
        return np.ascontiguousarray(volume[:, iy][:, :, ix])
    t = torch.from_numpy(np.asarray(volume, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=(out_y, out_x), mode="bilinear", align_corners=False, antialias=False)
    return out[:, 0].numpy()


def read_channels(
    path: str | os.PathLike,
    channels: Sequence[int | str],
    axes: str | None = None,
    scene: int | str | None = None,
    timepoint: int | None = None,
) -> list[np.ndarray]:
    """Read the given channels of a multi-channel 3-D image, each as a ``(Z, Y, X)`` array in its stored dtype.

    OME-TIFF, CZI, ND2, LIF and OME-Zarr files are read through bioio (:mod:`dm4isl.data.images`): channels by 0-based
    index or by name, ``scene`` (index or name, None = the first) and ``timepoint`` (None: the file must have one).
    TIFFs without OME metadata, and any TIFF whose ``axes`` are overridden (files written without or with wrong axes
    metadata), are read with tifffile from the axes in their metadata (``series.axes``: ImageJ or tifffile-shaped,
    e.g. ``ZCYX``, ``CZYX``, ``TCZYX`` with T = 1), decoding only the pages of the wanted channels; float16 stays
    float16 there. Errors name the file: missing or unreadable file, no Z axis (a 2-D image), axes other than
    Z/C/Y/X longer than 1, a channel out of range or unknown, NaN/inf voxels.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (expected a multi-channel 3-D image listed in the manifest)")
    if axes is None and (image_suffix(path) not in TIFF_SUFFIXES or is_ome_tiff(path)):
        image = open_image(path)
        select_scene(image, path, scene)
        check_stack(image, path, timepoint)
        return read_zyx(image, path, [channel_index(image, path, c) for c in channels], timepoint)
    names = [c for c in channels if not isinstance(c, int) and not str(c).strip().isdigit()]
    if names:
        raise DataError(f"{path}: channel names {names} need a file with channel metadata (OME-TIFF, CZI, ND2, LIF, "
                        "OME-Zarr); give 0-based indices for this TIFF")
    channels = [int(c) for c in channels]
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            found = axes.upper() if axes else series.axes.upper()
            if len(found) != len(series.shape):
                raise DataError(f"{path}: axes override {axes!r} has {len(found)} letters; the image is "
                                f"{len(series.shape)}-D with shape {series.shape}")
            shape = dict(zip(found, series.shape, strict=True))
            _check_axes(path, found, shape, axes)
            n_channels = shape.get("C", 1)
            for c in channels:
                if not 0 <= int(c) < n_channels:
                    raise DataError(f"{path}: channel index {c} out of range; the file has {n_channels} channels "
                                    f"(0..{n_channels - 1}, axes {found}, shape {series.shape})")
            data, read_axes, selected = _read_series(tif, series, found, channels)
    except DataError:
        raise
    except Exception as err:  # tifffile raises many types for corrupt files; re-raise with the file named
        raise DataError(f"{path}: unreadable or truncated TIFF ({type(err).__name__}: {err})") from err
    if data.dtype.kind not in "uif":
        raise DataError(f"{path}: unsupported dtype {data.dtype}; expected an unsigned/signed integer or float image")
    squeeze = tuple(i for i, a in enumerate(read_axes) if a in SINGLETON_AXES)
    data = data.squeeze(axis=squeeze) if squeeze else data
    kept = "".join(a for a in read_axes if a not in SINGLETON_AXES)
    if "C" not in kept:
        data, kept = data[None], "C" + kept
    data = np.moveaxis(data, [kept.index(a) for a in "CZYX"], range(4))
    out = []
    for k, c in enumerate(channels):
        vol = np.ascontiguousarray(data[k if selected else int(c)])
        if vol.dtype.kind == "f" and not np.isfinite(vol).all():
            n_bad = int((~np.isfinite(vol)).sum())
            raise DataError(f"{path}: channel {c} contains {n_bad} NaN/inf voxels; expected finite intensities")
        out.append(vol)
    return out


def _read_series(
    tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, axes: str, channels: Sequence[int]
) -> tuple[np.ndarray, str, bool]:
    """Decode a series, only the pages of ``channels`` when every page is one YX plane (OME/ImageJ FOVs).

    Returns ``(array, its axes, selected)``: when ``selected`` the C axis comes first and holds just the wanted
    channels in the given order; otherwise it is the whole series with ``axes``.
    """
    if "C" not in axes or axes[-2:] != "YX" or len(series.pages) != int(np.prod(series.shape[:-2])):
        return series.asarray(), axes, False
    lead = axes[:-2]
    grid = np.indices(series.shape[:-2]).reshape(len(lead), -1)
    pages = []
    for c in channels:
        idx = np.flatnonzero(grid[lead.index("C")] == int(c))  # raveled page order of the (non-YX) axes
        pages.extend(idx.tolist())
    data = tif.asarray(key=pages, series=series).reshape(
        len(channels), *(n for a, n in zip(lead, series.shape, strict=False) if a != "C"), *series.shape[-2:]
    )
    return data, "C" + "".join(a for a in axes if a != "C"), True


def _check_axes(path: Path, found: str, shape: Mapping[str, int], override: str | None) -> None:
    """Raise :class:`DataError` unless ``found`` describes a 3-D (optionally multi-channel) stack."""
    hint = "" if override else " (set the datamodule's axes, e.g. axes=ZCYX, if the file lacks axes metadata)"
    if not {"Y", "X"} <= set(found) or "Z" not in found:
        raise DataError(f"{path}: axes {found} with shape {tuple(shape.values())}; expected a 3-D stack with Z, Y, X "
                        f"(and C) axes, e.g. ZCYX, CZYX or TCZYX{hint}")
    extra = {a: n for a, n in shape.items() if a not in "ZCYX"}
    if any(a not in SINGLETON_AXES for a in extra) or any(n != 1 for n in extra.values()):
        raise DataError(f"{path}: axes {found} with shape {tuple(shape.values())}; expected only Z, C, Y, X besides "
                        f"axes of length 1 ({', '.join(SINGLETON_AXES)}), found {extra}{hint}")


def _int_channel(value: str, manifest: Path, row: int, column: str, base: int) -> int | str:
    """A manifest channel number → 0-based index, or a channel name (any non-numeric text) kept as it is.

    Errors name the manifest, the row and the column.
    """
    text = str(value if value is not None else "").strip()
    try:
        as_float = float(text)
    except ValueError:
        if text and text.lower() not in ("nan", "inf", "-inf"):
            return text
        as_float = float("nan")
    if not np.isfinite(as_float) or as_float != int(as_float):
        raise DataError(f"{manifest}: row {row}, column {column}: channel number {value!r} is not an integer")
    number = int(as_float)
    if number - base < 0:
        raise DataError(f"{manifest}: row {row}, column {column}: channel number {number} is below channel_base {base}")
    return number - base


def _optional_int(value: str | None, manifest: Path, row: int, column: str) -> int | None:
    """An optional non-negative integer cell (empty: None); errors name the manifest, the row and the column."""
    text = str(value or "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise DataError(f"{manifest}: row {row}, column {column}: {text!r} is not a non-negative integer")
    return int(text)


def _resolve(value: str, root: Path) -> Path:
    """A manifest path: absolute as is, relative to ``root`` otherwise."""
    path = Path(str(value).strip())
    return path if path.is_absolute() else root / path


def collection_manifest(root: str | os.PathLike, organelle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of a plain manifest (``path, bf_channel, fl_channel, fov_id``; paths relative to ``root``) for the FOVs of
    ``organelle`` in a copy of the label-free imaging collection at ``root`` (:data:`COLLECTION_FOLDERS`,
    :data:`COLLECTION_CHANNELS`), in file-name order; the FOV id is the file name without its suffix."""
    root = Path(root)
    name = organelle.get("name")
    if name not in COLLECTION_FOLDERS:
        raise DataError(f"organelle {name!r} has no folder in the label-free imaging collection; expected one of "
                        f"{sorted(COLLECTION_FOLDERS)}")
    folder = root / COLLECTION_FOLDERS[name]
    files = list_tiffs(folder) if folder.is_dir() else []
    if not files:
        raise DataError(f"{folder}: no FOV images (expected the collection's {COLLECTION_FOLDERS[name]}/ folder)")
    fl = COLLECTION_CHANNELS[organelle.get("fl_channel", "structure")]
    return [{"path": f.relative_to(root).as_posix(), "bf_channel": COLLECTION_CHANNELS["bf"], "fl_channel": fl,
             "fov_id": tiff_stem(f)} for f in files]


def write_collection_manifest(
    root: str | os.PathLike, organelle: Mapping[str, Any], path: str | os.PathLike | None = None
) -> Path:
    """Write :func:`collection_manifest` as a CSV (default ``<root>/<organelle>.csv``) for ``data=manifest``."""
    out = Path(path) if path else Path(root) / f"{organelle['name']}.csv"
    rows = collection_manifest(root, organelle)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def read_manifest(
    manifest: str | os.PathLike,
    organelle: Mapping[str, Any],
    style: str = "allen",
    columns: Mapping[str, str] | None = None,
    data_root: str | os.PathLike | None = None,
    channel_base: int = 0,
) -> list[FovRecord]:
    """The FOVs of a manifest CSV for one organelle, one record per FOV id (rows repeated per cell are merged).

    ``style="allen"``: the Allen ``metadata.csv`` (:data:`ALLEN_COLUMNS`): rows are kept whose gene column equals
    ``organelle["allen_gene"]`` (all rows when it is null), the fluorescence channel is the structure channel or,
    for ``organelle["fl_channel"] == "dna"``, the DNA dye channel. ``style="plain"``: :data:`PLAIN_COLUMNS`, every
    row is used. ``columns`` renames columns. Channel numbers minus ``channel_base`` are 0-based indices into the
    file's C axis. Relative paths resolve against ``data_root`` (default: the manifest's folder).
    """
    manifest = Path(manifest)
    if style not in MANIFEST_STYLES:
        raise ValueError(f"manifest style must be one of {MANIFEST_STYLES}, got {style!r}")
    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest not found (expected a CSV with one row per FOV or per cell)")
    cols = {**(ALLEN_COLUMNS if style == "allen" else PLAIN_COLUMNS), **dict(columns or {})}
    if style == "allen":
        fl_kind = organelle.get("fl_channel", "structure")
        if fl_kind not in FL_CHANNEL_COLUMNS:
            raise DataError(f"organelle {organelle.get('name')!r}: fl_channel {fl_kind!r}; expected one of "
                            f"{sorted(FL_CHANNEL_COLUMNS)}")
        cols["fl_channel"] = cols[FL_CHANNEL_COLUMNS[fl_kind]]
    root = Path(data_root) if data_root else manifest.parent
    gene = organelle.get("allen_gene") if style == "allen" else None
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            required = ["path", "bf_channel", "fl_channel", "fov_id"] + (["gene"] if gene else [])
            missing = [cols[k] for k in required if cols[k] not in header]
            if missing:
                raise DataError(f"{manifest}: missing column(s) {missing}; found {header}")
            records: dict[str, FovRecord] = {}
            genes_seen: set[str] = set()
            for row_no, row in enumerate(reader, start=2):
                row_gene = row.get(cols.get("gene", ""), None)
                if row_gene:
                    genes_seen.add(row_gene)
                if gene and row_gene != gene:
                    continue
                fov_id = str(row[cols["fov_id"]]).strip()
                if not fov_id:
                    raise DataError(f"{manifest}: row {row_no}: empty FOV id in column {cols['fov_id']}")
                fl_file = str(row.get(cols.get("fl_path", "")) or "").strip()
                rec = FovRecord(
                    fov_id=fov_id,
                    path=_resolve(row[cols["path"]], root),
                    bf_channel=_int_channel(row[cols["bf_channel"]], manifest, row_no, cols["bf_channel"],
                                            channel_base),
                    fl_channel=_int_channel(row[cols["fl_channel"]], manifest, row_no, cols["fl_channel"],
                                            channel_base),
                    well_id=(row.get(cols.get("well_id", "")) or None),
                    gene=row_gene or None,
                    fl_path=_resolve(fl_file, root) if fl_file else None,
                    scene=str(row.get(cols.get("scene", "")) or "").strip() or None,
                    timepoint=_optional_int(row.get(cols.get("timepoint", "")), manifest, row_no, "timepoint"),
                )
                old = records.get(fov_id)
                if old is not None and (old.path, old.bf_channel, old.fl_channel) != (
                    rec.path, rec.bf_channel, rec.fl_channel
                ):
                    raise DataError(f"{manifest}: row {row_no}: FOV {fov_id!r} is listed again with another file or "
                                    f"channels ({rec.path}, {rec.bf_channel}, {rec.fl_channel}); first seen as "
                                    f"({old.path}, {old.bf_channel}, {old.fl_channel})")
                records[fov_id] = rec
    except OSError as err:
        raise DataError(f"{manifest}: cannot read manifest ({err})") from err
    if not records:
        what = f"with {cols.get('gene')} == {gene!r}" if gene else "at all"
        raise DataError(f"{manifest}: no FOV {what} for organelle {organelle.get('name')!r}; genes present: "
                        f"{sorted(genes_seen)[:20]}")
    return [records[k] for k in sorted(records)]


def _cache_tag(record: FovRecord, resample: ResampleSettings, axes: str | None) -> str:
    """Key of a prepared FOV: its file(s) (path, size, mtime), channels, resampling and axes."""
    files = []
    for path in (record.path, record.fl_path):
        if path is None:
            continue
        try:
            stat = path.stat()
        except OSError:
            raise DataError(f"{path}: file not found (FOV {record.fov_id} of the manifest)") from None
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    key = {
        "files": files,
        "channels": [record.bf_channel, record.fl_channel], "resample": asdict(resample), "axes": axes,
        **({"scene": record.scene, "timepoint": record.timepoint} if record.scene or record.timepoint else {}),
        "version": FOV_CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def prepare_fov(
    record: FovRecord,
    resample: ResampleSettings,
    axes: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brightfield and fluorescence ``(Z, Y, X)`` of one FOV in raw units, XY-resampled; cached as ``.npz``.

    With ``cache_dir`` the result is stored (atomically) under ``cache_dir/fovs/<fov_id>-<tag>.npz`` and reused
    while the source file, channels and resampling are unchanged. Constant channels are rejected as unusable.
    """
    path = None
    if cache_dir is not None:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in record.fov_id)
        path = Path(cache_dir) / "fovs" / f"{safe}-{_cache_tag(record, resample, axes)}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return z["bf"], z["fl"]
            except (OSError, KeyError, ValueError) as err:
                raise DataError(f"{path}: corrupt prepared FOV ({err}); delete it to rebuild") from err
    if record.fl_path is None:
        bf, fl = read_channels(record.path, [record.bf_channel, record.fl_channel], axes, record.scene,
                               record.timepoint)
    else:
        (bf,), (fl,) = read_channels(record.path, [record.bf_channel], axes, record.scene, record.timepoint), \
            read_channels(record.fl_path, [record.fl_channel], axes, record.scene, record.timepoint)
        if bf.shape != fl.shape:
            raise DataError(f"{record.fl_path}: fluorescence shape {fl.shape} (Z, Y, X) differs from its brightfield "
                            f"{record.path} of shape {bf.shape}")
    for name, vol, ch in (("brightfield", bf, record.bf_channel), ("fluorescence", fl, record.fl_channel)):
        if float(vol.min()) == float(vol.max()):
            raise DataError(f"{record.path}: {name} channel {ch} is constant ({float(vol.min())}); unusable FOV "
                            f"{record.fov_id} (expected an image with contrast)")
    bf, fl = resample_xy(bf, resample), resample_xy(fl, resample)
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, bf=bf, fl=fl)
    return bf, fl
