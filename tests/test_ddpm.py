"""The conditional DDPM LightningModule: network size, training/validation/test steps, checkpoints, writer, demo."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import tifffile
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from conftest import MICRO_NET, MICRO_ORGANELLE, require
from dm4isl.callbacks.prediction_writer import PredictionWriter
from dm4isl.errors import CheckpointError
from dm4isl.io.atomic import read_channel_names, read_tiff_info
from dm4isl.models.checkpoint import check_compatible, fingerprint
from dm4isl.models.ddpm import DDPMModule
from dm4isl.models.nets import build_net, count_parameters

#: Folders the DDPM test step writes (prediction writer).
FOLDERS = ("BF", "GT", "DDPM", "DDPMavg", "std_intra", "linear")
NET_DIR = Path(__file__).resolve().parents[1] / "dm4isl" / "conf" / "model" / "net"
#: Parameters of the paper's network (SPEC §2: ≈ 192.8 M).
PAPER_PARAMETERS = 192_765_569
#: Unequal voxel sizes (Z, Y, X) µm, so that a swap of axes in the written metadata shows.
ORGANELLE = {**MICRO_ORGANELLE, "voxel_size": [0.5, 0.29, 0.27]}
PATCH = (4, 16, 16)
#: Cheap sampler: 4 DDIM steps, all of them inside the averaging window.
CHEAP_SAMPLER = {"method": "ddim", "num_steps": 4, "window": [0, 1000], "mean_correction": True}


def _net(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(NET_DIR / f"{name}.yaml"))


def _loader(n: int, seed: int = 0, batch_size: int = 2) -> DataLoader:
    """Random batches in the datamodule's format: fl = 0.5·bf + 0.1 (a known linear relation)."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        bf = torch.rand(1, *PATCH, generator=gen)
        items.append({"bf": bf, "fl": 0.5 * bf + 0.1, "mask": torch.zeros(1, *PATCH), "index": i, "name": f"p{i}"})
    return DataLoader(items, batch_size=batch_size)


def _module(**kwargs) -> DDPMModule:
    defaults = {"net": MICRO_NET, "organelle": ORGANELLE, "patch_size": list(PATCH), "lr": 1e-3,
                "val_sampler": CHEAP_SAMPLER, "test_sampler": CHEAP_SAMPLER, "val_num_patches": 3}
    return DDPMModule(**{**defaults, **kwargs})


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_paper_net_parameter_count_on_meta_device() -> None:
    with torch.device("meta"):
        net = build_net(_net("paper"))
    assert count_parameters(net) == PAPER_PARAMETERS


def test_tiny_net_shapes() -> None:
    net = build_net(_net("tiny"))
    out = net(torch.rand(2, 2, 16, 32, 32), timesteps=torch.tensor([0, 999]))
    assert out.shape == (2, 1, 16, 32, 32)
    with pytest.raises(ValueError, match="unknown keys"):
        build_net({**_net("tiny"), "widht": 3})


def test_fit_validate_test_and_checkpoint_roundtrip(tmp_path: Path) -> None:
    model = _module()
    writer = PredictionWriter(str(tmp_path / "pred"), voxel_size=ORGANELLE["voxel_size"], print_table=False)
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[writer])
    trainer.fit(model, train_dataloaders=_loader(6), val_dataloaders=_loader(4, seed=1))
    for key in ("train/loss", "val/ddpm_pcc", "val/ddpm_mse", "val/ddpmavg_pcc", "val/ddpmavg_mse"):
        assert key in trainer.callback_metrics, key
    assert "val/ddpmavg_ms_ssim" not in trainer.callback_metrics  # 16×16 is below MS-SSIM's 64-px minimum
    # Running sums: 2 epochs × 6 patches; fl = 0.5·bf + 0.1 gives an exact linear baseline and mean.
    assert float(model.data_stats[0]) == 2 * 6 * np.prod(PATCH)
    bf = torch.rand(1, 1, *PATCH)
    torch.testing.assert_close(model.linear_baseline(bf), 0.5 * bf + 0.1, rtol=0, atol=1e-6)
    assert 0.3 < model.fl_mean < 0.4

    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    hp = raw["hyper_parameters"]
    assert hp["organelle"] == ORGANELLE and hp["patch_size"] == list(PATCH)
    assert hp["array_axes"] == "ZYX" and hp["tensor_axes"] == "BCZYX" and hp["net"] == MICRO_NET
    assert hp["target_range"] == (-1.0, 1.0) and hp["loss"] == "l1" and hp["cond_first"] is True
    loaded = DDPMModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu")
    assert torch.equal(loaded.data_stats, model.data_stats)
    x, t = torch.rand(1, 1, *PATCH), torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eps(x, t, bf), model.eps(x, t, bf))

    trainer.test(model, dataloaders=_loader(3, seed=2), ckpt_path=str(ckpt))
    for folder in FOLDERS:
        files = sorted(p.name for p in (tmp_path / "pred" / folder).iterdir())
        assert files == ["p0.ome.tiff", "p1.ome.tiff", "p2.ome.tiff"], folder
    ddpmavg_file = tmp_path / "pred" / "DDPMavg" / "p1.ome.tiff"
    ddpmavg = tifffile.imread(ddpmavg_file)
    assert ddpmavg.dtype == np.float32 and ddpmavg.shape == PATCH and 0 <= ddpmavg.min() <= ddpmavg.max() <= 1
    # the same provenance as dm4isl-predict: sampler, seeds, checkpoint (path and hash), revision; channel names
    voxel, meta = read_tiff_info(ddpmavg_file)
    assert voxel == pytest.approx(ORGANELLE["voxel_size"]) and meta["model"] == "DDPMModule"
    require(importlib.util.find_spec("bioio_ome_tiff") is not None, "bioio-ome-tiff (an independent reader) is missing")
    from bioio import BioImage
    from bioio_ome_tiff import Reader as OmeTiffReader

    assert tuple(BioImage(ddpmavg_file, reader=OmeTiffReader).physical_pixel_sizes) == pytest.approx((0.5, 0.29, 0.27))
    assert meta["sampler"] == model.test_settings.to_dict() and meta["seeds"] == [model.test_settings.seed]
    assert meta["checkpoint"] == str(ckpt) and meta["checkpoint_sha256_16"] == fingerprint(ckpt)
    assert meta["revision"] and meta["patch"] == "p1" and meta["output"] == "DDPMavg"
    assert read_channel_names(ddpmavg_file) == ["DDPMavg (nuclear envelope)"]
    assert read_channel_names(tmp_path / "pred" / "BF" / "p1.ome.tiff") == ["BF (brightfield)"]
    with open(tmp_path / "pred" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 3 and {r["method"] for r in rows} == {"DDPM", "DDPMavg", "linear"}
    linear = [float(r["pcc"]) for r in rows if r["method"] == "linear"]
    assert min(linear) > 0.999  # the linear baseline is exact on this data
    assert (tmp_path / "pred" / "preview.png").stat().st_size > 0


def test_training_loss_is_l1_between_noise_and_its_prediction_and_overfits_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loss of a training step equals a hand computation — L1 between the drawn noise ε and the network's ε̂ on
    x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε at the drawn t, ᾱ from the paper's scaled-linear betas — and falls when the same
    batch is fitted repeatedly."""
    import dm4isl.models.ddpm as ddpm_module
    from dm4isl.sampling.noise import training_noise

    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(*args, **kwargs):  # the real draw, recorded
        noise, t = training_noise(*args, **kwargs)
        drawn.append((noise.clone(), t.clone()))
        return noise, t

    monkeypatch.setattr(ddpm_module, "training_noise", spy)
    torch.manual_seed(7)
    model = _module(lr=1e-2)
    for param in model.parameters():  # MONAI zero-initialises the output convolution: give ε̂ something to say
        torch.nn.init.normal_(param, std=0.05)
    batch = next(iter(_loader(2)))
    with pytest.warns(UserWarning, match="self.log"):
        loss = model.training_step(batch, 0)
    noise, t = drawn[0]
    assert t.shape == (2,) and int(t.min()) >= 0 and int(t.max()) < 1000 and noise.shape == (2, 1, *PATCH)
    betas = torch.linspace(0.0005**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)[t].float().view(-1, 1, 1, 1, 1)
    x0 = 2.0 * batch["fl"] - 1.0  # target range [-1, 1]
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    with torch.no_grad():
        eps_hat = model.net(torch.cat([batch["bf"], x_t], dim=1), timesteps=t)  # brightfield first, as the reference
    assert loss.item() == pytest.approx(float((eps_hat - noise).abs().mean()), rel=1e-5)
    optimizer = model.configure_optimizers()
    losses = []
    with pytest.warns(UserWarning, match="self.log"):
        for step in range(40):
            optimizer.zero_grad()
            step_loss = model.training_step(batch, step)
            step_loss.backward()
            optimizer.step()
            losses.append(step_loss.item())
    assert all(torch.equal(n, noise) and torch.equal(tt, t) for n, tt in drawn)  # one batch, one draw
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_validation_is_batch_independent_and_limited(tmp_path: Path) -> None:
    model = _module(val_num_patches=3)
    model.data_stats += torch.tensor([1.0, 0.5, 0.3, 0.3, 0.2], dtype=torch.float64)
    bf = torch.rand(4, 1, *PATCH)
    with torch.no_grad():
        whole = model.predict_fluorescence(bf, torch.arange(4))
        part = model.predict_fluorescence(bf[2:], torch.arange(2, 4))
    torch.testing.assert_close(whole.ddpmavg[2:], part.ddpmavg, rtol=1e-5, atol=1e-6)
    trainer = _trainer(tmp_path)
    metrics = trainer.validate(model, dataloaders=_loader(6, batch_size=2), verbose=False)[0]
    assert model._val_seen == 3 and "val/ddpmavg_pcc" in metrics


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_loss_switch_and_target_range(loss: str) -> None:
    model = _module(loss=loss, target_range=[0.0, 1.0], cond_first=False)
    assert model.target.low == 0.0 and model.hparams.loss == loss
    with pytest.raises(ValueError, match="loss"):
        _module(loss="huber")


def test_zscore_conditioning_ignores_brightfield_offset_and_gain() -> None:
    model, plain = _module(cond_norm="zscore"), _module()
    torch.manual_seed(0)
    for p in [*model.parameters(), *plain.parameters()]:  # MONAI zero-initialises the output convolution
        torch.nn.init.normal_(p, std=0.2)
    bf, x, t = torch.rand(2, 1, *PATCH), torch.randn(2, 1, *PATCH), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, t, bf), model.eps(x, t, 0.03 * bf + 0.4), rtol=1e-4, atol=1e-4)
        assert float((plain.eps(x, t, bf) - plain.eps(x, t, 0.03 * bf + 0.4)).abs().max()) > 1e-2
    with pytest.raises(ValueError, match="cond_norm"):
        _module(cond_norm="minmax")


def test_check_compatible() -> None:
    hp = dict(_module().hparams)
    check_compatible(hp, organelle=ORGANELLE, patch_shape=(4, 32, 48), source="m.ckpt")
    other = {**ORGANELLE, "fl_window": [385, 800]}
    message = r"m\.ckpt: organelle fl_window is \[385\.0, 800\.0\].*\[390\.0, 1500\.0\]"
    with pytest.raises(CheckpointError, match=message):
        check_compatible(hp, organelle=other, source="m.ckpt")
    with pytest.raises(CheckpointError, match="trained on organelle 'nuclear_envelope'; the input is 'dna'"):
        check_compatible(hp, organelle={**ORGANELLE, "name": "dna"}, source="m.ckpt")
    with pytest.raises(CheckpointError, match="Z = 8 slices; the checkpoint was trained on Z = 4"):
        check_compatible(hp, patch_shape=(8, 16, 16), source="m.ckpt")
    with pytest.raises(CheckpointError, match="not a multiple of the network's downsampling factor 2"):
        check_compatible(hp, patch_shape=(4, 15, 16), source="m.ckpt")
    with pytest.raises(CheckpointError, match="axes"):
        check_compatible({**hp, "tensor_axes": "BCYXZ"}, source="m.ckpt")


#: Overrides making the demo's samplers cost a handful of network calls.
CHEAP_OVERRIDES = [
    "sampler.num_steps=3",
    "sampler.window=[0,1000]",
    "model.val_sampler.num_steps=3",
    "model.val_sampler.window=[0,1000]",
    "data.samples_per_epoch=8",
    "data.n_val_patches=2",
    "data.n_test_patches=2",
    "data.eval_batch_size=2",
]


def _assert_demo_outputs(out: Path, printed: str) -> None:
    pred = out / "predictions"
    names = sorted(p.name for p in (pred / "GT").iterdir())
    assert len(names) == 2
    for folder in FOLDERS:
        assert sorted(p.name for p in (pred / folder).iterdir()) == names, folder
        assert tifffile.imread(pred / folder / names[0]).shape == (16, 64, 64)
    with open(pred / "metrics_summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [r["method"] for r in summary] == ["DDPM", "DDPMavg", "linear"]
    assert all(np.isfinite(float(r["ms_ssim"])) for r in summary)  # 64×64 test patches allow MS-SSIM
    assert (pred / "preview.png").stat().st_size > 0
    assert "DDPMavg" in printed and "ms_ssim" in printed


def test_demo_fast_dev_run(compose_cfg, capsys: pytest.CaptureFixture) -> None:
    from dm4isl.train import train

    cfg = compose_cfg("train", ["experiment=demo", "debug=fast_dev_run", "metrics=paper", *CHEAP_OVERRIDES])
    metrics = train(cfg)
    for key in ("val/ddpmavg_pcc", "test/ddpm_pcc", "test/ddpmavg_pcc", "test/linear_pcc", "test/ddpmavg_ms_ssim"):
        assert np.isfinite(metrics[key]), key
    # the metrics callback adds the rest of the chosen set (the paper's 14) for every output, at validation and test
    for key in ("val/metrics/ddpmavg_mi", "test/metrics/ddpmavg_iou", "test/metrics/linear_hausdorff",
                "test/metrics/ddpm_perceptual_distance"):
        assert key in metrics, key
    # each per-patch metric is logged once: the model's own scores are not repeated under metrics/
    for stage in ("val", "test"):
        twice = [k for k in metrics if k.startswith(f"{stage}/metrics/")
                 and f"{stage}/{k.split('/', 2)[2]}" in metrics]
        assert twice == [], twice
    _assert_demo_outputs(Path(cfg.paths.output_dir), capsys.readouterr().out)


@pytest.mark.slow
def test_demo_shortened_selects_checkpoint_and_writes_outputs(compose_cfg, capsys: pytest.CaptureFixture) -> None:
    from dm4isl.train import train

    cfg = compose_cfg("train", ["experiment=demo", "trainer.max_steps=4", "trainer.check_val_every_n_epoch=1",
                                *CHEAP_OVERRIDES])
    train(cfg)
    out = Path(cfg.paths.output_dir)
    assert list((out / "checkpoints").glob("epoch*.ckpt")), "no checkpoint selected on val/ddpmavg_pcc"
    _assert_demo_outputs(out, capsys.readouterr().out)


@pytest.mark.slow
def test_paper_net_fast_dev_run(compose_cfg) -> None:
    from dm4isl.train import train

    cfg = compose_cfg("train", ["experiment=demo", "model/net=paper", "debug=fast_dev_run", "data.batch_size=1",
                                "data.patch_size=[16,32,32]", "data.eval_patch_size=[16,32,32]", *CHEAP_OVERRIDES,
                                "sampler.num_steps=2", "model.val_sampler.num_steps=2", "data.eval_batch_size=1"])
    metrics = train(cfg)
    assert np.isfinite(metrics["test/ddpmavg_pcc"])


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_prediction_types_convert_to_exact_noise(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network that outputs its training target exactly yields ε̂ = the true noise, whatever it predicts."""
    module = _module(prediction_type=kind)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 1, *PATCH, generator=gen) * 2 - 1
    noise = torch.randn(3, 1, *PATCH, generator=gen)
    t = torch.tensor([5, 400, 990])
    x_t = module.schedule.add_noise(x0, noise, t)
    monkeypatch.setattr(module, "net_output", lambda *_: module.training_target(x0, noise, t))
    torch.testing.assert_close(module.eps(x_t, t, torch.zeros_like(x0)), noise, rtol=1e-3, atol=2e-3)
    with pytest.raises(ValueError, match="prediction_type 'x'"):
        _module(prediction_type="x")


def test_one_prediction_interface_and_scores_computed_once(tmp_path: Path, monkeypatch) -> None:
    """test_step goes through predict_products (the call dm4isl-predict makes), and each test patch's PCC/MSE/MS-SSIM
    is computed once: the metrics callback and the prediction writer reuse the model's scores."""
    from dm4isl.callbacks import metrics as metrics_callback
    from dm4isl.callbacks import prediction_writer
    from dm4isl.callbacks.metrics import MetricsCallback
    from dm4isl.models import outputs
    from dm4isl.models.predictor import Predictor, PredictRequest

    model = _module()
    model.data_stats += torch.tensor([1.0, 0.5, 0.3, 0.3, 0.2], dtype=torch.float64)
    assert isinstance(model, Predictor) and model.has_uncertainty
    bf = torch.rand(2, 1, *PATCH)
    products = model.predict_products(bf, [0, 1], PredictRequest(n_seeds=2, keep_seeds=True))
    assert sorted(products) == ["DDPM", "DDPM_seeds/seed0", "DDPM_seeds/seed1", "DDPMavg", "DDPMavg_seeds/seed0",
                                "DDPMavg_seeds/seed1", "std_inter", "std_intra"]
    single = model.predict_products(bf, [0, 1])
    with torch.no_grad():
        direct = model.predict_fluorescence(bf, [0, 1])
    torch.testing.assert_close(single["DDPMavg"], direct.ddpmavg)  # one seed: the plain reverse process
    torch.testing.assert_close(single["std_intra"], direct.std_intra)

    calls = {"scores": 0}
    real = outputs.patch_scores

    def counted(gt, pred):
        calls["scores"] += 1
        return real(gt, pred)

    def forbidden(*args, **kwargs):
        raise AssertionError("a score was computed a second time")

    monkeypatch.setattr(outputs, "patch_scores", counted)
    monkeypatch.setattr(prediction_writer, "patch_scores", forbidden)
    real_registry = metrics_callback.patch_metrics
    monkeypatch.setattr(metrics_callback, "patch_metrics", lambda g, p, names, *a: (
        forbidden() if set(names) & {"pcc", "mse", "ms_ssim"} else real_registry(g, p, names, *a)))
    trainer = _trainer(tmp_path, callbacks=[PredictionWriter(str(tmp_path / "pred"), print_table=False),
                                            MetricsCallback("fast")])
    logged = trainer.test(model, dataloaders=_loader(3, seed=2), verbose=False)[0]
    assert calls["scores"] == 3 * 3  # 3 patches × (DDPM, DDPMavg, linear)
    with open(tmp_path / "pred" / "metrics.csv") as fh:
        rows = {(r["patch"], r["method"]): float(r["pcc"]) for r in csv.DictReader(fh)}
    assert len(rows) == 9
    mean = np.mean([v for (_, method), v in rows.items() if method == "DDPMavg"])
    assert logged["test/ddpmavg_pcc"] == pytest.approx(mean, abs=1e-6)


def test_every_caller_goes_through_predict_products(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    compose_cfg) -> None:
    """A spy on ``Predictor.predict_products`` (the one prediction interface): testing, ``dm4isl-predict`` and the
    threshold calibration each call it; none samples through another route."""
    from dm4isl.data.patches import PatchSet
    from dm4isl.predict import predict_command
    from dm4isl.prediction.calibration import calibrate_and_score

    calls: list[str] = []
    real = DDPMModule.predict_products

    def spy(self, bf, patch_ids, request=None):
        calls.append(caller)
        return real(self, bf, patch_ids, request)

    monkeypatch.setattr(DDPMModule, "predict_products", spy)
    model = _module()
    model.data_stats += torch.tensor([1.0, 0.5, 0.3, 0.3, 0.2], dtype=torch.float64)

    caller = "test_step"
    _trainer(tmp_path).test(model, dataloaders=_loader(3, seed=2, batch_size=2), verbose=False)
    assert calls.count("test_step") == 2  # 3 patches in batches of 2

    caller = "dm4isl-predict"
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "dm4isl": {"model_class": "dm4isl.models.ddpm.DDPMModule"}}, ckpt)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"fov{i}.tif", np.random.default_rng(i).integers(0, 256, PATCH, dtype=np.uint8))
    predict_command(compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={folder}", f"output_dir={tmp_path / 'p'}",
                                            "device=cpu", "batch_size=2"]))
    assert calls.count("dm4isl-predict") == 2

    caller = "calibration"
    rng = np.random.default_rng(0)
    patches = PatchSet(rng.random((2, *PATCH), dtype=np.float32), rng.random((2, *PATCH), dtype=np.float32),
                       np.ones((2, *PATCH), bool), ["a", "b"], ["s", "s"], np.zeros((2, 3), np.int64))
    calibrate_and_score(model, patches, patches, model.test_settings, 2, ORGANELLE)
    assert calls.count("calibration") == 2  # validation and test sets, one batch each
