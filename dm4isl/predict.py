"""Prediction entry point ``dm4isl-predict`` (Hydra), and the Python API ``dm4isl.predict(bf, checkpoint, ...)``."""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dm4isl.cli import console_script, report_expected_errors
from dm4isl.data.normalize import auto_window, to_unit
from dm4isl.errors import CheckpointError
from dm4isl.models.checkpoint import check_compatible, load_predictor, prediction_provenance
from dm4isl.models.nets import to_channels_last
from dm4isl.prediction.distributed import start_processes
from dm4isl.prediction.inputs import InputSettings, ReadSettings, discover_inputs
from dm4isl.prediction.runner import (
    OutputSettings,
    UncertaintySettings,
    inputs_from_patch_set,
    is_diffusion,
    merge_predictions,
    predict_arrays,
    run_predict,
)
from dm4isl.prediction.sharding import Shard
from dm4isl.sampling.sampler import SamplerSettings, adjust_settings
from dm4isl.sampling.tiled import TileSettings
from dm4isl.uncertainty.thresholds import calibration_path, read_calibration

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check(
    model: Any, organelle: dict[str, Any], shape: tuple[int, ...], source: str, tiles: TileSettings | None = None
) -> None:
    """Compare the checkpoint's stored organelle and axes with the input, and (diffusion) the tile shape.

    A diffusion network sees tiles of :meth:`~dm4isl.models.predictor.Predictor.tile_for` (the whole input when it is no
    larger than a tile): their Z must be the training Z and every axis a multiple of the downsampling factor.
    Baselines predict any shape by Gaussian sliding windows, so only their organelle and axes are checked.
    """
    patch_shape = None
    if is_diffusion(model):
        sized = model.hparams.get("patch_size") is not None or (tiles is not None and tiles.size is not None)
        patch_shape = model.tile_for(shape, tiles) if sized else shape
    check_compatible(dict(model.hparams), organelle=organelle, patch_shape=patch_shape, source=source)


def _require_diffusion(model: Any, source: str, requested: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` when diffusion-only options (``requested``, those set) meet a baseline model."""
    asked = {key: value for key, value in requested.items() if value}
    if asked and not is_diffusion(model):
        raise CheckpointError(
            f"{source}: a {type(model).__name__} checkpoint (deterministic baseline) was given with {asked}; "
            "these options need a diffusion (DDPMModule) checkpoint"
        )


def predict_command(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run :func:`dm4isl.prediction.runner.run_predict` as configured by ``conf/predict.yaml``.

    With ``devices``/``num_nodes`` > 1 every process predicts its share of the inputs (and of this job's
    ``shard`` of ``num_shards``); the last one to finish merges the shard CSVs into ``predictions.csv``.
    """
    output = _output_settings(cfg)
    output.check_dependencies()  # before any work: a missing writer must not leave a half-written folder
    fabric = start_processes(str(cfg.device), int(cfg.get("devices", 1)), int(cfg.get("num_nodes", 1)))
    shard = Shard(int(cfg.get("shard", 0)), int(cfg.get("num_shards", 1)))
    if fabric is not None:
        shard = shard.split(fabric.global_rank, fabric.world_size)
    ckpt = Path(cfg.ckpt_path)
    model = load_predictor(ckpt, fabric.device if fabric is not None else _device(cfg.device))
    if cfg.get("channels_last", False):
        to_channels_last(model)
    sampler_cfg = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.get("sampler") else {}
    _require_diffusion(model, str(ckpt), {
        "n_seeds": int(cfg.n_seeds) if int(cfg.n_seeds) > 1 else None,
        "sampler": {k: v for k, v in sampler_cfg.items() if v is not None} or None,
        "uncertainty.source": cfg.uncertainty.source if cfg.uncertainty.source in ("intra", "inter") else None,
    })
    stored = dict(model.hparams.get("organelle") or {})
    organelle = OmegaConf.to_container(cfg.organelle, resolve=True) if cfg.get("organelle") else stored
    # Windows left null in the config (organelle=custom) are those fitted on the training data (in the checkpoint).
    organelle = {key: stored.get(key) if value is None else value for key, value in organelle.items()}
    if not organelle:
        raise CheckpointError(f"{ckpt}: stores no organelle; give organelle=<name>")
    source = InputSettings.from_config(
        OmegaConf.to_container(cfg.input, resolve=True) if isinstance(cfg.input, DictConfig) else cfg.input
    )
    if source.path == "test":
        dm = hydra.utils.instantiate(cfg.data, organelle=organelle, _convert_="all")
        dm.setup("test")
        ts = dm.test_set
        inputs = inputs_from_patch_set(ts.bf, ts.fl, ts.names, "test split")
    else:
        inputs = discover_inputs(source, _read_settings(source, organelle), cfg.bf_dir, cfg.gt_dir)
    tiles = TileSettings.from_dict(OmegaConf.to_container(cfg.tiling, resolve=True))
    settings = adjust_settings(model.test_settings, sampler_cfg) if is_diffusion(model) else None
    unc = UncertaintySettings(**OmegaConf.to_container(cfg.uncertainty, resolve=True))
    meta = prediction_provenance(ckpt)
    calibrations = read_calibration(unc.calibration or calibration_path(ckpt), meta["checkpoint_sha256_16"])
    voxel = OmegaConf.to_container(cfg.voxel_size, resolve=True) if cfg.get("voxel_size") is not None else None
    rows = run_predict(
        model, inputs, cfg.output_dir, organelle=organelle, settings=settings, n_seeds=int(cfg.n_seeds),
        batch_size=int(cfg.batch_size), max_batch=cfg.max_batch, uncertainty=unc,
        checkpoint_id=meta["checkpoint_sha256_16"], metadata=meta, tiles=tiles, voxel_size=voxel, shard=shard,
        output=output, check=lambda shape, _: _check(model, organelle, shape, str(ckpt), tiles),
        calibrations=calibrations, save_seeds=bool(cfg.get("save_seeds", False)),
    )
    if fabric is not None:
        fabric.barrier()
    if not shard.single and (fabric is None or fabric.global_rank == 0):
        rows = merge_predictions(cfg.output_dir)
    log.info("%d predictions in %s", len(rows), cfg.output_dir)
    return rows


def _read_settings(source: InputSettings, organelle: dict[str, Any]) -> ReadSettings:
    """Windows and training voxel size ``(Z, Y, X)`` of the checkpoint's organelle, as inputs are read with."""
    def pair(value: Any) -> tuple[float, ...] | None:
        return tuple(float(v) for v in value) if value is not None else None

    return ReadSettings(pair(organelle.get("bf_window")), pair(organelle.get("fl_window")),
                        pair(organelle.get("voxel_size")), source.resample, source.voxel_rtol,
                        pair(source.voxel_size))


def _output_settings(cfg: DictConfig) -> OutputSettings:
    zarr = cfg.get("zarr") or {}
    return OutputSettings(str(cfg.get("output_format", "tiff")), str(zarr.get("ngff_version", "0.4")),
                          tuple(int(c) for c in zarr.get("chunks", OutputSettings().chunks)))


def predict_array(
    bf: np.ndarray,
    checkpoint: str | os.PathLike,
    sampler: dict[str, Any] | SamplerSettings | None = None,
    n_seeds: int = 1,
    patch_id: int = 0,
    device: str = "auto",
    tiling: dict[str, Any] | TileSettings | None = None,
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """Predict one brightfield volume ``(Z, Y, X)`` (uint8, float in [0, 1] or raw grey levels) with a checkpoint.

    Returns ``(Z, Y, X)`` float32 arrays by product name (``DDPM``, ``DDPMavg``, ``std_intra`` [, ``std_inter``]
    for diffusion models; the baseline's name otherwise). ``sampler`` overrides the checkpoint's sampler settings;
    ``tiling`` (``size``, ``overlap``, ``batch``, ``mean_correction``: :class:`TileSettings`) how volumes larger than
    the training patch are tiled; ``channels_last`` puts the network's weights in channels-last order (speed only).
    """
    model = load_predictor(checkpoint, _device(device))
    if channels_last:
        to_channels_last(model)
    _require_diffusion(model, str(checkpoint), {"n_seeds": n_seeds if n_seeds > 1 else None, "sampler": sampler})
    organelle = dict(model.hparams.get("organelle") or {})
    bf = np.asarray(bf)
    window = auto_window(bf, organelle.get("bf_window"))
    unit = to_unit(bf, "<array>", window)
    tiles = TileSettings.from_dict(tiling) if isinstance(tiling, dict) else tiling
    _check(model, organelle, unit.shape, str(checkpoint), tiles)
    settings = adjust_settings(model.test_settings, sampler) if isinstance(sampler, dict) else sampler
    out = predict_arrays(model, torch.from_numpy(unit)[None, None], [patch_id], settings, n_seeds, tiles=tiles)
    return {k: v[0, 0].float().cpu().numpy() for k, v in out.items()}


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@report_expected_errors
def main(cfg: DictConfig) -> None:
    """Hydra wrapper around :func:`predict_command`."""
    predict_command(cfg)


class _CallableModule(types.ModuleType):
    """Lets ``dm4isl.predict(bf, checkpoint, ...)`` call :func:`predict_array` although ``predict`` is a module."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        return predict_array(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

#: Console script (pyproject): expected errors as one line and exit status 2 (:mod:`dm4isl.cli`).
#: ``input=<file> input.channel=...`` is read as ``input.path=<file> input.channel=...``.
cli = console_script(main, shorthands={"input": "path"})

if __name__ == "__main__":
    cli()
