"""End-to-end tests of ``dm4isl-evaluate``: outputs on the reference folder, input validation, the console script."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import require
from dm4isl.errors import DataError
from dm4isl.evaluate import run
from dm4isl.evaluation import discover_methods, evaluate_folder
from dm4isl.metrics.registry import METRICS

SHAPE = (16, 64, 64)
OUTPUTS = ("metrics_per_patch.csv", "metrics_summary.csv", "metrics_summary.md", "report.html")
#: README of the reference folder: pooled PCC and MSE.
GOLDEN_PCC = {"DDPM": 0.8426, "DDPMavg": 0.8728, "FL_pred": 0.8400, "FLavg_pred": 0.8704, "Unet": 0.8516,
              "GAN": 0.8663}
GOLDEN_TOL = 5e-4


def _numpy_pcc(folder: Path, method: str) -> list[float]:
    """Per-patch Pearson r of ``GT/<i>.tiff`` and ``<method>/<i>.tiff`` (uint8 / 255), by NumPy alone."""
    values = []
    for gt_file in sorted((folder / "GT").glob("*.tiff")):
        gt = tifffile.imread(gt_file).astype(np.float64).ravel() / 255
        pred = tifffile.imread(folder / method / gt_file.name).astype(np.float64).ravel() / 255
        values.append(float(np.corrcoef(gt, pred)[0, 1]))
    return values


class _Links(HTMLParser):
    """Collects href/src attributes and counts images."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src"):
                self.links.append(value)
        self.images += tag == "img"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(folder: Path, name: str, array: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / name, array)
    return folder / name


@pytest.fixture()
def small_input(tmp_path: Path) -> Path:
    """GT + Unet + DDPMavg (2 patches of 16×64×64, uint8) plus non-prediction folders that must be excluded."""
    rng = np.random.default_rng(0)
    root = tmp_path / "input"
    for i in range(2):
        gt = rng.integers(0, 256, SHAPE, dtype=np.uint8)
        _write(root / "GT", f"{i}.tiff", gt)
        _write(root / "Unet", f"{i}.tiff", np.clip(gt.astype(int) + 20, 0, 255).astype(np.uint8))
        _write(root / "DDPMavg", f"{i}.ome.tiff", gt)
        _write(root / "std_intra", f"{i}.tiff", rng.random(SHAPE, dtype=np.float32))
        _write(root / "error_mask", f"{i}.tiff", np.zeros(SHAPE, np.uint8))
    (root / "logs").mkdir()
    return root


def test_evaluate_reference_folder_writes_all_outputs(nucenv_dir, compose_cfg, tmp_path):
    out = tmp_path / "eval"
    cfg = compose_cfg("evaluate", [f"input_dir={nucenv_dir}", f"output_dir={out}", "statistics.n_resamples=999",
                                   "progress=false", "protocol=paper14"])
    assert list(cfg.voxel_size) == [0.29, 0.29, 0.29] and cfg.protocol == "paper14"
    result = run(cfg)
    methods = ["DDPM", "DDPMavg", "FL_pred", "FLavg_pred", "GAN", "Unet"]
    assert result.methods == methods and result.baselines == ["Unet", "GAN"]
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    per_patch = _read_csv(out / "metrics_per_patch.csv")
    patch_metrics = [n for n in result.metric_names if METRICS[n].level == "patch"]
    assert len(patch_metrics) == 14  # 13 of the paper's per-patch metrics + the GLCM feature
    assert len(per_patch) == 6 * 5 * 14 + 5  # + the ground truth's own GLCM feature
    assert {r["method"] for r in per_patch} == {*methods, "GT"}
    summary = _read_csv(out / "metrics_summary.csv")
    pooled = {r["metric"]: r for r in summary if r["statistic"] == "pooled"}
    for method, value in GOLDEN_PCC.items():
        assert float(pooled["pcc"][method]) == pytest.approx(value, abs=GOLDEN_TOL)
    improvement = {r["metric"]: r for r in summary if r["statistic"] == "improvement_pct"}
    assert set(improvement) == {n for n in result.metric_names if METRICS[n].is_score}
    means = {r["metric"]: r for r in summary if r["statistic"] == "mean"}
    pcc = {m: _numpy_pcc(nucenv_dir, m) for m in ("DDPMavg", "GAN", "Unet")}  # NumPy on the files, not dm4isl
    assert float(means["pcc"]["DDPMavg"]) == pytest.approx(np.mean(pcc["DDPMavg"]), abs=1e-6)
    assert improvement["pcc"]["reference"] == "GAN" and np.mean(pcc["GAN"]) > np.mean(pcc["Unet"])
    # improvement % of the headline (per-patch mean), not of the pooled value (which would give +0.75 %)
    expected_pct = 100 * (np.mean(pcc["DDPMavg"]) / np.mean(pcc["GAN"]) - 1)
    assert float(improvement["pcc"]["DDPMavg"]) == pytest.approx(expected_pct, abs=1e-4)
    p_values = [float(r[m]) for r in summary if r["statistic"] == "wilcoxon_p" for m in methods
                if r[m] != "nan"]
    assert p_values and all(0.0625 - 1e-12 <= p <= 1 for p in p_values)  # 5 patches: exact p ≥ 2/2^5
    figures = sorted((out / "figures").glob("boxplot_*.png"))
    assert len(figures) == 14 and all(f.read_bytes()[:4] == b"\x89PNG" for f in figures)
    parser = _Links()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    assert parser.images == 14
    files = [link for link in parser.links if not link.startswith("data:")]
    assert files and all((out / link).is_file() for link in files)
    md = (out / "metrics_summary.md").read_text(encoding="utf-8")
    headline = f"**{np.mean(pcc['DDPMavg']):.4f} ± {np.std(pcc['DDPMavg'], ddof=1):.2g}**"  # sample std, 2 digits
    assert "| pcc↑ | mean | " in md and headline in md and "## Against the better baseline" in md
    assert "| pcc↑ · pooled | pooled | 0.8426 | 0.8728 |" in md  # pooled values: an extra row
    assert "Masks of the segmentation metrics: the reference's pipeline (8-bit, median 3 × 3" in md
    assert not list(out.glob(".*.part"))


def test_exclusion_and_no_baseline(small_input, tmp_path):
    assert list(discover_methods(small_input)) == ["DDPMavg", "Unet"]
    result = evaluate_folder(small_input, tmp_path / "out", metrics="fast", baselines=["GAN"], progress=False)
    assert result.methods == ["DDPMavg", "Unet"]
    assert result.patches == ["0", "1"]  # 0.ome.tiff pairs with GT/0.tiff
    assert not any(r.statistic == "improvement_pct" for r in result.summary)
    assert result.results["DDPMavg"].dataset["mse_pooled"] == 0.0
    assert result.results["Unet"].dataset["mse_pooled"] > 0.0


def _expect_error(root: Path, out: Path, match: str) -> None:
    with pytest.raises(DataError, match=match):
        evaluate_folder(root, out, metrics="fast", progress=False)
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_missing_partners(small_input, tmp_path):
    out = tmp_path / "out"
    _write(small_input / "Unet", "7.tiff", np.zeros(SHAPE, np.uint8))
    _expect_error(small_input, out, r"Unet/7\.tiff: no ground-truth partner")
    (small_input / "Unet" / "7.tiff").unlink()
    (small_input / "DDPMavg" / "1.ome.tiff").unlink()
    _expect_error(small_input, out, r"DDPMavg/1\.tiff: missing prediction")


def test_shape_mismatch_corrupt_and_nan(small_input, tmp_path):
    out = tmp_path / "out"
    _write(small_input / "Unet", "1.tiff", np.zeros((8, 64, 64), np.uint8))
    _expect_error(small_input, out, r"Unet/1\.tiff: shape \(8, 64, 64\)")
    (small_input / "Unet" / "1.tiff").write_bytes((small_input / "GT" / "1.tiff").read_bytes()[:5000])
    _expect_error(small_input, out, r"Unet/1\.tiff: unreadable or truncated")
    bad = np.zeros(SHAPE, np.float32)
    bad[3, 4, 5] = np.nan
    _write(small_input / "Unet", "1.tiff", bad)
    _expect_error(small_input, out, r"Unet/1\.tiff: contains 1 NaN")


def test_seed_ensemble_scored_with_crps_and_spread_skill(small_input, tmp_path):
    """DDPMavg_seeds/seed<k>/ beside DDPMavg/: the ensemble's fair CRPS per patch (checked by hand), the point
    prediction's CRPS (= MAE) for the U-Net, a spread–skill curve, and a clear error for a missing member."""
    rng = np.random.default_rng(3)
    gts = [tifffile.imread(small_input / "GT" / f"{i}.tiff").astype(np.float32) / 255 for i in range(2)]
    members = [[np.clip(g + rng.normal(0, 0.05, SHAPE), 0, 1).astype(np.float32) for g in gts] for _ in range(3)]
    for k, per_patch in enumerate(members):
        for i, m in enumerate(per_patch):
            _write(small_input / "DDPMavg_seeds" / f"seed{k}", f"{i}.ome.tiff", m)
    out = tmp_path / "out"
    result = evaluate_folder(small_input, out, metrics="fast", baselines=["Unet"], progress=False, n_resamples=99)
    assert result.methods == ["DDPMavg", "Unet"] and result.metric_names[-1] == "crps"
    for i, g in enumerate(gts):
        x = np.stack([members[k][i] for k in range(3)]).astype(np.float64)
        spread = sum(np.abs(x[a] - x[b]) for a in range(3) for b in range(3)) / (2 * 3 * 2)
        expected = float(np.mean(np.abs(x - g).mean(axis=0) - spread))
        assert result.results["DDPMavg"].per_patch["crps"][i] == pytest.approx(expected, rel=1e-6)
        unet = tifffile.imread(small_input / "Unet" / f"{i}.tiff").astype(np.float64) / 255
        assert result.results["Unet"].per_patch["crps"][i] == pytest.approx(np.mean(np.abs(unet - g)), rel=1e-6)
    score = result.ensembles["DDPMavg"]
    assert score.n_members == 3 and score.member_names == ["seed0", "seed1", "seed2"]
    assert score.spread_skill.count.sum() == 2 * np.prod(SHAPE)
    assert (out / "spread_skill.csv").is_file()
    assert (out / "figures" / "spread_skill.png").read_bytes()[:4] == b"\x89PNG"
    assert "Seed ensembles" in (out / "report.html").read_text(encoding="utf-8")
    assert any(r.metric == "crps" and r.statistic == "improvement_pct" for r in result.summary)
    (small_input / "DDPMavg_seeds" / "seed2" / "1.ome.tiff").unlink()
    _expect_error(small_input, tmp_path / "out2", r"seed2: missing member for patch '1'")


def test_console_script(small_input, tmp_path):
    script = Path(sys.executable).with_name("dm4isl-evaluate")
    require(script.exists(), f"console script not installed at {script} (pip install -e .)")
    out = tmp_path / "cli"
    shutil.rmtree(small_input / "std_intra")
    proc = subprocess.run(
        [str(script), f"input_dir={small_input}", f"output_dir={out}", "metrics=fast", "progress=false",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all((out / name).is_file() for name in OUTPUTS)
    rows = _read_csv(out / "metrics_summary.csv")
    assert [r["statistic"] for r in rows if r["metric"] == "mse"] == [
        "mean", "std", "pooled", "improvement_pct", "wilcoxon_p", "ci95_low", "ci95_high"]
    bad = subprocess.run([str(script), f"input_dir={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'x'}",
                          f"hydra.run.dir={tmp_path / 'hydra2'}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "nowhere" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow  # spawning two workers that import torch takes ~15 s on a busy 2-core machine
def test_worker_processes_give_identical_results(small_input):
    one = evaluate_folder(small_input, None, metrics=["pcc", "mse", "iou"], progress=False, n_resamples=99)
    two = evaluate_folder(small_input, None, metrics=["pcc", "mse", "iou"], progress=False, n_resamples=99,
                          n_workers=2)
    for method in one.methods:
        for metric, values in one.results[method].per_patch.items():
            np.testing.assert_array_equal(values, two.results[method].per_patch[metric])
