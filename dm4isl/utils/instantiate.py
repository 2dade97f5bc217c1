"""Building Lightning objects from Hydra config groups (callbacks, loggers, datamodule, model, trainer)."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def to_plain(cfg: Any) -> Any:
    """An OmegaConf node → plain dicts/lists/scalars (resolved); other values unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group such as ``callbacks`` or ``logger``."""
    if not group:
        return []
    return [instantiate(node) for _, node in group.items() if isinstance(node, DictConfig) and "_target_" in node]


def build_model(cfg: DictConfig) -> L.LightningModule:
    """Instantiate ``cfg.model`` and hand it what makes its checkpoint self-describing (organelle, patch size)."""
    return instantiate(
        cfg.model, organelle=to_plain(cfg.organelle), patch_size=list(to_plain(cfg.data.patch_size)), _convert_="all"
    )


def build_trainer(cfg: DictConfig, callbacks: list[Any] | None = None, loggers: list[Any] | None = None) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with the given callbacks and loggers (``False`` when there are none)."""
    return instantiate(cfg.trainer, callbacks=callbacks or None, logger=loggers or False, _convert_="all")
