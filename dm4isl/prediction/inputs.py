"""Prediction inputs: image files, folders, patch folders and manifests of many FOVs, listed first and read lazily."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dm4isl.data.images import (
    TIFF_SUFFIXES,
    VOXEL_RTOL,
    channel_index,
    check_stack,
    image_stem,
    image_suffix,
    is_image,
    is_ome_tiff,
    needs_resampling,
    open_image,
    physical_voxel_size,
    read_zyx,
    resample_to_voxel,
    select_scene,
)
from dm4isl.data.normalize import auto_window, to_unit
from dm4isl.data.readers import _natural_key, read_patch_folder, read_volume
from dm4isl.errors import DataError
from dm4isl.io.atomic import read_tiff_info

log = logging.getLogger(__name__)

#: Patch ids derived from input names fit in 31 bits.
_ID_MASK = (1 << 31) - 1
#: ``input.scene`` value that expands every multi-scene file into one input per scene.
ALL_SCENES = "all"
#: Manifest columns of a prediction manifest, with the aliases of the training manifest (conf/data/manifest.yaml).
MANIFEST_ALIASES = {
    "path": ("path",),
    "name": ("name", "fov_id"),
    "channel": ("channel", "bf_channel"),
    "gt_channel": ("gt_channel", "fl_channel"),
    "gt_path": ("gt_path", "fl_path"),
    "scene": ("scene",),
    "timepoint": ("timepoint",),
}


#: Bytes read per chunk when hashing an input file.
_HASH_CHUNK = 1 << 20


def _hash_path(digest: Any, path: Path) -> None:
    """Feed the bytes of a file, or of every file under a folder (OME-Zarr) with its relative path, to ``digest``."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path)).encode() if f != path else b"")
        with open(f, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)


def input_fingerprint(inp: PredictInput | InputSource) -> str:
    """SHA-256 (16 hex digits) of what an input is made of: its file(s) and what is taken from them, or its arrays.

    Part of the skip key of ``dm4isl-predict``: a changed file under an old name is predicted again.
    """
    digest = hashlib.sha256()
    if isinstance(inp, InputSource):
        for path in (inp.path, inp.gt_path):
            if path is not None:
                _hash_path(digest, Path(path))
        digest.update(repr((inp.scene, inp.channel, inp.gt_channel, inp.timepoint, inp.read)).encode())
    else:
        for arr in (inp.bf, inp.gt):
            if arr is not None:
                digest.update(repr((arr.shape, str(arr.dtype))).encode())
                digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()[:16]


@dataclass
class PredictInput:
    """One input volume; ``bf``/``gt`` are ``(Z, Y, X)`` float32 in [0, 1] (``gt`` None when unknown).

    ``voxel_size`` ``(Z, Y, X)`` µm of these arrays: the file's physical size, or the training voxel size when the
    input was resampled to it (None when the file states none).
    """

    name: str
    patch_id: int
    source: str
    bf: np.ndarray
    gt: np.ndarray | None = None
    voxel_size: tuple[float, float, float] | None = None

    def load(self, announce: bool = True) -> PredictInput:
        """Already in memory: itself (the interface of :class:`InputSource`)."""
        return self


@dataclass(frozen=True)
class InputSettings:
    """What to read from each input file (``input.*`` of ``conf/predict.yaml``).

    ``scene``: index or name; None = the first scene; ``"all"`` = one input per scene. ``channel`` and
    ``gt_channel`` (the ground truth copied beside the predictions, optional): index or name; None = the only
    channel. ``timepoint``: the time point of time-lapse files. ``voxel_size`` ``(Z, Y, X)`` µm replaces the file's
    physical voxel size (for files that state none or a wrong one). ``resample``: resample the brightfield to the
    checkpoint's training voxel size when the input's voxel size differs by more than ``voxel_rtol`` (relative).
    """

    path: str = ""
    scene: int | str | None = None
    channel: int | str | None = None
    gt_channel: int | str | None = None
    timepoint: int = 0
    voxel_size: tuple[float, float, float] | None = None
    resample: bool = True
    voxel_rtol: float = VOXEL_RTOL

    @classmethod
    def from_config(cls, value: str | os.PathLike | Mapping[str, Any]) -> InputSettings:
        """From ``input=<path>`` (a string) or the ``input`` mapping (``input.path=... input.channel=...``)."""
        if isinstance(value, Mapping):
            known = set(cls.__dataclass_fields__)
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown input setting(s) {unknown}; expected {sorted(known)}")
            settings = cls(**{k: v for k, v in value.items() if v is not None})
        else:
            settings = cls(path=str(value))
        if not settings.path or settings.path == "???":
            raise ValueError("input.path is missing: give input=<file, folder, manifest.csv or test>")
        return settings


@dataclass(frozen=True)
class ReadSettings:
    """How raw grey levels become model inputs: the checkpoint's windows and training voxel size ``(Z, Y, X)`` µm."""

    bf_window: tuple[float, float] | None = None
    fl_window: tuple[float, float] | None = None
    target_voxel: tuple[float, float, float] | None = None
    resample: bool = True
    voxel_rtol: float = VOXEL_RTOL
    input_voxel: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class InputSource:
    """One input before its pixels are read: a file (or OME-Zarr folder) and what to take from it.

    :meth:`load` reads it: plain 3-D TIFFs without OME metadata with tifffile, everything else through bioio
    (:mod:`dm4isl.data.images`).
    """

    name: str
    path: Path
    scene: int | str | None = None
    channel: int | str | None = None
    gt_channel: int | str | None = None
    gt_path: Path | None = None
    timepoint: int = 0
    read: ReadSettings = field(default_factory=ReadSettings)

    @property
    def patch_id(self) -> int:
        """The input's patch id (from its name: the noise depends on the input, not on its position)."""
        return name_to_patch_id(self.name)

    @property
    def source(self) -> str:
        """The file, with the scene when one was chosen."""
        return str(self.path) + (f" [scene {self.scene}]" if self.scene is not None else "")

    def load(self, announce: bool = True) -> PredictInput:
        """Read, normalise and (when its voxel size differs from the training one) resample the input.

        A resampling is logged (one line) unless ``announce`` is false (a second read of the same input).
        """
        if self.gt_path is None and self._plain_tiff(self.path, self.channel):
            raw, gt_raw, voxel = read_volume(self.path), None, read_tiff_info(self.path)[0]
        else:
            raw, gt_raw, voxel = self._read_image()
        voxel = self.read.input_voxel or voxel
        bf = to_unit(raw, self.path, auto_window(raw, self.read.bf_window))
        gt = None if gt_raw is None else to_unit(gt_raw, self.gt_path or self.path,
                                                 auto_window(gt_raw, self.read.fl_window))
        target = self.read.target_voxel
        if self.read.resample and needs_resampling(voxel, target, self.read.voxel_rtol):
            shape = bf.shape
            bf = resample_to_voxel(bf, voxel, target)
            gt = None if gt is None else resample_to_voxel(gt, voxel, target)
            log.log(logging.INFO if announce else logging.DEBUG,
                    "%s: voxel size %s µm resampled to the training voxel size %s µm (Z, Y, X): %s -> %s voxels",
                    self.source, _fmt(voxel), _fmt(target), shape, bf.shape)
            voxel = target
        elif voxel is None and target is not None:
            log.debug("%s: no physical voxel size in the file; taken as the training voxel size %s µm", self.source,
                     _fmt(target))
        return PredictInput(self.name, self.patch_id, self.source, bf, gt, voxel)

    @staticmethod
    def _plain_tiff(path: Path, channel: int | str | None) -> bool:
        """A TIFF without OME metadata whose data is one 3-D stack (the patch layout): read with tifffile."""
        if image_suffix(path) not in TIFF_SUFFIXES or str(channel or 0) != "0" or is_ome_tiff(path):
            return False
        with tifffile.TiffFile(path) as tif:
            return sum(n > 1 for n in tif.series[0].shape) <= 3

    def _read_image(self) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float] | None]:
        """``(brightfield, ground truth or None, voxel size)`` in raw units through bioio."""
        image = open_image(self.path)
        select_scene(image, self.path, self.scene)
        check_stack(image, self.path, self.timepoint)
        channels = [channel_index(image, self.path, self.channel)]
        if self.gt_path is None and self.gt_channel is not None:
            channels.append(channel_index(image, self.path, self.gt_channel))
        vols = read_zyx(image, self.path, channels, self.timepoint)
        voxel = physical_voxel_size(image)
        gt = vols[1] if len(vols) > 1 else None
        if self.gt_path is not None:
            gt_image = open_image(self.gt_path)
            select_scene(gt_image, self.gt_path, self.scene)
            (gt,) = read_zyx(gt_image, self.gt_path, [channel_index(gt_image, self.gt_path, self.gt_channel)],
                             self.timepoint)
            if gt.shape != vols[0].shape:
                raise DataError(f"{self.gt_path}: ground-truth shape {gt.shape} (Z, Y, X) differs from its brightfield "
                                f"{self.path} of shape {vols[0].shape}")
        return vols[0], gt, voxel


def _fmt(voxel: Sequence[float] | None) -> str:
    return "unknown" if voxel is None else "(" + ", ".join(f"{v:.4g}" for v in voxel) + ")"


def name_to_patch_id(name: str) -> int:
    """A stable patch id from an input name (noise depends on the input, not on its position in a folder)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) & _ID_MASK


def _expand_scenes(src: InputSource, many: bool) -> list[InputSource]:
    """``scene="all"``: one source per scene of the file (named ``<name>_s<index>`` when it has several)."""
    if src.scene != ALL_SCENES:
        return [src]
    scenes = list(open_image(src.path).scenes)
    if len(scenes) == 1 and not many:
        return [replace(src, scene=None)]
    return [replace(src, name=f"{src.name}_s{k}", scene=k) for k in range(len(scenes))]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (and OME-Zarr folders) directly inside ``folder``, naturally sorted; hidden and partial skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of images, but it does not exist or is not a folder")
    return sorted((p for p in folder.iterdir() if is_image(p)), key=_natural_key)


def read_predict_manifest(path: Path, settings: InputSettings, read: ReadSettings) -> list[InputSource]:
    """Sources of a prediction manifest CSV: one row per FOV (see :data:`MANIFEST_ALIASES` for the columns).

    Empty cells take the ``input.*`` defaults; relative paths resolve against the manifest's folder. The training
    manifest (``path, bf_channel, fl_channel, fov_id [, fl_path]``) works as is.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            cols = {key: next((a for a in aliases if a in header), None) for key, aliases in MANIFEST_ALIASES.items()}
            if cols["path"] is None:
                raise DataError(f"{path}: manifest without a 'path' column; found {header}")
            rows = list(reader)
    except OSError as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from err
    sources = []
    for row_no, row in enumerate(rows, start=2):
        cell = {k: str(row.get(c) or "").strip() if c else "" for k, c in cols.items()}
        if not cell["path"]:
            raise DataError(f"{path}: row {row_no}: empty path")
        file = Path(cell["path"]) if Path(cell["path"]).is_absolute() else path.parent / cell["path"]
        timepoint = cell["timepoint"] or settings.timepoint
        if not str(timepoint).isdigit():
            raise DataError(f"{path}: row {row_no}, column timepoint: {timepoint!r} is not a non-negative integer")
        gt_path = None
        if cell["gt_path"]:
            gt_path = Path(cell["gt_path"]) if Path(cell["gt_path"]).is_absolute() else path.parent / cell["gt_path"]
        src = InputSource(
            name=cell["name"] or image_stem(file), path=file, scene=cell["scene"] or settings.scene,
            channel=cell["channel"] or settings.channel, gt_channel=cell["gt_channel"] or settings.gt_channel,
            gt_path=gt_path, timepoint=int(timepoint), read=read,
        )
        sources += _expand_scenes(src, many=True)
    return sources


def discover_inputs(
    settings: InputSettings, read: ReadSettings, bf_dir: str = "BF", gt_dir: str = "GT"
) -> list[InputSource | PredictInput]:
    """Every input named by ``settings.path``, in a stable order; pixels are read later (:meth:`InputSource.load`).

    ``path`` is a patch folder (``BF/`` + ``GT/``, the reference layout), a folder of images (or of a ``BF/``
    subfolder), one image file or OME-Zarr folder, or a manifest CSV of many FOVs. Names must be unique: they name
    the output files.
    """
    path = Path(settings.path)
    common = {"scene": settings.scene, "channel": settings.channel, "gt_channel": settings.gt_channel,
              "timepoint": int(settings.timepoint), "read": read}
    if path.is_dir() and (path / bf_dir).is_dir() and (path / gt_dir).is_dir():
        sources: list[InputSource | PredictInput] = [
            _PatchPairSource(pair.name, pair.bf_path, gt_path=pair.gt_path, read=read)
            for pair in read_patch_folder(path, bf_dir, gt_dir)  # checks that every BF file has its GT partner
        ]
        return sources
    if path.suffix.lower() == ".csv" and path.is_file():
        sources = list(read_predict_manifest(path, settings, read))
    elif is_image(path):
        sources = list(_expand_scenes(InputSource(image_stem(path), path, **common), many=False))
    elif path.is_dir():
        folder = path / bf_dir if (path / bf_dir).is_dir() else path
        files = list_images(folder)
        if not files:
            raise DataError(f"{path}: no TIFF files found and no other images (expected {folder}/*.tiff, *.ome.tiff, "
                            "*.czi, *.nd2, *.lif or *.ome.zarr)")
        sources = [s for f in files for s in _expand_scenes(InputSource(image_stem(f), f, **common), many=False)]
    elif path.exists():
        raise DataError(f"{path}: not an image dm4isl reads (expected .tif/.tiff/.ome.tiff, .czi, .nd2, .lif, "
                        ".ome.zarr, a folder of them or a manifest .csv)")
    else:
        raise DataError(f"{path}: input not found (expected a patch folder, a folder of images, an image file or a "
                        "manifest .csv)")
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: input names {duplicates[:10]} occur more than once; output files are named after "
                        "the inputs (give a manifest with a name column)")
    return sources


@dataclass(frozen=True)
class _PatchPairSource(InputSource):
    """A brightfield/ground-truth pair of a patch folder (single-channel 3-D TIFFs, read with tifffile)."""

    def load(self, announce: bool = True) -> PredictInput:
        bf_raw, gt_raw = read_volume(self.path), read_volume(self.gt_path)
        if bf_raw.shape != gt_raw.shape:
            raise DataError(f"{self.gt_path}: shape {gt_raw.shape} (Z, Y, X) does not match its brightfield partner "
                            f"{self.path} of shape {bf_raw.shape}")
        return PredictInput(
            self.name, self.patch_id, str(self.path),
            to_unit(bf_raw, self.path, auto_window(bf_raw, self.read.bf_window)),
            to_unit(gt_raw, self.gt_path, auto_window(gt_raw, self.read.fl_window)),
            read_tiff_info(self.path)[0],
        )
