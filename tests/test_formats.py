"""A lab's own files: OME-TIFF, OME-Zarr and CZI written by their own writers, read by dm4isl-predict and the manifest
datamodule through bioio (channels by name, scenes, time points, physical sizes, resampling to the training voxel)."""

from __future__ import annotations

import csv
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from conftest import MICRO_NET, perturb_, require
from dm4isl.data.allen import read_channels
from dm4isl.data.datamodule import ManifestDataModule
from dm4isl.data.images import needs_resampling, open_image, physical_voxel_size, resample_to_voxel
from dm4isl.data.normalize import window_normalize
from dm4isl.errors import DataError
from dm4isl.io.atomic import read_tiff_info
from dm4isl.models.ddpm import DDPMModule
from dm4isl.predict import predict_command
from dm4isl.prediction.inputs import InputSettings, ReadSettings, discover_inputs

#: Patch (Z, Y, X) of the micro checkpoint; the files hold FOVs of this shape at the training voxel size.
PATCH = (8, 16, 16)
TRAIN_VOXEL = (0.29, 0.29, 0.29)
ORGANELLE = {"name": "nuclear_envelope", "bf_window": [12000, 55000], "fl_window": [390, 1500],
             "voxel_size": list(TRAIN_VOXEL), "std_th": 70}
#: Channel names as microscopes write them; the brightfield is not the first channel.
CHANNELS = ["EGFP-LaminB1", "TL Brightfield"]
BF_NAME, FL_NAME = CHANNELS[1], CHANNELS[0]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def micro_checkpoint(path: Path) -> Path:
    """A random, perturbed x0-predicting diffusion checkpoint (DDIM-3) with training statistics."""
    torch.manual_seed(0)
    model = DDPMModule(net=MICRO_NET, organelle=ORGANELLE, patch_size=list(PATCH), prediction_type="sample",
                       test_sampler={"method": "ddim", "num_steps": 3})
    model.data_stats.copy_(torch.tensor([1.0, 0.5, 0.2, 0.3, 0.1], dtype=torch.float64))
    perturb_(model.net)  # an untrained MONAI net predicts a constant: its products would not depend on the input
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "dm4isl": {"model_class": "dm4isl.models.ddpm.DDPMModule"}}, path)
    return path


def fov(seed: int, shape: tuple[int, int, int] = PATCH) -> np.ndarray:
    """Raw uint16 ``(C, Z, Y, X)`` in the order of :data:`CHANNELS`: fluorescence, brightfield."""
    rng = np.random.default_rng(seed)
    bf = rng.integers(15000, 50000, shape)
    fl = rng.integers(400, 1400, shape)
    return np.stack([fl, bf]).astype(np.uint16)


def write_ome_tiff(path: Path, scenes: list[np.ndarray], voxel=TRAIN_VOXEL) -> Path:
    """bioio's OME-TIFF writer: one image per scene, ``(T, C, Z, Y, X)`` each, named channels, physical sizes."""
    from bioio import PhysicalPixelSizes
    from bioio.writers import OmeTiffWriter

    OmeTiffWriter.save(scenes if len(scenes) > 1 else scenes[0], path, dim_order="TCZYX",
                       channel_names=[CHANNELS] * len(scenes) if len(scenes) > 1 else CHANNELS,
                       physical_pixel_sizes=[PhysicalPixelSizes(*voxel)] * len(scenes) if len(scenes) > 1
                       else PhysicalPixelSizes(*voxel))
    return path


def write_ome_zarr(path: Path, data_czyx: np.ndarray, voxel=TRAIN_VOXEL, zarr_format: int = 2) -> Path:
    """bioio-ome-zarr's writer (NGFF 0.4 for Zarr v2, 0.5 for v3)."""
    from bioio_ome_zarr.writers import Channel, OMEZarrWriter

    writer = OMEZarrWriter(
        str(path), level_shapes=[data_czyx.shape], dtype=data_czyx.dtype, zarr_format=zarr_format,
        chunk_shape=[data_czyx.shape], channels=[Channel(label=n, color="FFFFFF") for n in CHANNELS],
        axes_names=["c", "z", "y", "x"], axes_types=["channel", "space", "space", "space"],
        axes_units=[None, "micrometer", "micrometer", "micrometer"], physical_pixel_size=[1.0, *voxel],
    )
    writer.write_full_volume(data_czyx)
    return path


def write_czi(path: Path, data_czyx: np.ndarray, voxel=TRAIN_VOXEL) -> Path:
    """Zeiss's libCZI writer (pylibCZIrw): one tile per (C, Z) plane, channel names and scaling (metres)."""
    import pylibCZIrw.czi as pyczi

    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for c in range(data_czyx.shape[0]):
            for z in range(data_czyx.shape[1]):
                czi.write(data_czyx[c, z][..., None], plane={"C": c, "Z": z, "T": 0})
        czi.write_metadata(document_name=path.stem, channel_names=dict(enumerate(CHANNELS)),
                           scale_z=voxel[0] * 1e-6, scale_y=voxel[1] * 1e-6, scale_x=voxel[2] * 1e-6)
    return path


def test_ome_tiff_by_bioio_writer_scene_timepoint_and_channel_by_name(tmp_path: Path) -> None:
    movie = [np.stack([fov(1), fov(2)]), np.stack([fov(3), fov(4)])]  # 2 scenes of 2 time points
    path = write_ome_tiff(tmp_path / "plate.ome.tiff", movie, voxel=(0.5, 0.2, 0.2))
    (bf,) = read_channels(path, [BF_NAME], scene=1, timepoint=1)
    np.testing.assert_array_equal(bf, fov(4)[1])
    (fl,) = read_channels(path, ["egfp-laminb1"], scene="Image:0", timepoint=0)  # names are case-insensitive
    np.testing.assert_array_equal(fl, fov(1)[0])
    image = open_image(path)
    assert physical_voxel_size(image) == pytest.approx((0.5, 0.2, 0.2))
    with pytest.raises(DataError, match=r"plate\.ome\.tiff: dimensions .* found 2 time points"):
        read_channels(path, [BF_NAME])  # training data must say which time point
    with pytest.raises(DataError, match=r"plate\.ome\.tiff: no channel named 'DAPI'; channels: \['EGFP"):
        read_channels(path, ["DAPI"], timepoint=0)
    with pytest.raises(DataError, match=r"plate\.ome\.tiff: scene index 2 out of range; the file has 2 scene"):
        read_channels(path, [0], scene=2, timepoint=0)
    window = tuple(ORGANELLE["bf_window"])
    sources = discover_inputs(InputSettings(str(path), scene="all", channel=BF_NAME, timepoint=1),
                              ReadSettings(bf_window=window))
    assert [s.name for s in sources] == ["plate_s0", "plate_s1"]
    inputs = [s.load() for s in sources]  # no training voxel size given: not resampled
    np.testing.assert_array_equal(inputs[1].bf, window_normalize(fov(4)[1], window))
    assert inputs[0].bf.dtype == np.float32 and inputs[0].voxel_size == pytest.approx((0.5, 0.2, 0.2))


def test_resampling_to_the_training_voxel_size() -> None:
    rng = np.random.default_rng(0)
    vol = rng.random((8, 32, 32)).astype(np.float32)
    out = resample_to_voxel(vol, (0.29, 0.145, 0.145), TRAIN_VOXEL)
    assert out.shape == (8, 16, 16) and out.dtype == np.float32
    assert abs(float(out.mean()) - float(vol.mean())) < 0.01  # anti-aliased 2x downsampling keeps the mean
    np.testing.assert_allclose(resample_to_voxel(np.full((4, 6, 6), 0.7, np.float32), (0.5, 0.1, 0.1),
                                                 (0.25, 0.2, 0.2)), 0.7, rtol=1e-6)
    assert resample_to_voxel(vol, (0.58, 0.29, 0.29), TRAIN_VOXEL).shape == (16, 32, 32)
    assert not needs_resampling((0.2915, 0.29, 0.29), TRAIN_VOXEL)  # within 1 %
    assert needs_resampling((0.3, 0.29, 0.29), TRAIN_VOXEL)
    assert not needs_resampling(None, TRAIN_VOXEL)


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One FOV per format, each written by its own writer; the OME-TIFF at half the training XY voxel size."""
    require(_has("bioio_ome_zarr") and _has("pylibCZIrw") and _has("bioio_czi"),
            'the formats extra is not installed (pip install -e ".[formats]")')
    root = tmp_path_factory.mktemp("lab")
    fine = fov(10, (PATCH[0], 2 * PATCH[1], 2 * PATCH[2]))
    return {
        "ome_tiff": write_ome_tiff(root / "fine.ome.tiff", [fine[None]], voxel=(0.29, 0.145, 0.145)),
        "zarr_v2": write_ome_zarr(root / "fov_a.ome.zarr", fov(11), zarr_format=2),
        "zarr_v3": write_ome_zarr(root / "fov_b.ome.zarr", fov(12), zarr_format=3),
        "czi": write_czi(root / "fov_c.czi", fov(13)),
    }


EXPECTED = {"fine": 10, "fov_a": 11, "fov_b": 12, "fov_c": 13}


def test_each_format_reads_channels_by_name_and_physical_sizes(lab_files: dict[str, Path]) -> None:
    for key, path in lab_files.items():
        image = open_image(path)
        assert [str(n) for n in image.channel_names] == CHANNELS, key
        expected = (0.29, 0.145, 0.145) if key == "ome_tiff" else TRAIN_VOXEL
        assert physical_voxel_size(image) == pytest.approx(expected, rel=1e-6), key
        bf, fl = read_channels(path, [BF_NAME, FL_NAME])
        seed = EXPECTED[path.name.split(".")[0]]
        ref = fov(seed, bf.shape)
        np.testing.assert_array_equal(bf, ref[1])
        np.testing.assert_array_equal(fl, ref[0])


def test_dm4isl_predict_reads_a_manifest_of_lab_files(compose_cfg, lab_files, tmp_path: Path, caplog) -> None:
    ckpt = micro_checkpoint(tmp_path / "micro.ckpt")
    manifest = tmp_path / "fovs.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "name", "channel", "gt_channel"])
        for key, path in lab_files.items():
            writer.writerow([path, key, BF_NAME, FL_NAME])
    out = tmp_path / "out"
    cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", f"input.path={manifest}", f"output_dir={out}", "device=cpu"])
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.inputs"):
        rows = predict_command(cfg)
    assert sorted(r["name"] for r in rows) == sorted(lab_files)
    resampled = [r.getMessage() for r in caplog.records if "resampled to the training voxel size" in r.getMessage()]
    assert len(resampled) == 1 and "fine.ome.tiff" in resampled[0] and "(8, 32, 32) -> (8, 16, 16)" in resampled[0]
    for key, path in lab_files.items():
        voxel, meta = read_tiff_info(out / "DDPMavg" / f"{key}.ome.tiff")
        assert voxel == pytest.approx(TRAIN_VOXEL) and meta["input"] == str(path)
        bf = tifffile.imread(out / "BF" / f"{key}.ome.tiff")
        gt = tifffile.imread(out / "GT" / f"{key}.ome.tiff")
        assert bf.shape == gt.shape == PATCH
        if key != "ome_tiff":  # not resampled: exactly the normalised channels
            raw = fov(EXPECTED[path.name.split(".")[0]])
            np.testing.assert_allclose(bf, window_normalize(raw[1], ORGANELLE["bf_window"]), atol=1e-6)
            np.testing.assert_allclose(gt, window_normalize(raw[0], ORGANELLE["fl_window"]), atol=1e-6)
    # the resampled brightfield is the 2x2 XY average of the fine one, up to the anti-aliasing blur
    fine = window_normalize(fov(10, (8, 32, 32))[1], ORGANELLE["bf_window"])
    coarse = fine.reshape(8, 16, 2, 16, 2).mean(axis=(2, 4))
    bf = tifffile.imread(out / "BF" / "ome_tiff.ome.tiff")
    assert np.corrcoef(bf.ravel(), coarse.ravel())[0, 1] > 0.8


def test_manifest_datamodule_reads_lab_files_by_channel_name(lab_files: dict[str, Path], tmp_path: Path) -> None:
    rows = [{"path": str(p), "bf_channel": BF_NAME, "fl_channel": FL_NAME, "fov_id": k}
            for k, p in lab_files.items() if k != "ome_tiff"]
    rows.append({"path": str(lab_files["zarr_v2"]), "bf_channel": "1", "fl_channel": "0", "fov_id": "by_index"})
    with open(tmp_path / "own.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dm = ManifestDataModule(
        ORGANELLE, tmp_path / "own.csv", style="plain", patch_size=list(PATCH), n_val_patches=1, n_test_patches=1,
        samples_per_epoch=2, split_fractions={"val": 0.25, "test": 0.25}, split_file=tmp_path / "split.csv",
        cache_dir=tmp_path / "cache", xy_size=None,
    )
    raw = dm.prepare_raw(progress=False)
    assert sorted(raw) == sorted(["zarr_v2", "zarr_v3", "czi", "by_index"])
    for fov_id, seed in (("zarr_v2", 11), ("zarr_v3", 12), ("czi", 13), ("by_index", 11)):
        np.testing.assert_array_equal(raw[fov_id][0], fov(seed)[1])
        np.testing.assert_array_equal(raw[fov_id][1], fov(seed)[0])


def test_formats_without_a_writer_here_go_to_their_plugin(tmp_path: Path) -> None:
    """ND2 and LIF: no writer exists in Python; a file that is not one is refused by the real plugin, named."""
    for suffix, module in ((".nd2", "bioio_nd2"), (".lif", "bioio_lif")):
        require(_has(module), f"{module} is not installed (formats extra)")
        bad = tmp_path / f"not_really{suffix}"
        bad.write_bytes(b"\x00" * 512)
        with pytest.raises(DataError, match=rf"not_really\{suffix}: (no installed bioio reader|unreadable image)"):
            read_channels(bad, [0])
