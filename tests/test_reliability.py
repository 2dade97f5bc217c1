"""Every class of bad input through the public entry points: a clear error naming the file, no partial output."""

from __future__ import annotations

import errno
import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import tifffile
import torch
from hydra.errors import MissingConfigException
from torch.utils.data import DataLoader

from dm4isl.callbacks.nan_guard import TrainingDivergedError
from dm4isl.callbacks.provenance import Provenance
from dm4isl.data.datamodule import PatchFolderDataModule
from dm4isl.data.normalize import TargetRange
from dm4isl.data.readers import read_volume
from dm4isl.errors import CheckpointError, DataError
from dm4isl.evaluation import evaluate_folder
from dm4isl.io import atomic
from dm4isl.models import checkpoint as checkpoint_module
from dm4isl.models.ddpm import DDPMModule
from dm4isl.models.unet import UNetModule
from dm4isl.predict import predict_command
from dm4isl.prediction.runner import collect_inputs
from dm4isl.sampling import NoiseSchedule, SamplerSettings
from dm4isl.sampling.ensemble import sample_ensemble
from dm4isl.train import train

#: Patch shape (Z, Y, X) of the tiny checkpoints and inputs.
PATCH = (8, 16, 16)
ORGANELLE = {"name": "nuclear_envelope", "bf_window": [12000, 55000], "fl_window": [390, 1500],
             "voxel_size": [0.29, 0.29, 0.29], "std_th": 70}
MICRO_NET = {"name": "diffusion_unet", "channels": [8, 8], "attention_levels": [False, False], "num_res_blocks": 1,
             "num_head_channels": 8, "norm_num_groups": 8}
UNET_NET = {"name": "unet3d", "depth": 2, "base_channels": 4, "num_res_units": 0}
SAMPLER = {"method": "ddim", "num_steps": 3, "window": [0, 1000], "mean_correction": True}
#: Synthetic data and a tiny U-Net for the training runs (2 steps per epoch).
SMALL_TRAIN = ["model=unet", "model.net.depth=2", "model.net.base_channels=4", "model.net.num_res_units=1",
               "data.n_fovs=6", "data.fov_shape=[32,64,64]", "data.patch_size=[16,32,32]", "data.batch_size=2",
               "data.samples_per_epoch=4", "data.n_val_patches=2", "data.n_test_patches=2", "test=false",
               "trainer.max_epochs=3", "callbacks.progress_bar.refresh_rate=0"]
STEPS_PER_EPOCH = 2
#: Rows of a sampling chunk above which the stand-in network "runs out of memory".
OOM_ABOVE = 3


def _fit_and_save(model: L.LightningModule, path: Path) -> Path:
    """Train ``model`` for one step on random patches and save a checkpoint with provenance at ``path``."""
    gen = torch.Generator().manual_seed(0)
    items = [{"bf": (bf := torch.rand(1, *PATCH, generator=gen)), "fl": 0.5 * bf + 0.1, "index": i, "name": f"p{i}"}
             for i in range(2)]
    trainer = L.Trainer(default_root_dir=path.parent, accelerator="cpu", max_steps=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[Provenance()])
    trainer.fit(model, DataLoader(items, batch_size=2))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DDPM and a tiny U-Net checkpoint (1 training step each), plus foreign torch files."""
    root = tmp_path_factory.mktemp("ckpts")
    ddpm = DDPMModule(net=MICRO_NET, organelle=ORGANELLE, patch_size=list(PATCH), val_sampler=SAMPLER,
                      test_sampler=SAMPLER)
    unet = UNetModule(net=UNET_NET, organelle=ORGANELLE, patch_size=list(PATCH))
    torch.save({"weights": torch.zeros(3)}, root / "tensors.pt")  # a torch file, not a checkpoint
    torch.save(torch.nn.Linear(2, 2), root / "pickled_module.pt")  # arbitrary pickled code: refused by weights_only
    return {"ddpm": _fit_and_save(ddpm, root / "ddpm.ckpt"), "unet": _fit_and_save(unet, root / "unet.ckpt"),
            "tensors": root / "tensors.pt", "pickled": root / "pickled_module.pt"}


def _patch_folder(root: Path, n: int = 2, bf_shape=PATCH, gt_shape=PATCH) -> Path:
    """A valid BF/GT patch folder of uint8 volumes (value/255)."""
    rng = np.random.default_rng(0)
    for sub, shape in (("BF", bf_shape), ("GT", gt_shape)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            tifffile.imwrite(root / sub / f"{i}.tiff", rng.integers(0, 256, shape, dtype=np.uint8))
    return root


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _predict(compose_cfg, ckpt: Path, source: Path, out: Path, *extra: str) -> list:
    cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={source}", f"output_dir={out}", "device=cpu",
                                  "sampler=ddim", "sampler.num_steps=3", *extra])
    return predict_command(cfg)


# --- bad input files: the class of fault, how it is written, the error expected --------------------------------------
def _corrupt(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _truncated(path: Path) -> None:
    tifffile.imwrite(path, np.zeros((16, 64, 64), np.uint8))
    path.write_bytes(path.read_bytes()[:3000])


BAD_FILES = {
    "corrupt": (_corrupt, r"unreadable or truncated TIFF"),
    "truncated": (_truncated, r"unreadable or truncated TIFF"),
    "nan": (lambda p: tifffile.imwrite(p, np.full(PATCH, np.nan, np.float32)), r"NaN/inf voxels; expected finite"),
    "inf": (lambda p: tifffile.imwrite(p, np.full(PATCH, np.inf, np.float32)), r"NaN/inf voxels; expected finite"),
    "complex": (lambda p: tifffile.imwrite(p, np.zeros(PATCH, np.complex64)), r"unsupported dtype complex64"),
    "bool": (lambda p: tifffile.imwrite(p, np.zeros(PATCH, bool)), r"unsupported dtype bool"),
    "float_out_of_range": (lambda p: tifffile.imwrite(p, np.full(PATCH, 3.0, np.float32)),
                           r"float intensities span \[3, 3\]; expected normalised values in \[0, 1\]"),
    "2d": (lambda p: tifffile.imwrite(p, np.zeros(PATCH[1:], np.uint8)), r"expected a 3-D \(Z, Y, X\) volume"),
}


@pytest.mark.parametrize("fault", sorted(BAD_FILES))
def test_bad_input_file_is_named_and_nothing_is_written(compose_cfg, ckpts, tmp_path: Path, fault: str) -> None:
    write, message = BAD_FILES[fault]
    folder = _patch_folder(tmp_path / "in")
    write(folder / "BF" / "1.tiff")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"BF/1\.tiff: .*{message}"):
        _predict(compose_cfg, ckpts["ddpm"], folder, out)
    assert _files(out) == []
    with pytest.raises(DataError, match=rf"BF/1\.tiff: .*{message}"):
        PatchFolderDataModule(ORGANELLE, root=str(folder), patch_size=list(PATCH)).setup("fit")


def test_shape_mismatch_and_empty_folder(compose_cfg, ckpts, tmp_path: Path) -> None:
    folder = _patch_folder(tmp_path / "in", gt_shape=(8, 16, 8))
    with pytest.raises(DataError, match=r"GT/0\.tiff: shape \(8, 16, 8\) \(Z, Y, X\) does not match its brightfield "
                                        r"partner .*BF/0\.tiff of shape \(8, 16, 16\)"):
        _predict(compose_cfg, ckpts["ddpm"], folder, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"{empty}: no TIFF files found"):
        _predict(compose_cfg, ckpts["ddpm"], empty, tmp_path / "out")
    (empty / "BF").mkdir()
    (empty / "GT").mkdir()
    with pytest.raises(DataError, match=r"BF: empty folder; expected brightfield TIFF files"):
        PatchFolderDataModule(ORGANELLE, root=str(empty), patch_size=list(PATCH)).setup("fit")
    assert _files(tmp_path / "out") == []


def test_integer_grey_levels_are_windowed_not_rejected(tmp_path: Path) -> None:
    """int64 (or any integer) volumes are raw grey levels: clipped to the organelle window, never wrapped."""
    raw = np.array([0, 12000, 33500, 55000, 2**40], np.int64).repeat(PATCH[1] * PATCH[2] * PATCH[0] // 5 + 1)
    tifffile.imwrite(tmp_path / "v.tiff", raw[: np.prod(PATCH)].reshape(PATCH))
    assert read_volume(tmp_path / "v.tiff").dtype == np.int64
    (inp,) = collect_inputs(tmp_path / "v.tiff", ORGANELLE["bf_window"], ORGANELLE["fl_window"])
    assert inp.bf.dtype == np.float32 and sorted(np.unique(inp.bf).tolist()) == [0.0, 0.5, 1.0]


# --- checkpoints --------------------------------------------------------------------------------------------------
def test_checkpoint_faults(compose_cfg, ckpts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _patch_folder(tmp_path / "in")
    out = tmp_path / "out"
    cases = {
        tmp_path / "missing.ckpt": r"missing\.ckpt: checkpoint not found \(expected a \.ckpt file",
        ckpts["tensors"]: r"tensors\.pt: expected a Lightning checkpoint with state_dict and hyper_parameters",
        ckpts["pickled"]: r"pickled_module\.pt: not a readable checkpoint \(UnpicklingError",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            _predict(compose_cfg, path, folder, out)
    foreign = dict(torch.load(ckpts["unet"], weights_only=True))
    foreign["dm4isl"] = {**foreign["dm4isl"], "model_class": "os.system"}
    torch.save(foreign, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match=r"foreign\.ckpt: model class 'os\.system' is not a dm4isl model"):
        _predict(compose_cfg, tmp_path / "foreign.ckpt", folder, out)
    # a U-Net checkpoint where a diffusion model is needed (seed ensemble, sampler)
    with pytest.raises(CheckpointError, match=r"unet\.ckpt: a UNetModule checkpoint .*'n_seeds': 2.*need a diffusion"):
        _predict(compose_cfg, ckpts["unet"], folder, out, "n_seeds=2")
    assert _files(out) == []
    # every checkpoint is read with weights_only=True
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", spy)
    rows = _predict(compose_cfg, ckpts["ddpm"], folder, out)
    assert len(rows) == 2 and calls and all(c is True for c in calls)


def test_unknown_organelle_lists_the_known_ones(compose_cfg, ckpts, tmp_path: Path) -> None:
    for config in ("train", "predict"):
        with pytest.raises(MissingConfigException, match=r"(?s)organelle/golgi.*nuclear_envelope"):
            compose_cfg(config, ["organelle=golgi"])
    folder = _patch_folder(tmp_path / "in")
    with pytest.raises(CheckpointError, match=r"ddpm\.ckpt: trained on organelle 'nuclear_envelope'; the input is "
                                              r"'nucleoli'"):
        _predict(compose_cfg, ckpts["ddpm"], folder, tmp_path / "out", "organelle=nucleoli")


# --- output that cannot be written --------------------------------------------------------------------------------
def test_unwritable_output_folder(compose_cfg, ckpts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root (chmod does not block): the temporary file's creation is refused instead."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    out = tmp_path / "out"
    with pytest.raises(OSError, match=rf"cannot write into folder {out}/\w+: Permission denied") as info:
        _predict(compose_cfg, ckpts["ddpm"], _patch_folder(tmp_path / "in"), out)
    assert info.value.errno == errno.EACCES
    assert _files(out) == []


def test_disk_full_leaves_no_partial_file(compose_cfg, ckpts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 4th TIFF write fills the disk half-way: earlier files stay complete, the broken one vanishes."""
    real = tifffile.imwrite
    calls = {"n": 0}

    def fill_disk(path, data, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 4:
            return real(path, data, *args, **kwargs)
        Path(path).write_bytes(b"II*\x00" + b"\x00" * 100)  # a partial temporary file
        raise OSError(errno.ENOSPC, "No space left on device")

    folder = _patch_folder(tmp_path / "in")
    monkeypatch.setattr(atomic.tifffile, "imwrite", fill_disk)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left on device"):
        _predict(compose_cfg, ckpts["ddpm"], folder, out)
    monkeypatch.undo()
    written = _files(out)
    assert len(written) == 3 and not [p for p in written if p.suffix == ".part"]
    for path in written:
        assert tifffile.imread(path).shape == PATCH  # complete
    # evaluation: a full disk while writing the report leaves no partial file either
    folder = _patch_folder(tmp_path / "eval", n=2, bf_shape=(16, 64, 64), gt_shape=(16, 64, 64))
    (folder / "BF").rename(folder / "Unet")
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError, match="No space left"):
        evaluate_folder(folder, tmp_path / "report", metrics="fast", progress=False)
    assert not [p for p in _files(tmp_path / "report") if p.name.endswith(".part")]


# --- training and sampling ----------------------------------------------------------------------------------------
def test_nan_loss_stops_training_and_keeps_last_checkpoint(compose_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    real = UNetModule.training_step

    def nan_in_second_epoch(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        return loss * math.nan if self.global_step >= STEPS_PER_EPOCH else loss

    monkeypatch.setattr(UNetModule, "training_step", nan_in_second_epoch)
    cfg = compose_cfg("train", SMALL_TRAIN)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(TrainingDivergedError, match=rf"training loss of UNetModule is nan at epoch 1, global step "
                                                    rf"{STEPS_PER_EPOCH}; expected a finite value.*kept in "
                                                    rf"{last.parent}"):
        train(cfg)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == STEPS_PER_EPOCH  # the checkpoint of the last good epoch
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not list(last.parent.glob("*.tmp*")) and not list(last.parent.glob("*.part"))


def _eps_with_memory_limit(calls: list[int]):
    def eps(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        if x.shape[0] > OOM_ABOVE:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} rows")
        return 0.3 * x + 0.2 * torch.tanh(cond)
    return eps


def test_out_of_memory_while_sampling_halves_the_chunk(caplog: pytest.LogCaptureFixture) -> None:
    cond = torch.rand(4, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    settings = SamplerSettings(method="ddim", num_steps=4, eta=1.0, mean_correction=False)
    args = (cond, [5, 6, 7, 8], NoiseSchedule(), settings)
    calls: list[int] = []
    with caplog.at_level(logging.WARNING, logger="dm4isl.sampling.ensemble"):
        ens = sample_ensemble(_eps_with_memory_limit(calls), *args, n_seeds=2, target=TargetRange())
    assert "out of memory sampling 8 rows at once; retrying in chunks of 4 rows" in caplog.text
    assert "retrying in chunks of 2 rows" in caplog.text
    assert max(calls) == 8 and set(calls[2:]) == {2}  # 8 → 4 → 2 rows per call
    reference = sample_ensemble(_eps_with_memory_limit([]), *args, n_seeds=2, target=TargetRange(), max_batch=2)
    torch.testing.assert_close(ens.ddpmavg, reference.ddpmavg, rtol=0, atol=0)
    torch.testing.assert_close(ens.std_inter, reference.std_inter, rtol=0, atol=0)

    def never_fits(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        sample_ensemble(never_fits, *args, n_seeds=1)

    def other_error(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        calls.append(-1)
        raise RuntimeError("shape mismatch")

    calls.clear()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        sample_ensemble(other_error, *args, n_seeds=2)
    assert calls == [-1]  # not retried
