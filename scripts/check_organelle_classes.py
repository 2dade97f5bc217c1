"""Can the organelles of a classifier's data be told apart by one global statistic? And how well does a classifier do?

Builds the datamodule of ``experiment=classifier_cpu`` (or another experiment, plus overrides), fits a multinomial
logistic regression on each training crop's mean and standard deviation (the crops of ``--epochs`` training epochs)
and reports its accuracy and confusion matrix on the test patches. With ``--checkpoint`` (a classifier trained with
``dm4isl-train experiment=classifier_cpu``) the classifier's accuracy and confusion matrix on the same test patches
are reported beside it. Nothing is written outside ``--output-dir`` (split files, data cache).

    python scripts/check_organelle_classes.py --output-dir /tmp/classes [--checkpoint run/checkpoints/epoch...ckpt]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate

from dm4isl.data.classes import LabelledDataset, OrganelleClassesDataModule, labelled_arrays
from dm4isl.models.checkpoint import load_model
from dm4isl.models.classifier import (
    confusion_matrix,
    confusion_summary,
    format_confusion,
    logistic_regression_accuracy,
    summary_statistics,
)
from dm4isl.utils.compose import compose_config

#: Patches per classifier forward pass.
EVAL_BATCH = 16

log = logging.getLogger("check_organelle_classes")


def build_datamodule(experiment: str, output_dir: Path, overrides: Sequence[str]) -> OrganelleClassesDataModule:
    """The set-up datamodule of ``experiment`` with ``overrides``; split files and data cache under ``output_dir``."""
    cfg = compose_config("train", [f"experiment={experiment}", *overrides, f"paths.root_dir={output_dir}",
                                   f"paths.output_dir={output_dir}"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return dm


def training_crops(dm: OrganelleClassesDataModule, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled training crops of the first ``epochs`` epochs, ``(N, Z, Y, X)`` and ``(N,)``."""
    parts = []
    for epoch in range(epochs):
        datasets = [module.train_dataloader().dataset for module in dm.modules.values()]
        for ds in datasets:
            ds.epoch = epoch
        parts.append(labelled_arrays(LabelledDataset(datasets, dm.class_names, interleave=True)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def classifier_predictions(checkpoint: Path, fl: np.ndarray) -> np.ndarray:
    """Predicted class of every patch ``fl`` ``(N, Z, Y, X)`` by the classifier of ``checkpoint``."""
    model = load_model(checkpoint)
    out = []
    with torch.no_grad():
        for i in range(0, len(fl), EVAL_BATCH):
            out.append(model(torch.from_numpy(fl[i : i + EVAL_BATCH])[:, None]).argmax(dim=1).numpy())
    return np.concatenate(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="classifier_cpu")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of crops the baseline is fitted on")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a classifier checkpoint to compare")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tic = time.perf_counter()
    dm = build_datamodule(args.experiment, args.output_dir.resolve(), args.override)
    train_fl, train_y = training_crops(dm, args.epochs)
    test_fl, test_y = labelled_arrays(dm.labelled("test"))
    log.info("%d training crops, %d test patches (%.0f s)", len(train_y), len(test_y), time.perf_counter() - tic)
    k = dm.n_classes
    acc, matrix = logistic_regression_accuracy(summary_statistics(train_fl), train_y, summary_statistics(test_fl),
                                               test_y, k)
    report: dict[str, Any] = {"classes": dm.class_names, "n_train": len(train_y), "n_test": len(test_y),
                              "baseline_acc": acc, "baseline_confusion": matrix.tolist()}
    print(f"\nlogistic regression on patch mean/std: test accuracy {acc:.3f} (chance {1 / k:.3f})")
    print(format_confusion(matrix, dm.class_names))
    if args.checkpoint is not None:
        pred = classifier_predictions(args.checkpoint, test_fl)
        matrix = confusion_matrix(test_y, pred, k)
        summary = confusion_summary(matrix)
        report.update({"classifier_acc": summary["acc"], "classifier_confusion": matrix.tolist()})
        print(f"\nclassifier {args.checkpoint.name}: test accuracy {summary['acc']:.3f}")
        print(format_confusion(matrix, dm.class_names))
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("confusion")}))
    return report


if __name__ == "__main__":
    main()
