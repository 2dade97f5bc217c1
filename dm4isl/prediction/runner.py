"""Predict a set of brightfield inputs with a trained model and write one folder per product.

Output layout (what ``dm4isl-evaluate`` reads next to a ``GT/`` folder), one file per input under the input's name::

    <output_dir>/DDPM/ DDPMavg/ std_intra/ std_inter/ error_mask/   (diffusion; std_inter only with n_seeds > 1)
    <output_dir>/DDPM_seeds/seed<k>/ DDPMavg_seeds/seed<k>/        (save_seeds: each seed's products)
    <output_dir>/<Unet|GAN>/                                      (baselines: no uncertainty products)
    <output_dir>/GT/ BF/                                           (copied when the input has a ground truth)
    <output_dir>/predictions.csv                                   (one row per input)

Inputs larger than a tile (default: the checkpoint's training patch) are predicted whole: baselines by
Gaussian-weighted sliding windows, diffusion models by one reverse process over the whole volume whose ε̂ is
blended from tiles at every step (:mod:`dm4isl.sampling.tiled`). Outputs are float32 OME-TIFFs ``<name>.ome.tiff``
``(Z, Y, X)`` with voxel sizes, a channel name (product and organelle) and, in their metadata, the sampler, seeds,
tiling, checkpoint hash and source revision.

Every file is written atomically and ``predictions.csv`` is rewritten after each batch, so a killed run keeps all
finished inputs; a rerun with the same settings skips them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from dm4isl.data.readers import auto_window, is_tiff, list_tiffs, read_patch_folder, read_volume, tiff_stem, to_unit
from dm4isl.errors import DataError
from dm4isl.io.atomic import read_tiff_info, write_csv, write_tiff
from dm4isl.io.layout import channel_name, product_file, seed_product
from dm4isl.models.inference import sliding_window_predict
from dm4isl.models.unet import OUTPUT_RANGE
from dm4isl.sampling.ensemble import sample_ensemble
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.sampling.tiled import TileSettings, effective_tile, needs_tiling, sample_ensemble_tiled
from dm4isl.uncertainty.masks import MaskSettings, error_mask, flag

log = logging.getLogger(__name__)

CSV_NAME = "predictions.csv"
CSV_FIELDS = [
    "name", "input", "model", "checkpoint", "sampler", "steps", "seeds", "settings_hash", "products", "flagged",
    "mask_fraction", "uncertainty_source", "threshold", "seconds",
]
#: Patch ids derived from input names fit in 31 bits.
_ID_MASK = (1 << 31) - 1


@dataclass
class PredictInput:
    """One input volume; ``bf``/``gt`` are ``(Z, Y, X)`` float32 in [0, 1] (``gt`` None when unknown).

    ``voxel_size`` ``(Z, Y, X)`` µm as read from the input file's OME metadata (None when it has none).
    """

    name: str
    patch_id: int
    source: str
    bf: np.ndarray
    gt: np.ndarray | None = None
    voxel_size: tuple[float, float, float] | None = None


@dataclass
class UncertaintySettings:
    """Which std map becomes the error mask and with what threshold (None: the organelle's value)."""

    source: str = "auto"  # auto (inter with n_seeds > 1, else intra) | intra | inter | none
    threshold: float | None = None
    faithful: bool = False
    flag_fraction: float = 0.01
    rule: str = "reference"  # reference: continuous std → median → Otsu (the reference's order) | binary


def name_to_patch_id(name: str) -> int:
    """A stable patch id from an input name (noise depends on the input, not on its position in a folder)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) & _ID_MASK


def collect_inputs(
    source: str | os.PathLike, bf_window: Sequence[float] | None, fl_window: Sequence[float] | None,
    bf_dir: str = "BF", gt_dir: str = "GT",
) -> list[PredictInput]:
    """Inputs from a patch folder (``BF/`` [+ ``GT/``]), a folder of brightfield TIFFs, or one TIFF file.

    uint8 files are value/255, float files must be in [0, 1], raw integer grey levels are normalised with the
    checkpoint's windows. Output files are named ``<input stem>.ome.tiff``. OME voxel sizes of the brightfield files are
    kept (:attr:`PredictInput.voxel_size`).
    """
    path = Path(source)
    if path.is_dir() and (path / bf_dir).is_dir() and (path / gt_dir).is_dir():
        inputs = []
        for pair in read_patch_folder(path, bf_dir, gt_dir):  # checks that every BF file has its GT partner
            bf_raw, gt_raw = pair.read_raw()
            inputs.append(
                PredictInput(
                    pair.name, name_to_patch_id(pair.name), str(pair.bf_path),
                    to_unit(bf_raw, pair.bf_path, auto_window(bf_raw, bf_window)),
                    to_unit(gt_raw, pair.gt_path, auto_window(gt_raw, fl_window)),
                    read_tiff_info(pair.bf_path)[0],
                )
            )
        return inputs
    if path.is_file():
        if not is_tiff(path):
            raise DataError(f"{path}: expected a TIFF/OME-TIFF brightfield volume (.tif, .tiff)")
        files = [path]
    elif path.is_dir():
        files = list_tiffs(path / bf_dir if (path / bf_dir).is_dir() else path)
        if not files:
            raise DataError(f"{path}: no TIFF files found (expected {path}/{bf_dir}/*.tiff or TIFFs in the folder)")
    else:
        raise DataError(f"{path}: input not found (expected a patch folder, a folder of TIFFs or a TIFF file)")
    inputs = []
    for f in files:
        raw = read_volume(f)
        stem = tiff_stem(f)
        inputs.append(
            PredictInput(
                stem, name_to_patch_id(stem), str(f), to_unit(raw, f, auto_window(raw, bf_window)), None,
                read_tiff_info(f)[0],
            )
        )
    return inputs


def inputs_from_patch_set(bf: np.ndarray, fl: np.ndarray, names: Sequence[str], source: str) -> list[PredictInput]:
    """Inputs from a datamodule's fixed test set (``(N, Z, Y, X)`` arrays); patch id = position (as in testing)."""
    return [PredictInput(str(n), i, f"{source}[{i}]", bf[i], fl[i]) for i, n in enumerate(names)]


def settings_hash(payload: Mapping[str, Any]) -> str:
    """Short hash of everything that changes a prediction (checkpoint, sampler, seeds, thresholds)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of an existing ``predictions.csv`` (empty when there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def is_diffusion(model: L.LightningModule) -> bool:
    """True for models that sample (and so have uncertainty products)."""
    return hasattr(model, "schedule") and hasattr(model, "eps")


def tile_for(model: L.LightningModule, shape: Sequence[int], tiles: TileSettings | None = None) -> tuple[int, ...]:
    """The tile ``(Z, Y, X)`` ``model`` sees on an input of ``shape`` ``(Z, Y, X)``.

    ``tiles.size``, else the checkpoint's training patch size, shrunk to the input along axes where it is smaller.
    """
    tiles = tiles or TileSettings()
    return effective_tile(shape, tiles.resolve(model.hparams.get("patch_size")))


@torch.no_grad()
def predict_arrays(
    model: L.LightningModule,
    bf: torch.Tensor,
    patch_ids: Sequence[int],
    settings: SamplerSettings | None = None,
    n_seeds: int = 1,
    max_batch: int | None = None,
    tiles: TileSettings | None = None,
    keep_seeds: bool = False,
) -> dict[str, torch.Tensor]:
    """Products for a brightfield batch ``(B, 1, Z, Y, X)`` in [0, 1], as ``(B, 1, Z, Y, X)`` tensors by folder name.

    Diffusion models give ``DDPM``, ``DDPMavg``, ``std_intra`` and, with ``n_seeds > 1``, ``std_inter`` (and with
    ``keep_seeds`` every seed's ``DDPM`` and ``DDPMavg`` under :func:`dm4isl.io.layout.seed_product` folders);
    a baseline gives its single prediction under its ``output_name``. Inputs larger than the tile (``tiles``, see
    :func:`tile_for`) are predicted whole from overlapping tiles; smaller ones in one network call as before.
    """
    bf = bf.to(model.device).float()
    shape = tuple(bf.shape[2:])
    tiles = tiles or TileSettings()
    tiled = (tiles.size is not None or model.hparams.get("patch_size") is not None) and needs_tiling(
        shape, tiles.resolve(model.hparams.get("patch_size"))
    )
    if not is_diffusion(model):
        if not tiled:
            return {model.output_name: model.predict_fluorescence(bf).float()}
        pred = sliding_window_predict(model, bf, tile_for(model, shape, tiles), tiles.overlap, tiles.batch)
        return {model.output_name: pred.clamp(*OUTPUT_RANGE).float()}
    settings = settings or model.test_settings
    target_mean = model.fl_mean
    if settings.mean_correction and target_mean is None:
        raise ValueError("the checkpoint has no training statistics; the ε̂ mean correction needs them")
    if tiled:
        ens = sample_ensemble_tiled(
            model.eps, bf, list(patch_ids), model.schedule, settings, n_seeds, tiles, tile_for(model, shape, tiles),
            model.target, target_mean, max_batch,
        )
    else:
        ens = sample_ensemble(
            model.eps, bf, list(patch_ids), model.schedule, settings, n_seeds, model.target, target_mean, max_batch
        )
    out = {"DDPM": ens.ddpm, "DDPMavg": ens.ddpmavg, "std_intra": ens.std_intra}
    if n_seeds > 1:
        out["std_inter"] = ens.std_inter
        if keep_seeds:
            for k, seed in enumerate(ens.seeds):
                out[seed_product("DDPM", seed)] = ens.ddpm_seeds[k]
                out[seed_product("DDPMavg", seed)] = ens.ddpmavg_seeds[k]
    return out


def _uncertainty_choice(
    available: set[str], organelle: Mapping[str, Any], unc: UncertaintySettings
) -> tuple[str | None, float | None]:
    """``(std map used for the error mask, its threshold)``; ``(None, None)`` when masks are switched off."""
    source = unc.source
    if source == "none":
        return None, None
    if source == "auto":
        source = "inter" if "std_inter" in available else "intra"
    if f"std_{source}" not in available:
        raise ValueError(f"uncertainty source {source!r} needs the std_{source} product (inter needs n_seeds > 1)")
    threshold = unc.threshold if unc.threshold is not None else organelle.get(f"{source}_std_threshold")
    return source, threshold


def run_predict(
    model: L.LightningModule,
    inputs: Sequence[PredictInput],
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
    save_seeds: bool = False,
) -> list[dict[str, Any]]:
    """Predict ``inputs`` into ``output_dir`` (layout in the module docstring); returns the CSV rows.

    Inputs whose row in an existing ``predictions.csv`` has the same settings hash and whose files all exist are
    skipped. Inputs of equal shape are batched (``batch_size`` patches, × ``n_seeds`` rows, chunked to
    ``max_batch`` rows); inputs larger than a tile are tiled (``tiles``). Files get the voxel size ``voxel_size``
    ``(Z, Y, X)`` µm if given, else the input file's, else the organelle's; their metadata holds ``metadata`` plus
    the model, sampler settings, seeds, tiling, input and settings hash. ``save_seeds`` (ensembles of
    ``n_seeds > 1``) also writes every seed's DDPM and DDPMavg, which ``dm4isl-evaluate`` scores with the CRPS.
    """
    out = Path(output_dir)
    unc = uncertainty or UncertaintySettings()
    tiles = tiles or TileSettings()
    diffusion = is_diffusion(model)
    settings = (settings or model.test_settings) if diffusion else None
    config = {
        "checkpoint": checkpoint_id, "sampler": settings.to_dict() if settings else None,
        "n_seeds": n_seeds if diffusion else 0, "uncertainty": [unc.source, unc.threshold, unc.faithful],
        "tiling": tiles.to_dict(),
    }
    if unc.rule != "reference":
        config["mask_rule"] = unc.rule
    if save_seeds:
        config["save_seeds"] = True
    key = settings_hash(config)
    done = {r["name"]: r for r in read_rows(out / CSV_NAME)}

    def finished(inp: PredictInput) -> bool:
        row = done.get(inp.name)
        if row is None or row.get("settings_hash") != key:
            return False
        return all(product_file(out, p, inp.name).is_file() for p in row["products"].split(";") if p)

    todo = [inp for inp in inputs if not finished(inp)]
    rows = {name: row for name, row in done.items()}
    if len(todo) < len(inputs):
        log.info("skipping %d inputs already predicted with these settings", len(inputs) - len(todo))
    seeds = [settings.seed + k for k in range(n_seeds)] if settings else []
    run_meta = {
        **(metadata or {}), "model": type(model).__name__, "sampler": settings.to_dict() if settings else None,
        "seeds": seeds, "tiling": tiles.to_dict(), "settings_hash": key,
    }
    mask_settings = MaskSettings.faithful() if unc.faithful else MaskSettings.for_organelle(
        organelle.get("name"), unc.rule, flag_fraction=unc.flag_fraction
    )
    source, threshold = None, None
    if diffusion:
        available = {"std_intra"} | ({"std_inter"} if n_seeds > 1 else set())
        source, threshold = _uncertainty_choice(available, organelle, unc)
        if source is not None and threshold is None:
            log.warning(
                "no %s-process std threshold for organelle %r: no error masks written (calibrate one on the "
                "validation split)", source, organelle.get("name"),
            )
    steps = ""
    if settings is not None:
        steps = str(settings.num_steps if settings.method == "ddim" else model.schedule.num_train_timesteps)
    by_shape: dict[tuple[int, ...], list[PredictInput]] = {}
    for inp in todo:
        by_shape.setdefault(inp.bf.shape, []).append(inp)
    bar = tqdm(total=len(todo), desc="predict", unit="input", disable=len(todo) == 0)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            tic = time.perf_counter()
            bf = torch.from_numpy(np.stack([b.bf for b in batch])[:, None])
            products = predict_arrays(
                model, bf, [b.patch_id for b in batch], settings, n_seeds, max_batch, tiles, keep_seeds=save_seeds
            )
            arrays = {k: v[:, 0].float().cpu().numpy() for k, v in products.items()}
            seconds = (time.perf_counter() - tic) / len(batch)
            for i, inp in enumerate(batch):
                meta = {**run_meta, "input": inp.source, "patch_id": inp.patch_id}
                voxel = voxel_size or inp.voxel_size or organelle.get("voxel_size")
                written = []
                for name, arr in arrays.items():
                    write_tiff(product_file(out, name, inp.name), arr[i].astype(np.float32), voxel, meta,
                               channel_name(name, organelle.get("name")))
                    written.append(name)
                flagged, fraction = "", ""
                if source is not None and threshold is not None:
                    mask = error_mask(arrays[f"std_{source}"][i], threshold, mask_settings)
                    write_tiff(product_file(out, "error_mask", inp.name), mask.astype(np.uint8), voxel, meta,
                               channel_name("error_mask", organelle.get("name")))
                    written.append("error_mask")
                    is_flagged, frac = flag(mask, mask_settings.flag_fraction)
                    flagged, fraction = int(is_flagged), f"{frac:.6f}"
                for name, arr in (("BF", inp.bf), ("GT", inp.gt)):
                    if arr is not None:
                        write_tiff(product_file(out, name, inp.name), arr.astype(np.float32), voxel, meta,
                                   channel_name(name, organelle.get("name")))
                rows[inp.name] = {
                    "name": inp.name, "input": inp.source, "model": type(model).__name__, "checkpoint": checkpoint_id,
                    "sampler": f"{settings.method}" if settings else "", "steps": steps,
                    "seeds": ";".join(str(s) for s in seeds),
                    "settings_hash": key, "products": ";".join(written), "flagged": flagged,
                    "mask_fraction": fraction, "uncertainty_source": source or "",
                    "threshold": "" if threshold is None else threshold, "seconds": f"{seconds:.3f}",
                }
            write_csv(out / CSV_NAME, list(rows.values()), CSV_FIELDS)
            bar.update(len(batch))
    bar.close()
    return list(rows.values())
