"""Smoke tests of the sampling scripts (benchmark, DDIM study) on a randomly initialised tiny diffusion checkpoint,
and of the package functions they share: a run's test patches, centre crops, mean PCC."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script
from dm4isl.data.patches import center_crop
from dm4isl.metrics.basic import mean_pcc
from dm4isl.models.ddpm import DDPMModule
from dm4isl.utils.run_data import RUN_DATA_KEYS, checkpoint_test_set, run_data_settings

#: Minuscule settings: 20 diffusion steps, 8 × 16 × 16 (Z, Y, X) crops, a net of 8/16/16 channels.
T_SMOKE = 20
CROP = "8,16,16"
NET = {"name": "diffusion_unet", "channels": [8, 16, 16], "attention_levels": [False, False, False],
       "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 8}
ORGANELLE = {"name": "nuclear_envelope", "bf_window": [12000, 55000], "fl_window": [390, 1500], "std_th": 70,
             "intra_std_threshold": 0.055, "inter_std_threshold": 0.1, "voxel_size": [0.29, 0.29, 0.29]}
#: Training-set statistics stored in the checkpoint: voxel count, Σbf, Σfl, Σbf², Σbf·fl (fluorescence mean 0.3).
DATA_STATS = [1000.0, 500.0, 300.0, 300.0, 160.0]


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


def test_benchmark_equivalence_table_exactness_memory_and_speedup_line(
    random_ckpt: Path, data_cache_dir: Path, tmp_path: Path, capsys
) -> None:
    bench = load_script("benchmark_sampling")
    out_csv = tmp_path / "bench.csv"
    speedup = bench.main(["--ckpt", str(random_ckpt), "--n-patches", "3", "--patch-size", CROP, "--n-seeds", "2",
                          "--ddim", "4,10", "--etas", "0,1", "--ref-patches", "1", "--n-resamples", "199",
                          "--workdir", str(data_cache_dir), "--threads", "1", "--memory", "--out", str(out_csv)])
    lines = capsys.readouterr().out.strip().splitlines()
    # same noise streams, same settings: our batched DDPM equals the reference procedure voxel for voxel
    exact = next(line for line in lines if line.startswith("# reference procedure on 1 patch(es) x (1 + 2) runs"))
    assert f"{3 * T_SMOKE} calls of batch 1" in exact
    assert float(re.search(r"max \|diff\| (\S+),", exact).group(1)) < 1e-5
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sampler"] for r in rows] == ["ddpm-1000", "ddim-4 eta0", "ddim-4 eta1", "ddim-10 eta0", "ddim-10 eta1"]
    assert [int(r["calls"]) for r in rows] == [T_SMOKE, 4, 4, 10, 10]
    assert [int(r["row_passes"]) for r in rows] == [6 * T_SMOKE, 24, 24, 60, 60]  # 3 patches x 2 seeds per call
    assert {r["ms_ssim_scales"] for r in rows} == {"3"}  # 16 px crops: 3 scales
    comparator = rows[0]
    assert comparator["counts"] == "True"  # the comparator against itself: every difference and bound is 0
    for key in ("pcc", "ms_ssim", "auroc_intra", "auroc_inter"):
        assert float(comparator[f"d_{key}"]) == float(comparator[f"d_{key}_low"]) == 0.0
    for r in rows:
        assert float(r["s_per_patch"]) == pytest.approx(float(r["seconds"]) / 3, rel=1e-3)
        assert float(r["speedup"]) == pytest.approx(float(r["ref_s_per_patch"]) / float(r["s_per_patch"]), rel=1e-6)
        assert r["counts"] == str(all(float(r[f"d_{k}_low"]) > m for k, m in bench.MARGINS.items()))
    best = max(float(r["speedup"]) for r in rows if r["counts"] == "True")
    assert lines[-1] == f"speedup_vs_reference={speedup:.2f}" and speedup == pytest.approx(best)
    # memory: the running statistics make the peak independent of the number of averaged steps
    memory = next(line for line in lines if line.startswith("# memory (peak tensor MiB"))
    peaks = dict(re.findall(r"ours (\S+) ([0-9.]+)", memory))
    assert set(peaks) == {"ddpm-1000", "ddim-10-eta1"}
    # equal up to the int64 list of visited timesteps (8 bytes a step)
    assert float(peaks["ddpm-1000"]) == pytest.approx(float(peaks["ddim-10-eta1"]), abs=0.002)
    ours_state, ref_state = (int(v) for v in re.findall(r"state (?:beyond the network call )?(\d+) B per", memory))
    assert ref_state >= 10 * 4 and ref_state > ours_state  # the reference keeps its 10 averaged x̂0 in a list
    paper = next(line for line in lines if line.startswith("# memory, paper net"))
    fixed, per_row = (float(v) for v in re.search(r"= (\d+) MiB \+ (\d+) MiB/row", paper).groups())
    assert 700 < fixed < 900 and 300 < per_row < 600  # 192.8 M fp32 weights ≈ 735 MiB; activations per row
    rows_8gib = int(re.search(r"within 8 GiB: (\d+) rows", paper).group(1))
    assert rows_8gib == int((8 * 1024 - fixed) // per_row) or abs(rows_8gib - (8 * 1024 - fixed) / per_row) < 1


def test_benchmark_presets_and_candidates() -> None:
    bench = load_script("benchmark_sampling")
    cpu = bench.parse_args(["--preset", "cpu"])
    assert (cpu.n_patches, cpu.patch_size, cpu.n_seeds, cpu.device, cpu.ref_patches) == (16, [16, 24, 24], 2, "cpu", 1)
    assert cpu.channels_last and not cpu.memory
    long = bench.parse_args(["--preset", "cpu-long", "--no-channels-last", "--memory"])
    assert (long.n_patches, long.n_seeds, long.etas, long.memory, long.channels_last) == (32, 4, [1.0], True, False)
    gpu = bench.parse_args(["--preset", "gpu", "--n-seeds", "3"])
    assert (gpu.n_patches, gpu.patch_size, gpu.n_seeds, gpu.device) == (32, None, 3, "cuda")
    assert gpu.n_patches >= 16 and cpu.n_patches >= 16
    names = [n for n, _ in bench.candidate_settings({"window": [300, 800]}, [10, 50], [0.0, 1.0], bf16=True)]
    assert names == ["ddpm-1000", "ddim-10 eta0", "ddim-10 eta1", "ddim-50 eta0", "ddim-50 eta1",
                     "ddim-10 eta0 bf16", "ddim-10 eta1 bf16", "ddim-50 eta0 bf16", "ddim-50 eta1 bf16"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--n-seeds", "1"])


def test_center_crop_mean_pcc_and_checkpoint_test_set(random_ckpt: Path, data_cache_dir: Path) -> None:
    arr = np.arange(2 * 4 * 6 * 6).reshape(2, 4, 6, 6)
    crop = center_crop(arr, (2, 2, 4))
    assert crop.shape == (2, 2, 2, 4)
    assert crop[0, 0, 0, 0] == arr[0, 1, 2, 1] and crop[1, -1, -1, -1] == arr[1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"crop \[8, 2, 2\] \(Z, Y, X\) is larger than the patches \[4, 6, 6\]"):
        center_crop(arr, (8, 2, 2))
    gt = np.random.default_rng(0).random((3, 2, 4, 4))
    pred = gt.copy()
    pred[1] = -gt[1]  # PCC 1, -1, 1
    assert mean_pcc(gt, pred) == pytest.approx(1.0 / 3.0)
    assert mean_pcc(gt[:1], 2 * gt[:1] + 1) == pytest.approx(1.0)  # PCC is invariant to gain and offset
    with pytest.raises(ValueError, match="3 ground-truth patches and 2 predictions"):
        mean_pcc(gt, pred[:2])
    ts = checkpoint_test_set(random_ckpt, 2, data_cache_dir / "cache", (8, 16, 16))
    assert ts.bf.shape == ts.fl.shape == ts.mask.shape == (2, 8, 16, 16)
    assert 0.0 <= ts.fl.min() and ts.fl.max() <= 1.0
    assert all(name.startswith("test") for name in ts.names)
    full = checkpoint_test_set(random_ckpt, 2, data_cache_dir / "cache")
    assert full.names == ts.names and np.array_equal(center_crop(full.bf, (8, 16, 16)), ts.bf)


def test_run_data_settings_from_the_run_folder(tmp_path: Path) -> None:
    """A run folder's saved config and split are used; only the data keys that describe the data are kept."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "data:\n  n_fovs: 7\n  fov_shape: [16, 48, 48]\n  split_seed: 3\n  batch_size: 9\n")
    ckpt = run / "checkpoints" / "last.ckpt"
    assert run_data_settings(ckpt) == {"n_fovs": 7, "fov_shape": [16, 48, 48], "split_seed": 3, "split_file": None}
    (run / "split.csv").write_text("fov,split\n")
    assert run_data_settings(ckpt)["split_file"] == str((run / "split.csv").resolve())
    assert "batch_size" not in RUN_DATA_KEYS


def test_ddim_study_csv_and_plot(random_ckpt: Path, data_cache_dir: Path, tmp_path: Path) -> None:
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


def test_ddim_study_windows_match_the_sampler(random_ckpt: Path) -> None:
    from dm4isl.models.checkpoint import load_model
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
    # relative: the std maps of this random net are ~1e-7, so only rtol tells ddof 1 (the sampler's) from ddof 0
    std = res["windows"][(5, 15)]["std_intra"][0]
    assert float(std.max()) > 0.0
    np.testing.assert_allclose(std, pred.std_intra[:, 0].numpy(), rtol=1e-5, atol=0.0)
    np.testing.assert_allclose(res["ddpm"][0], pred.ddpm[:, 0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"sampler 'ddim50'; expected 'ddpm' or 'ddim-<steps>\[-eta<eta>\]'"):
        study.parse_sampler("ddim50")
    with pytest.raises(ValueError, match=r"window '800-300'; expected"):
        study.parse_windows("300-800,800-300")


def test_peak_tensor_memory_counts_live_storages() -> None:
    bench = load_script("benchmark_sampling")
    mib = 2**20
    weights = torch.nn.Linear(256, 256)  # 256·256 + 256 float32 parameters, made before the mode

    def work() -> None:
        a = torch.zeros(mib // 4)  # 1 MiB
        b = torch.ones(2 * mib // 4)  # 2 MiB: 3 MiB live
        view = b[:10]  # a view adds no storage
        del a
        c = torch.empty(mib // 4)  # 1 MiB: 3 MiB live again, not 4
        del b, c, view

    peak = bench.tensor_peak_mib(work, weights)
    assert peak == pytest.approx(3.0 + (256 * 256 + 256) * 4 / mib)
    with bench.PeakTensorMemory() as tracker:
        kept = torch.zeros(mib // 4)
    assert tracker.live == tracker.peak == mib and kept.numel() == mib // 4


def test_training_study_table_pairs_patches_against_the_paper_arm() -> None:
    """The study's table: means per arm × correction and paired differences from the paper arm with CIs."""
    study = load_script("training_study")
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 16)
    rows = []
    for arm, shift in (("paper", 0.0), ("x0_pm1_z", 0.1)):
        for i, value in enumerate(base + shift):
            rows.append({"arm": arm, "step": 2000, "correction": "off", "patch": i, "ddpmavg_pcc": value,
                         "ddpmavg_mse": 0.05 - shift / 10, "ddpmavg_ms_ssim": value, "ddpm_pcc": value - 0.05,
                         "brightness_error": -shift})
    table = {r["arm"]: r for r in study.summarize(rows)}
    assert table["paper"]["delta_ddpmavg_pcc_vs_paper"] == pytest.approx(0.0)
    assert table["x0_pm1_z"]["delta_ddpmavg_pcc_vs_paper"] == pytest.approx(0.1)
    low, high = (float(v) for v in table["x0_pm1_z"]["delta_ddpmavg_pcc_ci"].split(".."))
    assert low == pytest.approx(0.1, abs=1e-3) and high == pytest.approx(0.1, abs=1e-3)  # a constant shift
    assert table["x0_pm1_z"]["ddpmavg_pcc"] == pytest.approx(base.mean() + 0.1)
    assert table["x0_pm1_z"]["abs_brightness_error"] == pytest.approx(0.1)
    args = study.parse_args(["test", "--at-step", "2000", "--arms", "paper"])
    assert args.at_step == 2000 and study.parse_args(["curves", "--every", "1000"]).every == 1000


def test_benchmark_scores_average_every_seed_run() -> None:
    """Per-patch PCC = mean over the seeds' DDPMavgs; AUROC voxel pools hold every seed's errors and std maps."""
    from dm4isl.metrics.basic import pcc
    from dm4isl.uncertainty.evaluation import auroc

    bench = load_script("benchmark_sampling")
    rng = np.random.default_rng(0)
    k, n, shape = 3, 4, (4, 8, 8)
    gt = rng.random((n, *shape))
    avg = gt[None] + rng.normal(0, 0.2, (k, n, *shape))
    intra = np.abs(avg - gt[None]) + rng.normal(0, 0.1, (k, n, *shape))
    inter = avg.std(0)
    s = bench.score({"ddpmavg_seeds": avg, "std_intra_seeds": intra, "std_inter": inter}, gt, 0.2, 0)
    expected = [np.mean([pcc(gt[i], avg[j, i]) for j in range(k)]) for i in range(n)]
    np.testing.assert_allclose(s.pcc, expected)
    assert np.isnan(s.ms_ssim).all()  # no scales asked
    errors = np.abs(avg - gt[None]) > 0.2
    assert s.auroc_intra.auroc() == pytest.approx(auroc(intra.ravel(), errors.ravel()))
    assert s.auroc_inter.auroc() == pytest.approx(auroc(np.broadcast_to(inter, avg.shape).ravel(), errors.ravel()))
    assert s.auroc_intra.n_pos.sum() == errors.sum()  # every seed's errors are in the pools
