"""Evaluation entry point ``dm4isl-evaluate``: metrics tables, statistics and a report for method folders vs GT."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from dm4isl.cli import console_script, report_expected_errors
from dm4isl.evaluation import EvaluationResult, evaluate_folder
from dm4isl.metrics.segmentation import SegmentationSettings
from dm4isl.prediction.classifier import ClassifierSpec

log = logging.getLogger(__name__)


def _list_or_none(value: object) -> list | None:
    """A config list (or ListConfig) as a plain list; None stays None."""
    return None if value is None else list(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def run(cfg: DictConfig) -> EvaluationResult:
    """Run :func:`dm4isl.evaluation.evaluate_folder` with the settings of an ``evaluate.yaml`` config."""
    stats = cfg.statistics
    result = evaluate_folder(
        input_dir=cfg.input_dir,
        output_dir=cfg.output_dir,
        metrics=list(cfg.metrics.names),
        gt_name=cfg.gt_name,
        methods=_list_or_none(cfg.methods),
        exclude=list(cfg.exclude),
        baselines=list(cfg.baselines),
        voxel_size=list(cfg.voxel_size),
        gt_window=_list_or_none(cfg.gt_window),
        pred_window=_list_or_none(cfg.pred_window),
        confidence=float(stats.confidence),
        n_resamples=int(stats.n_resamples),
        seed=int(stats.seed),
        progress=bool(cfg.progress),
        n_threads=int(cfg.n_threads),
        n_workers=int(cfg.n_workers),
        classifier=ClassifierSpec.from_config(OmegaConf.to_container(cfg.perceptual, resolve=True)),
        ensembles=bool(cfg.get("ensembles", True)),
        segmentation=SegmentationSettings.for_organelle(cfg.get("segmentation", "reference"),
                                                        cfg.organelle.get("name")),
    )
    log.info("evaluation of %s written to %s", cfg.input_dir, cfg.output_dir)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@report_expected_errors
def main(cfg: DictConfig) -> None:
    """Console script ``dm4isl-evaluate input_dir=<folder> [output_dir=<folder>] [metrics=paper]``."""
    run(cfg)


#: Console script (pyproject): expected errors as one line and exit status 2 (:mod:`dm4isl.cli`).
cli = console_script(main)

if __name__ == "__main__":
    cli()
