"""W&B logging offline: run id kept in the run folder and reused on resume, image grids, per-patch test table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from dm4isl.callbacks.wandb_images import COLUMNS, ImageGrid, per_patch_table
from dm4isl.io.figures import GridRow, grid_image
from dm4isl.train import train
from dm4isl.utils.resume import WANDB_ID_FILE

require(importlib.util.find_spec("wandb") is not None, "wandb is not installed (pip install wandb)")

RUN = [
    "model/net=tiny",
    "data.patch_size=[8,32,32]",
    "data.samples_per_epoch=4",
    "data.batch_size=2",
    "data.n_val_patches=2",
    "data.n_test_patches=2",
    "model.val_num_patches=1",
    "model.val_sampler.num_steps=4",
    "model.val_sampler.window=[0,1000]",
    "sampler=ddim",
    "sampler.num_steps=4",
    "sampler.window=[0,1000]",
    "trainer.enable_model_summary=false",
    "checkpoint_every_n_steps=1",
    "seed=5",
]
WANDB = [*RUN, "logger=wandb", "callbacks.images.n_images=1", "callbacks.images.mask_threshold=0.01"]


def _offline_runs(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "wandb").glob("offline-run-*"))


def test_grid_image_layout() -> None:
    vol = np.zeros((3, 4, 5), np.float32)
    one = grid_image([GridRow("a", {name: vol + 0.5 for name in COLUMNS})], list(COLUMNS))
    two = grid_image([GridRow("a", {"GT": vol + 0.5}), GridRow("b", {"GT": vol})], ["GT"])
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 4
    assert one.shape[1] > 5 * two.shape[1] and two.shape[0] > one.shape[0]  # columns widen, rows heighten


def test_per_patch_table_uses_the_models_scores() -> None:
    rows = {0: {"DDPM": {"pcc": 1.0, "mse": 0.0, "ms_ssim": 0.9}, "DDPMavg": {"pcc": -1.0, "mse": 0.5,
                                                                              "ms_ssim": 0.1}},
            1: {"DDPM": {"pcc": 0.5, "mse": 0.1, "ms_ssim": float("nan")}}}
    table = per_patch_table(rows, {0: "a"})
    assert [r[:2] for r in table] == [["a", "DDPM"], ["a", "DDPMavg"], ["1", "DDPM"]]
    assert table[1][2:] == [-1.0, 0.5, 0.1]


def test_image_grid_without_wandb_writes_png(compose_cfg) -> None:
    target = f"{ImageGrid.__module__}.{ImageGrid.__name__}"
    cfg = compose_cfg("train", [*RUN, f"+callbacks.images._target_={target}", "+callbacks.images.n_images=1",
                                "trainer.max_steps=2", "test=false"])
    train(cfg)
    pngs = sorted(Path(cfg.paths.output_dir).glob("val_step*.png"))
    assert [p.name for p in pngs] == ["val_step000002.png"]


@pytest.mark.slow
def test_wandb_offline_run_resumes_same_run(compose_cfg, tmp_path: Path) -> None:
    """Images and the test table are logged; a resumed run (ckpt_path=last) logs into the same W&B run id."""
    cfg = compose_cfg("train", [*WANDB, "trainer.max_steps=2", "test=true"])
    train(cfg)
    out = Path(cfg.paths.output_dir)
    run_id = (out / WANDB_ID_FILE).read_text().strip()
    runs = _offline_runs(out)
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    media = runs[0] / "files" / "media"
    assert sorted(p.suffix for p in (media / "images" / "val").glob("images_*")) == [".png"]
    assert list((media / "table" / "test").glob("per_patch_*.table.json"))
    record = next(runs[0].glob("run-*.wandb")).read_bytes()  # offline W&B keeps the run config in this log
    assert b"checkpoint_every_n_steps" in record and b"nuclear_envelope" in record  # the whole resolved config

    resumed = compose_cfg("train", [*WANDB, "trainer.max_steps=4", "test=false", "ckpt_path=last"])
    train(resumed)
    runs = _offline_runs(out)
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    assert (out / WANDB_ID_FILE).read_text().strip() == run_id
