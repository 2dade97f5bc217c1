"""Manifest-driven Allen-style data: multi-channel OME-TIFFs, FOV/well splits, cached test sets, organelle=custom."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from hydra.utils import instantiate
from skimage.transform import resize

from conftest import CONF_DIR
from dm4isl.data.allen import (
    ResampleSettings,
    prepare_fov,
    read_channels,
    read_manifest,
    resample_xy,
)
from dm4isl.data.datamodule import ManifestDataModule
from dm4isl.data.normalize import percentile_window, window_normalize
from dm4isl.data.splits import read_split
from dm4isl.errors import DataError

#: Channel order of the synthetic FOVs, as in Allen FOVs: membrane (638), structure, DNA (405), brightfield.
CH_MEMBRANE, CH_STRUCT, CH_DNA, CH_BF = range(4)
#: (Z, Y, X) of the small synthetic FOVs the tests write.
FOV_SHAPE = (18, 48, 72)
#: Offset that makes the DNA channel distinguishable from the structure channel.
DNA_OFFSET = 250


def organelle(name: str) -> dict:
    """An organelle config of conf/organelle as a plain dict."""
    return yaml.safe_load((CONF_DIR / "organelle" / f"{name}.yaml").read_text())


def fov_channels(seed: int, shape: tuple[int, int, int] = FOV_SHAPE) -> np.ndarray:
    """Raw uint16 ``(C, Z, Y, X)`` FOV: textured channels inside the organelle windows (blobs in the FL channels)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    blobs = np.zeros(shape, np.float64)
    for _ in range(6):
        c = rng.uniform(0, 1, 3) * np.asarray(shape)
        blobs += np.exp(-(((z - c[0]) / 4) ** 2 + ((y - c[1]) / 6) ** 2 + ((x - c[2]) / 6) ** 2))
    noise = rng.normal(0, 1, shape)
    struct = 600 + 900 * blobs + 80 * noise
    dna = struct * 0.3 + DNA_OFFSET + 30 * rng.normal(0, 1, shape)
    bf = 30000 - 8000 * blobs + 500 * noise
    membrane = 500 + 10 * rng.normal(0, 1, shape)
    return np.clip(np.stack([membrane, struct, dna, bf]), 0, 65535).astype(np.uint16)


def write_fov(path: Path, data_czyx: np.ndarray, axes: str = "ZCYX") -> Path:
    """Write a ``(C, Z, Y, X)`` FOV with the given OME axes order (``ZCYX``, ``CZYX`` or ``TCZYX``)."""
    order = {"ZCYX": (1, 0, 2, 3), "CZYX": (0, 1, 2, 3)}
    arr = data_czyx[None] if axes == "TCZYX" else np.transpose(data_czyx, order[axes])
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, metadata={"axes": axes})
    return path


def write_allen(root: Path, genes: dict[str, int], cells_per_fov: int = 2) -> Path:
    """Synthetic Allen-style collection: FOV files under ``root/fovs`` + ``metadata.csv`` (one row per cell)."""
    rows = []
    fov_id = 100
    axes_cycle = ("ZCYX", "CZYX", "TCZYX")
    for gene, n in genes.items():
        for k in range(n):
            rel = f"fovs/{gene}_{k}.ome.tiff"
            write_fov(root / rel, fov_channels(fov_id), axes_cycle[fov_id % 3])
            for cell in range(cells_per_fov):
                rows.append({
                    "CellId": f"{fov_id}_{cell}", "FOVId": fov_id, "WellId": 10 + k // 2, "Gene": gene,
                    "SourceReadPath": rel, "ChannelNumber638": CH_MEMBRANE, "ChannelNumberStruct": CH_STRUCT,
                    "ChannelNumber405": CH_DNA, "ChannelNumberBrightfield": CH_BF,
                })
            fov_id += 1
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "metadata.csv"


@pytest.fixture(scope="module")
def allen_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 LMNB1 FOVs and 4 TOMM20 FOVs in the Allen layout."""
    root = tmp_path_factory.mktemp("allen")
    write_allen(root, {"LMNB1": 8, "TOMM20": 4})
    return root


def make_dm(manifest: Path, tmp: Path, org: dict, **kwargs) -> ManifestDataModule:
    """A small manifest datamodule (16 x 32 x 32 crops) writing its split and caches under ``tmp``."""
    defaults = {
        "patch_size": [16, 32, 32], "n_val_patches": 3, "n_test_patches": 5, "samples_per_epoch": 4,
        "split_fractions": {"val": 0.25, "test": 0.25}, "split_file": tmp / "run" / "split.csv",
        "cache_dir": tmp / "cache", "xy_size": None,
    }
    return ManifestDataModule(org, manifest, **{**defaults, **kwargs})


def test_allen_manifest_split_and_identical_cached_test_patches(allen_root: Path, tmp_path: Path) -> None:
    manifest = allen_root / "metadata.csv"
    dm = make_dm(manifest, tmp_path, organelle("nuclear_envelope"))
    dm.setup("fit")
    split = read_split(tmp_path / "run" / "split.csv")
    ids = sum(split.values(), [])
    assert len(ids) == len(set(ids)) == 8  # every LMNB1 FOV once, none in two splits, no TOMM20 FOV
    assert set(ids) == {str(i) for i in range(100, 108)}
    assert [len(split[k]) for k in ("train", "val", "test")] == [4, 2, 2]
    assert {v.name for v in dm.volumes["test"]} == set(split["test"])
    assert dm.test_set is not None and len(dm.test_set) == 5 and set(dm.test_set.sources) <= set(split["test"])
    assert dm.test_set.bf.shape == (5, 16, 32, 32) and dm.test_set.fl.dtype == np.float32
    assert 0.0 <= dm.test_set.fl.min() and dm.test_set.fl.max() <= 1.0
    assert len(list((tmp_path / "cache" / "eval_sets").glob("nuclear_envelope-test-*.npz"))) == 1
    assert len(list((tmp_path / "cache" / "allen" / "fovs").glob("*.npz"))) == 8
    # a second datamodule with the same config (a resumed or another model's run) gets the identical test set
    again = make_dm(manifest, tmp_path, organelle("nuclear_envelope"))
    again.setup("test")
    assert again.split == dm.split
    np.testing.assert_array_equal(again.test_set.fl, dm.test_set.fl)
    np.testing.assert_array_equal(again.test_set.bf, dm.test_set.bf)
    assert again.test_set.names == dm.test_set.names
    # and so does a fresh cache: the patches are a pure function of the data and the seed
    fresh = make_dm(manifest, tmp_path / "fresh", organelle("nuclear_envelope"))
    fresh.setup("test")
    np.testing.assert_array_equal(fresh.test_set.fl, dm.test_set.fl)


def test_dna_from_405_channel_and_xy_resampling(allen_root: Path, tmp_path: Path) -> None:
    org = organelle("dna")
    records = read_manifest(allen_root / "metadata.csv", org)
    assert [r.fov_id for r in records] == ["108", "109", "110", "111"]  # the TOMM20 FOVs (SPEC §1)
    assert all(r.fl_channel == CH_DNA and r.bf_channel == CH_BF for r in records)
    dm = make_dm(allen_root / "metadata.csv", tmp_path, org, xy_factor=0.5, patch_size=[16, 16, 16])
    dm.setup("fit")
    vol = next(v for v in dm.volumes["train"])
    assert vol.fl.shape == (FOV_SHAPE[0], FOV_SHAPE[1] // 2, FOV_SHAPE[2] // 2)
    raw = fov_channels(int(vol.name))
    expected = window_normalize(resample_xy(raw[CH_DNA], ResampleSettings(factor=(0.5, 0.5))), org["fl_window"])
    np.testing.assert_array_equal(vol.fl, expected)
    assert not np.array_equal(vol.fl, window_normalize(resample_xy(raw[CH_STRUCT], ResampleSettings(factor=(0.5, 0.5))),
                                                       org["fl_window"]))


def test_nearest_resampling_matches_skimage_and_keeps_dtype() -> None:
    vol = np.random.default_rng(0).integers(0, 60000, (3, 624, 924)).astype(np.uint16)
    out = resample_xy(vol, ResampleSettings(size=(244, 366)))
    assert out.shape == (3, 244, 366) and out.dtype == np.uint16
    ref = resize(vol, (3, 244, 366), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint16)
    np.testing.assert_array_equal(out, ref)
    lin = resample_xy(vol, ResampleSettings.from_config(None, 0.5, "linear"))
    assert lin.shape == (3, 312, 462) and lin.dtype == np.float32


def test_axes_orders_and_dtypes(tmp_path: Path) -> None:
    data = fov_channels(1)
    for axes in ("ZCYX", "CZYX", "TCZYX"):
        bf, fl = read_channels(write_fov(tmp_path / f"{axes}.ome.tiff", data, axes), [CH_BF, CH_STRUCT])
        np.testing.assert_array_equal(bf, data[CH_BF])
        np.testing.assert_array_equal(fl, data[CH_STRUCT])
    for dtype in (np.float16, np.float32):  # OME-XML has no float16: a tifffile-shaped TIFF with axes metadata
        path = tmp_path / f"{np.dtype(dtype).name}.tif"
        tifffile.imwrite(path, np.transpose(data, (1, 0, 2, 3)).astype(dtype), metadata={"axes": "ZCYX"},
                         photometric="minisblack")
        (bf,) = read_channels(path, [CH_BF])
        assert bf.dtype == dtype and bf.shape == FOV_SHAPE
    mislabelled = tmp_path / "mislabelled.tif"  # ZCYX data whose metadata says CZYX: the axes override wins
    tifffile.imwrite(mislabelled, np.transpose(data, (1, 0, 2, 3)), metadata={"axes": "CZYX"}, photometric="minisblack")
    (fl,) = read_channels(mislabelled, [CH_STRUCT], axes="ZCYX")
    np.testing.assert_array_equal(fl, data[CH_STRUCT])
    bare = tmp_path / "bare.tif"  # pages without any metadata: a plain stack of Z*C pages that cannot be split
    tifffile.imwrite(bare, np.transpose(data, (1, 0, 2, 3)), metadata=None, photometric="minisblack")
    with pytest.raises(DataError, match="bare.tif: axes IYX"):
        read_channels(bare, [CH_STRUCT])


def test_plain_csv_manifest_with_separate_files(tmp_path: Path) -> None:
    rows = []
    for k in range(6):
        data = fov_channels(200 + k)
        if k % 2:  # one multi-channel file
            write_fov(tmp_path / f"stack{k}.ome.tiff", data[[CH_BF, CH_STRUCT]], "CZYX")
            rows.append({"path": f"stack{k}.ome.tiff", "bf_channel": 0, "fl_channel": 1, "fov_id": f"own{k}",
                         "fl_path": ""})
        else:  # separate single-channel BF and FL files
            tifffile.imwrite(tmp_path / f"bf{k}.tif", data[CH_BF], metadata={"axes": "ZYX"})
            tifffile.imwrite(tmp_path / f"fl{k}.tif", data[CH_STRUCT], metadata={"axes": "ZYX"})
            rows.append({"path": f"bf{k}.tif", "bf_channel": 0, "fl_channel": 0, "fov_id": f"own{k}",
                         "fl_path": f"fl{k}.tif"})
    with open(tmp_path / "own.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dm = make_dm(tmp_path / "own.csv", tmp_path, organelle("nuclear_envelope"), style="plain",
                 split_fractions={"val": 0.2, "test": 0.2})
    dm.setup("fit")
    vols = {v.name: v for vs in dm.volumes.values() for v in vs}
    assert sorted(vols) == [f"own{k}" for k in range(6)]
    for k in (0, 1):
        expected = window_normalize(fov_channels(200 + k)[CH_STRUCT], organelle("nuclear_envelope")["fl_window"])
        np.testing.assert_array_equal(vols[f"own{k}"].fl, expected)


def test_split_by_well_keeps_wells_together(allen_root: Path, tmp_path: Path) -> None:
    dm = make_dm(allen_root / "metadata.csv", tmp_path, organelle("nuclear_envelope"), split_by="well")
    wells = {r.fov_id: r.well_id for r in dm.records()}
    split = dm.make_split(sorted(wells))
    where: dict[str, str] = {}
    for name, ids in split.items():
        for fid in ids:
            assert where.setdefault(wells[fid], name) == name  # no well in two splits
    assert sorted(sum(split.values(), [])) == sorted(wells)
    assert read_split(tmp_path / "run" / "split.csv") == split


def _one_row_manifest(tmp_path: Path, image: Path, bf_channel: int | str = CH_BF, gene: str = "LMNB1") -> Path:
    path = tmp_path / "m.csv"
    path.write_text(
        "FOVId,WellId,Gene,SourceReadPath,ChannelNumberStruct,ChannelNumber405,ChannelNumberBrightfield\n"
        f"1,1,{gene},{image.name},{CH_STRUCT},{CH_DNA},{bf_channel}\n"
    )
    return path


def _bad_input(kind: str, tmp_path: Path) -> tuple[Path, str, dict]:
    """A manifest with one bad input, the file the error must name, and the organelle to read it as."""
    org = organelle("nuclear_envelope")
    good = write_fov(tmp_path / "good.ome.tiff", fov_channels(5))
    if kind == "missing_channel":
        return _one_row_manifest(tmp_path, good, bf_channel=9), "good.ome.tiff", org
    if kind == "two_d":
        tifffile.imwrite(tmp_path / "flat.ome.tiff", fov_channels(5)[CH_BF, 0])
        return _one_row_manifest(tmp_path, tmp_path / "flat.ome.tiff"), "flat.ome.tiff", org
    if kind == "wrong_axes":  # two time points
        tifffile.imwrite(tmp_path / "movie.ome.tiff", np.stack([fov_channels(5)] * 2), metadata={"axes": "TCZYX"})
        return _one_row_manifest(tmp_path, tmp_path / "movie.ome.tiff"), "movie.ome.tiff", org
    if kind == "unreadable":
        (tmp_path / "junk.ome.tiff").write_bytes(b"II*\x00 this is not a tiff")
        return _one_row_manifest(tmp_path, tmp_path / "junk.ome.tiff"), "junk.ome.tiff", org
    if kind == "missing_file":
        return _one_row_manifest(tmp_path, tmp_path / "gone.ome.tiff"), "gone.ome.tiff", org
    if kind == "no_manifest":
        return tmp_path / "nope.csv", "nope.csv", org
    if kind == "absent_organelle":
        return _one_row_manifest(tmp_path, good, gene="TUBA1B"), "m.csv", org
    if kind == "missing_column":
        (tmp_path / "m.csv").write_text(f"FOVId,Gene,SourceReadPath\n1,LMNB1,{good.name}\n")
        return tmp_path / "m.csv", "m.csv", org
    if kind == "bad_channel_number":
        return _one_row_manifest(tmp_path, good, bf_channel="3.5"), "m.csv", org
    if kind == "nan":
        data = fov_channels(5).astype(np.float32)
        data[CH_STRUCT, 3, 4, 5] = np.nan
        path = tmp_path / "nan.tif"
        tifffile.imwrite(path, np.transpose(data, (1, 0, 2, 3)), metadata={"axes": "ZCYX"},
                         photometric="minisblack")
        return _one_row_manifest(tmp_path, path), "nan.tif", org
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing_channel", "channel index 9 out of range"),
        ("two_d", "expected a 3-D stack"),
        ("wrong_axes", "axes of length 1"),
        ("unreadable", "unreadable or truncated"),
        ("missing_file", "file not found"),
        ("no_manifest", "manifest not found"),
        ("absent_organelle", "no FOV with Gene == 'LMNB1'"),
        ("nan", "NaN/inf"),
        ("missing_column", "missing column"),
        ("bad_channel_number", "'3.5' is not an integer"),
    ],
)
def test_bad_inputs_name_the_file(kind: str, message: str, tmp_path: Path) -> None:
    manifest, culprit, org = _bad_input(kind, tmp_path)
    with pytest.raises(DataError, match=message) as err:
        for record in read_manifest(manifest, org):
            prepare_fov(record, ResampleSettings())
    assert culprit in str(err.value)


def test_data_allen_and_custom_compose_and_instantiate(compose_cfg, allen_root: Path) -> None:
    cfg = compose_cfg("train", ["data=allen", f"data.manifest={allen_root / 'metadata.csv'}"])
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, ManifestDataModule) and dm.resample.size == (244, 366) and dm.style == "allen"
    assert dm.threshold == pytest.approx(70 / 1110)
    cfg = compose_cfg("train", ["data=manifest", "organelle=custom", f"data.manifest={allen_root / 'metadata.csv'}"])
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.style == "plain" and dm.resample.size is None and dm.threshold is None
    assert dm.organelle["bf_window"] is None and dm.percentiles == [0.1, 99.9]


def test_custom_windows_fitted_stored_in_checkpoint_and_used_to_predict(compose_cfg, allen_root: Path) -> None:
    import dm4isl
    from dm4isl.models.checkpoint import FITTED_WINDOWS_KEY, PROVENANCE_KEY, load_model, read_checkpoint
    from dm4isl.train import train

    rows = [f"{allen_root / r.path},{CH_BF},{CH_STRUCT},{r.fov_id}"
            for r in read_manifest(allen_root / "metadata.csv", organelle("nuclear_envelope"))]
    manifest = allen_root / "own.csv"
    manifest.write_text("path,bf_channel,fl_channel,fov_id\n" + "\n".join(rows) + "\n")
    cfg = compose_cfg("train", [
        "data=manifest", "organelle=custom", f"data.manifest={manifest}", "model/net=tiny", "sampler=ddim",
        "sampler.num_steps=4", "model.val_num_patches=1", "model.val_sampler.num_steps=4",
        "data.patch_size=[16,32,32]",
        "data.samples_per_epoch=2", "data.batch_size=2", "data.n_val_patches=1", "data.n_test_patches=2",
        "data.split_fractions={val: 0.25, test: 0.25}", "trainer.max_epochs=1", "test=false", "logger=csv",
        "callbacks.prediction_writer=null", "callbacks.progress_bar=null",
    ])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    fitted = read_checkpoint(ckpt)[PROVENANCE_KEY][FITTED_WINDOWS_KEY]
    # the windows are the percentiles of the training FOVs of the saved split, nothing else
    split = read_split(Path(cfg.paths.output_dir) / "split.csv")
    train_raw = [fov_channels(int(fid)) for fid in split["train"]]
    for key, channel in (("bf_window", CH_BF), ("fl_window", CH_STRUCT)):
        assert fitted[key] == list(percentile_window([c[channel] for c in train_raw], [0.1, 99.9]))
    model = load_model(ckpt)
    assert model.hparams["organelle"]["bf_window"] == fitted["bf_window"]
    assert model.hparams["organelle"]["fl_window"] == fitted["fl_window"]
    # predicting raw grey levels normalises them with the fitted windows: the same input as its normalised form
    bf_raw = fov_channels(100)[CH_BF][:16, :32, :32]
    bf_unit = window_normalize(bf_raw, fitted["bf_window"])
    sampler = {"method": "ddim", "num_steps": 4}  # 4 steps visit t = 750, 500 inside the DDPMavg window
    a = dm4isl.predict(bf_raw, ckpt, sampler=sampler, device="cpu")
    b = dm4isl.predict(bf_unit, ckpt, sampler=sampler, device="cpu")
    np.testing.assert_allclose(a["DDPMavg"], b["DDPMavg"], atol=1e-6)
    # the command line with organelle=custom (null windows) uses the checkpoint's fitted windows, like no organelle=
    from dm4isl.predict import predict_command

    tifffile.imwrite(allen_root / "own_bf.tif", bf_raw)
    outs = []
    for name, extra in (("custom", ["organelle=custom"]), ("stored", [])):
        pcfg = compose_cfg("predict", [
            f"ckpt_path={ckpt}", f"input={allen_root / 'own_bf.tif'}", f"output_dir={allen_root / name}",
            "sampler=ddim", "sampler.num_steps=4", "device=cpu", *extra,
        ])
        predict_command(pcfg)
        outs.append(tifffile.imread(allen_root / name / "DDPMavg" / "own_bf.ome.tiff"))
    assert outs[0].shape == bf_raw.shape and outs[0].std() > 0
    np.testing.assert_array_equal(outs[0], outs[1])


def test_prepare_script_is_resumable_and_feeds_training(allen_root: Path, tmp_path: Path, compose_cfg) -> None:
    from conftest import load_script

    script = load_script("prepare_allen")
    overrides = ["data.xy_size=null", "data.patch_size=[16,32,32]", "data.n_test_patches=5", "data.n_val_patches=3",
                 "data.split_fractions={val: 0.25, test: 0.25}"]
    manifest = allen_root / "metadata.csv"
    first = script.prepare_allen(manifest, ["all"], tmp_path, overrides=overrides, progress=False)
    by_name = {r["organelle"]: r for r in first}
    assert by_name["nuclear_envelope"]["fovs"] == {"train": 4, "val": 2, "test": 2}
    assert by_name["dna"]["fovs"] == by_name["mitochondria"]["fovs"] == {"train": 2, "val": 1, "test": 1}
    assert by_name["nucleoli"] == {"organelle": "nucleoli", "absent": True}
    assert (tmp_path / "allen" / "splits" / "dna.csv").is_file()
    cached = sorted((tmp_path / "cache" / "eval_sets").glob("*.npz"))
    assert len(cached) == 6  # val + test of three organelles
    again = script.prepare_allen(manifest, ["all"], tmp_path, overrides=overrides, progress=False)
    assert all(r.get("skipped", True) for r in again)
    # a training run with the same settings finds the prepared FOVs and patch sets: nothing new is written
    cfg = compose_cfg("train", ["data=allen", f"data.manifest={manifest}", *overrides])
    cfg.paths.data_dir = str(tmp_path)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert sorted((tmp_path / "cache" / "eval_sets").glob("*.npz")) == cached
    assert dm.split == read_split(tmp_path / "allen" / "splits" / "nuclear_envelope.csv")
    assert len(dm.test_set) == 5
    assert script.main(["--manifest", str(tmp_path / "missing.csv"), "--organelles", "dna", "--quiet"]) == 1
