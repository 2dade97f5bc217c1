"""Training entry point: ``dm4isl-train [experiment=...] [group=option] [key=value]`` (Hydra)."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from dm4isl.utils.instantiate import build_model, build_trainer, instantiate_group

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit a model on ``cfg.data`` and test its best validation checkpoint; returns the logged metrics.

    Callable from Python with a composed config (no Hydra runtime needed when ``paths.output_dir`` is set).
    """
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = build_model(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not cfg.get("train", True):
            best = cfg.get("ckpt_path") or ""
        if best:
            log.info("testing checkpoint %s (selected on validation)", best)
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra wrapper around :func:`train`; returns the monitored validation metric (for sweepers)."""
    metrics = train(cfg)
    value = metrics.get(cfg.get("monitor", ""))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
