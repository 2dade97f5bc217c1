"""Evaluation entry point ``dm4isl-evaluate``: metrics tables, statistics and a report for method folders vs GT."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from dm4isl.cli import console_script, report_expected_errors
from dm4isl.conf import CONF_DIR
from dm4isl.evaluation import EvaluationResult, evaluate_folder
from dm4isl.evaluation.flags import FlagSettings
from dm4isl.evaluation.report import protocol_table
from dm4isl.io.layout import benchmark_organelle
from dm4isl.metrics.segmentation import SegmentationSettings
from dm4isl.prediction.classifier import ClassifierSpec

log = logging.getLogger(__name__)


def _list_or_none(value: object) -> list | None:
    """A config list (or ListConfig) as a plain list; None stays None."""
    return None if value is None else list(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def _benchmark_organelle(cfg: DictConfig) -> None:
    """A benchmark organelle folder (``<root>/DNA``) decides the organelle: its config replaces ``cfg.organelle``."""
    name = benchmark_organelle(cfg.input_dir)
    if name is None or name == cfg.organelle.get("name"):
        return
    log.info("%s is the benchmark's %s folder: organelle=%s (was %s)", cfg.input_dir, name, name, cfg.organelle.name)
    with open_dict(cfg):
        cfg.organelle = OmegaConf.load(CONF_DIR / "organelle" / f"{name}.yaml")


def run(cfg: DictConfig) -> EvaluationResult:
    """Run :func:`dm4isl.evaluation.evaluate_folder` with the settings of an ``evaluate.yaml`` config."""
    _benchmark_organelle(cfg)
    stats = cfg.statistics
    flags = cfg.get("flags")
    result = evaluate_folder(
        input_dir=cfg.input_dir,
        output_dir=cfg.output_dir,
        metrics=list(cfg.metrics.names) if cfg.get("metrics") else None,
        protocol=str(cfg.protocol),
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
        flags=None if flags is None else FlagSettings(
            std_folder=str(flags.std_folder),
            threshold=None if flags.threshold is None else float(flags.threshold), organelle=cfg.organelle.get("name"),
            flag_fraction=float(flags.flag_fraction)),
    )
    log.info("evaluation of %s written to %s", cfg.input_dir, cfg.output_dir)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@report_expected_errors
def main(cfg: DictConfig) -> None:
    """Console script ``dm4isl-evaluate input_dir=<folder> [output_dir=<folder>] [protocol=benchmark]``: prints the
    protocol's table."""
    result = run(cfg)
    print(f"protocol {result.protocol}, {len(result.patches)} patches of {result.input_dir}:\n{protocol_table(result)}")


#: Console script (pyproject): expected errors as one line and exit status 2 (:mod:`dm4isl.cli`).
cli = console_script(main)

if __name__ == "__main__":
    cli()
