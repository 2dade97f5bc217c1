"""Building Lightning objects from Hydra config groups (callbacks, loggers, datamodule, model, trainer)."""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from dm4isl.callbacks.config_logger import ConfigLogger
from dm4isl.models.nets import to_channels_last
from dm4isl.utils.resume import wandb_run_id

log = logging.getLogger(__name__)

#: ``_target_`` of the W&B logger (its run id is kept in the run folder so that a resumed run continues it).
WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
#: Attributes holding the networks that ``compile=true`` compiles (and ``channels_last=true`` reorders).
COMPILED_NETS = ("net",)


def to_plain(cfg: Any) -> Any:
    """An OmegaConf node → plain dicts/lists/scalars (resolved); other values unchanged."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group such as ``callbacks`` or ``logger``."""
    if not group:
        return []
    return [instantiate(node) for _, node in group.items() if isinstance(node, DictConfig) and "_target_" in node]


def sweep_tags() -> list[str]:
    """``["sweep:<sweep folder>", "job:<number>"]`` inside a Hydra multirun, else ``[]``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return []
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return []
    return [f"sweep:{os.path.basename(os.path.normpath(hc.sweep.dir))}", f"job:{hc.job.num}"]


def build_loggers(group: DictConfig | None, output_dir: str | os.PathLike) -> list[Any]:
    """Instantiate the ``logger`` group; a W&B logger gets the run folder's run id (resume) and the sweep tags."""
    if not group:
        return []
    loggers = []
    for _, node in group.items():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        if node._target_ == WANDB_TARGET:
            node = node.copy()
            with open_dict(node):
                node.id = node.get("id") or wandb_run_id(output_dir, write=rank_zero_only.rank == 0)
                node.resume = node.get("resume") or "allow"
                node.tags = list(to_plain(node.get("tags")) or []) + sweep_tags()
        loggers.append(instantiate(node))
    return loggers


def finish_loggers(loggers: list[Any]) -> None:
    """Close the W&B run of a finished job, so that the next job of a multirun (same process) starts its own run."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def config_logger(loggers: list[Any], cfg: DictConfig) -> list[Callback]:
    """A callback logging the whole resolved config (W&B run config, CSV ``hparams.yaml``); none without loggers."""
    return [ConfigLogger(OmegaConf.to_container(cfg, resolve=True))] if loggers else []


def build_model(cfg: DictConfig) -> L.LightningModule:
    """Instantiate ``cfg.model`` and hand it what makes its checkpoint self-describing (organelle, patch size).

    With ``cfg.channels_last`` true the networks' weights are put in channels-last 3-D order
    (:func:`dm4isl.models.nets.to_channels_last`); with ``cfg.compile`` true the networks are compiled in place
    (``nn.Module.compile``: the state dict keeps its keys, checkpoints stay interchangeable with uncompiled runs).
    """
    model = instantiate(
        cfg.model, organelle=to_plain(cfg.organelle), patch_size=list(to_plain(cfg.data.patch_size)), _convert_="all"
    )
    if cfg.get("channels_last", False):
        for name in COMPILED_NETS:
            if hasattr(model, name):
                to_channels_last(getattr(model, name))
    if cfg.get("compile", False):
        for name in COMPILED_NETS:
            if hasattr(model, name):
                getattr(model, name).compile()
                log.info("compiled %s.%s with torch.compile", type(model).__name__, name)
    return model


def build_trainer(cfg: DictConfig, callbacks: list[Any] | None = None, loggers: list[Any] | None = None) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with the given callbacks and loggers (``False`` when there are none)."""
    return instantiate(cfg.trainer, callbacks=callbacks or None, logger=loggers or False, _convert_="all")
