"""U-Net and GAN baselines: networks, seamless sliding windows, optimisation, outputs, and every experiment file."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from conftest import CONF_DIR
from dm4isl.models.gan import GANModule
from dm4isl.models.nets.patchgan import build_patchgan, patchgan_output_shape
from dm4isl.models.nets.unet3d import build_unet3d, downsampling_factor, unet3d_channels
from dm4isl.models.unet import UNetModule
from dm4isl.sampling.inference import predict_volume, sliding_window_predict
from dm4isl.train import train

ORGANELLES = ["actin", "dna", "microtubules", "mitochondria", "nuclear_envelope", "nucleoli"]
MODELS = ["ddpm", "unet", "gan"]
#: Small synthetic data for end-to-end runs: (Z, Y, X) FOVs (32 slices: every organelle has non-empty crops) and
#: training crops.
SMALL_DATA = ["data.n_fovs=6", "data.fov_shape=[32,64,64]", "data.patch_size=[16,32,32]"]
#: CPU-sized networks per model, as config overrides.
SMALL_NET = {
    "ddpm": ["model/net=tiny", "sampler=ddim_fast", "sampler.num_steps=5", "model.val_sampler.num_steps=5"],
    "unet": ["model.net.depth=2", "model.net.base_channels=4", "model.net.num_res_units=1"],
    "gan": ["model.generator.depth=2", "model.generator.base_channels=4", "model.generator.num_res_units=1",
            "model.discriminator.channels=4", "model.discriminator.num_layers=1"],
}
#: A tiny U-Net for the module tests (factor 4: Z, Y, X multiples of 4).
TINY_NET = {"depth": 2, "base_channels": 8, "num_res_units": 0}
#: Overfitting a single batch must cut the reconstruction loss by this factor within MAX_OVERFIT_STEPS.
OVERFIT_FACTOR = 10.0
MAX_OVERFIT_STEPS = 300


def _quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, **kwargs)


@pytest.fixture()
def synthetic_batch(compose_cfg) -> dict[str, torch.Tensor]:
    """The first training batch (2 crops, 16 x 16 x 16 (Z, Y, X)) of the synthetic nuclear-envelope data."""
    cfg = compose_cfg("train", [*SMALL_DATA, "data.batch_size=2"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    crop = (slice(None), slice(None), slice(None), slice(8, 24), slice(8, 24))
    return {key: batch[key][crop].contiguous() for key in ("bf", "fl")}


# --- networks ----------------------------------------------------------------------------------------------------
def test_default_unet_is_fnet_sized() -> None:
    config = {"name": "unet3d"}
    assert unet3d_channels(config) == (32, 64, 128, 256, 512)
    assert downsampling_factor(config) == 16
    net = build_unet3d(config)
    assert sum(p.numel() for p in net.parameters()) == 19_219_967


def test_unet_shapes_and_sigmoid_output() -> None:
    net = build_unet3d({**TINY_NET, "output_activation": "sigmoid"}).eval()
    out = net(torch.randn(2, 1, 8, 12, 16) * 10)
    assert out.shape == (2, 1, 8, 12, 16)
    assert 0.0 < float(out.detach().min()) and float(out.detach().max()) < 1.0


@pytest.mark.parametrize("bad", [{"depht": 3}, {"depth": 0}, {"output_activation": "tanh"}])
def test_unet_rejects_bad_config(bad: dict) -> None:
    with pytest.raises(ValueError, match="unet3d"):
        build_unet3d(bad)


@pytest.mark.parametrize(
    ("config", "shape", "expected"),
    [({}, (16, 64, 64), (2, 14, 14)), ({"num_layers": 3}, (32, 64, 64), (2, 6, 6)),
     ({"kernel_size": 3}, (16, 32, 32), (4, 8, 8)), ({"num_layers": 1, "channels": 8}, (16, 32, 48), (6, 14, 22))],
)
def test_patchgan_output_shape(config: dict, shape: tuple, expected: tuple) -> None:
    assert patchgan_output_shape(config, shape) == expected
    logits = build_patchgan({**config, "channels": 4})(torch.zeros(1, 2, *shape))
    assert tuple(logits.shape) == (1, 1, *expected)


def test_patchgan_too_deep_for_patch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[16, 64, 64\]"):
        patchgan_output_shape({"num_layers": 3}, (16, 64, 64))
    with pytest.raises(ValueError, match="patchgan"):
        GANModule(generator=TINY_NET, discriminator={"num_layers": 3}, patch_size=[16, 64, 64])


# --- sliding windows ---------------------------------------------------------------------------------------------
ROI = (16, 32, 32)
VOLUME = (1, 1, 24, 70, 90)  # (B, C, Z, Y, X): larger than ROI and not a multiple of it in any axis


def test_sliding_window_constant_in_constant_out() -> None:
    def window_mean(x: torch.Tensor) -> torch.Tensor:  # a constant per window: any seam would show
        assert tuple(x.shape[2:]) == ROI
        return x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x) * 2.0 + 1.0

    out = sliding_window_predict(window_mean, torch.full(VOLUME, 0.3), ROI, overlap=0.25, sw_batch_size=3)
    assert out.shape == VOLUME
    torch.testing.assert_close(out, torch.full(VOLUME, 1.6), rtol=0, atol=1e-5)


def test_sliding_window_pointwise_net_equals_whole_volume() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 1), torch.nn.ReLU(), torch.nn.Conv3d(3, 1, 1)).eval()
    bf = torch.rand(2, 1, *VOLUME[2:])
    with torch.no_grad():
        tiled = sliding_window_predict(net, bf, ROI, overlap=0.5, sw_batch_size=4)
        whole = net(bf)
    assert float(whole.std()) > 0.01  # the comparison is not between constants
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)


def test_predict_volume_tiles_only_what_does_not_fit() -> None:
    seen: list[tuple[int, ...]] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[2:]))
        return x

    predict_volume(net, torch.rand(1, 1, *ROI), ROI, factor=4)
    assert seen == [ROI]
    seen.clear()
    out = predict_volume(net, torch.rand(1, 1, 16, 48, 40), ROI, factor=4, overlap=0.25, sw_batch_size=1)
    assert out.shape == (1, 1, 16, 48, 40) and set(seen) == {ROI} and len(seen) == 4


# --- LightningModules --------------------------------------------------------------------------------------------
class _CollectTestOutputs(L.Callback):
    """Keep what ``test_step`` returns."""

    def __init__(self) -> None:
        self.outputs: list[dict] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.outputs.append(outputs)


def test_unet_module_outputs_and_checkpoint(tmp_path: Path) -> None:
    model = UNetModule(net=TINY_NET, organelle={"name": "nuclear_envelope"}, patch_size=[16, 32, 32])
    batch = {"bf": torch.rand(2, 1, 16, 32, 32), "fl": torch.rand(2, 1, 16, 32, 32), "index": torch.arange(2),
             "name": ["a", "b"]}
    collect = _CollectTestOutputs()
    trainer = _quiet_trainer(max_steps=1, callbacks=[collect])
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    trainer.test(model, dataloaders=DataLoader([batch], batch_size=None), verbose=False)
    assert math.isfinite(float(trainer.callback_metrics["test/pcc"]))
    (out,) = collect.outputs
    assert set(out) == {"name", "BF", "GT", "Unet"}  # no uncertainty products for a deterministic baseline
    assert out["Unet"].shape == (2, 16, 32, 32) and out["Unet"].dtype == np.float32
    assert 0.0 <= out["Unet"].min() and out["Unet"].max() <= 1.0
    np.testing.assert_array_equal(out["BF"], batch["bf"][:, 0].numpy())

    ckpt = tmp_path / "unet.ckpt"
    trainer.save_checkpoint(ckpt)
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert stored["array_axes"] == "ZYX" and stored["tensor_axes"] == "BCZYX"
    assert stored["patch_size"] == [16, 32, 32] and stored["organelle"]["name"] == "nuclear_envelope"
    restored = UNetModule.load_from_checkpoint(ckpt).eval()
    big = torch.rand(1, 1, 20, 48, 40)  # larger than the training patch: sliding windows
    with torch.no_grad():
        torch.testing.assert_close(restored.predict_fluorescence(big), model.eval().predict_fluorescence(big))


def test_gan_steps_each_optimiser_once_per_batch() -> None:
    class CountingGAN(GANModule):
        def configure_optimizers(self):
            optimizers = super().configure_optimizers()
            self.step_counts = [0] * len(optimizers)
            for i, opt in enumerate(optimizers):
                original = opt.step

                def counted(*args, _i=i, _original=original, **kwargs):
                    self.step_counts[_i] += 1
                    return _original(*args, **kwargs)

                opt.step = counted
            return optimizers

    torch.manual_seed(0)
    model = CountingGAN(generator={**TINY_NET, "output_activation": "sigmoid"},
                        discriminator={"channels": 4, "num_layers": 1}, patch_size=[8, 16, 16])
    g0 = [p.detach().clone() for p in model.net.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    batch = {"bf": torch.rand(2, 1, 8, 16, 16), "fl": torch.rand(2, 1, 8, 16, 16)}
    n_batches = 3
    trainer = _quiet_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=DataLoader([batch] * n_batches, batch_size=None))
    assert model.step_counts == [n_batches, n_batches]
    assert trainer.global_step == 2 * n_batches  # Lightning counts both optimisers' steps
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.net.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, model.discriminator.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())  # toggling restored every flag
    for key in ("train/loss_d", "train/loss_g", "train/l1", "train/adversarial"):
        assert math.isfinite(float(trainer.callback_metrics[key]))


class _StopAtFactor(L.Callback):
    """Record a logged loss each batch; stop once it has fallen by ``factor`` from the first value."""

    def __init__(self, key: str, factor: float) -> None:
        self.key, self.factor, self.history = key, factor, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.history.append(float(trainer.callback_metrics[self.key]))
        if self.history[-1] * self.factor <= self.history[0]:
            trainer.should_stop = True


@pytest.mark.parametrize("kind", ["unet", "gan"])
def test_overfits_a_single_batch(kind: str, synthetic_batch: dict[str, torch.Tensor]) -> None:
    L.seed_everything(0)
    patch = list(synthetic_batch["bf"].shape[2:])
    if kind == "unet":
        model, key = UNetModule(net=TINY_NET, patch_size=patch, lr=3e-3), "train/loss"
    else:
        model = GANModule(generator={**TINY_NET, "output_activation": "sigmoid"},
                          discriminator={"channels": 4, "num_layers": 1}, patch_size=patch, lr_g=1e-2)
        key = "train/l1"
    stop = _StopAtFactor(key, OVERFIT_FACTOR)
    trainer = _quiet_trainer(max_epochs=1, callbacks=[stop])
    trainer.fit(model, train_dataloaders=DataLoader([synthetic_batch] * MAX_OVERFIT_STEPS, batch_size=None))
    first, last = stop.history[0], stop.history[-1]
    assert first / last >= OVERFIT_FACTOR, f"{kind}: {key} {first:.4f} -> {last:.4f} in {len(stop.history)} steps"


# --- configs and end-to-end runs ---------------------------------------------------------------------------------
def test_experiment_files_carry_settings() -> None:
    """An organelle x model pair is two group choices (organelle=… model=…), not an experiment file: experiment files
    exist only where they carry settings of their own."""
    names = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    assert names.isdisjoint({f"{o}_{m}" for o in ORGANELLES for m in MODELS})
    assert {"demo", "study", "classifier", "classifier_cpu"} <= names


@pytest.mark.parametrize("organelle", ORGANELLES)
@pytest.mark.parametrize("model", MODELS)
def test_organelle_model_composes(compose_cfg, organelle: str, model: str) -> None:
    cfg = compose_cfg("train", [f"organelle={organelle}", f"model={model}"])
    targets = {"ddpm": "dm4isl.models.ddpm.DDPMModule", "unet": "dm4isl.models.unet.UNetModule",
               "gan": "dm4isl.models.gan.GANModule"}
    assert cfg.organelle.name == organelle and cfg.model._target_ == targets[model]
    assert cfg.monitor == ("val/ddpmavg_pcc" if model == "ddpm" else "val/pcc")
    assert cfg.callbacks.model_checkpoint.monitor == cfg.monitor
    assert list(cfg.tags) == [organelle, model] and cfg.data._target_.endswith("SyntheticDataModule")
    assert cfg.task_name == f"{organelle}_{model}"  # runs land in outputs/<organelle>_<model>/


@pytest.mark.parametrize("model", ["unet", "gan"])
def test_fast_dev_run(compose_cfg, model: str) -> None:
    cfg = compose_cfg("train", [f"model={model}", "debug=fast_dev_run", *SMALL_DATA, *SMALL_NET[model]])
    assert cfg.monitor == "val/pcc"  # selecting the model selects its checkpoint metric
    metrics = train(cfg)
    for key in ("val/pcc", "val/mse", "test/pcc", "test/mse"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["test/mse"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("organelle", ORGANELLES)
@pytest.mark.parametrize("model", MODELS)
def test_experiment_fast_dev_run(compose_cfg, organelle: str, model: str) -> None:
    overrides = [f"organelle={organelle}", f"model={model}", "debug=fast_dev_run", *SMALL_DATA, *SMALL_NET[model]]
    cfg = compose_cfg("train", overrides)
    metrics = train(cfg)
    prefix = "test/ddpmavg_" if model == "ddpm" else "test/"
    assert math.isfinite(metrics[f"{prefix}pcc"]) and math.isfinite(metrics[f"{prefix}mse"])


@pytest.mark.slow
def test_gan_trains_under_ddp_simulation(compose_cfg) -> None:
    cfg = compose_cfg("train", ["model=gan", "trainer=ddp_sim", "debug=limit", *SMALL_DATA, *SMALL_NET["gan"]])
    metrics = train(cfg)
    assert math.isfinite(metrics["test/pcc"])
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
