"""The checkpoint contract (dm4isl.models.checkpoint): provenance block, mid-epoch statistics, scores, predictors."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

import dm4isl
from conftest import MICRO_NET, MICRO_ORGANELLE
from dm4isl.callbacks.provenance import Provenance
from dm4isl.errors import CheckpointError
from dm4isl.io.provenance import file_fingerprint
from dm4isl.models.checkpoint import (
    FITTED_WINDOWS_KEY,
    PENDING_STATS_KEY,
    PROVENANCE_KEY,
    TRAINING_STATS_KEY,
    load_model,
    load_predictor,
    model_class_path,
    prediction_provenance,
    provenance_block,
    read_checkpoint,
    selection_score,
    with_pending_stats,
)
from dm4isl.models.classifier import ClassifierModule
from dm4isl.models.ddpm import DDPMModule

ORGANELLE = MICRO_ORGANELLE
PATCH = (4, 16, 16)
SAMPLER = {"method": "ddim", "num_steps": 3, "window": [0, 1000], "mean_correction": True}
#: Training patches and batch size of the mid-epoch run: 3 optimizer steps per epoch.
N_PATCHES, BATCH = 6, 2


def _items(n: int = N_PATCHES) -> list[dict]:
    """Training patches ``(1, Z, Y, X)`` with fl = 0.5·bf + 0.1, in loader order."""
    gen = torch.Generator().manual_seed(0)
    return [{"bf": (bf := torch.rand(1, *PATCH, generator=gen)), "fl": 0.5 * bf + 0.1, "index": i, "name": f"p{i}"}
            for i in range(n)]


def _ddpm() -> DDPMModule:
    return DDPMModule(net=MICRO_NET, organelle=ORGANELLE, patch_size=list(PATCH), val_sampler=SAMPLER,
                      test_sampler=SAMPLER)


@pytest.fixture(scope="module")
def step_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A checkpoint after every optimizer step of 2 epochs (3 steps each), saved before any epoch end merges."""
    root = tmp_path_factory.mktemp("steps")
    saver = ModelCheckpoint(dirpath=root, filename="step{step}", every_n_train_steps=1, save_top_k=-1,
                            save_on_train_epoch_end=False, auto_insert_metric_name=False)
    trainer = L.Trainer(default_root_dir=root, accelerator="cpu", max_epochs=2, logger=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[saver, Provenance()])
    trainer.fit(_ddpm(), DataLoader(_items(), batch_size=BATCH))
    return {step: root / f"step{step}.ckpt" for step in range(1, 7)}


def _fl_mean(n_patches: int) -> float:
    """Fluorescence mean over the first ``n_patches`` patches served (epochs repeat the loader's order), in float64
    as the model sums them."""
    items = _items()
    return float(np.mean([items[i % len(items)]["fl"].double().numpy() for i in range(n_patches)]))


@pytest.mark.parametrize(("step", "merged", "pending"), [(2, 0, 4), (3, 0, 6), (4, 6, 2), (6, 6, 6)])
def test_mid_epoch_checkpoint_loads_with_its_pending_statistics(
    step_checkpoints: dict[int, Path], step: int, merged: int, pending: int
) -> None:
    """Batches of the running epoch live in the pending sums; the loaded model counts them in its fl_mean."""
    raw = read_checkpoint(step_checkpoints[step])
    voxels = int(np.prod(PATCH))
    assert float(raw["state_dict"][TRAINING_STATS_KEY][0]) == merged * voxels
    assert float(raw[PENDING_STATS_KEY][0]) == pending * voxels
    model = load_model(step_checkpoints[step])
    assert float(model.data_stats[0]) == (merged + pending) * voxels
    assert model.fl_mean == pytest.approx(_fl_mean(merged + pending), rel=1e-12)
    # fl = 0.5·bf + 0.1 on every patch: the linear baseline fitted on the merged sums is exact
    bf = torch.rand(1, 1, *PATCH)
    torch.testing.assert_close(model.linear_baseline(bf), 0.5 * bf + 0.1, rtol=0, atol=1e-6)


def test_pending_statistics_merge_and_malformed_checkpoints() -> None:
    stats = torch.tensor([10.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    pending = torch.tensor([5.0, 0.5, 1.0, 0.25, 0.5], dtype=torch.float64)
    ckpt = {"state_dict": {TRAINING_STATS_KEY: stats, "w": torch.ones(2)}, PENDING_STATS_KEY: pending}
    merged = with_pending_stats(ckpt)
    torch.testing.assert_close(merged[TRAINING_STATS_KEY], stats + pending, rtol=0, atol=0)
    assert merged["w"] is ckpt["state_dict"]["w"] and torch.equal(ckpt["state_dict"][TRAINING_STATS_KEY], stats)
    plain = with_pending_stats({"state_dict": {"w": ckpt["state_dict"]["w"]}})
    assert list(plain) == ["w"] and plain["w"] is ckpt["state_dict"]["w"]
    with pytest.raises(CheckpointError, match=r"m\.ckpt: pending training statistics of shape \[5\] but state_dict "
                                              r"'data_stats' is None"):
        with_pending_stats({"state_dict": {}, PENDING_STATS_KEY: pending}, "m.ckpt")
    with pytest.raises(CheckpointError, match=r"'data_stats' is \[3\]"):
        with_pending_stats({"state_dict": {TRAINING_STATS_KEY: torch.zeros(3)}, PENDING_STATS_KEY: pending})


def test_provenance_block_written_by_the_callback(step_checkpoints: dict[int, Path]) -> None:
    model = _ddpm()
    fitted = {"bf_window": np.array([1, 2.5]), "fl_window": (3, 4)}
    block = provenance_block(model, "abc123", fitted)
    assert block == {"model_class": "dm4isl.models.ddpm.DDPMModule", "version": dm4isl.__version__, "git": "abc123",
                     FITTED_WINDOWS_KEY: {"bf_window": [1.0, 2.5], "fl_window": [3.0, 4.0]}}
    assert all(type(v) is float for w in block[FITTED_WINDOWS_KEY].values() for v in w)
    assert FITTED_WINDOWS_KEY not in provenance_block(model, "abc123")
    assert model_class_path(model) == "dm4isl.models.ddpm.DDPMModule"
    # the callback stamps the same block, with the datamodule's fitted windows
    callback, checkpoint = Provenance(), {}
    callback.on_save_checkpoint(SimpleNamespace(datamodule=SimpleNamespace(fitted_windows=fitted)), model, checkpoint)
    assert checkpoint == {PROVENANCE_KEY: provenance_block(model, callback._git, fitted)}
    stored = read_checkpoint(step_checkpoints[1])[PROVENANCE_KEY]
    assert stored == provenance_block(model, callback._git)


def test_selection_score_and_prediction_provenance(step_checkpoints: dict[int, Path]) -> None:
    assert selection_score({"callbacks": {"ModelCheckpoint{'monitor': 'val/x'}": {"best_model_score": 0.75}}}) == 0.75
    assert math.isnan(selection_score({"callbacks": {"ModelCheckpoint{}": {"best_model_score": None}}}))
    assert math.isnan(selection_score({}))
    path = step_checkpoints[1]
    meta = prediction_provenance(path)
    assert set(meta) == {"checkpoint", "checkpoint_sha256_16", "revision"}
    assert meta["checkpoint"] == str(path) and meta["checkpoint_sha256_16"] == file_fingerprint(path)
    assert len(meta["checkpoint_sha256_16"]) == 16 and meta["revision"]


def test_load_predictor_refuses_a_classifier(step_checkpoints: dict[int, Path], tmp_path: Path) -> None:
    assert isinstance(load_predictor(step_checkpoints[1]), DDPMModule)
    classifier = ClassifierModule(net={"name": "resnet3d", "depth": 10, "widen_factor": 0.25},
                                  organelles={"dna": ORGANELLE, "nuclear_envelope": ORGANELLE})
    path = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "hyper_parameters": dict(classifier.hparams),
                PROVENANCE_KEY: provenance_block(classifier, "abc123")}, path)
    assert isinstance(load_model(path), ClassifierModule)
    with pytest.raises(CheckpointError, match=r"classifier\.ckpt: a ClassifierModule checkpoint predicts no "
                                              r"fluorescence"):
        load_predictor(path)
