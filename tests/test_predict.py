"""dm4isl-predict end to end on a tiny trained checkpoint: products, skip on rerun, restart after a crash, checks."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

import dm4isl
from conftest import CONF_DIR, REPO_ROOT, require
from dm4isl.errors import CheckpointError, DataError
from dm4isl.evaluation import evaluate_folder
from dm4isl.io import layout
from dm4isl.io.atomic import read_channel_names, read_tiff_info
from dm4isl.models.checkpoint import load_model, read_checkpoint
from dm4isl.predict import predict_command
from dm4isl.train import train
from dm4isl.uncertainty.masks import MaskSettings, patch_flag

TINY = [
    "experiment=demo",
    "data.n_fovs=8",
    "data.fov_shape=[16,96,96]",
    "data.n_val_patches=2",
    "data.n_test_patches=4",
    "data.eval_patch_size=[16,32,32]",
    "data.samples_per_epoch=8",
    "trainer.max_epochs=1",
    "trainer.max_time=null",
    "test=false",
    "logger=csv",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train the tiny diffusion net for a few steps; returns its checkpoint and a patch folder of test patches."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from conftest import CONF_DIR

    root = tmp_path_factory.mktemp("tiny")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=TINY)
    with open_dict(cfg):
        cfg.paths.root_dir = str(root)
        cfg.paths.data_dir = str(root / "data")
        cfg.paths.log_dir = str(root / "outputs")
        cfg.paths.output_dir = str(root / "run")
    GlobalHydra.instance().clear()
    train(cfg)
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    # a patch folder in the reference layout from the cached test patches (uint8 = value/255)
    ts = np.load(next((root / "data" / "cache" / "eval_sets").glob("*-test-*.npz")))
    folder = root / "patches"
    for sub in ("BF", "GT"):
        (folder / sub).mkdir(parents=True)
    for i in range(len(ts["names"])):
        tifffile.imwrite(folder / "BF" / f"{i}.tiff", np.round(ts["bf"][i] * 255).astype(np.uint8))
        tifffile.imwrite(folder / "GT" / f"{i}.tiff", np.round(ts["fl"][i] * 255).astype(np.uint8))
    return {"ckpt": ckpt, "patches": folder, "root": root}


def _predict_cfg(compose_cfg, run: dict, out: Path, extra: list[str] | None = None):
    cfg = compose_cfg(
        "predict",
        [
            f"ckpt_path={run['ckpt']}",
            f"input={run['patches']}",
            f"output_dir={out}",
            "sampler=ddim",
            "sampler.num_steps=5",
            "n_seeds=2",
            "batch_size=4",
            "device=cpu",
            *(extra or []),
        ],
    )
    return cfg


def test_checkpoint_is_self_describing_and_weights_only(tiny_run: dict) -> None:
    ckpt = read_checkpoint(tiny_run["ckpt"])  # torch.load(weights_only=True) inside
    hp = ckpt["hyper_parameters"]
    assert hp["organelle"]["name"] == "nuclear_envelope" and hp["organelle"]["fl_window"] == [390, 1500]
    demo = yaml.safe_load((CONF_DIR / "experiment" / "demo.yaml").read_text(encoding="utf-8"))
    assert hp["patch_size"] == demo["data"]["patch_size"] and hp["array_axes"] == "ZYX"  # the demo's crop, as written
    assert ckpt["dm4isl"]["model_class"] == "dm4isl.models.ddpm.DDPMModule"
    model = load_model(tiny_run["ckpt"])
    assert not model.training and model.fl_mean is not None


def test_predict_folder_products_skip_and_csv(compose_cfg, tiny_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    rows = predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["uncertainty.threshold=0.1"]))
    assert len(rows) == 4
    for product in ("DDPM", "DDPMavg", "std_intra", "std_inter", "error_mask", "GT", "BF"):
        files = sorted((out / product).glob("*.tiff"))
        assert [f.name for f in files] == ["0.ome.tiff", "1.ome.tiff", "2.ome.tiff", "3.ome.tiff"], product
        arr = tifffile.imread(files[0])
        assert arr.shape == (16, 32, 32)
        assert arr.dtype == (np.uint8 if product == "error_mask" else np.float32)
        expected = "BF (brightfield)" if product == "BF" else f"{product} (nuclear envelope)"
        assert read_channel_names(files[0]) == [expected]
        voxel, meta = read_tiff_info(files[0])
        assert voxel == pytest.approx((0.29, 0.108 * 624 / 244, 0.108 * 924 / 366))  # true size of the arrays
        assert meta["seeds"] == [0, 1] and meta["sampler"]["num_steps"] == 5 and meta["revision"]
    pred = tifffile.imread(out / "DDPMavg" / "0.ome.tiff")
    assert 0.0 <= pred.min() and pred.max() <= 1.0
    assert float(tifffile.imread(out / "std_inter" / "0.ome.tiff").mean()) > 0.0
    assert not (out / "DDPMavg_seeds").exists()  # members only with save_seeds
    with open(out / "predictions.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["name"] for r in table] == ["0", "1", "2", "3"]
    assert table[0]["sampler"] == "ddim" and table[0]["steps"] == "5" and table[0]["seeds"] == "0;1"
    assert table[0]["uncertainty_source"] == "inter" and float(table[0]["threshold"]) == 0.1
    assert table[0]["threshold_source"] == "given"
    assert table[0]["flagged"] in ("0", "1") and 0.0 <= float(table[0]["mask_fraction"]) <= 1.0
    assert table[0]["benchmark_flagged"] == ""  # no intra threshold valid for DDIM-5 (the published one: DDPM-1000)
    # a rerun with the same settings skips every input and rewrites nothing
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tiff")}
    predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["uncertainty.threshold=0.1"]))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tiff")} == mtimes
    # other sampler settings are not skipped, and what they do not produce does not stay behind
    rows = predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["sampler.num_steps=4", "n_seeds=1"]))
    assert all(r["steps"] == "4" for r in rows)
    assert not list((out / "std_inter").glob("*.tiff")) and not list((out / "error_mask").glob("*.tiff"))
    assert len(list((out / "std_intra").glob("*.tiff"))) == 4
    assert all(r["products"] == "DDPM;DDPMavg;std_intra" for r in rows)


def test_predictions_csv_has_the_authors_patch_flag(compose_cfg, tiny_run: dict, tmp_path: Path) -> None:
    """benchmark_flagged: the intra-process std above the threshold → the authors' per-patch segmentation → more
    than 1 % of the patch, recomputed here from the std_intra files."""
    out = tmp_path / "pred"
    threshold = 0.012  # about the 80th percentile of this model's std maps
    rows = predict_command(_predict_cfg(compose_cfg, tiny_run, out, [
        "n_seeds=1", "uncertainty.source=intra", f"uncertainty.threshold={threshold}"]))
    expected = []
    for row in rows:
        std = tifffile.imread(out / "std_intra" / f"{row['name']}.ome.tiff")
        flagged, fraction = patch_flag(std, threshold, MaskSettings.for_organelle("nuclear_envelope"))
        expected.append((int(flagged), f"{fraction:.6f}"))
    assert [(r["benchmark_flagged"], r["benchmark_fraction"]) for r in rows] == expected
    assert [(r["flagged"], r["mask_fraction"]) for r in rows] == expected  # the configured mask is the same rule here
    assert any(float(f) > 0 for _, f in expected)


def test_changed_input_under_an_old_name_is_predicted_again(compose_cfg, tiny_run: dict, tmp_path: Path) -> None:
    """The skip key holds a content hash of the input: a new brightfield file with an old name is not skipped."""
    patches = tmp_path / "patches"
    shutil.copytree(tiny_run["patches"], patches)
    run = {**tiny_run, "patches": patches}
    out = tmp_path / "pred"
    first = predict_command(_predict_cfg(compose_cfg, run, out, ["n_seeds=1"]))
    before = tifffile.imread(out / "DDPMavg" / "1.ome.tiff")
    bf = tifffile.imread(patches / "BF" / "1.tiff")
    tifffile.imwrite(patches / "BF" / "1.tiff", np.ascontiguousarray(bf[:, ::-1]))  # another image, same name
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "DDPMavg").glob("*.tiff")}
    second = predict_command(_predict_cfg(compose_cfg, run, out, ["n_seeds=1"]))
    changed = {p.name for p in (out / "DDPMavg").glob("*.tiff") if p.stat().st_mtime_ns != mtimes[p.name]}
    assert changed == {"1.ome.tiff"}  # only the changed input is predicted again
    assert not np.array_equal(tifffile.imread(out / "DDPMavg" / "1.ome.tiff"), before)
    hashes = {r["name"]: r["input_hash"] for r in first}, {r["name"]: r["input_hash"] for r in second}
    assert [n for n in hashes[0] if hashes[0][n] != hashes[1][n]] == ["1"]


def test_crash_mid_run_then_restart_completes(compose_cfg, tiny_run: dict, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "pred"
    real = layout.write_tiff  # the one writer of prediction folders
    calls = {"n": 0}

    def dying_write(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 9:  # dies inside the second batch
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(layout, "write_tiff", dying_write)
    with pytest.raises(OSError, match="No space left"):
        predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["n_seeds=1", "batch_size=1"]))
    monkeypatch.setattr(layout, "write_tiff", real)
    assert not list(out.rglob("*.part")), "no partial file may be left behind"
    with open(out / "predictions.csv", newline="") as fh:
        done = [r["name"] for r in csv.DictReader(fh)]
    assert done == ["0"]
    for f in out.rglob("*.tiff"):
        tifffile.imread(f)  # every file on disk is complete
    rows = predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["n_seeds=1", "batch_size=1"]))
    assert [r["name"] for r in rows] == ["0", "1", "2", "3"]
    assert len(list((out / "DDPMavg").glob("*.ome.tiff"))) == 4


def test_mismatched_checkpoint_and_input(compose_cfg, tiny_run: dict, tmp_path: Path) -> None:
    cfg = _predict_cfg(compose_cfg, tiny_run, tmp_path / "a", ["organelle=nucleoli"])
    with pytest.raises(CheckpointError, match=r"last\.ckpt: trained on organelle 'nuclear_envelope'"):
        predict_command(cfg)
    odd = tmp_path / "odd"
    odd.mkdir()
    tifffile.imwrite(odd / "v.tiff", np.zeros((12, 32, 32), np.uint8))
    cfg = _predict_cfg(compose_cfg, tiny_run, tmp_path / "b", [f"input={odd}"])
    with pytest.raises(CheckpointError, match=r"Z = 12 slices; the checkpoint was trained on Z = 16"):
        predict_command(cfg)
    with pytest.raises(CheckpointError, match=r"nope\.ckpt: checkpoint not found"):
        predict_command(compose_cfg("predict", [f"ckpt_path={tmp_path / 'nope.ckpt'}", f"input={odd}"]))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(tiny_run["ckpt"].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"broken\.ckpt: not a readable checkpoint"):
        load_model(broken)
    with pytest.raises(DataError, match=r"missing: input not found"):
        predict_command(_predict_cfg(compose_cfg, tiny_run, tmp_path / "c", [f"input={tmp_path / 'missing'}"]))


def test_python_api(tiny_run: dict) -> None:
    bf = tifffile.imread(tiny_run["patches"] / "BF" / "0.tiff")
    out = dm4isl.predict(bf, tiny_run["ckpt"], sampler={"method": "ddim", "num_steps": 6}, n_seeds=2, device="cpu")
    assert set(out) == {"DDPM", "DDPMavg", "std_intra", "std_inter"}
    assert out["DDPMavg"].shape == (16, 32, 32) and out["DDPMavg"].dtype == np.float32
    again = dm4isl.predict(bf, tiny_run["ckpt"], sampler={"method": "ddim", "num_steps": 6}, n_seeds=2, device="cpu")
    np.testing.assert_array_equal(out["DDPMavg"], again["DDPMavg"])  # seeded: reproducible
    assert torch.get_default_dtype() == torch.float32


def test_predict_with_unet_checkpoint(compose_cfg, tiny_run: dict, tmp_path: Path) -> None:
    """Baselines share the predict path; they have no uncertainty products (absent, not faked)."""
    cfg = compose_cfg(
        "train",
        ["model=unet", "model.net.base_channels=4", *[o for o in TINY if not o.startswith("experiment")],
         "data.patch_size=[16,32,32]"],
    )
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "pred"
    cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={tiny_run['patches']}", f"output_dir={out}"])
    rows = predict_command(cfg)
    assert len(rows) == 4 and rows[0]["model"] == "UNetModule" and rows[0]["products"] == "Unet"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["BF", "GT", "Unet"]
    assert tifffile.imread(out / "Unet" / "0.ome.tiff").shape == (16, 32, 32)
    assert read_channel_names(out / "Unet" / "0.ome.tiff") == ["Unet (nuclear envelope)"]


def test_calibrate_on_validation_and_score_on_test(tiny_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds are fitted on the validation patches only and scored on the test patches only (distinct sets)."""
    from dm4isl.data.patches import PatchSet
    from dm4isl.prediction import calibration as uncertainty_report
    from dm4isl.sampling import SamplerSettings

    model = load_model(tiny_run["ckpt"])
    cache = tiny_run["root"] / "data" / "cache" / "eval_sets"
    sets = {}
    for split in ("val", "test"):
        arr = np.load(next(cache.glob(f"*-{split}-*.npz")))
        mask = np.zeros_like(arr["mask"])
        mask[:, :, :8, :8] = 1  # a planted region, so the planted AUROC is defined
        sets[split] = PatchSet(arr["bf"], arr["fl"], mask, [str(n) for n in arr["names"]], list(arr["sources"]),
                               arr["corners"])
    val, test = sets["val"], sets["test"]
    assert (len(val), len(test)) == (2, 4)
    assert not set(val.sources) & set(test.sources)  # split by FOV: no shared source, hence no shared patch
    seen: dict[str, list[np.ndarray]] = {"calibrate": [], "score": []}
    real_calibrate, real_score = uncertainty_report.calibrate_threshold, uncertainty_report.evaluate_uncertainty

    def calibrate(std_maps, preds, gts, *args, **kwargs):
        seen["calibrate"].append(np.asarray(gts))
        return real_calibrate(std_maps, preds, gts, *args, **kwargs)

    def score(std_maps, preds, gts, *args, **kwargs):
        seen["score"].append(np.asarray(gts))
        return real_score(std_maps, preds, gts, *args, **kwargs)

    monkeypatch.setattr(uncertainty_report, "calibrate_threshold", calibrate)
    monkeypatch.setattr(uncertainty_report, "evaluate_uncertainty", score)
    settings = SamplerSettings(method="ddim", num_steps=5, mean_correction=False)
    organelle = dict(model.hparams["organelle"])
    result = uncertainty_report.calibrate_and_score(model, val, test, settings, 2, organelle, tau=0.05)
    assert len(seen["calibrate"]) == 2 and all(np.array_equal(g, val.fl) for g in seen["calibrate"])
    # scored with the calibrated thresholds only: the published ones are not valid for DDIM-5
    assert len(seen["score"]) == 2 and all(np.array_equal(g, test.fl) for g in seen["score"])
    val_pred = uncertainty_report.predict_patch_set(model, val, settings, 2)
    for source in ("intra", "inter"):
        entry = result["maps"][source]
        expected = real_calibrate(val_pred[f"std_{source}"], val_pred["DDPMavg"], val.fl, 0.05)
        assert (entry["calibrated_threshold"], entry["validation_f1"]) == pytest.approx(expected)
        report = entry["test_calibrated"]
        assert 0.0 <= report["auroc_error"] <= 1.0 and 0.0 <= report["auroc_planted"] <= 1.0
        assert report["n_patches"] == 4
    # the published 0.1 is for DDPM-1000 maps of [0, 1] targets: not valid for DDIM-5 on this [-1, 1] model
    assert result["maps"]["inter"]["published_threshold"] is None
    assert {e["map"] for e in result["entries"]} == {"intra", "inter"}
    assert all(e["setting"]["method"] == "ddim" and e["setting"]["num_steps"] == 5 for e in result["entries"])


def test_mismatched_threshold_writes_no_mask_then_calibration_is_used(
    compose_cfg, tiny_run: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A published DDPM-1000 threshold is never applied to DDIM maps; a calibration for the setting is."""
    from dm4isl.models.checkpoint import fingerprint
    from dm4isl.uncertainty.thresholds import calibration_path, write_calibration

    out = tmp_path / "pred"
    with caplog.at_level("WARNING"):
        rows = predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["n_seeds=1"]))
    assert not (out / "error_mask").exists()
    assert all(r["threshold"] == "" and "error_mask" not in r["products"] for r in rows)
    assert "no intra-process std threshold valid for ddim-5 eta 1" in caplog.text
    assert "the organelle's 0.055 is for ddpm-1000" in caplog.text

    model = load_model(tiny_run["ckpt"])
    setting = {"method": "ddim", "num_steps": 5, "eta": 1.0, "window": [300, 800], "clip_x0": [-1.0, 1.0],
               "mean_correction": False, "target_range": [model.target.low, model.target.high]}  # sampler=ddim
    calib = calibration_path(tiny_run["ckpt"])
    try:
        write_calibration(calib, [{"map": "intra", "threshold": 0.02, "setting": setting}],
                          fingerprint(tiny_run["ckpt"]))
        rows = predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["n_seeds=1"]))
        assert all(r["threshold_source"] == "calibrated" and float(r["threshold"]) == 0.02 for r in rows)
        assert len(list((out / "error_mask").glob("*.tiff"))) == 4
        # another setting (10 steps) has no calibration: no masks again
        rows = predict_command(_predict_cfg(compose_cfg, tiny_run, tmp_path / "p10", ["n_seeds=1",
                                                                                       "sampler.num_steps=10"]))
        assert all(r["threshold"] == "" for r in rows)
    finally:
        calib.unlink(missing_ok=True)


def test_sampler_overrides_adjust_the_checkpoint_sampler(compose_cfg, tiny_run: dict, tmp_path: Path) -> None:
    """sampler.<key>=... adjusts the checkpoint's own sampler; sampler=<option> replaces it."""
    from dm4isl.sampling.sampler import adjust_settings

    model = load_model(tiny_run["ckpt"])
    stored = model.test_settings
    assert stored.method == "ddim" and stored.mean_correction
    cfg = compose_cfg("predict", [f"ckpt_path={tiny_run['ckpt']}", f"input={tiny_run['patches']}",
                                  "sampler.num_steps=3", "sampler.eta=0"])
    from omegaconf import OmegaConf

    adjusted = adjust_settings(stored, OmegaConf.to_container(cfg.sampler))
    assert (adjusted.method, adjusted.num_steps, adjusted.eta, adjusted.mean_correction) == ("ddim", 3, 0.0, True)
    cfg = compose_cfg("predict", [f"ckpt_path={tiny_run['ckpt']}", f"input={tiny_run['patches']}", "sampler=ddpm"])
    replaced = adjust_settings(stored, OmegaConf.to_container(cfg.sampler))
    assert (replaced.method, replaced.num_steps, replaced.mean_correction) == ("ddpm", None, False)
    assert adjust_settings(stored, OmegaConf.to_container(
        compose_cfg("predict", [f"ckpt_path={tiny_run['ckpt']}", f"input={tiny_run['patches']}"]).sampler)) == stored
    rows = predict_command(compose_cfg("predict", [f"ckpt_path={tiny_run['ckpt']}", f"input={tiny_run['patches']}",
                                                   f"output_dir={tmp_path / 'o'}", "sampler.num_steps=3"]))
    assert all(r["sampler"] == "ddim" and r["steps"] == "3" for r in rows)


def test_saved_seed_members_are_scored_with_the_crps(compose_cfg, tiny_run: dict, tmp_path: Path) -> None:
    """save_seeds writes each seed's DDPM and DDPMavg; dm4isl-evaluate finds them and reports the ensemble CRPS."""
    out = tmp_path / "pred"
    rows = predict_command(_predict_cfg(compose_cfg, tiny_run, out, ["save_seeds=true", "sampler.num_steps=3"]))
    assert "DDPMavg_seeds/seed1" in rows[0]["products"].split(";")
    member = out / "DDPMavg_seeds" / "seed1" / "0.ome.tiff"
    assert read_channel_names(member) == ["DDPMavg seed 1 (nuclear envelope)"]
    seeds = [tifffile.imread(out / "DDPMavg_seeds" / f"seed{k}" / "0.ome.tiff") for k in (0, 1)]
    np.testing.assert_allclose(tifffile.imread(out / "DDPMavg" / "0.ome.tiff"), np.mean(seeds, axis=0), atol=1e-6)
    result = evaluate_folder(out, None, metrics="fast", progress=False, n_resamples=99)
    assert result.methods == ["DDPM", "DDPMavg"] and set(result.ensembles) == {"DDPM", "DDPMavg"}
    assert result.ensembles["DDPMavg"].n_members == 2
    crps = result.results["DDPMavg"].per_patch["crps"]
    gts = [tifffile.imread(out / "GT" / f"{i}.ome.tiff") for i in range(4)]
    members = [[tifffile.imread(out / "DDPMavg_seeds" / f"seed{k}" / f"{i}.ome.tiff") for k in (0, 1)]
               for i in range(4)]
    # fair CRPS of two members = mean |x_k − y| − |x_0 − x_1| / 2, voxel by voxel
    expected = [float(np.mean((np.abs(m[0] - g) + np.abs(m[1] - g)) / 2 - np.abs(m[0] - m[1]) / 2))
                for m, g in zip(members, gts, strict=True)]
    np.testing.assert_allclose(crps, expected, rtol=1e-5)


def test_console_script_runs_as_a_subprocess(tiny_run: dict, tmp_path: Path) -> None:
    """dm4isl-predict as a user runs it: the installed console script in its own process."""
    script = Path(sys.executable).with_name("dm4isl-predict")
    require(script.exists(), f"console script not installed at {script} (pip install -e .)")
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [str(script), f"ckpt_path={tiny_run['ckpt']}", f"input={tiny_run['patches']}", f"output_dir={out}",
         "sampler=ddim", "sampler.num_steps=3", "device=cpu", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "DDPMavg").iterdir()) == [f"{i}.ome.tiff" for i in range(4)]
    with open(out / "predictions.csv", newline="") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["0", "1", "2", "3"]
    bad = subprocess.run([str(script), f"ckpt_path={tmp_path / 'nope.ckpt'}", f"input={tiny_run['patches']}",
                          f"output_dir={tmp_path / 'x'}", f"hydra.run.dir={tmp_path / 'hydra2'}"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert bad.returncode != 0 and "nope.ckpt" in bad.stderr and not (tmp_path / "x").exists()
