"""The data of the training run that wrote a checkpoint: its data settings and its own synthetic test patches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dm4isl.data.datamodule import SyntheticDataModule
from dm4isl.data.patches import PatchSet, center_crop
from dm4isl.models.checkpoint import read_checkpoint
from dm4isl.utils.compose import compose_config

#: Experiment whose data settings describe a checkpoint that has no Hydra run folder (a quickly trained demo).
FALLBACK_EXPERIMENT = "demo"
#: Data-module keys taken from the run configuration (the rest is set by the caller: organelle, cache, split, n).
RUN_DATA_KEYS = ("n_fovs", "fov_shape", "ambiguous_fraction", "split_fractions", "split_seed", "eval_patch_size",
                 "filter_max_tries", "seed")
#: Files of a run folder ``<run>/``: its saved Hydra config and its FOV split.
RUN_CONFIG = Path(".hydra") / "config.yaml"
RUN_SPLIT = "split.csv"


def run_data_settings(ckpt: str | os.PathLike) -> dict[str, Any]:
    """Data-module settings of the run that wrote ``ckpt`` (``<run>/checkpoints/<name>.ckpt``).

    Read from ``<run>/.hydra/config.yaml`` when present, else from the :data:`FALLBACK_EXPERIMENT` experiment;
    ``split_file`` is ``<run>/split.csv`` when present (else None), so the test patches are the run's own test
    split, never training data.
    """
    run_dir = Path(ckpt).resolve().parent.parent
    saved = run_dir / RUN_CONFIG
    cfg = OmegaConf.load(saved) if saved.is_file() else compose_config("train", [f"experiment={FALLBACK_EXPERIMENT}"])
    out = {}
    for key in RUN_DATA_KEYS:
        if key in cfg.data:
            value = cfg.data[key]
            out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    split = run_dir / RUN_SPLIT
    out["split_file"] = str(split) if split.is_file() else None
    return out


def checkpoint_test_set(
    ckpt: str | os.PathLike, n: int, cache: str | os.PathLike, crop: Sequence[int] | None = None
) -> PatchSet:
    """The first ``n`` synthetic test patches of the checkpoint's run (arrays ``(N, Z, Y, X)``), centre-cropped to
    ``crop`` ``(Z, Y, X)`` when given; the synthetic data are generated (or read) under ``cache``."""
    hp = read_checkpoint(ckpt)["hyper_parameters"]
    dm = SyntheticDataModule(hp["organelle"], patch_size=hp["patch_size"], n_test_patches=n, n_val_patches=1,
                             cache_dir=cache, **run_data_settings(ckpt))
    dm.setup("test")
    ts = dm.test_set
    if len(ts) < n:
        raise ValueError(f"{ckpt}: its test split gave {len(ts)} patches; expected {n}")
    arrays = [ts.bf[:n], ts.fl[:n], ts.mask[:n]]
    if crop is not None:
        arrays = [center_crop(a, crop) for a in arrays]
    return PatchSet(bf=arrays[0], fl=arrays[1], mask=arrays[2], names=list(ts.names[:n]),
                    sources=list(ts.sources[:n]), corners=ts.corners[:n])
