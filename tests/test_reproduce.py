"""scripts/reproduce_paper.py end to end in a minimal configuration, and the figure grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from dm4isl.io.figures import GridRow, mid_z, prediction_grid

#: Minimal settings on top of --synthetic: small FOVs, 4 test patches of 16 x 32 x 32, one short epoch per model,
#: 5 DDIM steps, cheap metrics and bootstrap.
MINIMAL = [
    "data.n_fovs=6", "data.fov_shape=[32,64,64]", "data.eval_patch_size=[16,32,32]", "data.samples_per_epoch=8",
    "data.n_val_patches=2", "data.n_test_patches=4", "trainer.max_epochs=1", "trainer.max_steps=-1",
    "trainer.check_val_every_n_epoch=1",
]
MINIMAL_MODEL = {"ddpm": ["sampler.num_steps=5", "model.val_sampler.num_steps=5", "model.val_num_patches=2"]}
ORGANELLES = ["nuclear_envelope", "dna"]
N_TEST = 4


def _load_script():
    return load_script("reproduce_paper")


def test_prediction_grid_writes_png(tmp_path: Path) -> None:
    vol = np.zeros((5, 12, 10), dtype=np.float32)
    vol[2] = 1.0  # only the middle slice is bright: mid_z must pick it
    assert mid_z(vol).shape == (12, 10) and float(mid_z(vol).min()) == 1.0
    rows = [GridRow("a", {"GT": vol, "std_intra": vol * 0.1}), GridRow("b", {"GT": vol})]
    path = prediction_grid(rows, ["GT", "std_intra", "error_mask"], tmp_path / "grid.png", {"GT": "ground truth"})
    with Image.open(path) as img:
        width, height = img.size
    assert width > height > 0  # 3 columns x 2 rows
    with pytest.raises(ValueError, match="at least one row"):
        prediction_grid([], ["GT"], tmp_path / "empty.png")


@pytest.mark.slow
def test_reproduce_minimal(tmp_path: Path, data_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _load_script()
    monkeypatch.chdir(tmp_path)
    for model, extra in MINIMAL_MODEL.items():
        monkeypatch.setitem(script.SYNTHETIC_MODEL, model, [*script.SYNTHETIC_MODEL[model], *extra])
    out = tmp_path / "reproduce"
    overrides = [*MINIMAL, f"paths.data_dir={data_cache_dir}"]
    rows = script.reproduce(ORGANELLES, out, synthetic=True, overrides=overrides, protocol="paper14",
                            n_resamples=99)

    paper_scores = 14  # the paper's metrics are all scores (glcm_correlation at dataset level)
    assert len(rows) == len(ORGANELLES) * paper_scores
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["organelle"] for r in table] == [o for o in ORGANELLES for _ in range(paper_scores)]
    assert {r["protocol"] for r in table} == {"paper14"}
    for column in ("Unet", "GAN", "DDPM", "DDPMavg", "reference", "DDPMavg_improvement_pct", "DDPMavg_wilcoxon_p"):
        assert column in table[0], column
    pcc = {r["organelle"]: r for r in table if r["metric"] == "pcc"}
    for organelle in ORGANELLES:
        values = [float(pcc[organelle][m]) for m in ("Unet", "GAN", "DDPM", "DDPMavg")]
        assert all(-1.0 <= v <= 1.0 for v in values), values
        assert pcc[organelle]["reference"] in ("Unet", "GAN")
    markdown = (out / "results.md").read_text()
    assert markdown.count("## ") == len(ORGANELLES) and "| metric | U-Net | GAN | DDPM | DDPMavg |" in markdown
    assert "Protocol paper14: the paper's 14 metrics" in markdown
    with Image.open(out / "figure_grid.png") as img:
        assert img.size[0] > img.size[1]  # 8 columns, 2 rows
    for organelle in ORGANELLES:
        methods = out / organelle / "methods"
        for folder in ("GT", "BF", "Unet", "GAN", "DDPM", "DDPMavg", "std_intra"):
            assert len(list((methods / folder).glob("*.tiff"))) == N_TEST, folder
        assert (out / organelle / "evaluation" / "report.html").is_file()

    # Resumable: a second run reuses every checkpoint and prediction (no training, identical table).
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoints/*.ckpt")}
    done = {p: json.loads(p.read_text()) for p in out.glob("runs/*/done.json")}
    assert len(done) == len(ORGANELLES) * 3
    rows_again = script.reproduce(ORGANELLES, out, synthetic=True, overrides=overrides, protocol="paper14",
                                  n_resamples=99)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoints/*.ckpt")} == stamps
    for method in ("Unet", "GAN", "DDPM", "DDPMavg"):
        np.testing.assert_array_equal([r[method] for r in rows_again], [r[method] for r in rows])
