"""Hydra configs composed from Python (scripts, notebooks): the package's config tree, no Hydra runtime."""

from __future__ import annotations

import os
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from dm4isl.conf import CONF_DIR


def compose_config(
    config_name: str = "train", overrides: Sequence[str] = (), **paths: str | os.PathLike
) -> DictConfig:
    """``conf/<config_name>.yaml`` with Hydra ``overrides``, composed without a Hydra run (no run folder, no
    ``hydra.runtime``): every ``paths`` keyword sets ``cfg.paths.<key>``, which a composed config needs wherever it
    would interpolate the Hydra run folder (``paths.output_dir``, ``paths.data_dir``, …)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose(config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    if paths:
        with open_dict(cfg):
            for key, value in paths.items():
                cfg.paths[key] = str(value)
    return cfg
