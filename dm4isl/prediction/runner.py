"""Predict a set of brightfield inputs with a trained model and write one folder per product.

Output layout (what ``dm4isl-evaluate`` reads next to a ``GT/`` folder), one file per input under the input's name::

    <output_dir>/DDPM/ DDPMavg/ std_intra/ std_inter/ error_mask/   (diffusion; std_inter only with n_seeds > 1)
    <output_dir>/DDPM_seeds/seed<k>/ DDPMavg_seeds/seed<k>/        (save_seeds: each seed's products)
    <output_dir>/<Unet|GAN>/                                      (baselines: no uncertainty products)
    <output_dir>/GT/ BF/                                           (copied when the input has a ground truth)
    <output_dir>/predictions.csv                                   (one row per input)

``predictions.csv`` flags each diffusion patch twice: ``flagged``/``mask_fraction`` from the configured error mask
(``uncertainty.*``), and ``benchmark_flagged``/``benchmark_fraction`` as the authors' BENCHMARK notebook flags a patch
(the intra-process std above the organelle's intra threshold valid for this sampling setting → their per-patch
segmentation → more than ``flag_fraction`` of the patch; empty when no such threshold exists).

Inputs larger than a tile (default: the checkpoint's training patch) are predicted whole: baselines by
Gaussian-weighted sliding windows, diffusion models by one reverse process over the whole volume whose ε̂ is
blended from tiles at every step (:mod:`dm4isl.sampling.tiled`). Outputs are float32 OME-TIFFs ``<name>.ome.tiff``
``(Z, Y, X)`` with voxel sizes, a channel name (product and organelle) and, in their metadata, the sampler, seeds,
tiling, checkpoint hash and source revision.

Every file is written atomically and ``predictions.csv`` is rewritten after each batch, so a killed run keeps all
finished inputs; a rerun with the same settings skips them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from dm4isl.errors import ConfigError
from dm4isl.io.atomic import write_csv
from dm4isl.io.layout import (
    BF,
    ERROR_MASK,
    GT,
    STD_INTER,
    STD_INTRA,
    product_file,
    std_product,
    write_products,
)
from dm4isl.io.zarr import DEFAULT_CHUNKS, FORMATS_HINT, missing_writer_modules, write_ome_zarr, zarr_path
from dm4isl.models.predictor import Predictor, PredictRequest
from dm4isl.prediction.inputs import (
    InputSettings,
    InputSource,
    PredictInput,
    ReadSettings,
    discover_inputs,
    input_fingerprint,
)
from dm4isl.prediction.sharding import Shard, all_rows, merge_csvs
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.sampling.tiled import TileSettings
from dm4isl.uncertainty.masks import MaskSettings, error_mask, flag, patch_flag
from dm4isl.uncertainty.thresholds import Threshold, resolve_threshold, sampling_setting

log = logging.getLogger(__name__)

CSV_FIELDS = [
    "name", "input", "input_hash", "model", "checkpoint", "sampler", "steps", "seeds", "settings_hash", "products",
    "flagged", "mask_fraction", "uncertainty_source", "threshold", "threshold_source", "seconds",
    "benchmark_flagged", "benchmark_fraction",
]
#: ``output_format`` values: OME-TIFF folders per product, one OME-Zarr image per input, or both.
OUTPUT_FORMATS = ("tiff", "ome-zarr", "both")
#: Inputs read by the pre-flight check stay in memory up to this many bytes; the others are read again when predicted.
KEEP_LOADED_BYTES = 1 << 30
#: Order of the products as channels of an OME-Zarr image.
ZARR_CHANNEL_ORDER = (BF, GT)


@dataclass(frozen=True)
class OutputSettings:
    """How outputs are written (``output_format`` and ``zarr.*`` of ``conf/predict.yaml``)."""

    format: str = "tiff"
    ngff_version: str = "0.4"
    chunks: tuple[int, ...] = DEFAULT_CHUNKS

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.format!r}")

    def check_dependencies(self) -> None:
        """Raise :class:`~dm4isl.errors.ConfigError` (one line) when a writer this format needs is not installed.

        Called before any work, so that a run never stops half-way with some products written and others not.
        """
        missing = missing_writer_modules() if self.zarr else []
        if missing:
            raise ConfigError(f"output_format={self.format} needs {', '.join(missing)}, not installed here: "
                              f"{FORMATS_HINT}, or output_format=tiff")

    @property
    def tiff(self) -> bool:
        return self.format in ("tiff", "both")

    @property
    def zarr(self) -> bool:
        return self.format in ("ome-zarr", "both")


@dataclass
class UncertaintySettings:
    """Which std map becomes the error mask and with what threshold.

    ``threshold`` None: the one valid for the sampling setting (published, or calibrated in ``calibration``, a file
    of :mod:`dm4isl.uncertainty.thresholds`; None there means the file beside the checkpoint).
    """

    source: str = "auto"  # auto (inter with n_seeds > 1, else intra) | intra | inter | none
    threshold: float | None = None
    faithful: bool = False
    flag_fraction: float = 0.01
    calibration: str | None = None
    rule: str = "reference"  # reference: continuous std → median → Otsu (the reference's order) | binary


def collect_inputs(
    source: str | os.PathLike, bf_window: Sequence[float] | None, fl_window: Sequence[float] | None,
    bf_dir: str = "BF", gt_dir: str = "GT",
) -> list[PredictInput]:
    """Inputs from a patch folder (``BF/`` [+ ``GT/``]), a folder of images, one image or a manifest, read now.

    uint8 files are value/255, float files must be in [0, 1], raw integer grey levels are normalised with the
    checkpoint's windows (:func:`dm4isl.prediction.inputs.discover_inputs` lists them without reading; this reads
    them all). Voxel sizes of the files are kept (:attr:`PredictInput.voxel_size`).
    """
    windows = ReadSettings(tuple(bf_window) if bf_window else None, tuple(fl_window) if fl_window else None)
    return [src.load() for src in discover_inputs(InputSettings(path=str(source)), windows, bf_dir, gt_dir)]


def inputs_from_patch_set(bf: np.ndarray, fl: np.ndarray, names: Sequence[str], source: str) -> list[PredictInput]:
    """Inputs from a datamodule's fixed test set (``(N, Z, Y, X)`` arrays); patch id = position (as in testing)."""
    return [PredictInput(str(n), i, f"{source}[{i}]", bf[i], fl[i]) for i, n in enumerate(names)]


def settings_hash(payload: Mapping[str, Any]) -> str:
    """Short hash of everything that changes a prediction (checkpoint, sampler, seeds, thresholds)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_diffusion(model: L.LightningModule) -> bool:
    """True for models whose products include uncertainty maps (the diffusion models)."""
    return bool(getattr(model, "has_uncertainty", False))


@torch.no_grad()
def predict_arrays(
    model: Predictor,
    bf: torch.Tensor,
    patch_ids: Sequence[int],
    settings: SamplerSettings | None = None,
    n_seeds: int = 1,
    max_batch: int | None = None,
    tiles: TileSettings | None = None,
    keep_seeds: bool = False,
) -> dict[str, torch.Tensor]:
    """Products ``{name: (B, 1, Z, Y, X)}`` for a brightfield batch ``(B, 1, Z, Y, X)`` in [0, 1]: the model's
    :meth:`~dm4isl.models.predictor.Predictor.predict_products` with these settings (keyword form for callers)."""
    request = PredictRequest(settings=settings, n_seeds=n_seeds, max_batch=max_batch, tiles=tiles or TileSettings(),
                             keep_seeds=keep_seeds)
    return model.predict_products(bf, patch_ids, request)


def _uncertainty_choice(
    available: set[str], organelle: Mapping[str, Any], unc: UncertaintySettings, setting: Mapping[str, Any],
    calibrations: Sequence[Mapping[str, Any]] = (),
) -> tuple[str | None, Threshold | None, str]:
    """``(std map for the error mask, its threshold, one sentence on the choice)``; no map when masks are off.

    The threshold must be valid for the sampling ``setting`` (:func:`~dm4isl.uncertainty.thresholds.resolve_threshold`):
    a value given in ``unc``, the organelle's when published for this setting, or a calibration for it; else None.
    """
    source = unc.source
    if source == "none":
        return None, None, "error masks switched off (uncertainty.source=none)"
    if source == "auto":
        source = "inter" if STD_INTER in available else "intra"
    if std_product(source) not in available:
        raise ConfigError(f"uncertainty source {source!r} needs the std_{source} product (inter needs n_seeds > 1)")
    threshold, reason = resolve_threshold(source, setting, organelle, calibrations, unc.threshold)
    return source, threshold, reason


@dataclass(frozen=True)
class MaskPlan:
    """How each prediction is masked and flagged: the std map and threshold of the error mask (``source`` None: no
    mask) and the intra threshold of the benchmark flag (``benchmark`` None: no such flag), with their rules."""

    source: str | None = None
    threshold: Threshold | None = None
    benchmark: Threshold | None = None
    masks: MaskSettings = MaskSettings()
    benchmark_masks: MaskSettings = MaskSettings()


def plan_masks(
    model: L.LightningModule, settings: SamplerSettings | None, n_seeds: int, organelle: Mapping[str, Any],
    unc: UncertaintySettings, calibrations: Sequence[Mapping[str, Any]] = (),
) -> MaskPlan:
    """The thresholds valid for this model and sampling ``settings`` (none for a baseline: ``settings`` None)."""
    if settings is None:
        return MaskPlan()
    available = {STD_INTRA} | ({STD_INTER} if n_seeds > 1 else set())
    setting = sampling_setting(settings.to_dict(), (model.target.low, model.target.high),
                               model.schedule.num_train_timesteps)
    source, threshold, reason = _uncertainty_choice(available, organelle, unc, setting, calibrations)
    (log.info if threshold is not None or source is None else log.warning)("%s", reason)
    benchmark, _ = resolve_threshold("intra", setting, organelle, calibrations,
                                     unc.threshold if source == "intra" else None)
    masks = MaskSettings.faithful() if unc.faithful else MaskSettings.for_organelle(
        organelle.get("name"), unc.rule, flag_fraction=unc.flag_fraction
    )
    benchmark_masks = MaskSettings.for_organelle(organelle.get("name"), flag_fraction=unc.flag_fraction)
    return MaskPlan(source, threshold, benchmark, masks, benchmark_masks)


def mask_and_flag(images: dict[str, np.ndarray], plan: MaskPlan) -> dict[str, Any]:
    """Add the error mask ``(Z, Y, X)`` uint8 to one input's products ``images`` (``(Z, Y, X)`` each), in place;
    returns the CSV columns ``flagged``, ``mask_fraction``, ``benchmark_flagged``, ``benchmark_fraction``."""
    cols: dict[str, Any] = {"flagged": "", "mask_fraction": "", "benchmark_flagged": "", "benchmark_fraction": ""}
    if plan.source is not None and plan.threshold is not None:
        mask = error_mask(images[std_product(plan.source)], plan.threshold.value, plan.masks)
        images[ERROR_MASK] = mask.astype(np.uint8)
        is_flagged, frac = flag(mask, plan.masks.flag_fraction)
        cols["flagged"], cols["mask_fraction"] = int(is_flagged), f"{frac:.6f}"
    if plan.benchmark is not None:
        is_flagged, frac = patch_flag(images[STD_INTRA], plan.benchmark.value, plan.benchmark_masks)
        cols["benchmark_flagged"], cols["benchmark_fraction"] = int(is_flagged), f"{frac:.6f}"
    return cols


def pending_inputs(
    mine: Sequence[PredictInput | InputSource], done: Mapping[str, Mapping[str, str]], out: Path, key: str,
    output: OutputSettings,
) -> tuple[list[PredictInput | InputSource], dict[str, str]]:
    """``(inputs still to predict, fingerprint by input name)``: an input is done when its row in ``done`` has the
    settings hash ``key`` and its fingerprint, and every file the row lists exists."""
    fingerprints = {inp.name: input_fingerprint(inp) for inp in mine}

    def finished(name: str) -> bool:
        row = done.get(name)
        if row is None or row.get("settings_hash") != key or row.get("input_hash") != fingerprints[name]:
            return False
        tiffs = not output.tiff or all(product_file(out, p, name).is_file() for p in row["products"].split(";") if p)
        return tiffs and (not output.zarr or zarr_path(out, name).is_dir())

    return [inp for inp in mine if not finished(inp.name)], fingerprints


def read_and_check(
    todo: Sequence[PredictInput | InputSource], check: Callable[[tuple[int, ...], str], None] | None = None,
) -> tuple[dict[str, tuple[int, ...]], dict[str, PredictInput]]:
    """Read every input once before predicting anything (a bad file stops the run with nothing written).

    Returns the brightfield shape ``(Z, Y, X)`` by input name, and the inputs kept in memory (up to
    :data:`KEEP_LOADED_BYTES`; the others are read again when predicted). ``check(shape, source)`` raises for a
    shape the model cannot take.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    kept: dict[str, PredictInput] = {}
    kept_bytes = 0
    for inp in tqdm(todo, desc="check inputs", unit="input", disable=len(todo) < 2 or None):
        loaded = inp.load()
        shapes[inp.name] = tuple(loaded.bf.shape)
        if check is not None:
            check(shapes[inp.name], loaded.source)
        size = loaded.bf.nbytes + (loaded.gt.nbytes if loaded.gt is not None else 0)
        if kept_bytes + size <= KEEP_LOADED_BYTES:  # small sets (patch folders) are not read twice
            kept[inp.name], kept_bytes = loaded, kept_bytes + size
    return shapes, kept


def write_outputs(
    out: Path, inp: PredictInput, images: Mapping[str, np.ndarray], voxel: Sequence[float] | None,
    meta: Mapping[str, Any], organelle_name: str | None, output: OutputSettings,
) -> None:
    """Write one input's products ``images`` (``(Z, Y, X)`` each) with its brightfield and ground truth: OME-TIFF
    folders and/or one OME-Zarr image (``output``), voxel size ``voxel`` ``(Z, Y, X)`` µm, metadata ``meta``."""
    companions = {name: arr.astype(np.float32) for name, arr in ((BF, inp.bf), (GT, inp.gt)) if arr is not None}
    if output.tiff:
        write_products(out, inp.name, {**images, **companions}, voxel, meta, organelle_name)
    if output.zarr:
        channels = {**{k: companions[k] for k in ZARR_CHANNEL_ORDER if k in companions}, **images}
        write_ome_zarr(zarr_path(out, inp.name), channels, voxel, {**meta, "products": list(channels)},
                       output.ngff_version, output.chunks)


def run_predict(
    model: L.LightningModule,
    inputs: Sequence[PredictInput | InputSource],
    output_dir: str | os.PathLike,
    *,
    organelle: Mapping[str, Any],
    settings: SamplerSettings | None = None,
    n_seeds: int = 1,
    batch_size: int = 4,
    max_batch: int | None = None,
    uncertainty: UncertaintySettings | None = None,
    checkpoint_id: str = "",
    metadata: Mapping[str, Any] | None = None,
    tiles: TileSettings | None = None,
    voxel_size: Sequence[float] | None = None,
    calibrations: Sequence[Mapping[str, Any]] = (),
    shard: Shard | None = None,
    output: OutputSettings | None = None,
    check: Callable[[tuple[int, ...], str], None] | None = None,
    save_seeds: bool = False,
) -> list[dict[str, Any]]:
    """Predict ``inputs`` into ``output_dir`` (layout in the module docstring); returns the CSV rows.

    Only the inputs of ``shard`` are predicted (all without one); their rows go to the shard's CSV
    (:meth:`~dm4isl.prediction.sharding.Shard.csv_path`). Inputs whose row in ``predictions.csv`` or in a shard CSV
    has the same settings hash and whose files all exist are skipped. The others are first read once and checked
    (``check(shape, source)`` raises for a shape the model cannot take), so a bad file stops the run before anything
    is written; then they are read again batch by batch (memory holds one batch, not the whole set). Inputs of equal
    shape are batched (``batch_size`` patches, × ``n_seeds`` rows, chunked to ``max_batch`` rows); inputs larger
    than a tile are tiled (``tiles``). Files get the voxel size ``voxel_size`` ``(Z, Y, X)`` µm if given, else the
    input's, else the organelle's; their metadata holds ``metadata`` plus the model, sampler settings, seeds,
    tiling, input and settings hash. ``output`` chooses OME-TIFF folders (``<name>.ome.tiff``) and/or one OME-Zarr
    image per input. ``save_seeds`` (ensembles of ``n_seeds > 1``) also writes every seed's DDPM and DDPMavg, which
    ``dm4isl-evaluate`` scores with the CRPS.

    The walk: inputs (:func:`pending_inputs`, :func:`read_and_check`) → thresholds (:func:`plan_masks`) → products
    (:func:`predict_arrays`, :func:`mask_and_flag`) → writers (:func:`write_outputs`, the CSV).
    """
    out = Path(output_dir)
    unc = uncertainty or UncertaintySettings()
    tiles = tiles or TileSettings()
    shard = shard or Shard()
    output = output or OutputSettings()
    output.check_dependencies()
    settings = (settings or model.test_settings) if is_diffusion(model) else None
    plan = plan_masks(model, settings, n_seeds, organelle, unc, calibrations)
    threshold = plan.threshold
    config = {
        "checkpoint": checkpoint_id, "sampler": settings.to_dict() if settings else None,
        "n_seeds": n_seeds if settings else 0,
        "uncertainty": [plan.source, None if threshold is None else threshold.value, unc.faithful],
        "tiling": tiles.to_dict(),
    }
    if unc.rule != "reference":
        config["mask_rule"] = unc.rule
    if save_seeds:
        config["save_seeds"] = True
    key = settings_hash(config)

    done = all_rows(out)
    mine = shard.select(inputs)
    todo, fingerprints = pending_inputs(mine, done, out, key, output)
    rows = dict(done) if shard.single else {inp.name: done[inp.name] for inp in mine if inp.name in done}
    if len(todo) < len(mine):
        log.info("skipping %d inputs already predicted with these settings", len(mine) - len(todo))
    if not shard.single:
        log.info("shard %d of %d: %d of %d inputs, %d to predict", shard.index, shard.count, len(mine), len(inputs),
                 len(todo))
    shapes, kept = read_and_check(todo, check)

    seeds = [settings.seed + k for k in range(n_seeds)] if settings else []
    run_meta = {
        **(metadata or {}), "model": type(model).__name__, "sampler": settings.to_dict() if settings else None,
        "seeds": seeds, "tiling": tiles.to_dict(), "settings_hash": key,
        "threshold": None if threshold is None else {"value": threshold.value, "source": threshold.source,
                                                     "valid_for": threshold.setting},
        **({} if shard.single else {"shard": f"{shard.index}/{shard.count}"}),
    }
    steps = ""
    if settings is not None:
        steps = str(settings.num_steps if settings.method == "ddim" else model.schedule.num_train_timesteps)
    common = {
        "model": type(model).__name__, "checkpoint": checkpoint_id, "sampler": settings.method if settings else "",
        "steps": steps, "seeds": ";".join(str(s) for s in seeds), "settings_hash": key,
        "uncertainty_source": plan.source or "", "threshold": "" if threshold is None else threshold.value,
        "threshold_source": "" if threshold is None else threshold.source,
    }
    by_shape: dict[tuple[int, ...], list[PredictInput | InputSource]] = {}
    for inp in todo:
        by_shape.setdefault(shapes[inp.name], []).append(inp)
    csv_path = shard.csv_path(out)
    bar = tqdm(total=len(todo), desc="predict", unit="input", disable=len(todo) == 0)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            batch = [kept.pop(inp.name, None) or inp.load(announce=False) for inp in group[start : start + batch_size]]
            tic = time.perf_counter()
            bf = torch.from_numpy(np.stack([b.bf for b in batch])[:, None])
            products = predict_arrays(
                model, bf, [b.patch_id for b in batch], settings, n_seeds, max_batch, tiles, keep_seeds=save_seeds
            )
            arrays = {k: v[:, 0].float().cpu().numpy() for k, v in products.items()}  # (B, Z, Y, X) each
            seconds = (time.perf_counter() - tic) / len(batch)
            for i, inp in enumerate(batch):
                images = {name: arr[i].astype(np.float32) for name, arr in arrays.items()}
                flags = mask_and_flag(images, plan)
                voxel = voxel_size or inp.voxel_size or organelle.get("voxel_size")
                meta = {**run_meta, "input": inp.source, "patch_id": inp.patch_id}
                write_outputs(out, inp, images, voxel, meta, organelle.get("name"), output)
                rows[inp.name] = {
                    "name": inp.name, "input": inp.source, "input_hash": fingerprints[inp.name], **common,
                    "products": ";".join(images), "seconds": f"{seconds:.3f}", **flags,
                }
            write_csv(csv_path, list(rows.values()), CSV_FIELDS)
            bar.update(len(batch))
    bar.close()
    if not todo and not shard.single:
        write_csv(csv_path, list(rows.values()), CSV_FIELDS)
    return list(rows.values())


def merge_predictions(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Merge the shard CSVs of a sharded run into ``predictions.csv`` (:func:`.sharding.merge_csvs`)."""
    return merge_csvs(output_dir, CSV_FIELDS)
