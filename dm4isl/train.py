"""Training entry point: ``dm4isl-train [experiment=...] [group=option] [key=value]`` (Hydra)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from dm4isl.cli import console_script, report_expected_errors
from dm4isl.data.datamodule import ZStackDataModule
from dm4isl.utils.instantiate import (
    build_loggers,
    build_model,
    build_trainer,
    config_logger,
    finish_loggers,
    instantiate_group,
)
from dm4isl.utils.resume import resolve_ckpt_path, resume_checkpoint, share_last_checkpoint

log = logging.getLogger(__name__)

#: Key of :func:`train`'s result holding the monitored validation metric of the best checkpoint.
BEST_SCORE_KEY = "best/monitor"

#: Lightning warns that a mid-epoch resume replays the epoch's first batches unless the loader is stateful; the
#: datamodule saves its position in the checkpoint and starts the resumed epoch there (docs/training.md).
MID_EPOCH_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit a model on ``cfg.data`` and test its best validation checkpoint; returns the logged metrics.

    ``cfg.ckpt_path`` may be a file, ``last`` (this run folder's ``checkpoints/last.ckpt``, which must exist) or
    ``auto`` (the same, or a fresh start when there is none). ``cfg.checkpoint_every_n_steps`` > 0 rewrites
    ``last.ckpt`` that often, so that a killed run resumes mid-epoch. Callable from Python with a composed config
    (no Hydra runtime needed when ``paths.output_dir`` is set).
    """
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    output_dir = cfg.paths.output_dir
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    if isinstance(datamodule, ZStackDataModule):
        warnings.filterwarnings("ignore", message=MID_EPOCH_WARNING)
    model = build_model(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    every = int(cfg.get("checkpoint_every_n_steps") or 0)
    if every > 0 and cfg.get("train", True):
        callbacks.append(resume_checkpoint(output_dir, every))
        share_last_checkpoint(callbacks)
    loggers = build_loggers(cfg.get("logger"), output_dir)
    callbacks.extend(config_logger(loggers, cfg))
    trainer = build_trainer(cfg, callbacks, loggers)
    metrics: dict[str, Any] = {}
    try:
        if cfg.get("train", True):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
            if score is not None:
                metrics[BEST_SCORE_KEY] = float(score)
        if cfg.get("test", False):
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if not cfg.get("train", True):
                best = ckpt_path or ""
            if best:
                log.info("testing checkpoint %s (selected on validation)", best)
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        finish_loggers(trainer.loggers)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_expected_errors
def main(cfg: DictConfig) -> float | None:
    """Hydra wrapper around :func:`train`; returns the validation metric for sweepers.

    That is the monitored metric of the selected (best) checkpoint when one was kept, else its last value.
    """
    metrics = train(cfg)
    value = metrics.get(BEST_SCORE_KEY, metrics.get(cfg.get("monitor", "")))
    return float(value) if value is not None else None


#: Console script (pyproject): expected errors as one line and exit status 2 (:mod:`dm4isl.cli`).
cli = console_script(main)

if __name__ == "__main__":
    cli()
