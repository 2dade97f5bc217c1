"""Smoke tests of the sampling scripts (benchmark, DDIM study) on a randomly initialised tiny diffusion checkpoint."""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from dm4isl.models.ddpm import DDPMModule

#: Minuscule settings: 20 diffusion steps, 8 × 16 × 16 (Z, Y, X) crops, a net of 8/16/16 channels.
T_SMOKE = 20
CROP = "8,16,16"
NET = {"name": "diffusion_unet", "channels": [8, 16, 16], "attention_levels": [False, False, False],
       "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 8}
ORGANELLE = {"name": "nuclear_envelope", "bf_window": [12000, 55000], "fl_window": [390, 1500], "std_th": 70,
             "intra_std_threshold": 0.055, "inter_std_threshold": 0.1, "voxel_size": [0.29, 0.29, 0.29]}
#: Training-set statistics stored in the checkpoint: voxel count, Σbf, Σfl, Σbf², Σbf·fl (fluorescence mean 0.3).
DATA_STATS = [1000.0, 500.0, 300.0, 300.0, 160.0]


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (the scripts folder is not a package)."""
    scripts = str(REPO_ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny DDPM checkpoint (T = 20) in a run-folder layout ``run/checkpoints/``."""
    torch.manual_seed(0)
    model = DDPMModule(NET, organelle=ORGANELLE, patch_size=[8, 16, 16], schedule={"num_train_timesteps": T_SMOKE},
                       prediction_type="sample", cond_norm="zscore", test_sampler={"window": [5, 15]})
    model.data_stats.copy_(torch.tensor(DATA_STATS, dtype=torch.float64))
    path = tmp_path_factory.mktemp("smoke") / "run" / "checkpoints" / "random.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def test_benchmark_table_and_speedup_line(random_ckpt: Path, data_cache_dir: Path, capsys) -> None:
    bench = load_script("benchmark_sampling")
    speedup = bench.main(["--ckpt", str(random_ckpt), "--n-patches", "1", "--patch-size", CROP, "--n-seeds", "2",
                          "--ddim", "4,10", "--workdir", str(data_cache_dir), "--in-process", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[1].split()
    assert header == ["setting", "calls", "row_passes", "wall_s", "peak_MB", "pcc_avg", "pcc_avgK", "vs_ref_avg",
                      "vs_ref_intra", "vs_ref_inter", "maxdiff_avg"]
    rows = {line[:20].strip(): line[20:].split() for line in lines[2:-1]}
    assert list(rows) == ["reference DDPM", "ours DDPM", "ours DDIM-4", "ours DDIM-10"]
    # calls: the reference makes (1 + K) runs of T calls per patch, ours one batched run of T (or n) calls
    assert [int(r[0]) for r in rows.values()] == [3 * T_SMOKE, T_SMOKE, 4, 10]
    assert [int(r[1]) for r in rows.values()] == [3 * T_SMOKE, 2 * T_SMOKE, 8, 20]
    # same noise streams, same settings: our DDPM equals the reference procedure voxel for voxel (up to rounding)
    assert float(rows["ours DDPM"][9]) < 1e-5
    assert float(rows["reference DDPM"][9]) == 0.0
    assert re.fullmatch(r"speedup_vs_reference=(\d+\.\d\d|nan)", lines[-1])
    assert lines[-1] == f"speedup_vs_reference={speedup:.2f}"


def test_center_crop_and_test_set(random_ckpt: Path, data_cache_dir: Path) -> None:
    bench = load_script("benchmark_sampling")
    arr = np.arange(2 * 4 * 6 * 6).reshape(2, 4, 6, 6)
    crop = bench.center_crop(arr, (2, 2, 4))
    assert crop.shape == (2, 2, 2, 4)
    assert crop[0, 0, 0, 0] == arr[0, 1, 2, 1]
    with pytest.raises(ValueError, match=r"crop \[8, 2, 2\] \(Z, Y, X\) is larger than the test patches \[4, 6, 6\]"):
        bench.center_crop(arr, (8, 2, 2))
    ts = bench.checkpoint_test_set(random_ckpt, 2, data_cache_dir / "cache", (8, 16, 16))
    assert ts.bf.shape == ts.fl.shape == ts.mask.shape == (2, 8, 16, 16)
    assert 0.0 <= ts.fl.min() and ts.fl.max() <= 1.0
    assert all(name.startswith("test") for name in ts.names)


def test_ddim_study_csv_plot_and_window_recorder(random_ckpt: Path, data_cache_dir: Path, tmp_path: Path) -> None:
    study = load_script("ddim_study")
    out = tmp_path / "study"
    rows = study.main(["--ckpt", str(random_ckpt), "--out", str(out), "--n-patches", "2", "--n-seeds", "2",
                       "--samplers", "ddim-4,ddim-10-eta1.0,ddpm", "--windows", "5-15,0-10", "--patch-size", CROP,
                       "--cache", str(data_cache_dir / "cache"), "--threads", "1"])
    with open(out / "ddim_study.csv", newline="") as fh:
        written = list(csv.DictReader(fh))
    assert [(r["sampler"], r["window"]) for r in written] == [
        (s, w) for s in ("ddim-4", "ddim-10-eta1.0", "ddpm") for w in ("5, 15", "0, 10")
    ]
    assert [int(r["calls"]) for r in written] == [4, 4, 10, 10, T_SMOKE, T_SMOKE]
    # visited t in the window: DDIM-4 visits 19, 13, 6, 0; DDIM-10 19, 17, 15, 13, 11, 8, 6, 4, 2, 0; DDPM all
    assert [int(r["n_avg"]) for r in written] == [2, 2, 4, 5, 10, 10]
    assert {"ddpmavg_pcc", "ddpmavg_ms_ssim", "intra_auroc_error", "intra_auroc_planted", "inter_auroc_error"} <= set(
        written[0]
    )
    assert all(-1.0 <= r["ddpmavg_pcc"] <= 1.0 or np.isnan(r["ddpmavg_pcc"]) for r in rows)
    assert (out / "ddim_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_window_recorder_matches_sampler(random_ckpt: Path) -> None:
    from dm4isl.prediction.checkpoint import load_model
    from dm4isl.sampling import SamplerSettings, sample

    study = load_script("ddim_study")
    model = load_model(random_ckpt)
    bf = np.random.default_rng(0).random((2, 8, 16, 16), dtype=np.float32)
    base = SamplerSettings(window=(5, 15))
    res = study.run_sampler(model, bf, study.parse_sampler("ddim-10"), base, 1, [(5, 15)])
    settings = SamplerSettings(method="ddim", num_steps=10, window=(5, 15))
    pred = sample(model.eps, torch.from_numpy(bf)[:, None], [0, 1], model.schedule, settings, model.target,
                  model.fl_mean, seeds=[0, 0])
    np.testing.assert_allclose(res["windows"][(5, 15)]["ddpmavg"][0], pred.ddpmavg[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res["windows"][(5, 15)]["std_intra"][0], pred.std_intra[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res["ddpm"][0], pred.ddpm[:, 0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"sampler 'ddim50'; expected 'ddpm' or 'ddim-<steps>\[-eta<eta>\]'"):
        study.parse_sampler("ddim50")
    with pytest.raises(ValueError, match=r"window '800-300'; expected"):
        study.parse_windows("300-800,800-300")
