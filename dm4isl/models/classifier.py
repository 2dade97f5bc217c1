"""Organelle classifier (MONAI 3-D ResNet on fluorescence patches) as a LightningModule; its features give CLS-LPIPS."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from dm4isl.data.classes import MIN_CLASSES
from dm4isl.errors import DataError
from dm4isl.io.atomic import write_csv
from dm4isl.metrics.perceptual import FEATURE_LAYERS, ClassifierFeatures
from dm4isl.models.checkpoint import ARRAY_AXES, TENSOR_AXES, check_axes
from dm4isl.models.nets.resnet3d import build_resnet3d
from dm4isl.models.outputs import gather_by_index
from dm4isl.sampling.noise import patch_generators

log = logging.getLogger(__name__)

#: Folder (under the trainer's ``default_root_dir``) of the confusion matrices written at validation and test.
CONFUSION_DIR = "confusion"
#: The summary-statistic logistic regression: L-BFGS iterations, L2 penalty on the weights, feature std guard.
LOGREG_MAX_ITER = 500
LOGREG_L2 = 1e-4
LOGREG_EPS = 1e-12


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def confusion_summary(matrix: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and per-class recall of a confusion matrix.

    Recall of a class without patches is NaN and left out of the balanced accuracy.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1)
    recall = np.where(totals > 0, np.diag(matrix) / np.where(totals > 0, totals, 1.0), np.nan)
    present = ~np.isnan(recall)
    return {
        "acc": float(np.trace(matrix) / matrix.sum()) if matrix.sum() else float("nan"),
        "balanced_acc": float(recall[present].mean()) if present.any() else float("nan"),
        "recall": recall,
    }


def format_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """A plain-text confusion matrix (rows: true class, columns: predicted class)."""
    width = max(len(n) for n in class_names) + 2
    lines = ["true \\ predicted".ljust(width) + "".join(n[:10].rjust(11) for n in class_names)]
    for name, row in zip(class_names, matrix, strict=True):
        lines.append(name.ljust(width) + "".join(f"{int(v):>11d}" for v in row))
    return "\n".join(lines)


def summary_statistics(fl: np.ndarray) -> np.ndarray:
    """``(N, 2)`` mean and standard deviation of each ``(Z, Y, X)`` patch of ``fl`` ``(N, Z, Y, X)``."""
    fl = np.asarray(fl, dtype=np.float64).reshape(len(fl), -1)
    return np.stack([fl.mean(axis=1), fl.std(axis=1)], axis=1)


def logistic_regression_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
) -> tuple[float, np.ndarray]:
    """Test accuracy and confusion matrix of a multinomial logistic regression on features ``(N, F)``.

    Features are standardised with the training mean and std; the cross-entropy with a small L2 penalty is minimised
    by L-BFGS (convex: the result does not depend on a seed). The reference point for a classifier: what one global
    statistic per patch (e.g. :func:`summary_statistics`) already separates.
    """
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + LOGREG_EPS
    x = torch.as_tensor((train_x - mean) / std, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)
    weight = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=LOGREG_MAX_ITER, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + LOGREG_L2 * (weight * weight).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        test = torch.as_tensor((test_x - mean) / std, dtype=torch.float64)
        pred = (test @ weight + bias).argmax(dim=1).numpy()
    matrix = confusion_matrix(test_y, pred, n_classes)
    return float(np.trace(matrix) / matrix.sum()), matrix


def intensity_jitter(
    fl: torch.Tensor,
    patch_ids: torch.Tensor,
    gain_range: Sequence[float],
    offset_range: Sequence[float],
    seed: int | None = None,
) -> torch.Tensor:
    """``clamp(g · fl + o, 0, 1)`` per patch of ``fl`` ``(B, 1, Z, Y, X)``: gain ``g`` log-uniform in ``gain_range``,
    offset ``o`` uniform in ``offset_range``, drawn from the patch's own generator (seeded by ``(seed, patch id)``,
    ``seed`` defaulting to the run's), so a resumed run augments exactly as an uninterrupted one."""
    gens = patch_generators(torch.initial_seed() if seed is None else int(seed), patch_ids)
    (g_lo, g_hi), (o_lo, o_hi) = (tuple(float(v) for v in r) for r in (gain_range, offset_range))
    u = torch.stack([torch.rand(2, generator=g, dtype=torch.float64) for g in gens]).to(fl.device)
    gain = torch.exp(np.log(g_lo) + u[:, 0] * (np.log(g_hi) - np.log(g_lo))).to(fl.dtype)
    offset = (o_lo + u[:, 1] * (o_hi - o_lo)).to(fl.dtype)
    shape = (-1,) + (1,) * (fl.ndim - 1)
    return (gain.view(shape) * fl + offset.view(shape)).clamp(0.0, 1.0)


class ClassifierModule(L.LightningModule):
    """Tells the organelles of ``organelles`` apart from a fluorescence patch ``(B, 1, Z, Y, X)`` in [0, 1].

    The paper's perceptual metric (CLS-LPIPS) compares the features of such a classifier, a 3-D ResNet-101 trained
    on the six organelles; the trained network is used by :meth:`feature_extractor`. ``net`` is a ``resnet3d``
    config (:mod:`dm4isl.models.nets.resnet3d`); ``organelles`` maps class names, in class-index order, to their
    organelle configs (normalisation windows: stored in the checkpoint with the weights). Loss: cross-entropy
    (optional label smoothing); optimiser AdamW. Batches carry ``fl`` and ``label`` ``(B,)`` (data=organelle_classes).
    ``intensity_augment`` (``{gain: [lo, hi], offset: [lo, hi]}``) jitters each training patch's intensities
    (:func:`intensity_jitter`), so that the classifier has to recognise structure rather than brightness.

    Validation and test log ``<stage>/loss``, ``<stage>/acc``, ``<stage>/balanced_acc`` and
    ``<stage>/recall_<organelle>``, keep the confusion matrix in :attr:`confusion` and write it to
    ``<default_root_dir>/confusion/<stage>_epoch<e>_step<s>.csv`` (rows: true class, columns: predicted).
    """

    def __init__(
        self,
        net: dict[str, Any],
        organelles: dict[str, dict[str, Any]] | None,
        organelle: dict[str, Any] | None = None,
        patch_size: list[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.0,
        intensity_augment: dict[str, list[float]] | None = None,
        array_axes: str = ARRAY_AXES,
        tensor_axes: str = TENSOR_AXES,
    ) -> None:
        check_axes(array_axes, tensor_axes)
        super().__init__()
        # ``organelle`` (the run's single organelle, passed to every model) says nothing about a classifier of many
        self.save_hyperparameters(ignore=["organelle"])
        if not organelles or len(organelles) < MIN_CLASSES:
            raise ValueError(f"organelles {list(organelles or [])}; a classifier needs at least {MIN_CLASSES} classes "
                             "(data=organelle_classes provides them)")
        self.class_names = list(organelles)
        self.net = build_resnet3d(net, in_channels=1, num_classes=len(self.class_names))
        #: Latest confusion matrix per stage (``val``, ``test``): ``(K, K)`` counts, row = true class.
        self.confusion: dict[str, np.ndarray] = {}
        self._records: dict[str, dict[int, tuple[int, int, float]]] = {}

    def forward(self, fl: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, K)`` of fluorescence patches ``fl`` ``(B, 1, Z, Y, X)``."""
        return self.net(fl)

    def on_fit_start(self) -> None:
        """Check that the datamodule serves the classes this model was built for, in the same order."""
        names = getattr(self.trainer.datamodule, "class_names", None)
        if names is None:
            raise DataError("model=classifier needs labelled patches of several organelles: use data=organelle_classes")
        if list(names) != self.class_names:
            raise DataError(f"datamodule classes {list(names)} differ from the model's {self.class_names}")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        fl = batch["fl"]
        augment = self.hparams.intensity_augment
        if augment:
            fl = intensity_jitter(fl, batch["index"], augment["gain"], augment["offset"])
        logits = self.net(fl)
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.hparams.label_smoothing)
        acc = (logits.argmax(dim=1) == batch["label"]).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        self.log("train/acc", acc, batch_size=logits.shape[0])
        return loss

    def _record(self, stage: str, batch: Mapping[str, Any]) -> None:
        """Keep ``(true class, predicted class, loss)`` of every patch of the batch by patch id."""
        logits = self.net(batch["fl"]).float()
        losses = F.cross_entropy(logits, batch["label"], reduction="none")
        store = self._records.setdefault(stage, {})
        for patch_id, label, pred, loss in zip(
            batch["index"].tolist(), batch["label"].tolist(), logits.argmax(dim=1).tolist(), losses.tolist(),
            strict=True,
        ):
            store[int(patch_id)] = (int(label), int(pred), float(loss))

    def _finish(self, stage: str) -> dict[str, float]:
        """Log the stage's scores and keep/write its confusion matrix (every patch once, also under DDP)."""
        rows = list(gather_by_index(self._records.pop(stage, {})).values())
        if not rows:
            return {}
        labels, preds, losses = (np.array(col) for col in zip(*rows, strict=True))
        matrix = confusion_matrix(labels, preds, len(self.class_names))
        summary = confusion_summary(matrix)
        logged = {f"{stage}/loss": float(losses.mean()), f"{stage}/acc": summary["acc"],
                  f"{stage}/balanced_acc": summary["balanced_acc"]}
        logged.update({f"{stage}/recall_{n}": float(r) for n, r in zip(self.class_names, summary["recall"],
                                                                         strict=True) if not np.isnan(r)})
        for name, value in logged.items():
            self.log(name, value, sync_dist=True, prog_bar=name == f"{stage}/acc")
        self.confusion[stage] = matrix
        if self.trainer.is_global_zero:
            self._write_confusion(stage, matrix)
        return logged

    def _write_confusion(self, stage: str, matrix: np.ndarray) -> None:
        text = format_confusion(matrix, self.class_names)
        log.info("%s confusion matrix (epoch %d, %d patches):\n%s", stage, self.current_epoch, matrix.sum(), text)
        root = Path(self.trainer.default_root_dir)
        path = root / CONFUSION_DIR / f"{stage}_epoch{self.current_epoch:03d}_step{self.global_step:06d}.csv"
        rows = [{"true": name, **{p: int(v) for p, v in zip(self.class_names, row, strict=True)}}
                for name, row in zip(self.class_names, matrix, strict=True)]
        write_csv(path, rows, ["true", *self.class_names])

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._record("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._record("test", batch)

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def feature_extractor(self, normalize: bool = False) -> ClassifierFeatures:
        """The CLS-LPIPS feature extractor of this classifier: layer1–layer4 and the logits, inputs ``(Z, Y, X)``."""
        return ClassifierFeatures(self.net, FEATURE_LAYERS, ARRAY_AXES, normalize, name=type(self).__name__)
