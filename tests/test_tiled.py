"""Whole-FOV prediction: tiled diffusion (global chain, blended ε̂), sliding-window baselines, OME-TIFF outputs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer

from conftest import CONF_DIR, perturb_
from dm4isl.data.normalize import TargetRange
from dm4isl.errors import CheckpointError
from dm4isl.io.atomic import read_tiff_info, write_tiff
from dm4isl.models.checkpoint import fingerprint
from dm4isl.models.ddpm import DDPMModule
from dm4isl.models.unet import UNetModule
from dm4isl.predict import predict_command
from dm4isl.prediction.runner import predict_arrays
from dm4isl.sampling import NoiseSchedule, SamplerSettings, correct_eps_mean
from dm4isl.sampling.ensemble import sample_ensemble
from dm4isl.sampling.inference import predict_volume, sliding_window_predict, window_inferer
from dm4isl.sampling.tiled import (
    TiledEps,
    TileSettings,
    effective_tile,
    needs_tiling,
    sample_ensemble_tiled,
)

ATOL = 1e-5
TINY_NET = yaml.safe_load((CONF_DIR / "model" / "net" / "tiny.yaml").read_text())
ORGANELLE = yaml.safe_load((CONF_DIR / "organelle" / "nuclear_envelope.yaml").read_text())
PATCH = [16, 32, 32]


def _pointwise_eps() -> torch.nn.Module:
    """A voxel-wise ε-network (1×1×1 convolution of [bf, x_t], scaled by t): tiling must not change its output."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 1, kernel_size=1)

    def eps(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return conv(torch.cat([cond, x_t], dim=1)) * (1.0 + t.float().view(-1, 1, 1, 1, 1) / 1000.0)

    return eps


def test_tiled_sampling_of_a_pointwise_net_equals_untiled() -> None:
    eps = _pointwise_eps()
    schedule = NoiseSchedule()
    cond = torch.rand(2, 1, 16, 48, 40)
    settings = SamplerSettings(method="ddim", num_steps=8, mean_correction=False)
    with torch.no_grad():
        whole = sample_ensemble(eps, cond, [3, 4], schedule, settings, 2, TargetRange(-1.0, 1.0))
        tiled = sample_ensemble_tiled(eps, cond, [3, 4], schedule, settings, 2, TileSettings(overlap=0.5, batch=3),
                                      (8, 16, 16), TargetRange(-1.0, 1.0))
    for name in ("ddpm", "ddpmavg", "std_intra", "std_inter"):
        torch.testing.assert_close(getattr(tiled, name), getattr(whole, name), atol=ATOL, rtol=0, msg=name)
    assert float(whole.std_inter.mean()) > 0.0  # the seeds differ, so the comparison is not trivial
    # the ε̂ mean correction, applied to the whole volume (default scope), leaves tiled == untiled
    corrected = SamplerSettings(method="ddim", num_steps=8, mean_correction=True)
    with torch.no_grad():
        whole = sample_ensemble(eps, cond, [3, 4], schedule, corrected, 1, TargetRange(-1.0, 1.0), 0.3)
        tiled = sample_ensemble_tiled(eps, cond, [3, 4], schedule, corrected, 1, TileSettings(overlap=0.5, batch=3),
                                      (8, 16, 16), TargetRange(-1.0, 1.0), 0.3)
    torch.testing.assert_close(tiled.ddpmavg, whole.ddpmavg, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="'patch'"):
        TileSettings(mean_correction="patch")


def test_per_tile_mean_correction_on_one_tile_is_the_patch_correction() -> None:
    eps = _pointwise_eps()
    schedule = NoiseSchedule()
    x, cond, t = torch.randn(2, 1, 8, 16, 16), torch.rand(2, 1, 8, 16, 16), torch.tensor([900, 200])
    with torch.no_grad():
        tiled = TiledEps(eps, (8, 16, 16), schedule=schedule, target_mean=-0.6)(x, t, cond)
        raw = eps(x, t, cond)
    for i, step in enumerate(t.tolist()):
        want = correct_eps_mean(raw[i : i + 1], x[i : i + 1], schedule.abar(step), -0.6)
        torch.testing.assert_close(tiled[i : i + 1], want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="smaller than the tile"):
        TiledEps(eps, (16, 16, 16))(x, t, cond)
    assert effective_tile((8, 100, 20), (16, 32, 32)) == (8, 32, 20)


def _border_and_interior(shape: tuple[int, ...], edges: list[int], margin: int, width: int = 2) -> tuple:
    """Masks of voxels within ``width`` of a tile edge in Y or X, and the others, both ``margin`` from the FOV edge."""
    border = np.zeros(shape, bool)
    for e in edges:
        border[:, e - width : e + width, :] = True
        border[:, :, e - width : e + width] = True
    central = np.zeros(shape, bool)
    central[:, margin:-margin, margin:-margin] = True
    return border & central, ~border & central


def test_tiled_eps_of_a_real_net_has_no_seams() -> None:
    """Tiled vs whole-volume ε̂ of the tiny DiffusionModelUNet: no larger error at tile borders than inside tiles.

    The network's group norms see tile statistics, so tiles differ from the whole volume everywhere; what blending
    must prevent is an error concentrated at tile borders (a seam). Hard-stitched tiles are the negative control.
    """
    torch.manual_seed(0)
    model = DDPMModule(net=TINY_NET, patch_size=PATCH).eval()
    with torch.no_grad():
        for p in model.net.parameters():  # the output convolution starts at zero
            p.add_(0.02 * torch.randn_like(p))
    shape, tile, margin = (16, 64, 64), (16, 32, 32), 12
    x, bf, t = torch.randn(1, 1, *shape), torch.rand(1, 1, *shape), torch.tensor([500])
    with torch.no_grad():
        whole = model.eps(x, t, bf)
        blended = TiledEps(model.eps, tile, overlap=0.5, tile_batch=4)(x, t, bf)
        hard = SlidingWindowInferer(tile, sw_batch_size=4, overlap=0.0, mode="constant")(
            torch.cat([x, bf], 1), lambda w: model.eps(w[:, :1], t.expand(w.shape[0]), w[:, 1:])
        )
    slices = dense_patch_slices(shape, tile, [s // 2 for s in tile])
    edges = sorted({e for sl in slices for e in (sl[1].start, sl[1].stop)} - {0, shape[1]})
    assert edges == [16, 32, 48]
    border, interior = _border_and_interior(shape, edges, margin)
    err = (blended - whole).abs()[0, 0].numpy()
    assert err[interior].mean() > 1e-3  # tiles do differ from the whole volume
    assert err[border].mean() <= 1.2 * err[interior].mean()
    border, interior = _border_and_interior(shape, [shape[1] // 2], margin)
    err_hard = (hard - whole).abs()[0, 0].numpy()
    assert err_hard[border].mean() > 1.5 * err_hard[interior].mean()  # a seam: the check can fail


def test_baseline_sliding_window_of_a_pointwise_net_equals_whole_volume() -> None:
    model = UNetModule(net={"name": "unet3d", "depth": 1, "base_channels": 4}, patch_size=PATCH).eval()
    torch.manual_seed(0)
    model.net = torch.nn.Conv3d(1, 1, kernel_size=1)
    bf = torch.rand(1, 1, 16, 80, 72)
    with torch.no_grad():
        out = predict_arrays(model, bf, [0], tiles=TileSettings(overlap=0.5, batch=2))["Unet"]
        whole = model.net(bf).clamp(0.0, 1.0)
    torch.testing.assert_close(out, whole, atol=ATOL, rtol=0)


def _tiny_checkpoint(path: Path) -> Path:
    """A tiny x0-predicting diffusion checkpoint with training statistics: random, perturbed weights, untrained."""
    torch.manual_seed(0)
    model = DDPMModule(
        net=TINY_NET, organelle=ORGANELLE, patch_size=PATCH, prediction_type="sample", cond_norm="zscore",
        test_sampler={"method": "ddim", "num_steps": 3},
    )
    model.data_stats.copy_(torch.tensor([1.0, 0.5, 0.2, 0.3, 0.1], dtype=torch.float64))
    perturb_(model.net)  # an untrained MONAI net predicts a constant: its products would not depend on the input
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "dm4isl": {"model_class": "dm4isl.models.ddpm.DDPMModule"}}, path)
    return path


def test_predict_a_volume_larger_than_the_patch(compose_cfg, tmp_path: Path) -> None:
    """dm4isl-predict on 16×96×96: full-size float32 OME-TIFFs with the input's voxel size and the run's metadata."""
    from dm4isl.data.synthetic import generate_fov

    ckpt = _tiny_checkpoint(tmp_path / "tiny.ckpt")
    fov = generate_fov("nuclear_envelope", (16, 96, 96), seed=3, bf_window=tuple(ORGANELLE["bf_window"]),
                       fl_window=tuple(ORGANELLE["fl_window"]))
    folder = tmp_path / "in"
    write_tiff(folder / "fov.tiff", fov.bf, voxel_size_zyx=(0.5, 0.29, 0.29))
    out = tmp_path / "pred"
    # input.resample=false: the 0.5 µm Z step stays (by default the input is resampled to the training voxel size)
    overrides = [f"ckpt_path={ckpt}", f"input.path={folder}", "input.resample=false", f"output_dir={out}", "n_seeds=2",
                 "device=cpu", "tiling.overlap=0.25", "tiling.batch=8"]
    rows = predict_command(compose_cfg("predict", overrides))
    # no error mask: the organelle's published threshold is for DDPM-1000 maps, not for this DDIM-3 checkpoint
    assert rows[0]["products"] == "DDPM;DDPMavg;std_intra;std_inter" and rows[0]["threshold"] == ""
    for product in ("DDPM", "DDPMavg", "std_intra", "std_inter"):
        with tifffile.TiffFile(out / product / "fov.ome.tiff") as tif:
            assert tif.is_ome and tif.series[0].axes == "ZYX"
            arr = tif.asarray()
        assert arr.shape == (16, 96, 96) and arr.dtype == np.float32 and np.isfinite(arr).all()
        voxel, meta = read_tiff_info(out / product / "fov.ome.tiff")
        assert voxel == pytest.approx((0.5, 0.29, 0.29))
        assert meta["checkpoint_sha256_16"] == fingerprint(ckpt) and len(meta["checkpoint_sha256_16"]) == 16
        assert meta["sampler"]["method"] == "ddim" and meta["sampler"]["num_steps"] == 3
        assert meta["seeds"] == [0, 1] and meta["model"] == "DDPMModule" and meta["revision"]
        assert meta["tiling"] == {"size": None, "overlap": 0.25, "batch": 8, "mean_correction": "volume"}
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "DDPMavg" / "fov.ome.tiff").stat().st_mode & 0o777 == 0o666 & ~umask  # not a temp file's 0o600
    ddpmavg = tifffile.imread(out / "DDPMavg" / "fov.ome.tiff")
    assert 0.0 <= ddpmavg.min() and ddpmavg.max() <= 1.0
    # two seeds of a net whose output depends on its input and noise: a real spread, not float rounding (~1e-7)
    assert float(tifffile.imread(out / "std_inter" / "fov.ome.tiff").mean()) > 1e-3
    # the metadata is also a key-value MapAnnotation (what Fiji/Bio-Formats and OMERO list)
    with tifffile.TiffFile(out / "DDPMavg" / "fov.ome.tiff") as tif:
        annotation = tifffile.xml2dict(tif.ome_metadata)["OME"]["StructuredAnnotations"]["MapAnnotation"]
    pairs = {m["K"]: m["value"] for m in annotation["Value"]["M"]}
    assert pairs["seeds"] == "[0, 1]" and pairs["checkpoint_sha256_16"] == fingerprint(ckpt)
    with open(out / "predictions.csv", newline="") as fh:
        assert next(csv.DictReader(fh))["seeds"] == "0;1"
    # an explicit voxel size wins over the input's
    out2 = tmp_path / "pred2"
    predict_command(compose_cfg("predict", [*overrides[:3], f"output_dir={out2}", "n_seeds=1", "device=cpu",
                                            "voxel_size=[1.0,0.5,0.5]", "tiling.size=[16,64,64]"]))
    voxel, meta = read_tiff_info(out2 / "DDPMavg" / "fov.ome.tiff")
    assert voxel == pytest.approx((1.0, 0.5, 0.5)) and meta["tiling"]["size"] == [16, 64, 64]


def test_python_api_tiles_a_larger_array(tmp_path: Path) -> None:
    import dm4isl

    ckpt = _tiny_checkpoint(tmp_path / "tiny.ckpt")
    bf = np.random.default_rng(0).integers(0, 256, (16, 48, 40), dtype=np.uint8)
    out = dm4isl.predict(bf, ckpt, device="cpu", tiling={"overlap": 0.5, "batch": 8})
    assert out["DDPMavg"].shape == (16, 48, 40) and out["DDPMavg"].dtype == np.float32
    with pytest.raises(CheckpointError, match=r"Z = 8 slices; the checkpoint was trained on Z = 16"):
        dm4isl.predict(bf[:8], ckpt, device="cpu")



def _recording_net(sizes: list[int]):
    """A voxel-wise network (2·x + 1) that records how many windows each call gets."""

    def net(window: torch.Tensor) -> torch.Tensor:
        sizes.append(window.shape[0])
        return 2.0 * window + 1.0

    return net


def test_sliding_window_defaults_batches_and_checks() -> None:
    bf = torch.rand(1, 1, 4, 4, 20, generator=torch.Generator().manual_seed(0))
    sizes: list[int] = []
    # five 4×4×4 windows along X without overlap: 4 per call by default, then the fifth
    out = sliding_window_predict(_recording_net(sizes), bf, (4, 4, 4), overlap=0.0)
    assert sizes == [4, 1]
    torch.testing.assert_close(out, 2.0 * bf + 1.0, atol=ATOL, rtol=0)
    sizes.clear()
    sliding_window_predict(_recording_net(sizes), bf, (4, 4, 4), overlap=0.0, sw_batch_size=2)
    assert sizes == [2, 2, 1]
    sizes.clear()
    out = sliding_window_predict(_recording_net(sizes), bf, (4, 4, 4))  # default overlap 0.25: windows every 3 voxels
    starts = [sl[2].start for sl in dense_patch_slices((4, 4, 20), (4, 4, 4), (3, 3, 3))]
    assert starts == [0, 3, 6, 9, 12, 15, 16] and sum(sizes) == 7 and max(sizes) == 4
    torch.testing.assert_close(out, 2.0 * bf + 1.0, atol=ATOL, rtol=0)
    inferer = window_inferer((4, 4, 4))
    assert (inferer.overlap, inferer.sw_batch_size) == (0.25, 4)
    window_inferer((4, 4, 4), 0.0, 1)  # no overlap and one window per call are allowed
    with pytest.raises(ValueError, match=r"window overlap 1.0; expected a fraction in \[0, 1\)"):
        window_inferer((4, 4, 4), 1.0)
    with pytest.raises(ValueError, match=r"windows per network call 0; expected at least 1"):
        window_inferer((4, 4, 4), 0.25, 0)
    with pytest.raises(ValueError, match=r"input of shape \(1, 4, 4, 20\); expected \(B, C, Z, Y, X\) for roi_size "
                                         r"\[4, 4, 4\]"):
        sliding_window_predict(_recording_net([]), bf[0], (4, 4, 4))


def test_sliding_window_pads_small_inputs_with_their_border_voxels() -> None:
    # a window-wide maximum: replicated border voxels leave it unchanged, a zero frame would raise it to 0
    bf = -1.0 - torch.rand(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = sliding_window_predict(lambda w: w.amax(dim=(2, 3, 4), keepdim=True) * torch.ones_like(w), bf, (4, 8, 8))
    assert out.shape == bf.shape
    torch.testing.assert_close(out, torch.full_like(bf, float(bf.max())), atol=ATOL, rtol=0)


def test_predict_volume_in_one_call_when_it_fits() -> None:
    shapes: list[tuple[int, ...]] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return 2.0 * x + 1.0

    def predict(shape: tuple[int, ...], roi: tuple[int, ...], **kwargs) -> None:
        shapes.clear()
        bf = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(sum(shape)))
        out = predict_volume(net, bf, roi, factor=4, **kwargs)
        torch.testing.assert_close(out, 2.0 * bf + 1.0, atol=ATOL, rtol=0)

    predict((4, 8, 8), (4, 16, 16))  # no axis above the window, every axis a multiple of 4: one unpadded call
    assert shapes == [(1, 1, 4, 8, 8)]
    predict((4, 8, 6), (4, 8, 8))  # 6 is no multiple of 4: a (padded) window of the training size
    assert shapes == [(1, 1, 4, 8, 8)]
    predict((4, 8, 40), (4, 8, 8), overlap=0.0)  # five windows along X, four per call by default
    assert shapes == [(4, 1, 4, 8, 8), (1, 1, 4, 8, 8)]
    predict((4, 8, 40), (4, 8, 8), overlap=0.0, sw_batch_size=2)
    assert [s[0] for s in shapes] == [2, 2, 1]
    predict((4, 16, 8), (4, 8, 8))  # the default overlap 0.25: windows every 6 voxels along Y
    assert sum(s[0] for s in shapes) == len(dense_patch_slices((4, 16, 8), (4, 8, 8), (3, 6, 6))) == 3
    with pytest.raises(ValueError, match="shorter|longer"):
        predict_volume(net, torch.rand(1, 1, 4, 8, 8), (16, 16), factor=4)


def test_tile_settings_bounds_and_forms() -> None:
    for good in ({"size": (1, 8, 8)}, {"overlap": 0.0}, {"batch": 1}):
        TileSettings(**good)
    for bad, message in (({"size": (8, 8)}, r"tile size \[8, 8\]; expected three positive integers \(Z, Y, X\)"),
                         ({"size": (0, 8, 8)}, r"tile size \[0, 8, 8\]; expected three positive integers"),
                         ({"overlap": 1.0}, r"tile overlap 1.0; expected a fraction in \[0, 1\)"),
                         ({"batch": 0}, r"tiles per network call 0; expected at least 1")):
        with pytest.raises(ValueError, match=message):
            TileSettings(**bad)
    assert TileSettings(size=(4, 8, 8)).resolve((16, 32, 32)) == (4, 8, 8)
    assert TileSettings().resolve([16, 32, 32]) == (16, 32, 32)
    with pytest.raises(ValueError, match=r"^no tile size: the checkpoint stores no training patch size; set "
                                         r"tiling.size \(Z, Y, X\)$"):
        TileSettings().resolve(None)
    settings = TileSettings.from_dict({"size": [8, 16, 16], "overlap": 0.5})
    assert settings == TileSettings(size=(8, 16, 16), overlap=0.5)
    assert settings.to_dict() == {"size": [8, 16, 16], "overlap": 0.5, "batch": 4, "mean_correction": "volume"}
    assert TileSettings.from_dict(None) == TileSettings() and TileSettings.from_dict({"size": None}).size is None
    assert TileSettings().to_dict()["size"] is None
    assert needs_tiling((9, 8, 8), (8, 8, 8)) and not needs_tiling((8, 8, 8), (8, 8, 8))
    # a tile of the wrong length is refused, not cut short
    with pytest.raises(ValueError, match="shorter|longer"):
        effective_tile((8, 8, 8), (4, 4))
    with pytest.raises(ValueError, match="shorter|longer"):
        needs_tiling((4, 4, 4), (8, 8))


def test_tiled_eps_counts_calls_and_reads_t_from_one_voxel_tiles() -> None:
    eps = _pointwise_eps()
    x, cond, t = torch.randn(1, 1, 4, 4, 20), torch.rand(1, 1, 4, 4, 20), torch.tensor([700])
    with torch.no_grad():
        tiled = TiledEps(eps, (4, 4, 4), overlap=0.0)  # five tiles, four per call by default
        torch.testing.assert_close(tiled(x, t, cond), eps(x, t, cond), atol=ATOL, rtol=0)
        assert tiled.n_calls == 2
        tiled(x, t, cond)
        assert tiled.n_calls == 4
        pairs = TiledEps(eps, (4, 4, 4), overlap=0.0, tile_batch=2)
        pairs(x, t, cond)
        assert pairs.n_calls == 3
        # one-voxel tiles: the timestep is read back from the tile's only voxel
        x1, cond1, t1 = x[..., :1, :2, :3], cond[..., :1, :2, :3], torch.tensor([250])
        voxels = TiledEps(eps, (1, 1, 1), overlap=0.0, tile_batch=8)
        torch.testing.assert_close(voxels(x1, t1, cond1), eps(x1, t1, cond1), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"volume \[4, 4, 20\] \(Z, Y, X\) smaller than the tile \[8, 4, 4\]; "
                                         r"expected a tile no larger than the volume \(see effective_tile\)$"):
        TiledEps(eps, (8, 4, 4))(x, t, cond)
    with pytest.raises(ValueError, match=r"^the per-tile ε̂ mean correction needs the noise schedule"):
        TiledEps(eps, (4, 4, 4), target_mean=0.1)
