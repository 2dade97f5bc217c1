"""The prediction module's steps on their own: inputs, shards, thresholds, products, writers, calibration, imports.

No training, no subprocess, no diffusion sampling: tiny arrays, files written here with tifffile, and stand-in
models whose products depend on their input. Expected values are computed here by hand or with NumPy/hashlib.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import dask
import numpy as np
import pytest
import tifffile
import torch
import yaml

from dm4isl.conf import CONF_DIR
from dm4isl.data.patches import PatchSet
from dm4isl.errors import CheckpointError, ConfigError, DataError
from dm4isl.io.atomic import read_channel_names, read_tiff_info, write_tiff
from dm4isl.models.classifier import ClassifierModule
from dm4isl.models.nets.resnet3d import RESNET3D_DEFAULTS, build_resnet3d
from dm4isl.prediction import calibration, classifier, distributed, generative_import, inputs, runner, sharding
from dm4isl.prediction.inputs import (
    InputSettings,
    InputSource,
    PredictInput,
    ReadSettings,
    discover_inputs,
    input_fingerprint,
    list_images,
    name_to_patch_id,
    read_predict_manifest,
)
from dm4isl.prediction.runner import (
    CSV_FIELDS,
    MaskPlan,
    OutputSettings,
    UncertaintySettings,
    mask_and_flag,
    pending_inputs,
    plan_masks,
    read_and_check,
    run_predict,
)
from dm4isl.prediction.sharding import Shard
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.sampling.tiled import TileSettings
from dm4isl.uncertainty.evaluation import calibrate_threshold, evaluate_uncertainty
from dm4isl.uncertainty.masks import MaskSettings, error_mask, flag, patch_flag
from dm4isl.uncertainty.thresholds import PUBLISHED_SETTING, Threshold

SHAPE = (3, 4, 5)


@pytest.fixture(autouse=True)
def _progress_bars_with_a_thread_lock():
    """Safe in forked test processes (mutation testing): tqdm's default write lock includes a multiprocessing lock
    that forked processes share, so a process killed while holding it would block every other; the bars of these
    tests take a thread lock. bioio reads through dask, whose thread pool is not there in a fork: these tests read
    with dask's synchronous scheduler."""
    bar = runner.tqdm
    old_lock, old_interval = bar.get_lock(), bar.monitor_interval
    bar.set_lock(threading.RLock())
    bar.monitor_interval = 0
    with dask.config.set(scheduler="synchronous"):  # dask's thread pool does not survive a fork either
        yield
    bar.set_lock(old_lock)
    bar.monitor_interval = old_interval
#: Voxel sizes, all different, so that a swapped axis shows.
VOXEL = (0.5, 0.25, 0.125)


def _raw(seed: int, shape: tuple[int, ...] = SHAPE, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, shape).astype(dtype)


def _plain(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, photometric="minisblack")
    return path


def _sha16(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]


# --- inputs: fingerprints and ids ----------------------------------------------------------------------------------
def test_fingerprint_of_a_file_a_folder_and_arrays(tmp_path: Path) -> None:
    bf = _plain(tmp_path / "a.tif", _raw(0))
    gt = _plain(tmp_path / "a_gt.tif", _raw(1))
    src = InputSource("a", bf, scene=1, channel="BF", gt_channel=2, gt_path=gt, timepoint=3)
    extra = repr((1, "BF", 2, 3, ReadSettings())).encode()
    assert input_fingerprint(src) == _sha16(bf.read_bytes(), gt.read_bytes(), extra)
    only = InputSource("a", bf)
    assert input_fingerprint(only) == _sha16(bf.read_bytes(), repr((None, None, None, 0, ReadSettings())).encode())
    # a folder (OME-Zarr): every file under it with its relative path, in sorted order
    zarr = tmp_path / "b.ome.zarr"
    (zarr / "0").mkdir(parents=True)
    (zarr / "0" / "c").write_bytes(b"chunk")
    (zarr / ".zattrs").write_bytes(b"{}")
    expected = _sha16(b".zattrs", b"{}", b"0/c", b"chunk", repr((None, None, None, 0, ReadSettings())).encode())
    assert input_fingerprint(InputSource("b", zarr)) == expected
    # arrays: shape and dtype, then the bytes
    arr, fl = np.arange(6, dtype=np.float32).reshape(1, 2, 3), np.ones((1, 2, 3), np.float32)
    inp = PredictInput("x", 0, "mem", arr, fl)
    assert input_fingerprint(inp) == _sha16(repr(((1, 2, 3), "float32")).encode(), arr.tobytes(),
                                            repr(((1, 2, 3), "float32")).encode(), fl.tobytes())
    assert input_fingerprint(PredictInput("x", 0, "mem", arr)) == _sha16(repr(((1, 2, 3), "float32")).encode(),
                                                                         arr.tobytes())
    assert inp.load() is inp and inp.load(announce=False) is inp


def test_fingerprint_reads_files_larger_than_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    data = bytes(range(256)) * ((3 << 20) // 256 + 7)  # three chunks and a bit
    path.write_bytes(data)
    assert input_fingerprint(InputSource("big", path)) == _sha16(data, repr((None, None, None, 0,
                                                                              ReadSettings())).encode())


def test_patch_id_and_source() -> None:
    for name in ("fov1", "cell 2", ""):
        assert name_to_patch_id(name) == int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % (1 << 31)
    assert name_to_patch_id("fov1") != name_to_patch_id("fov2")
    assert max(name_to_patch_id(f"n{i}") for i in range(200)) >= 1 << 30  # the 31st bit is kept
    src = InputSource("fov1", Path("/d/f.tif"))
    assert src.patch_id == name_to_patch_id("fov1")
    assert src.source == "/d/f.tif"
    assert InputSource("fov1", Path("/d/f.tif"), scene=0).source == "/d/f.tif [scene 0]"
    assert InputSource("fov1", Path("/d/f.tif"), scene="A").source == "/d/f.tif [scene A]"


def test_input_settings_from_config() -> None:
    assert InputSettings.from_config("in/x.tif") == InputSettings(path="in/x.tif")
    assert InputSettings.from_config(Path("in")) == InputSettings(path="in")
    got = InputSettings.from_config({"path": "m.csv", "channel": "BF", "timepoint": None, "scene": 2})
    assert got == InputSettings(path="m.csv", channel="BF", scene=2, timepoint=0)
    assert got.resample is True and got.voxel_rtol == pytest.approx(0.01) and got.voxel_size is None
    with pytest.raises(ValueError, match=r"unknown input setting\(s\) \['chanel', 'zz'\]; expected \[") as err:
        InputSettings.from_config({"path": "x", "chanel": 1, "zz": 0})
    assert "'channel'" in str(err.value) and "'voxel_rtol'" in str(err.value)
    for bad in ("", "???", {"path": "???"}, {"channel": 1}):
        with pytest.raises(ValueError, match=r"input\.path is missing: give input=<file"):
            InputSettings.from_config(bad)
    assert InputSettings.from_config({"path": "???x"}).path == "???x"


# --- inputs: reading ------------------------------------------------------------------------------------------------
def test_plain_tiff_source_loads_windows_and_voxel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    u8 = _plain(tmp_path / "u8.tif", _raw(2))
    loaded = InputSource("u8", u8).load()
    assert loaded.name == "u8" and loaded.patch_id == name_to_patch_id("u8") and loaded.source == str(u8)
    np.testing.assert_array_equal(loaded.bf, _raw(2).astype(np.float32) / 255)
    assert loaded.gt is None and loaded.voxel_size is None and loaded.bf.dtype == np.float32
    raw16 = _raw(3, dtype=np.uint16) * 100 + 1000
    u16 = _plain(tmp_path / "u16.tif", raw16)
    got = InputSource("u16", u16, read=ReadSettings(bf_window=(2000.0, 22000.0))).load()
    np.testing.assert_allclose(got.bf, (np.clip(raw16, 2000, 22000) - 2000) / 20000, rtol=1e-6)
    # the voxel size of an OME-TIFF written by dm4isl, or the one the settings give
    ome = write_tiff(tmp_path / "v.ome.tiff", _raw(4), VOXEL)
    assert InputSource("v", ome).load().voxel_size == pytest.approx(VOXEL)
    assert InputSource("v", ome, read=ReadSettings(input_voxel=(1.0, 2.0, 3.0))).load().voxel_size == (1.0, 2.0, 3.0)
    # no voxel size in the file: kept as unknown, a debug line says the training one is assumed
    with caplog.at_level(logging.DEBUG, logger="dm4isl.prediction.inputs"):
        kept = InputSource("u8", u8, read=ReadSettings(target_voxel=VOXEL)).load()
    assert kept.voxel_size is None and kept.bf.shape == SHAPE
    assert "no physical voxel size in the file; taken as the training voxel size (0.5, 0.25, 0.125) µm" in caplog.text


def test_resampling_to_the_training_voxel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_tiff(tmp_path / "r.ome.tiff", _raw(5, (4, 6, 8)), (1.0, 0.5, 0.25))
    target = (0.5, 0.5, 0.5)
    read = ReadSettings(target_voxel=target)
    with caplog.at_level(logging.DEBUG, logger="dm4isl.prediction.inputs"):
        got = InputSource("r", path, read=read).load()
    # round(n × found / target) voxels per axis
    assert got.bf.shape == (8, 6, 4) and got.voxel_size == target
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and info[0].getMessage() == (
        f"{path}: voxel size (1, 0.5, 0.25) µm resampled to the training voxel size (0.5, 0.5, 0.5) µm (Z, Y, X): "
        "(4, 6, 8) -> (8, 6, 4) voxels")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="dm4isl.prediction.inputs"):
        InputSource("r", path, read=read).load(announce=False)
    assert [r.levelno for r in caplog.records if "resampled" in r.getMessage()] == [logging.DEBUG]
    # within the tolerance, or resampling off: kept as it is
    near = ReadSettings(target_voxel=(1.005, 0.5, 0.25))
    assert InputSource("r", path, read=near).load().bf.shape == (4, 6, 8)
    wide = ReadSettings(target_voxel=target, voxel_rtol=1.5)
    assert InputSource("r", path, read=wide).load().bf.shape == (4, 6, 8)
    off = ReadSettings(target_voxel=target, resample=False)
    kept = InputSource("r", path, read=off).load()
    assert kept.bf.shape == (4, 6, 8) and kept.voxel_size == pytest.approx((1.0, 0.5, 0.25))
    # the ground truth is resampled with the brightfield
    gt = write_tiff(tmp_path / "g.ome.tiff", _raw(6, (4, 6, 8)), (1.0, 0.5, 0.25))
    pair = InputSource("r", path, gt_path=gt, read=read).load()
    assert pair.gt is not None and pair.gt.shape == (8, 6, 4)


def test_plain_tiff_rule(tmp_path: Path) -> None:
    plain = _plain(tmp_path / "p.tif", _raw(0))
    assert InputSource._plain_tiff(plain, None) and InputSource._plain_tiff(plain, 0)
    assert InputSource._plain_tiff(plain, "0")
    assert not InputSource._plain_tiff(plain, 1) and not InputSource._plain_tiff(plain, "BF")
    assert not InputSource._plain_tiff(write_tiff(tmp_path / "o.ome.tiff", _raw(0)), None)
    four = _plain(tmp_path / "c.tif", _raw(0, (2, *SHAPE)))
    assert not InputSource._plain_tiff(four, None)
    single = _plain(tmp_path / "s.tif", _raw(0, (1, *SHAPE)))
    assert InputSource._plain_tiff(single, None)
    npy = tmp_path / "x.npy"
    np.save(npy, _raw(0))
    assert not InputSource._plain_tiff(npy, None)


def _ome_channels(path: Path, data_czyx: np.ndarray, names: list[str], voxel=VOXEL) -> Path:
    tifffile.imwrite(path, data_czyx, ome=True, photometric="minisblack",
                     metadata={"axes": "CZYX", "Channel": {"Name": names}, "PhysicalSizeZ": voxel[0],
                               "PhysicalSizeY": voxel[1], "PhysicalSizeX": voxel[2]})
    return path


def test_channels_by_name_and_ground_truth_files(tmp_path: Path) -> None:
    data = np.stack([_raw(7), _raw(8)])
    path = _ome_channels(tmp_path / "two.ome.tiff", data, ["GFP", "BF"])
    got = InputSource("two", path, channel="BF", gt_channel="GFP").load()
    np.testing.assert_array_equal(got.bf, data[1] / np.float32(255))
    np.testing.assert_array_equal(got.gt, data[0] / np.float32(255))
    assert got.voxel_size == pytest.approx(VOXEL)
    only = InputSource("two", path, channel=0).load()
    np.testing.assert_array_equal(only.bf, data[0] / np.float32(255))
    assert only.gt is None
    # the ground truth from a second file, its channel chosen there
    gt_file = _ome_channels(tmp_path / "gt.ome.tiff", np.stack([_raw(9), _raw(10)]), ["A", "B"])
    pair = InputSource("two", path, channel="BF", gt_channel="B", gt_path=gt_file).load()
    np.testing.assert_array_equal(pair.gt, _raw(10) / np.float32(255))
    small = _ome_channels(tmp_path / "small.ome.tiff", np.stack([_raw(9, (3, 4, 4))]), ["A"])
    with pytest.raises(DataError, match=r"small\.ome\.tiff: ground-truth shape \(3, 4, 4\) \(Z, Y, X\) differs from "
                                        r"its brightfield .*two\.ome\.tiff of shape \(3, 4, 5\)"):
        InputSource("two", path, channel="BF", gt_path=small).load()


def test_scenes_expand_to_one_input_each(tmp_path: Path) -> None:
    one = _ome_channels(tmp_path / "one.ome.tiff", _raw(1)[None], ["BF"])
    src = InputSource("one", one, scene="all")
    assert inputs._expand_scenes(InputSource("one", one, scene=0), many=False) == [InputSource("one", one, scene=0)]
    assert inputs._expand_scenes(src, many=False) == [InputSource("one", one)]
    assert inputs._expand_scenes(src, many=True) == [InputSource("one_s0", one, scene=0)]
    two = tmp_path / "two.ome.tiff"
    with tifffile.TiffWriter(two, ome=True) as tif:
        for seed in (1, 2):
            tif.write(_raw(seed), photometric="minisblack", metadata={"axes": "ZYX"})
    expanded = inputs._expand_scenes(InputSource("two", two, scene="all"), many=False)
    assert [(s.name, s.scene) for s in expanded] == [("two_s0", 0), ("two_s1", 1)]
    np.testing.assert_array_equal(expanded[1].load().bf, _raw(2) / np.float32(255))


def test_patch_pair_source(tmp_path: Path) -> None:
    write_tiff(tmp_path / "BF" / "1.tiff", _raw(1), VOXEL)
    _plain(tmp_path / "GT" / "1.tiff", _raw(2))
    _plain(tmp_path / "BF" / "2.tiff", _raw(3))
    _plain(tmp_path / "GT" / "2.tiff", _raw(4, (3, 4, 4)))
    sources = discover_inputs(InputSettings(str(tmp_path)), ReadSettings())
    assert [s.name for s in sources] == ["1", "2"]
    got = sources[0].load()
    assert got.source == str(tmp_path / "BF" / "1.tiff") and got.voxel_size == pytest.approx(VOXEL)
    np.testing.assert_array_equal(got.bf, _raw(1) / np.float32(255))
    np.testing.assert_array_equal(got.gt, _raw(2) / np.float32(255))
    assert got.patch_id == name_to_patch_id("1")
    with pytest.raises(DataError, match=r"GT/2\.tiff: shape \(3, 4, 4\) \(Z, Y, X\) does not match its brightfield "
                                        r"partner .*BF/2\.tiff of shape \(3, 4, 5\)"):
        sources[1].load()
    windows = ReadSettings(bf_window=(100.0, 200.0), fl_window=(0.0, 1000.0))
    raw16 = (_raw(5) * 10).astype(np.uint16)
    _plain(tmp_path / "w" / "BF" / "a.tif", raw16)
    _plain(tmp_path / "w" / "GT" / "a.tif", raw16)
    (pair,) = discover_inputs(InputSettings(str(tmp_path / "w")), windows)
    loaded = pair.load()
    np.testing.assert_allclose(loaded.bf, (np.clip(raw16, 100, 200) - 100) / 100.0, rtol=1e-6)
    np.testing.assert_allclose(loaded.gt, np.clip(raw16, 0, 1000) / 1000.0, rtol=1e-6)


# --- inputs: discovery and manifests ------------------------------------------------------------------------------
def test_list_images(tmp_path: Path) -> None:
    for name in ("img10.tif", "img2.tiff", "img1.ome.tiff", ".hidden.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "plate.ome.zarr").mkdir()
    (tmp_path / "sub.tif").mkdir()  # a folder named like a TIFF is not one
    assert [p.name for p in list_images(tmp_path)] == ["img1.ome.tiff", "img2.tiff", "img10.tif", "plate.ome.zarr"]
    with pytest.raises(DataError, match=r"nope: expected a folder of images, but it does not exist or is not a"):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError, match="expected a folder of images"):
        list_images(tmp_path / "img2.tiff")


def test_discover_a_file_a_folder_and_errors(tmp_path: Path) -> None:
    read = ReadSettings(bf_window=(1.0, 2.0))
    one = _plain(tmp_path / "cells" / "c.01.tif", _raw(0))
    got = discover_inputs(InputSettings(str(one), channel=0, gt_channel="G", timepoint="2"), read)
    assert got == [InputSource("c.01", one, channel=0, gt_channel="G", timepoint=2, read=read)]
    assert isinstance(got[0].timepoint, int)
    _plain(tmp_path / "cells" / "c.10.tif", _raw(1))
    _plain(tmp_path / "cells" / "c.2.tif", _raw(2))
    folder = discover_inputs(InputSettings(str(tmp_path / "cells"), scene=3), read)
    assert [(s.name, s.scene, s.read) for s in folder] == [("c.01", 3, read), ("c.2", 3, read), ("c.10", 3, read)]
    # a folder with a BF subfolder (and no GT/): the BF files
    _plain(tmp_path / "set" / "BF" / "b.tif", _raw(3))
    (tmp_path / "set" / "x.tif").write_bytes(b"x")
    assert [s.path for s in discover_inputs(InputSettings(str(tmp_path / "set")), read)] == [
        tmp_path / "set" / "BF" / "b.tif"]
    # other BF/GT names
    _plain(tmp_path / "pairs" / "in" / "p.tif", _raw(4))
    _plain(tmp_path / "pairs" / "out" / "p.tif", _raw(5))
    (pair,) = discover_inputs(InputSettings(str(tmp_path / "pairs")), read, bf_dir="in", gt_dir="out")
    assert pair.gt_path == tmp_path / "pairs" / "out" / "p.tif" and pair.read == read
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no TIFF files found and no other images \(expected .*empty/\*\.tiff"):
        discover_inputs(InputSettings(str(tmp_path / "empty")), read)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes\.txt: not an image dm4isl reads"):
        discover_inputs(InputSettings(str(tmp_path / "notes.txt")), read)
    with pytest.raises(DataError, match=r"gone\.tif: input not found \(expected a patch folder"):
        discover_inputs(InputSettings(str(tmp_path / "gone.tif")), read)
    _plain(tmp_path / "dup" / "a.tif", _raw(0))
    _plain(tmp_path / "dup" / "a.tiff", _raw(0))
    _plain(tmp_path / "dup" / "b.tif", _raw(0))
    with pytest.raises(DataError, match=r"dup: input names \['a'\] occur more than once; output files are named"):
        discover_inputs(InputSettings(str(tmp_path / "dup")), read)


def test_manifest_columns_aliases_and_defaults(tmp_path: Path) -> None:
    settings = InputSettings("m.csv", scene=None, channel="BF", gt_channel="FL", timepoint=1)
    read = ReadSettings(fl_window=(0.0, 9.0))
    absolute = tmp_path / "abs.tif"
    manifest = tmp_path / "sub" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "\ufeffpath,fov_id,bf_channel,fl_channel,fl_path,scene,timepoint\n"
        "a.tif,,,,,,\n"
        f"{absolute},fovB, 2 ,3,gt/b.tif,S1,4\n"
        f"x/c.ome.tiff,fovC,,,{absolute},,\n", encoding="utf-8")
    got = read_predict_manifest(manifest, settings, read)
    assert got == [
        InputSource("a", manifest.parent / "a.tif", None, "BF", "FL", None, 1, read),
        InputSource("fovB", absolute, "S1", "2", "3", manifest.parent / "gt" / "b.tif", 4, read),
        InputSource("fovC", manifest.parent / "x" / "c.ome.tiff", None, "BF", "FL", absolute, 1, read),
    ]
    # the prediction manifest's own names, and the manifest as the input path
    own = tmp_path / "own.csv"
    own.write_text("name,path,channel,gt_channel,gt_path\nn1,a.tif,0,1,g.tif\n", encoding="utf-8")
    (src,) = discover_inputs(InputSettings(str(own)), read)
    assert src == InputSource("n1", tmp_path / "a.tif", None, "0", "1", tmp_path / "g.tif", 0, read)


def test_manifest_errors(tmp_path: Path) -> None:
    settings, read = InputSettings("m.csv"), ReadSettings()
    bad = tmp_path / "bad.csv"
    bad.write_text("file,name\na.tif,a\n")
    with pytest.raises(DataError, match=r"bad\.csv: manifest without a 'path' column; found \['file', 'name'\]"):
        read_predict_manifest(bad, settings, read)
    bad.write_text("path,name\na.tif,a\n ,b\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 3: empty path"):
        read_predict_manifest(bad, settings, read)
    bad.write_text("path,timepoint\na.tif,0\nb.tif,-1\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 3, column timepoint: '-1' is not a non-negative integer"):
        read_predict_manifest(bad, settings, read)
    with pytest.raises(DataError, match=r"missing\.csv: cannot read manifest \("):
        read_predict_manifest(tmp_path / "missing.csv", settings, read)
    bad.write_text("")
    with pytest.raises(DataError, match=r"manifest without a 'path' column; found \[\]"):
        read_predict_manifest(bad, settings, read)
    bad.write_text("path,name\na.tif,same\nb.tif,same\n")
    with pytest.raises(DataError, match=r"input names \['same'\] occur more than once"):
        discover_inputs(InputSettings(str(bad)), read)
    multi = tmp_path / "multi.ome.tiff"
    with tifffile.TiffWriter(multi, ome=True) as tif:
        tif.write(_raw(0), photometric="minisblack", metadata={"axes": "ZYX"})
    bad.write_text(f"path,scene\n{multi},all\n")
    assert [(s.name, s.scene) for s in read_predict_manifest(bad, settings, read)] == [("multi_s0", 0)]


# --- sharding -------------------------------------------------------------------------------------------------------
def test_shards_cover_every_input_once_in_given_order() -> None:
    names = ["fov10", "fov2", "a", "fov1", "b3", "b20", "fov9"]  # natural order: a b3 b20 fov1 fov2 fov9 fov10
    items = [SimpleNamespace(name=n) for n in names]
    for count in (1, 2, 3, 4, 7, 9):
        parts = [Shard(i, count).select(items) for i in range(count)]
        assert sorted(it.name for part in parts for it in part) == sorted(names)
        for part in parts:  # each keeps the given order
            assert [it.name for it in part] == [n for n in names if n in {it.name for it in part}]
        assert [len(p) for p in parts] == [len(range(i, len(names), count)) for i in range(count)]
    natural = ["a", "b3", "b20", "fov1", "fov2", "fov9", "fov10"]
    assert [it.name for it in Shard(0, 3).select(items)] == [n for n in names if n in natural[0::3]]
    assert [it.name for it in Shard(0, 3).select(items)] == ["fov10", "a", "fov1"]
    assert Shard(1, 3).select(names, names) == ["fov2", "b3"]  # natural positions 1 and 4, in the given order
    assert Shard(2, 3).select(list(range(7)), names) == [5, 6]  # b20 and fov9
    assert Shard().select(items) == items and Shard().single and not Shard(0, 2).single
    assert sharding._natural("fov10") > sharding._natural("fov9") and sharding._natural("b") > sharding._natural("a2")
    assert sharding._natural("x2y") == ((1, 0, "x"), (0, 2, ""), (1, 0, "y"))


def test_shard_arguments_and_split() -> None:
    for index, count in ((2, 2), (-1, 2), (0, 0), (1, 1), (3, 2)):
        with pytest.raises(ValueError, match=rf"shard {index} of num_shards={count}: expected 0 <= shard < num_sh"):
            Shard(index, count)
    Shard(0, 1), Shard(1, 2)
    assert Shard(1, 3).split(1, 2) == Shard(3, 6) and Shard(0, 1).split(2, 4) == Shard(2, 4)
    splits = [Shard(j, 3).split(r, 2) for j in range(3) for r in range(2)]
    assert sorted(s.index for s in splits) == list(range(6)) and {s.count for s in splits} == {6}


def test_shard_csv_paths(tmp_path: Path) -> None:
    assert Shard().csv_path(tmp_path) == tmp_path / "predictions.csv"
    assert Shard(1, 2).csv_path(str(tmp_path)) == tmp_path / "shards" / "predictions.1-of-2.csv"
    assert Shard(3, 12).csv_path(tmp_path) == tmp_path / "shards" / "predictions.03-of-12.csv"
    assert Shard(7, 11).csv_path(tmp_path).name == "predictions.07-of-11.csv"
    assert Shard(9, 10).csv_path(tmp_path).name == "predictions.9-of-10.csv"


def _write_rows(path: Path, rows: list[dict[str, str]], stamp_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "v"])
        writer.writeheader()
        writer.writerows(rows)
    os.utime(path, ns=(stamp_ns, stamp_ns))


def test_rows_of_shards_newest_first_and_merge(tmp_path: Path) -> None:
    assert sharding.read_rows(tmp_path / "none.csv") == [] and sharding.shard_csvs(tmp_path) == []
    assert sharding.all_rows(tmp_path) == {}
    t0 = 1_700_000_000 * 10**9
    _write_rows(tmp_path / "shards" / "predictions.1-of-2.csv", [{"name": "fov10", "v": "s1"}, {"name": "b", "v": "1"}],
                t0 + 2)
    _write_rows(tmp_path / "shards" / "predictions.0-of-2.csv", [{"name": "fov2", "v": "s0"}, {"name": "b", "v": "0"}],
                t0 + 3)
    _write_rows(tmp_path / "predictions.csv", [{"name": "b", "v": "old"}, {"name": "z", "v": "old"}], t0 + 1)
    _write_rows(tmp_path / "shards" / "notes.csv", [{"name": "b", "v": "junk"}], t0 + 9)
    _write_rows(tmp_path / "shards" / "predictions.0-of-2.csv.tmp", [{"name": "b", "v": "junk"}], t0 + 9)
    assert [p.name for p in sharding.shard_csvs(tmp_path)] == ["predictions.1-of-2.csv", "predictions.0-of-2.csv"]
    assert sharding.read_rows(tmp_path / "predictions.csv") == [{"name": "b", "v": "old"}, {"name": "z", "v": "old"}]
    rows = sharding.all_rows(tmp_path)
    assert rows == {"b": {"name": "b", "v": "0"}, "z": {"name": "z", "v": "old"}, "fov10": {"name": "fov10", "v": "s1"},
                    "fov2": {"name": "fov2", "v": "s0"}}
    merged = sharding.merge_csvs(tmp_path, ["name", "v"])
    assert [r["name"] for r in merged] == ["b", "fov2", "fov10", "z"]
    assert sharding.read_rows(tmp_path / "predictions.csv") == merged
    assert (tmp_path / "shards" / "predictions.1-of-2.csv").is_file()  # the shard CSVs stay
    # the same modification time: the name decides among shard files
    _write_rows(tmp_path / "s2" / "shards" / "predictions.1-of-2.csv", [{"name": "b", "v": "1"}], t0)
    _write_rows(tmp_path / "s2" / "shards" / "predictions.0-of-2.csv", [{"name": "b", "v": "0"}], t0)
    assert [p.name for p in sharding.shard_csvs(tmp_path / "s2")] == ["predictions.0-of-2.csv",
                                                                      "predictions.1-of-2.csv"]


def test_merge_again_when_a_shard_changes_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_rows(tmp_path / "shards" / "predictions.0-of-2.csv", [{"name": "a", "v": "1"}], 10**18)
    real, calls = sharding.write_csv, []

    def write_and_finish_a_shard(path, rows, fields):
        calls.append([r["name"] for r in rows])
        if len(calls) == 1:  # another job finishes while this one merges
            _write_rows(tmp_path / "shards" / "predictions.1-of-2.csv", [{"name": "b", "v": "2"}], 10**18 + 5)
        return real(path, rows, fields)

    monkeypatch.setattr(sharding, "write_csv", write_and_finish_a_shard)
    merged = sharding.merge_csvs(tmp_path, ["name", "v"])
    assert calls == [["a"], ["a", "b"]] and [r["name"] for r in merged] == ["a", "b"]


# --- runner: settings and inputs ------------------------------------------------------------------------------------
def test_output_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = {f: (OutputSettings(f).tiff, OutputSettings(f).zarr) for f in ("tiff", "ome-zarr", "both")}
    assert kinds == {"tiff": (True, False), "ome-zarr": (False, True), "both": (True, True)}
    assert OutputSettings().format == "tiff" and OutputSettings().ngff_version == "0.4"
    with pytest.raises(ValueError, match=r"output_format must be one of \('tiff', 'ome-zarr', 'both'\), got 'zarr'"):
        OutputSettings("zarr")
    monkeypatch.setattr(runner, "missing_writer_modules", lambda: ["zarr", "ome_zarr"])
    OutputSettings("tiff").check_dependencies()  # no Zarr writer needed
    for fmt in ("ome-zarr", "both"):
        with pytest.raises(ConfigError, match=rf"output_format={fmt} needs zarr, ome_zarr, not installed here: .*"
                                              r"or output_format=tiff"):
            OutputSettings(fmt).check_dependencies()
    monkeypatch.setattr(runner, "missing_writer_modules", lambda: [])
    OutputSettings("both").check_dependencies()


def test_collect_inputs_and_patch_sets(tmp_path: Path) -> None:
    raw = (_raw(1) * 100).astype(np.uint16)
    _plain(tmp_path / "BF" / "3.tif", raw)
    _plain(tmp_path / "GT" / "3.tif", raw)
    (got,) = runner.collect_inputs(tmp_path, [0, 25500], (0.0, 12750.0))
    np.testing.assert_allclose(got.bf, raw / 25500.0, rtol=1e-6)
    np.testing.assert_allclose(got.gt, np.clip(raw / 12750.0, 0, 1), rtol=1e-6)
    _plain(tmp_path / "in" / "3.tif", raw)
    _plain(tmp_path / "out" / "3.tif", _raw(2))
    (other,) = runner.collect_inputs(tmp_path, [0, 25500], None, bf_dir="in", gt_dir="out")
    np.testing.assert_allclose(other.gt, _raw(2) / 255.0, rtol=1e-6)
    plain = _plain(tmp_path / "u8" / "x.tif", _raw(3))
    (u8,) = runner.collect_inputs(plain, None, None)
    np.testing.assert_allclose(u8.bf, _raw(3) / 255.0, rtol=1e-6)
    bf, fl = np.zeros((2, *SHAPE), np.float32), np.ones((2, *SHAPE), np.float32)
    bf[1] += 0.5
    made = runner.inputs_from_patch_set(bf, fl, ["p", 7], "val")
    assert [(m.name, m.patch_id, m.source) for m in made] == [("p", 0, "val[0]"), ("7", 1, "val[1]")]
    assert made[1].bf is not None and float(made[1].bf.mean()) == 0.5 and float(made[0].gt.mean()) == 1.0


def test_settings_hash_and_is_diffusion() -> None:
    payload = {"b": [1, 2], "a": Path("x"), "c": None}
    expected = hashlib.sha256(b'{"a": "x", "b": [1, 2], "c": null}').hexdigest()[:16]
    assert runner.settings_hash(payload) == expected and len(expected) == 16
    assert runner.is_diffusion(SimpleNamespace(has_uncertainty=True))
    assert runner.is_diffusion(SimpleNamespace(has_uncertainty=1)) is True
    assert not runner.is_diffusion(SimpleNamespace()) and runner.is_diffusion(SimpleNamespace()) is False


# --- stand-in models ------------------------------------------------------------------------------------------------
#: The sampler the published thresholds are valid for.
PUBLISHED = SamplerSettings(method="ddpm", window=(300, 800), clip_x0=(-1.0, 1.0), mean_correction=False)
ORGANELLE = {"name": "nuclear_envelope", "intra_std_threshold": 0.05, "inter_std_threshold": 0.07,
             "voxel_size": list(VOXEL)}


class StandIn:
    """A diffusion model in [0, 1] targets, T = 1000, whose products are functions of the brightfield."""

    has_uncertainty = True

    def __init__(self, settings: SamplerSettings = PUBLISHED) -> None:
        self.test_settings = settings
        self.target = SimpleNamespace(low=0.0, high=1.0)
        self.schedule = SimpleNamespace(num_train_timesteps=1000)
        self.calls: list[tuple[tuple[int, ...], list[int], object]] = []

    def predict_products(self, bf: torch.Tensor, ids, request) -> dict[str, torch.Tensor]:
        self.calls.append((tuple(bf.shape), list(ids), request))
        out = {"DDPM": bf * 0.5, "DDPMavg": 1 - bf, "std_intra": bf * 0.2}
        if request.n_seeds > 1:
            out["std_inter"] = bf * 0.1
        return out


class Baseline(StandIn):
    has_uncertainty = False

    def predict_products(self, bf, ids, request):
        self.calls.append((tuple(bf.shape), list(ids), request))
        return {"Unet": bf * 2}


def test_predict_arrays_passes_the_request() -> None:
    model = StandIn()
    bf = torch.rand(2, 1, *SHAPE)
    out = runner.predict_arrays(model, bf, [4, 5], PUBLISHED, n_seeds=3, max_batch=2, keep_seeds=True)
    torch.testing.assert_close(out["DDPM"], bf * 0.5)
    (shape, ids, request), = model.calls
    assert shape == (2, 1, *SHAPE) and ids == [4, 5]
    assert (request.settings, request.n_seeds, request.max_batch, request.keep_seeds) == (PUBLISHED, 3, 2, True)
    assert request.tiles == TileSettings()
    tiles = TileSettings(size=(2, 2, 2))
    runner.predict_arrays(model, bf, [1, 2], tiles=tiles)
    request = model.calls[-1][2]
    assert (request.settings, request.n_seeds, request.max_batch, request.keep_seeds, request.tiles) == (
        None, 1, None, False, tiles)


def test_uncertainty_choice() -> None:
    setting = dict(PUBLISHED_SETTING)
    both = {"std_intra", "std_inter"}
    assert runner._uncertainty_choice(both, ORGANELLE, UncertaintySettings(source="none"), setting) == (
        None, None, "error masks switched off (uncertainty.source=none)")
    source, thr, reason = runner._uncertainty_choice(both, ORGANELLE, UncertaintySettings(), setting)
    assert source == "inter" and thr.value == 0.07 and thr.source == "published" and "inter-process" in reason
    source, thr, _ = runner._uncertainty_choice({"std_intra"}, ORGANELLE, UncertaintySettings(), setting)
    assert source == "intra" and thr.value == 0.05
    source, thr, reason = runner._uncertainty_choice(both, ORGANELLE, UncertaintySettings("intra", 0.3), setting)
    assert (source, thr) == ("intra", Threshold(0.3, "given")) and reason == "intra-process std threshold 0.3 as given"
    with pytest.raises(ConfigError, match=r"uncertainty source 'inter' needs the std_inter product \(inter needs "
                                          r"n_seeds > 1\)"):
        runner._uncertainty_choice({"std_intra"}, ORGANELLE, UncertaintySettings("inter"), setting)
    other = {**setting, "num_steps": 50, "method": "ddim", "eta": 0.0}
    calibrated = [{"map": "intra", "threshold": 0.11, "setting": other}]
    source, thr, _ = runner._uncertainty_choice({"std_intra"}, ORGANELLE, UncertaintySettings(), other, calibrated)
    assert thr == Threshold(0.11, "calibrated", other)
    assert runner._uncertainty_choice({"std_intra"}, ORGANELLE, UncertaintySettings(), other)[:2] == ("intra", None)


def test_plan_masks(caplog: pytest.LogCaptureFixture) -> None:
    model = StandIn()
    assert plan_masks(model, None, 2, ORGANELLE, UncertaintySettings()) == MaskPlan()
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.runner"):
        plan = plan_masks(model, PUBLISHED, 2, ORGANELLE, UncertaintySettings(flag_fraction=0.2))
    assert plan.source == "inter" and plan.threshold.value == 0.07 and plan.benchmark.value == 0.05
    assert plan.masks == MaskSettings.for_organelle("nuclear_envelope", flag_fraction=0.2)
    assert plan.benchmark_masks == MaskSettings.for_organelle("nuclear_envelope", flag_fraction=0.2)
    assert [r.levelno for r in caplog.records] == [logging.INFO] and "0.07" in caplog.text
    one = plan_masks(model, PUBLISHED, 1, ORGANELLE, UncertaintySettings(rule="binary"))
    assert one.source == "intra" and one.threshold.value == 0.05 and one.benchmark.value == 0.05
    assert one.masks == MaskSettings.for_organelle("nuclear_envelope", "binary", flag_fraction=0.01)
    assert one.benchmark_masks.rule == "reference"
    # a given threshold is the benchmark's too only when it is for the intra map
    given = plan_masks(model, PUBLISHED, 1, ORGANELLE, UncertaintySettings(threshold=0.4, faithful=True))
    assert given.threshold == Threshold(0.4, "given") and given.benchmark == Threshold(0.4, "given")
    assert given.masks == MaskSettings.faithful()
    inter = plan_masks(model, PUBLISHED, 2, ORGANELLE, UncertaintySettings(source="inter", threshold=0.4))
    assert inter.threshold.value == 0.4 and inter.benchmark.value == 0.05
    # another sampler: no threshold valid, a warning, no benchmark flag
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.runner"):
        none = plan_masks(model, SamplerSettings(method="ddim", num_steps=20), 1, ORGANELLE, UncertaintySettings())
    assert none.source == "intra" and none.threshold is None and none.benchmark is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.runner"):
        off = plan_masks(model, PUBLISHED, 1, ORGANELLE, UncertaintySettings(source="none"))
    assert off.source is None and off.benchmark.value == 0.05 and [r.levelno for r in caplog.records] == [logging.INFO]
    # the model's target range and schedule decide the setting
    shifted = StandIn()
    shifted.target = SimpleNamespace(low=-1.0, high=1.0)
    assert plan_masks(shifted, PUBLISHED, 1, ORGANELLE, UncertaintySettings()).threshold is None
    short = StandIn()
    short.schedule = SimpleNamespace(num_train_timesteps=500)
    assert plan_masks(short, PUBLISHED, 1, ORGANELLE, UncertaintySettings()).threshold is None


def _std_map(seed: int = 0, rows: slice = slice(4, 12), cols: slice = slice(3, 11)) -> np.ndarray:
    """A std map with a bright block (a region above any threshold in (0.1, 0.5)) on a faint background."""
    rng = np.random.default_rng(seed)
    std = (rng.random((4, 16, 16)) * 0.05).astype(np.float32)
    std[:, rows, cols] += 0.5
    return std


def test_mask_and_flag() -> None:
    std = _std_map()
    images = {"DDPM": std * 0, "std_intra": std, "std_inter": _std_map(1, slice(2, 14), slice(1, 13))}
    assert mask_and_flag(dict(images), MaskPlan()) == {"flagged": "", "mask_fraction": "", "benchmark_flagged": "",
                                                       "benchmark_fraction": ""}
    masks = MaskSettings(flag_fraction=0.2)
    plan = MaskPlan("inter", Threshold(0.3, "given"), Threshold(0.02, "published"), masks, MaskSettings())
    out = dict(images)
    cols = mask_and_flag(out, plan)
    expected = error_mask(images["std_inter"], 0.3, masks)
    np.testing.assert_array_equal(out["error_mask"], expected.astype(np.uint8))
    assert out["error_mask"].dtype == np.uint8 and 0 < expected.mean() < 1
    fraction = float(expected.mean())
    bench_flag, bench_fraction = patch_flag(std, 0.02, MaskSettings())
    assert cols == {"flagged": int(fraction > 0.2), "mask_fraction": f"{fraction:.6f}",
                    "benchmark_flagged": int(bench_flag), "benchmark_fraction": f"{bench_fraction:.6f}"}
    assert cols["flagged"] == 1 and bench_fraction != fraction
    # a fraction below the flag fraction is not flagged
    high = MaskPlan("intra", Threshold(0.3, "given"), None, MaskSettings(flag_fraction=0.9))
    cols = mask_and_flag(dict(images), high)
    assert cols["flagged"] == 0 and cols["benchmark_flagged"] == "" and cols["benchmark_fraction"] == ""
    # a source without a threshold writes no mask; the benchmark flag alone
    out = dict(images)
    cols = mask_and_flag(out, MaskPlan("intra", None, Threshold(0.3, "published")))
    assert "error_mask" not in out and cols["flagged"] == "" and cols["benchmark_flagged"] == int(
        flag(error_mask(std, 0.3), 0.01)[0])


# --- runner: skipping, checking, writing ----------------------------------------------------------------------------
def _mem(name: str, seed: int, shape=SHAPE, gt: bool = True) -> PredictInput:
    bf = (_raw(seed, shape) / 255).astype(np.float32)
    return PredictInput(name, name_to_patch_id(name), f"mem:{name}", bf, (1 - bf) if gt else None)


def test_pending_inputs(tmp_path: Path) -> None:
    a, b, c = _mem("a", 1), _mem("b", 2), _mem("c", 3)
    fp = {n.name: input_fingerprint(n) for n in (a, b, c)}
    for name in ("a", "b"):
        for product in ("DDPM", "BF"):
            (tmp_path / product).mkdir(exist_ok=True)
            (tmp_path / product / f"{name}.ome.tiff").write_bytes(b"x")
    done = {
        "a": {"settings_hash": "K", "input_hash": fp["a"], "products": "DDPM;BF"},
        "b": {"settings_hash": "K", "input_hash": fp["b"], "products": "DDPM;std_intra"},  # a file is missing
        "c": {"settings_hash": "other", "input_hash": fp["c"], "products": ""},
    }
    todo, fingerprints = pending_inputs([a, b, c], done, tmp_path, "K", OutputSettings())
    assert [t.name for t in todo] == ["b", "c"] and fingerprints == fp
    changed = {**done, "a": {**done["a"], "input_hash": "0" * 16}}
    assert [t.name for t in pending_inputs([a], changed, tmp_path, "K", OutputSettings())[0]] == ["a"]
    assert [t.name for t in pending_inputs([a], {}, tmp_path, "K", OutputSettings())[0]] == ["a"]
    # OME-Zarr outputs: the image folder must exist; TIFF files are not looked at
    assert [t.name for t in pending_inputs([a, b], done, tmp_path, "K", OutputSettings("ome-zarr"))[0]] == ["a", "b"]
    (tmp_path / "b.ome.zarr").mkdir()
    assert pending_inputs([b], done, tmp_path, "K", OutputSettings("ome-zarr"))[0] == []
    assert [t.name for t in pending_inputs([b], done, tmp_path, "K", OutputSettings("both"))[0]] == ["b"]
    (tmp_path / "a.ome.zarr").mkdir()
    assert pending_inputs([a], done, tmp_path, "K", OutputSettings("both"))[0] == []
    empty = {"a": {**done["a"], "products": ""}}
    assert pending_inputs([a], empty, tmp_path / "elsewhere", "K", OutputSettings())[0] == []


class Counting:
    """A source that counts its reads."""

    def __init__(self, inp: PredictInput) -> None:
        self.inp, self.name, self.reads = inp, inp.name, 0

    def load(self, announce: bool = True) -> PredictInput:
        self.reads += 1
        return self.inp


def test_read_and_check(monkeypatch: pytest.MonkeyPatch) -> None:
    srcs = [Counting(_mem("a", 1)), Counting(_mem("b", 2, (2, 3, 4), gt=False)), Counting(_mem("c", 3))]
    seen = []
    shapes, kept = read_and_check(srcs, lambda shape, source: seen.append((shape, source)))
    assert shapes == {"a": SHAPE, "b": (2, 3, 4), "c": SHAPE}
    assert seen == [(SHAPE, "mem:a"), ((2, 3, 4), "mem:b"), (SHAPE, "mem:c")]
    assert list(kept) == ["a", "b", "c"] and kept["b"] is srcs[1].inp and [s.reads for s in srcs] == [1, 1, 1]
    # bytes of a: bf + gt = 2 × 60 × 4 = 480; of b: 24 × 4 = 96
    monkeypatch.setattr(runner, "KEEP_LOADED_BYTES", 480 + 96)
    assert list(read_and_check(srcs)[1]) == ["a", "b"]
    monkeypatch.setattr(runner, "KEEP_LOADED_BYTES", 480 + 95)
    assert list(read_and_check(srcs)[1]) == ["a"]
    monkeypatch.setattr(runner, "KEEP_LOADED_BYTES", 479)
    assert list(read_and_check(srcs)[1]) == ["b"]

    def refuse(shape, source):
        if shape != SHAPE:
            raise DataError(f"{source}: too small")

    with pytest.raises(DataError, match="mem:b: too small"):
        read_and_check(srcs, refuse)
    assert read_and_check([]) == ({}, {})


def test_write_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = _mem("cell", 4)
    inp.bf = inp.bf.astype(np.float64)
    images = {"DDPM": np.full(SHAPE, 0.25, np.float32), "std_intra": np.full(SHAPE, 0.5, np.float32)}
    meta = {"model": "StandIn", "seeds": [0]}
    runner.write_outputs(tmp_path, inp, images, VOXEL, meta, "nuclear_envelope", OutputSettings())
    for product, expected in (("DDPM", images["DDPM"]), ("std_intra", images["std_intra"]), ("BF", inp.bf),
                              ("GT", inp.gt)):
        path = tmp_path / product / "cell.ome.tiff"
        data = tifffile.imread(path)
        assert data.dtype == np.float32
        np.testing.assert_allclose(data, expected, rtol=1e-6)
        voxel, got_meta = read_tiff_info(path)
        assert voxel == pytest.approx(VOXEL) and got_meta == meta
    assert read_channel_names(tmp_path / "BF" / "cell.ome.tiff") == ["BF (brightfield)"]
    assert read_channel_names(tmp_path / "DDPM" / "cell.ome.tiff") == ["DDPM (nuclear envelope)"]
    no_gt = _mem("bare", 5, gt=False)
    runner.write_outputs(tmp_path, no_gt, images, None, meta, None, OutputSettings())
    assert not (tmp_path / "GT" / "bare.ome.tiff").exists() and (tmp_path / "BF" / "bare.ome.tiff").is_file()
    assert read_tiff_info(tmp_path / "DDPM" / "bare.ome.tiff")[0] is None
    # OME-Zarr: BF, GT, then the products, one image per input
    calls = []
    monkeypatch.setattr(runner, "write_ome_zarr", lambda *args: calls.append(args))
    runner.write_outputs(tmp_path / "z", inp, images, VOXEL, meta, "dna", OutputSettings("ome-zarr", "0.5", (1, 2, 3)))
    assert not (tmp_path / "z").exists()
    ((path, channels, voxel, zmeta, version, chunks),) = calls
    assert path == tmp_path / "z" / "cell.ome.zarr" and list(channels) == ["BF", "GT", "DDPM", "std_intra"]
    assert channels["BF"].dtype == np.float32 and voxel == VOXEL and (version, chunks) == ("0.5", (1, 2, 3))
    assert zmeta == {**meta, "products": ["BF", "GT", "DDPM", "std_intra"]}
    np.testing.assert_allclose(channels["GT"], inp.gt)
    calls.clear()
    runner.write_outputs(tmp_path / "b", no_gt, images, VOXEL, meta, "dna", OutputSettings("both"))
    assert list(calls[0][1]) == ["BF", "DDPM", "std_intra"] and (tmp_path / "b" / "DDPM" / "bare.ome.tiff").is_file()


# --- runner: the whole walk with a stand-in model -------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_predict_walk(tmp_path: Path) -> None:
    model = StandIn()
    inps = [_mem("b10", 1), _mem("b2", 2, (2, 3, 4)), _mem("a", 3)]
    out = tmp_path / "out"
    rows = run_predict(model, inps, out, organelle=ORGANELLE, n_seeds=2, batch_size=1, checkpoint_id="ck",
                       metadata={"run": "x"}, uncertainty=UncertaintySettings(threshold=0.05))
    # batches of equal shape, one input each (batch_size 1); the patch ids are the inputs'
    assert [c[1] for c in model.calls] == [[inps[0].patch_id], [inps[2].patch_id], [inps[1].patch_id]]
    assert [c[0] for c in model.calls] == [(1, 1, *SHAPE), (1, 1, *SHAPE), (1, 1, 2, 3, 4)]
    request = model.calls[0][2]
    assert request.settings == PUBLISHED and request.n_seeds == 2 and request.keep_seeds is False
    on_disk = _read_csv(out / "predictions.csv")
    assert list(on_disk[0]) == CSV_FIELDS and [r["name"] for r in on_disk] == ["b10", "a", "b2"]
    config = {"checkpoint": "ck", "sampler": PUBLISHED.to_dict(), "n_seeds": 2,
              "uncertainty": ["inter", 0.05, False], "tiling": TileSettings().to_dict()}
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    row = on_disk[0]
    assert {k: row[k] for k in ("name", "input", "model", "checkpoint", "sampler", "steps", "seeds", "settings_hash",
                                "uncertainty_source", "threshold", "threshold_source")} == {
        "name": "b10", "input": "mem:b10", "model": "StandIn", "checkpoint": "ck", "sampler": "ddpm",
        "steps": "1000", "seeds": "0;1", "settings_hash": key, "uncertainty_source": "inter", "threshold": "0.05",
        "threshold_source": "given"}
    assert row["input_hash"] == input_fingerprint(inps[0])
    assert row["products"] == "DDPM;DDPMavg;std_intra;std_inter;error_mask" and float(row["seconds"]) >= 0
    std_inter = inps[0].bf * np.float32(0.1)
    mask = error_mask(std_inter, 0.05, MaskSettings.for_organelle("nuclear_envelope"))
    assert row["mask_fraction"] == f"{mask.mean():.6f}" and row["flagged"] == str(int(mask.mean() > 0.01))
    bench = patch_flag(inps[0].bf * np.float32(0.2), 0.05, MaskSettings.for_organelle("nuclear_envelope"))
    assert row["benchmark_fraction"] == f"{bench[1]:.6f}" and row["benchmark_flagged"] == str(int(bench[0]))
    assert [r["name"] for r in rows] == ["b10", "a", "b2"] and rows[0]["input_hash"] == row["input_hash"]
    # the products belong to their inputs; metadata and voxel size (the organelle's: the inputs have none)
    np.testing.assert_allclose(tifffile.imread(out / "DDPMavg" / "b2.ome.tiff"), 1 - inps[1].bf, rtol=1e-6)
    np.testing.assert_allclose(tifffile.imread(out / "GT" / "a.ome.tiff"), inps[2].gt, rtol=1e-6)
    voxel, meta = read_tiff_info(out / "DDPM" / "a.ome.tiff")
    assert voxel == pytest.approx(VOXEL)
    assert meta == {"run": "x", "model": "StandIn", "sampler": PUBLISHED.to_dict(), "seeds": [0, 1],
                    "tiling": TileSettings().to_dict(), "settings_hash": key,
                    "threshold": {"value": 0.05, "source": "given", "valid_for": None}, "input": "mem:a",
                    "patch_id": inps[2].patch_id}
    # a rerun skips everything; a changed input is predicted again
    model.calls.clear()
    again = run_predict(model, inps, out, organelle=ORGANELLE, n_seeds=2, batch_size=1, checkpoint_id="ck",
                        metadata={"run": "x"}, uncertainty=UncertaintySettings(threshold=0.05))
    assert model.calls == [] and again == on_disk
    inps[2].bf = inps[2].bf * 0.5
    run_predict(model, inps, out, organelle=ORGANELLE, n_seeds=2, batch_size=4, checkpoint_id="ck",
                metadata={"run": "x"}, uncertainty=UncertaintySettings(threshold=0.05))
    assert [c[1] for c in model.calls] == [[inps[2].patch_id]]


def test_run_predict_batches_voxel_and_settings(tmp_path: Path) -> None:
    model = StandIn(SamplerSettings(method="ddim", num_steps=7, seed=5))
    inps = [_mem(f"p{i}", i) for i in range(5)]
    inps[1].voxel_size = (1.0, 1.0, 2.0)
    rows = run_predict(model, inps, tmp_path, organelle=ORGANELLE, batch_size=2, max_batch=3,
                       uncertainty=UncertaintySettings(source="none", rule="binary"), save_seeds=True,
                       tiles=TileSettings(size=(2, 2, 2)), voxel_size=None)
    assert [c[0][0] for c in model.calls] == [2, 2, 1]
    request = model.calls[0][2]
    assert (request.n_seeds, request.max_batch, request.keep_seeds, request.tiles) == (1, 3, True,
                                                                                        TileSettings(size=(2, 2, 2)))
    assert [r["steps"] for r in rows] == ["7"] * 5 and rows[0]["seeds"] == "5" and rows[0]["sampler"] == "ddim"
    assert rows[0]["uncertainty_source"] == "" and rows[0]["threshold"] == "" and rows[0]["threshold_source"] == ""
    assert rows[0]["products"] == "DDPM;DDPMavg;std_intra" and rows[0]["flagged"] == ""
    assert read_tiff_info(tmp_path / "DDPM" / "p1.ome.tiff")[0] == pytest.approx((1.0, 1.0, 2.0))
    assert read_tiff_info(tmp_path / "DDPM" / "p0.ome.tiff")[0] == pytest.approx(VOXEL)
    config = {"checkpoint": "", "sampler": model.test_settings.to_dict(), "n_seeds": 1,
              "uncertainty": [None, None, False], "tiling": TileSettings(size=(2, 2, 2)).to_dict(),
              "mask_rule": "binary", "save_seeds": True}
    assert rows[0]["settings_hash"] == runner.settings_hash(config)
    # an explicit voxel size wins; the sampler given wins over the model's
    out = tmp_path / "v"
    run_predict(model, inps[:2], out, organelle=ORGANELLE, voxel_size=(3.0, 2.0, 1.0), settings=PUBLISHED)
    assert read_tiff_info(out / "DDPM" / "p1.ome.tiff")[0] == pytest.approx((3.0, 2.0, 1.0))
    assert model.calls[-1][2].settings == PUBLISHED
    assert read_tiff_info(out / "DDPM" / "p1.ome.tiff")[1]["threshold"] == {
        "value": 0.05, "source": "published", "valid_for": PUBLISHED_SETTING}
    # no voxel size anywhere
    run_predict(model, inps[:1], tmp_path / "n", organelle={"name": "dna"})
    assert read_tiff_info(tmp_path / "n" / "DDPM" / "p0.ome.tiff")[0] is None


def test_run_predict_baseline_and_shards(tmp_path: Path) -> None:
    model = Baseline()
    inps = [_mem(f"f{i}", i) for i in range(5)]
    rows = run_predict(model, inps, tmp_path, organelle=ORGANELLE, shard=Shard(1, 2), n_seeds=3)
    assert [r["name"] for r in rows] == ["f1", "f3"] and model.calls[0][2].settings is None
    assert {k: rows[0][k] for k in ("sampler", "steps", "seeds", "products", "uncertainty_source")} == {
        "sampler": "", "steps": "", "seeds": "", "products": "Unet", "uncertainty_source": ""}
    assert rows[0]["settings_hash"] == runner.settings_hash({"checkpoint": "", "sampler": None, "n_seeds": 0,
                                                             "uncertainty": [None, None, False],
                                                             "tiling": TileSettings().to_dict()})
    assert not (tmp_path / "predictions.csv").exists()
    shard_csv = tmp_path / "shards" / "predictions.1-of-2.csv"
    assert [r["name"] for r in _read_csv(shard_csv)] == ["f1", "f3"]
    assert read_tiff_info(tmp_path / "Unet" / "f1.ome.tiff")[1]["shard"] == "1/2"
    np.testing.assert_allclose(tifffile.imread(tmp_path / "Unet" / "f3.ome.tiff"), inps[3].bf * 2, rtol=1e-6)
    run_predict(model, inps, tmp_path, organelle=ORGANELLE, shard=Shard(0, 2))
    merged = runner.merge_predictions(tmp_path)
    assert [r["name"] for r in merged] == [f"f{i}" for i in range(5)]
    assert list(_read_csv(tmp_path / "predictions.csv")[0]) == CSV_FIELDS
    # a finished shard run again (its CSV lost, its rows merged) rewrites its CSV with its own rows only
    shard_csv.unlink()
    model.calls.clear()
    again = run_predict(model, inps, tmp_path, organelle=ORGANELLE, shard=Shard(1, 2))
    assert model.calls == [] and [r["name"] for r in again] == ["f1", "f3"]
    assert [r["name"] for r in _read_csv(shard_csv)] == ["f1", "f3"]
    # without shards every earlier row stays in predictions.csv
    rows = run_predict(model, inps[:1], tmp_path, organelle=ORGANELLE)
    assert len(rows) == 5


def test_run_predict_checks_before_writing(tmp_path: Path) -> None:
    model = StandIn()

    def refuse(shape, source):
        if source == "mem:b":
            raise DataError(f"{source}: refused")

    with pytest.raises(DataError, match="mem:b: refused"):
        run_predict(model, [_mem("a", 1), _mem("b", 2)], tmp_path, organelle=ORGANELLE, check=refuse)
    assert model.calls == [] and not any(tmp_path.iterdir())
    with pytest.raises(ConfigError):
        run_predict(model, [_mem("a", 1)], tmp_path, organelle=ORGANELLE, n_seeds=1,
                    uncertainty=UncertaintySettings(source="inter"))


# --- calibration ----------------------------------------------------------------------------------------------------
def _patch_set(seed: int, n: int) -> PatchSet:
    rng = np.random.default_rng(seed)
    bf = rng.random((n, *SHAPE)).astype(np.float32)
    fl = rng.random((n, *SHAPE)).astype(np.float32)
    return PatchSet(bf, fl, np.ones((n, *SHAPE), bool), [f"p{i}" for i in range(n)], ["s"] * n,
                    np.zeros((n, 3), np.int64))


def test_predict_patch_set_batches_by_position() -> None:
    model, patches = StandIn(), _patch_set(0, 5)
    out = calibration.predict_patch_set(model, patches, PUBLISHED, n_seeds=2, batch_size=2, keep_seeds=True)
    assert [c[1] for c in model.calls] == [[0, 1], [2, 3], [4]]
    request = model.calls[0][2]
    assert (request.settings, request.n_seeds, request.keep_seeds) == (PUBLISHED, 2, True)
    assert sorted(out) == ["DDPM", "DDPMavg", "std_inter", "std_intra"]
    np.testing.assert_allclose(out["DDPMavg"], 1 - patches.bf, rtol=1e-6)
    assert out["DDPM"].shape == (5, *SHAPE)
    model.calls.clear()
    calibration.predict_patch_set(model, patches, PUBLISHED, n_seeds=1)
    assert [c[1] for c in model.calls] == [[0, 1, 2, 3, 4]] and model.calls[0][2].keep_seeds is False


def test_calibrate_and_score() -> None:
    model, val, test = StandIn(), _patch_set(1, 3), _patch_set(2, 2)
    result = calibration.calibrate_and_score(model, val, test, PUBLISHED, 2, ORGANELLE, tau=0.3)
    assert result["sampler"] == PUBLISHED.to_dict() and result["setting"] == PUBLISHED_SETTING
    assert result["n_seeds"] == 2 and result["tau"] == 0.3 and result["setting_text"].startswith("ddpm-1000")
    assert list(result["maps"]) == ["intra", "inter"]
    for source, scale, published in (("intra", 0.2, 0.05), ("inter", 0.1, 0.07)):
        thr, f1 = calibrate_threshold(val.bf * np.float32(scale), 1 - val.bf, val.fl, 0.3)
        entry = result["maps"][source]
        assert entry["calibrated_threshold"] == pytest.approx(thr) and entry["validation_f1"] == pytest.approx(f1)
        assert entry["published_threshold"] == published
        settings = MaskSettings.for_organelle("nuclear_envelope")
        for label, value in (("calibrated", thr), ("published", published)):
            report = evaluate_uncertainty(test.bf * np.float32(scale), 1 - test.bf, test.fl, value, test.mask, 0.3,
                                          settings)
            assert entry[f"test_{label}"] == pytest.approx(vars(report), nan_ok=True)
    assert result["entries"][1] == {"map": "inter", "threshold": result["maps"]["inter"]["calibrated_threshold"],
                                    "setting": PUBLISHED_SETTING, "split": "validation", "n_patches": 3, "n_seeds": 2,
                                    "tau": 0.3, "validation_f1": result["maps"]["inter"]["validation_f1"]}
    # one seed: no inter map; another setting: the published threshold is not used
    other = SamplerSettings(method="ddim", num_steps=10)
    single = calibration.calibrate_and_score(model, val, test, other, 1, ORGANELLE, tau=0.3)
    assert list(single["maps"]) == ["intra"] and single["maps"]["intra"]["published_threshold"] is None
    assert "test_published" not in single["maps"]["intra"] and "test_calibrated" in single["maps"]["intra"]
    assert [e["map"] for e in single["entries"]] == ["intra"]
    assert calibration.calibrate_and_score(model, val, test, other, 1, {"name": "dna"}, tau=0.3)["maps"]["intra"][
        "published_threshold"] is None


# --- classifier -----------------------------------------------------------------------------------------------------
TINY_RESNET = {"depth": 10, "widen_factor": 0.25}


def test_classifier_spec_from_config() -> None:
    assert classifier.ClassifierSpec.from_config({}) is None
    assert classifier.ClassifierSpec.from_config({"classifier": ""}) is None
    default = classifier.ClassifierSpec.from_config({"classifier": Path("c.pth")})
    assert default == classifier.ClassifierSpec("c.pth", False, json.dumps(RESNET3D_DEFAULTS, sort_keys=True), 6,
                                                "YXZ", "cpu")
    spec = classifier.ClassifierSpec.from_config({"classifier": "c.pth", "normalize": 1, "num_classes": "4",
                                                  "net": {"name": "resnet3d", "widen_factor": 0.25, "depth": 10},
                                                  "input_axes": "ZYX", "device": "meta"})
    assert spec == classifier.ClassifierSpec("c.pth", True, '{"depth": 10, "widen_factor": 0.25}', 4, "ZYX", "meta")


def test_classifier_files_and_state_dicts(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"none\.pth: classifier file not found \(expected a dm4isl classifier"):
        classifier._read(tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable checkpoint \(\w+: "):
        classifier._read(junk)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    assert torch.equal(classifier._read(tmp_path / "ok.pth")["w"], torch.ones(2))
    state = {"a": torch.zeros(1)}
    for key in ("state_dict", "model", "model_state_dict"):
        assert classifier._plain_state_dict({key: state, "other": 1}, junk) is state
    assert classifier._plain_state_dict({"model": "x", "model_state_dict": state}, junk) is state
    assert classifier._plain_state_dict(state, junk) is state
    with pytest.raises(CheckpointError, match=r"junk\.pth: expected a state dict \(parameter name → tensor\) or a "
                                              r"dm4isl checkpoint, found dict with keys \['a', 'b'\]"):
        classifier._plain_state_dict({"a": torch.zeros(1), "b": 2}, junk)
    with pytest.raises(CheckpointError, match=r"found dict with keys \[\]"):
        classifier._plain_state_dict({}, junk)
    with pytest.raises(CheckpointError, match=r"found list with keys –"):
        classifier._plain_state_dict([1], junk)


def test_load_feature_extractor_from_a_plain_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_resnet3d(TINY_RESNET, num_classes=3).eval()
    path = tmp_path / "cls.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    spec = classifier.ClassifierSpec(str(path), normalize=True, net=json.dumps(TINY_RESNET), num_classes=3,
                                     input_axes="XZY")
    features = classifier.load_feature_extractor(spec)
    assert features.normalize is True and features.input_axes == "XZY" and features.name == str(path)
    assert features.layers == ("layer1", "layer2", "layer3", "layer4", "fc")
    x = torch.rand(1, 1, 4, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(features.net(x.permute(0, 1, 4, 2, 3)), net(x.permute(0, 1, 4, 2, 3)))
    with pytest.raises(CheckpointError, match=r"fc\.weight"):
        classifier.load_feature_extractor(classifier.ClassifierSpec(str(path), net=json.dumps(TINY_RESNET)))


def test_load_feature_extractor_from_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = build_resnet3d(TINY_RESNET, num_classes=2).eval()

    class Tiny(ClassifierModule):
        def __init__(self) -> None:  # noqa: D107 - a stand-in: no hyperparameters to save
            torch.nn.Module.__init__(self)
            self.net = net

    seen = []

    def from_checkpoint(obj, path):
        seen.append((obj["hyper_parameters"], path))
        return Tiny() if obj["hyper_parameters"]["kind"] == "cls" else torch.nn.Identity()

    monkeypatch.setattr(classifier, "model_from_checkpoint", from_checkpoint)
    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"kind": "cls"}}, path)
    features = classifier.load_feature_extractor(classifier.ClassifierSpec(str(path), normalize=True))
    assert features.net is net and features.normalize is True and features.input_axes == "ZYX"
    assert seen == [({"kind": "cls"}, path)]
    torch.save({"state_dict": {}, "hyper_parameters": {"kind": "unet"}}, path)
    with pytest.raises(CheckpointError, match=r"c\.ckpt: a Identity checkpoint, not an organelle classifier \(train"):
        classifier.load_feature_extractor(classifier.ClassifierSpec(str(path)))


def test_cached_feature_extractor_reads_a_rewritten_file_again(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    monkeypatch.setattr(classifier, "load_feature_extractor", lambda spec: loads.append(spec) or object())
    classifier._cached.cache_clear()
    path = tmp_path / "c.pth"
    path.write_bytes(b"1")
    os.utime(path, ns=(10**18, 10**18))
    spec = classifier.ClassifierSpec(str(path))
    first = classifier.cached_feature_extractor(spec)
    assert classifier.cached_feature_extractor(spec) is first and len(loads) == 1
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    assert classifier.cached_feature_extractor(spec) is not first and len(loads) == 2
    missing = classifier.ClassifierSpec(str(tmp_path / "none.pth"))
    classifier.cached_feature_extractor(missing)
    classifier.cached_feature_extractor(missing)
    assert loads[2:] == [missing]
    classifier._cached.cache_clear()


# --- generative import ----------------------------------------------------------------------------------------------
def test_read_generative_state(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"old\.pt: file not found \(expected a saved DiffusionModelUNet state"):
        generative_import.read_generative_state(tmp_path / "old.pt")
    path = tmp_path / "s.pt"
    w = torch.arange(3.0)
    for key in ("state_dict", "model_state_dict", "model", "net", "unet"):
        torch.save({key: {"module.a.weight": w, "b": w + 1}, "epoch": 3}, path)
        got = generative_import.read_generative_state(str(path))
        assert list(got) == ["a.weight", "b"] and torch.equal(got["b"], w + 1)
    torch.save({"a": w, "step": 5, "module.module.c": w}, path)
    assert list(generative_import.read_generative_state(path)) == ["a", "module.c"]
    torch.save([w], path)
    with pytest.raises(CheckpointError, match=r"s\.pt: holds a list; expected a dict of tensors"):
        generative_import.read_generative_state(path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"s\.pt: no tensors found; expected a DiffusionModelUNet state dict"):
        generative_import.read_generative_state(path)
    path.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"s\.pt: cannot be read as tensors only \(\w+: .*"
                                              r"re-save a pickled network"):
        generative_import.read_generative_state(path)


def test_kernel_permutation_by_hand() -> None:
    assert generative_import.kernel_permutation() == (0, 1, 4, 2, 3)
    assert generative_import.kernel_permutation("ZYX") == (0, 1, 2, 3, 4)
    assert generative_import.kernel_permutation("XZY") == (0, 1, 3, 4, 2)
    for bad in ("YXX", "YX", "YXZT", "yxz"):
        with pytest.raises(ValueError, match=rf"old axis order {bad!r}; expected a permutation of 'ZYX'"):
            generative_import.kernel_permutation(bad)


def test_convert_state_dict_by_hand() -> None:
    kernel = torch.arange(2 * 2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 2, 2, 3, 4)  # (out, in, Y, X, Z)
    old = {
        "conv_in.conv.weight": kernel,
        "down.0.attn.to_q.weight": torch.full((4, 4), 2.0),
        "down.0.attn.proj_attn.weight": torch.full((4, 4), 3.0),
        "down.0.attn.proj_attn.bias": torch.full((4,), 5.0),
        "up.0.upsampler.conv.bias": torch.ones(2),
        "same.weight": torch.full((2,), 7.0),
    }
    shapes = {"conv_in.conv.weight": (2, 2, 4, 2, 3), "down.0.attn.attn.to_q.weight": (4, 4),
              "down.0.attn.attn.out_proj.weight": (4, 4), "down.0.attn.attn.out_proj.bias": (4,),
              "up.0.upsampler.postconv.bias": (2,), "same.weight": (2,)}
    out = generative_import.convert_state_dict(old, shapes)
    assert sorted(out) == sorted(shapes)
    # (out, in, Y, X, Z) -> (out, in, Z, Y, X): element [o, i, z, y, x] = kernel[o, i, y, x, z]
    assert out["conv_in.conv.weight"][1, 0, 3, 1, 2] == kernel[1, 0, 1, 2, 3]
    assert out["conv_in.conv.weight"].is_contiguous()
    assert torch.equal(out["down.0.attn.attn.out_proj.weight"], torch.eye(4))
    assert torch.equal(out["down.0.attn.attn.out_proj.bias"], torch.zeros(4))
    assert torch.equal(out["down.0.attn.attn.to_q.weight"], torch.full((4, 4), 2.0))
    assert torch.equal(out["same.weight"], old["same.weight"]) and out["same.weight"] is not old["same.weight"]
    used = generative_import.convert_state_dict(old, shapes, apply_proj_attn=True)
    assert torch.equal(used["down.0.attn.attn.out_proj.weight"], torch.full((4, 4), 3.0))
    assert torch.equal(used["down.0.attn.attn.out_proj.bias"], torch.full((4,), 5.0))
    swapped = generative_import.convert_state_dict(old, shapes, cond_first=False)
    assert torch.equal(swapped["conv_in.conv.weight"][:, 0], out["conv_in.conv.weight"][:, 1])
    assert torch.equal(swapped["conv_in.conv.weight"][:, 1], out["conv_in.conv.weight"][:, 0])
    assert torch.equal(swapped["same.weight"], out["same.weight"])
    zyx = generative_import.convert_state_dict({**old, "conv_in.conv.weight": kernel.permute(0, 1, 4, 2, 3)}, shapes,
                                               old_axes="ZYX")
    assert torch.equal(zyx["conv_in.conv.weight"], out["conv_in.conv.weight"])
    # keys that do not fit, named
    with pytest.raises(CheckpointError, match=r"src: keys do not fit the network; unexpected \['extra'\], missing "
                                              r"\['same\.weight'\] \(expected a DiffusionModelUNet"):
        generative_import.convert_state_dict({**{k: v for k, v in old.items() if k != "same.weight"},
                                              "extra": torch.ones(1)}, shapes, source="src")
    with pytest.raises(CheckpointError, match=r"<state dict>: tensor shapes do not fit the network: same\.weight "
                                              r"\[3\] \(expected \[2\]\) \(check --net\)"):
        generative_import.convert_state_dict({**old, "same.weight": torch.ones(3)}, shapes)


def test_configs_and_reference_hyperparameters(tmp_path: Path) -> None:
    ddim = yaml.safe_load((CONF_DIR / "sampler" / "ddim_fast.yaml").read_text())
    got = generative_import._config("sampler", "ddim_fast")
    assert "defaults" not in got and got["num_steps"] == ddim["num_steps"]
    own = tmp_path / "net.yml"
    own.write_text("defaults: [x]\nchannels: [4, 4]\n")
    assert generative_import._config("model/net", own) == {"channels": [4, 4]}
    with pytest.raises(ValueError, match=r"nope\.yaml: no such sampler config \(expected a name in "
                                         r".*sampler or a YAML"):
        generative_import._config("sampler", "nope")
    with pytest.raises(ValueError, match=r"gone\.yaml: no such organelle config"):
        generative_import._config("organelle", tmp_path / "gone.yaml")
    hp = generative_import.reference_hparams({"channels": [8]}, {"name": "dna"}, (4, 8, 8), cond_first=False)
    recipe = yaml.safe_load((CONF_DIR / "recipe" / "paper.yaml").read_text())["recipe"]
    ddpm = yaml.safe_load((CONF_DIR / "model" / "ddpm.yaml").read_text())
    assert hp["net"] == {"channels": [8]} and hp["organelle"] == {"name": "dna"} and hp["patch_size"] == [4, 8, 8]
    assert hp["loss"] == recipe["loss"] and hp["lr"] == float(recipe["lr"]) and hp["cond_first"] is False
    assert hp["schedule"] == ddpm["schedule"] and hp["target_range"] == [0.0, 1.0]
    assert (hp["cond_norm"], hp["prediction_type"]) == ("none", "epsilon")
    assert hp["test_sampler"]["mean_correction"] is False and hp["test_sampler"]["method"] == "ddpm"
    assert hp["val_sampler"]["method"] == "ddim" and hp["val_sampler"]["num_steps"] == ddim["num_steps"]
    assert hp["val_sampler"]["mean_correction"] is False
    assert generative_import.reference_hparams({}, {})["patch_size"] == [16, 64, 64]
    assert generative_import.reference_hparams({}, {})["cond_first"] is True


# --- processes ------------------------------------------------------------------------------------------------------
def test_start_processes_one_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    monkeypatch.setattr(distributed.L, "Fabric", lambda **kwargs: made.append(kwargs))  # never a real launch
    assert distributed.start_processes("cpu", 1) is None and distributed.start_processes("nope", 1, 1) is None
    for devices, nodes in ((0, 1), (1, 0), (-1, 2)):
        with pytest.raises(ValueError, match=rf"devices={devices}, num_nodes={nodes}: expected positive numbers"):
            distributed.start_processes("cpu", devices, nodes)
    with pytest.raises(ValueError, match=r"device='tpu' with devices=2: expected one of \['auto', 'cpu', 'cuda', "
                                         r"'gpu'\]"):
        distributed.start_processes("tpu", 2)
    assert made == []

    class Fabric:
        def __init__(self, **kwargs) -> None:
            made.append(kwargs)
            self.global_rank, self.world_size, self.device = 0, 4, "cpu"

        def launch(self) -> None:
            made.append("launched")

    monkeypatch.setattr(distributed.L, "Fabric", Fabric)
    fabric = distributed.start_processes("gpu", 2, 2)
    assert isinstance(fabric, Fabric) and made == [
        {"accelerator": "cuda", "devices": 2, "num_nodes": 2, "strategy": "ddp"}, "launched"]
    made.clear()
    distributed.start_processes("auto", 1, 3)
    assert made[0]["accelerator"] == "auto" and made[0]["num_nodes"] == 3 and made[0]["devices"] == 1


def test_timing_field_is_seconds_per_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 106.0, 200.0, 201.0])
    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    rows = run_predict(StandIn(), [_mem("a", 1), _mem("b", 2), _mem("c", 3, (2, 3, 4))], tmp_path,
                       organelle=ORGANELLE, batch_size=2)
    assert [r["seconds"] for r in rows] == ["3.000", "3.000", "1.000"]


# --- details pinned after the mutation run (docs/testing.md, "Tests added from the survivors") -------------------
def test_csv_cells_keep_their_line_breaks_and_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "shards" / "predictions.0-of-1.csv"
    path.parent.mkdir()
    path.write_bytes(b'v,name\r\n"two\r\nlines",b\r\n')
    assert sharding.read_rows(path) == [{"v": "two\r\nlines", "name": "b"}]
    calls = []
    real = sharding.write_csv

    def counted(*args):
        calls.append(args[0])
        if len(calls) > 3:
            raise RuntimeError("merged again although no shard changed")
        return real(*args)

    monkeypatch.setattr(sharding, "write_csv", counted)
    sharding.merge_csvs(tmp_path, ["name", "v"])
    assert calls == [tmp_path / "predictions.csv"]
    assert (tmp_path / "predictions.csv").read_bytes() == b'name,v\nb,"two\r\nlines"\n'


def test_merged_predictions_have_every_column_in_order(tmp_path: Path) -> None:
    shard = tmp_path / "shards" / "predictions.0-of-2.csv"
    shard.parent.mkdir()
    shard.write_text("seconds,name\n1.5,a\n")  # some columns, in another order
    rows = runner.merge_predictions(tmp_path)
    assert rows == [{"seconds": "1.5", "name": "a"}]
    with open(tmp_path / "predictions.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == CSV_FIELDS


def test_input_messages_in_full(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        InputSettings.from_config("")
    assert str(err.value) == "input.path is missing: give input=<file, folder, manifest.csv or test>"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        discover_inputs(InputSettings(str(tmp_path / "empty")), ReadSettings())
    assert str(err.value) == (f"{tmp_path / 'empty'}: no TIFF files found and no other images (expected "
                              f"{tmp_path / 'empty'}/*.tiff, *.ome.tiff, *.czi, *.nd2, *.lif or *.ome.zarr)")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        discover_inputs(InputSettings(str(tmp_path / "notes.txt")), ReadSettings())
    assert str(err.value) == (f"{tmp_path / 'notes.txt'}: not an image dm4isl reads (expected .tif/.tiff/.ome.tiff, "
                              ".czi, .nd2, .lif, .ome.zarr, a folder of them or a manifest .csv)")
    with pytest.raises(DataError) as err:
        discover_inputs(InputSettings(str(tmp_path / "gone")), ReadSettings())
    assert str(err.value) == (f"{tmp_path / 'gone'}: input not found (expected a patch folder, a folder of images, an "
                              "image file or a manifest .csv)")
    dup = tmp_path / "dup"
    dup.mkdir()
    for i in range(12):  # twelve names twice: the message lists ten
        (dup / f"n{i:02d}.tif").write_bytes(b"x")
        (dup / f"n{i:02d}.tiff").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        discover_inputs(InputSettings(str(dup)), ReadSettings())
    names = [f"n{i:02d}" for i in range(10)]
    assert str(err.value) == (f"{dup}: input names {names} occur more than once; output files are named after the "
                              "inputs (give a manifest with a name column)")


def test_one_scene_file_keeps_its_name(tmp_path: Path) -> None:
    (tmp_path / "cells").mkdir()
    one = _ome_channels(tmp_path / "cells" / "one.ome.tiff", _raw(1)[None], ["BF"])
    (src,) = discover_inputs(InputSettings(str(one), scene="all"), ReadSettings())
    assert (src.name, src.scene) == ("one", None)
    (src,) = discover_inputs(InputSettings(str(tmp_path / "cells"), scene="all"), ReadSettings())
    assert (src.name, src.scene) == ("one", None)


def test_manifest_cells_with_line_breaks_and_extra_cells(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b'path,name\r\na.tif,"two\r\nlines"\r\nb.tif\r\n')
    got = read_predict_manifest(manifest, InputSettings("m.csv"), ReadSettings())
    assert [s.name for s in got] == ["two\r\nlines", "b"]
    manifest.write_text("path\nc.tif,extra,cells\n")  # cells beyond the header are ignored
    (src,) = read_predict_manifest(manifest, InputSettings("m.csv", channel="BF"), ReadSettings())
    assert (src.name, src.channel, src.scene, src.gt_path) == ("c", "BF", None, None)


def test_patch_pair_errors_name_their_file(tmp_path: Path) -> None:
    _plain(tmp_path / "BF" / "x.tif", np.full(SHAPE, 5.0, np.float32))
    _plain(tmp_path / "GT" / "x.tif", _raw(1))
    _plain(tmp_path / "BF" / "y.tif", _raw(2))
    _plain(tmp_path / "GT" / "y.tif", np.full(SHAPE, 5.0, np.float32))
    x, y = discover_inputs(InputSettings(str(tmp_path)), ReadSettings())
    with pytest.raises(DataError, match=rf"^{tmp_path / 'BF' / 'x.tif'}: float intensities span \[5, 5\]"):
        x.load()
    with pytest.raises(DataError, match=rf"^{tmp_path / 'GT' / 'y.tif'}: float intensities span \[5, 5\]"):
        y.load()
    _plain(tmp_path / "ok" / "BF" / "y.tif", _raw(2))
    _plain(tmp_path / "ok" / "GT" / "y.tif", _raw(3))
    (src,) = discover_inputs(InputSettings(str(tmp_path / "ok")), ReadSettings())
    assert src.load().name == "y"


def test_process_start_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    class Fabric:
        def __init__(self, **kwargs) -> None:
            self.global_rank, self.world_size, self.device = 3, 4, "cuda:1"

        def launch(self) -> None:
            pass

    monkeypatch.setattr(distributed.L, "Fabric", Fabric)
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.distributed"):
        distributed.start_processes("cuda", 2, 2)
    assert [r.getMessage() for r in caplog.records] == ["prediction process 3 of 4 on cuda:1"]


def test_calibration_passes_its_settings_on(monkeypatch: pytest.MonkeyPatch) -> None:
    model, val, test = StandIn(), _patch_set(1, 3), _patch_set(2, 9)
    model.schedule = SimpleNamespace(num_train_timesteps=500)
    rng = np.random.default_rng(3)
    test.mask = rng.random(test.mask.shape) > 0.5
    seen = []
    real = calibration.evaluate_uncertainty

    def spy(*args):
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(calibration, "evaluate_uncertainty", spy)
    organelle = {**ORGANELLE, "name": "dna", "std_thresholds_for": {"num_steps": 500}}
    result = calibration.calibrate_and_score(model, val, test, PUBLISHED, 1, organelle, tau=0.3)
    assert result["setting"]["num_steps"] == 500 and result["maps"]["intra"]["published_threshold"] == 0.05
    assert {c[2].settings for c in model.calls} == {PUBLISHED}
    assert [len(c[1]) for c in model.calls] == [3, 8, 1]  # batches of eight
    assert len(seen) == 2
    for args in seen:
        assert args[4] is test.mask and args[5] == 0.3 and args[6] == MaskSettings.for_organelle("dna")
        np.testing.assert_array_equal(args[2], test.fl)


class OnlyInter(StandIn):
    def predict_products(self, bf, ids, request):
        out = super().predict_products(bf, ids, request)
        del out["std_intra"]
        return out


def test_calibration_of_an_inter_map_alone() -> None:
    result = calibration.calibrate_and_score(OnlyInter(), _patch_set(1, 3), _patch_set(2, 2), PUBLISHED, 2,
                                             ORGANELLE, tau=0.3)
    assert list(result["maps"]) == ["inter"] and [e["map"] for e in result["entries"]] == ["inter"]


def _spy_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The keyword arguments of every ``torch.load`` call from now on (the call itself still happens)."""
    calls: list[dict] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    return calls


def _torch_load_error(path: Path) -> str:
    """The name of the exception ``torch.load`` raises on ``path`` (the reading errors must name it)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises is what the message must name
        return type(exc).__name__
    raise AssertionError(f"{path} was read by torch.load")


def test_classifier_reading_in_detail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError) as err:
        classifier._read(tmp_path / "none.pth")
    assert str(err.value) == (f"{tmp_path / 'none.pth'}: classifier file not found (expected a dm4isl classifier "
                              "checkpoint or a 3-D ResNet state dict)")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    kind = _torch_load_error(junk)
    with pytest.raises(CheckpointError, match=rf"junk\.pth: not a readable checkpoint \({kind}: "):
        classifier._read(junk)
    calls = _spy_torch_load(monkeypatch)
    torch.save({"w": torch.ones(1)}, tmp_path / "ok.pth")
    classifier._read(tmp_path / "ok.pth")
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    many = {f"k{i:02d}": i for i in range(12)}
    with pytest.raises(CheckpointError) as err:
        classifier._plain_state_dict(many, junk)
    assert str(err.value).endswith(f"found dict with keys {[f'k{i:02d}' for i in range(10)]}")


def test_feature_extractor_errors_name_the_file_and_device(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_resnet3d(TINY_RESNET, num_classes=3).eval()
    path = tmp_path / "cls.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(CheckpointError, match=rf"^{path}: .*fc\.weight"):
        classifier.load_feature_extractor(classifier.ClassifierSpec(str(path), net=json.dumps(TINY_RESNET)))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'list.pth'}: expected a state dict"):
        classifier.load_feature_extractor(classifier.ClassifierSpec(str(tmp_path / "list.pth")))
    spec = classifier.ClassifierSpec(str(path), net=json.dumps(TINY_RESNET), num_classes=3, device="meta")
    features = classifier.load_feature_extractor(spec)
    assert next(features.net.parameters()).device.type == "meta"


def test_generative_import_command_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    calls = []
    monkeypatch.setattr(generative_import, "import_generative", lambda *args: calls.append(args) or Path(args[1]))
    assert generative_import.main(["old.pt", "new.ckpt"]) == Path("new.ckpt")
    assert calls == [("old.pt", "new.ckpt", "paper", "nuclear_envelope", [16, 64, 64], "YXZ", True, False)]
    assert capsys.readouterr().out == "wrote new.ckpt\n"
    generative_import.main(["a", "b", "--net", "n.yaml", "--organelle", "dna", "--patch-size", "4", "8", "12",
                            "--old-axes", "ZYX", "--noisy-first", "--apply-proj-attn"])
    assert calls[1] == ("a", "b", "n.yaml", "dna", [4, 8, 12], "ZYX", False, True)
    with pytest.raises(SystemExit):
        generative_import.main(["a", "b", "--patch-size", "4", "8"])


class Source:
    """An input that counts its reads and records how they were announced."""

    def __init__(self, inp: PredictInput) -> None:
        self.inp, self.name, self.bf, self.gt, self.announced = inp, inp.name, inp.bf, inp.gt, []

    def load(self, announce: bool = True) -> PredictInput:
        self.announced.append(announce)
        return self.inp


def test_run_predict_reads_again_only_what_it_did_not_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srcs = [Source(_mem(f"s{i}", i)) for i in range(3)]
    monkeypatch.setattr(runner, "KEEP_LOADED_BYTES", 2 * 480)  # the first two stay in memory
    run_predict(StandIn(), srcs, tmp_path, organelle=ORGANELLE)
    assert [s.announced for s in srcs] == [[True], [True], [True, False]]


class Terminal(io.StringIO):
    """Standard error as a terminal: tqdm shows the bars it shows on terminals only."""

    def isatty(self) -> bool:
        return True


def test_run_predict_details(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = StandIn()
    inps = [_mem(f"d{i}", i) for i in range(5)]
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.runner"):
        run_predict(model, inps, tmp_path, organelle=ORGANELLE)
    assert [len(c[1]) for c in model.calls] == [4, 1]  # batches of four
    assert not [r for r in caplog.records if "skipping" in r.getMessage() or "shard" in r.getMessage()]
    bars = capsys.readouterr().err  # not a terminal: the prediction's bar, not the check's
    assert re.search(r"predict: 100%\|.*\| 5/5 \[.*(input/s|s/input)\]", bars) and "check inputs" not in bars
    path = tmp_path / "DDPM" / "d0.ome.tiff"
    assert tifffile.imread(path).dtype == np.float32
    assert read_channel_names(path) == ["DDPM (nuclear envelope)"]
    # nothing to do: predictions.csv is left as it is, no bar
    stamp = (tmp_path / "predictions.csv").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.runner"):
        run_predict(model, inps, tmp_path, organelle=ORGANELLE)
    assert (tmp_path / "predictions.csv").stat().st_mtime_ns == stamp
    assert "skipping 5 inputs already predicted with these settings" in [r.getMessage() for r in caplog.records]
    assert "predict" not in capsys.readouterr().err
    # a shard of a partly finished run, one input left, on a terminal: no check bar for one input
    (tmp_path / "DDPM" / "d3.ome.tiff").unlink()
    caplog.clear()
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.runner"):
        run_predict(model, inps, tmp_path, organelle=ORGANELLE, shard=Shard(1, 2))
    messages = [r.getMessage() for r in caplog.records]
    assert "skipping 1 inputs already predicted with these settings" in messages
    assert "shard 1 of 2: 2 of 5 inputs, 1 to predict" in messages
    assert re.search(r"predict: 100%\|.*\| 1/1 \[", terminal.getvalue()) and "check" not in terminal.getvalue()
    # two inputs on a terminal: both bars
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_predict(model, inps[:2], tmp_path / "two", organelle=ORGANELLE)
    assert re.search(r"check inputs: 100%\|.*\| 2/2 \[.*(input/s|s/input)\]", terminal.getvalue())
    assert re.search(r"predict: 100%\|.*\| 2/2 \[", terminal.getvalue())


def test_run_predict_uses_calibrations_and_rewrites_a_lost_shard_csv(tmp_path: Path) -> None:
    model = StandIn(SamplerSettings(method="ddim", num_steps=9))
    setting = {**PUBLISHED_SETTING, "method": "ddim", "num_steps": 9, "eta": 0.0, "mean_correction": True}
    calibrations = [{"map": "intra", "threshold": 0.125, "setting": setting}]
    inps = [_mem("a", 1), _mem("b", 2)]
    rows = run_predict(model, inps, tmp_path, organelle=ORGANELLE, calibrations=calibrations, shard=Shard(0, 2))
    assert rows[0]["threshold"] == 0.125 and rows[0]["threshold_source"] == "calibrated"
    shard_csv = tmp_path / "shards" / "predictions.0-of-2.csv"
    run_predict(model, inps, tmp_path, organelle=ORGANELLE, calibrations=calibrations, shard=Shard(1, 2))
    runner.merge_predictions(tmp_path)
    with open(tmp_path / "predictions.csv", newline="") as fh:  # an older file with its columns in another order
        merged = list(csv.DictReader(fh))
    with open(tmp_path / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS[::-1])
        writer.writeheader()
        writer.writerows(merged)
    shard_csv.unlink()
    run_predict(model, inps, tmp_path, organelle=ORGANELLE, calibrations=calibrations, shard=Shard(0, 2))
    with open(shard_csv, newline="") as fh:
        assert next(csv.reader(fh)) == CSV_FIELDS


def test_plan_masks_uses_calibrations() -> None:
    other = SamplerSettings(method="ddim", num_steps=9)
    setting = {**PUBLISHED_SETTING, "method": "ddim", "num_steps": 9, "eta": 0.0, "mean_correction": True}
    plan = plan_masks(StandIn(), other, 1, ORGANELLE, UncertaintySettings(),
                      [{"map": "intra", "threshold": 0.125, "setting": setting}])
    assert plan.threshold == Threshold(0.125, "calibrated", setting) and plan.benchmark == plan.threshold


def test_plan_masks_take_the_organelle_median_and_log_the_choice(caplog: pytest.LogCaptureFixture) -> None:
    dna = {**ORGANELLE, "name": "dna"}
    with caplog.at_level(logging.INFO, logger="dm4isl.prediction.runner"):
        plan = plan_masks(StandIn(), PUBLISHED, 1, dna, UncertaintySettings(rule="binary"))
    assert plan.masks.median_size == 5 and plan.benchmark_masks.median_size == 5  # the reference's DNA rule
    assert plan.masks == MaskSettings.for_organelle("dna", "binary")
    assert caplog.records[0].getMessage().startswith("intra-process std threshold 0.05 (published, for ddpm-1000,")


def test_mask_and_flag_use_the_plans_settings() -> None:
    std = _std_map()
    std[:, 13:15, 1:15] += 0.5  # a stripe two pixels wide: a 5-pixel median removes it, a 3-pixel one keeps it
    wide = MaskSettings(median_size=5)
    assert error_mask(std, 0.3, wide).sum() < error_mask(std, 0.3, MaskSettings()).sum()
    plan = MaskPlan("intra", Threshold(0.3, "given"), Threshold(0.3, "published"), wide, wide)
    images = {"std_intra": std}
    cols = mask_and_flag(images, plan)
    expected = error_mask(std, 0.3, wide)
    np.testing.assert_array_equal(images["error_mask"], expected)
    assert cols["mask_fraction"] == cols["benchmark_fraction"] == f"{expected.mean():.6f}"


def test_input_fmt() -> None:
    assert inputs._fmt(None) == "unknown"
    assert inputs._fmt((1.0, 0.123456, 250)) == "(1, 0.1235, 250)"


def _ome_movie(path: Path, data_tczyx: np.ndarray, names: list[str] | None = None) -> Path:
    meta = {"axes": "TCZYX", **({"Channel": {"Name": names}} if names else {})}
    tifffile.imwrite(path, data_tczyx, ome=True, photometric="minisblack", metadata=meta)
    return path


def test_bioio_reads_name_their_file_and_take_the_time_point(tmp_path: Path) -> None:
    movie = np.stack([np.stack([_raw(1), _raw(2)]), np.stack([_raw(3), _raw(4)])])  # (T, C, Z, Y, X)
    bf = _ome_movie(tmp_path / "bf.ome.tiff", movie, ["BF", "FL"])
    gt = _ome_movie(tmp_path / "gt.ome.tiff", movie[:, ::-1].copy(), ["A", "B"])
    got = InputSource("m", bf, channel="BF", gt_channel="A", gt_path=gt, timepoint=1).load()
    np.testing.assert_array_equal(got.bf, _raw(3) / np.float32(255))
    np.testing.assert_array_equal(got.gt, _raw(4) / np.float32(255))
    same = InputSource("m", bf, channel="FL", gt_channel="BF", timepoint=1).load()
    np.testing.assert_array_equal(same.gt, _raw(3) / np.float32(255))
    cases = [
        (InputSource("m", bf, channel="BF", timepoint=2), rf"^{bf}: time point 2 out of range"),
        (InputSource("m", bf, channel=5, timepoint=0), rf"^{bf}: channel index 5 out of range"),
        (InputSource("m", bf, channel=0, gt_channel=6, timepoint=0), rf"^{bf}: channel index 6 out of range"),
        (InputSource("m", bf, scene=3, channel=0), rf"^{bf}: scene index 3 out of range"),
        (InputSource("m", bf, channel=0, gt_path=gt, gt_channel=7), rf"^{gt}: channel index 7 out of range"),
    ]
    for src, message in cases:
        with pytest.raises(DataError, match=message):
            src.load()
    nan = np.zeros((1, 1, *SHAPE), np.float32)
    nan[0, 0, 1, 1, 1] = np.nan
    bad = _ome_movie(tmp_path / "nan.ome.tiff", nan)
    with pytest.raises(DataError, match=rf"^{bad}: channel 0 contains 1 NaN/inf voxels"):
        InputSource("n", bad, channel=0).load()
    with pytest.raises(DataError, match=rf"^{bad}: channel 0 contains 1 NaN/inf voxels"):
        InputSource("n", _ome_movie(tmp_path / "ok.ome.tiff", np.zeros((1, 1, *SHAPE), np.float32)), gt_path=bad).load()
    two = tmp_path / "two.ome.tiff"
    with tifffile.TiffWriter(two, ome=True) as tif:
        for seed in (5, 6):
            tif.write(_raw(seed), photometric="minisblack", metadata={"axes": "ZYX"})
    gt2 = tmp_path / "gt2.ome.tiff"
    with tifffile.TiffWriter(gt2, ome=True) as tif:
        for seed in (7, 8):
            tif.write(_raw(seed), photometric="minisblack", metadata={"axes": "ZYX"})
    pair = InputSource("t", two, scene=1, gt_path=gt2).load()  # the ground truth's scene is the brightfield's
    np.testing.assert_array_equal(pair.gt, _raw(8) / np.float32(255))
    one_scene = _ome_channels(tmp_path / "one.ome.tiff", _raw(9)[None], ["A"])
    with pytest.raises(DataError, match=rf"^{one_scene}: scene index 1 out of range"):
        InputSource("t", two, scene=1, gt_path=one_scene).load()


def test_ground_truth_windows_and_errors_name_the_right_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain_bf = _plain(tmp_path / "bf.tif", _raw(1))
    plain_gt = _plain(tmp_path / "gt.tif", (_raw(2) * 10).astype(np.uint16))
    got = InputSource("p", plain_bf, gt_path=plain_gt, read=ReadSettings(fl_window=(0.0, 2550.0))).load()
    np.testing.assert_allclose(got.gt, _raw(2) * 10 / 2550.0, rtol=1e-6)  # a ground-truth file with its window
    movie = np.stack([(_raw(3) * 10).astype(np.uint16), (_raw(4) * 10).astype(np.uint16)])[None]
    both = _ome_movie(tmp_path / "both.ome.tiff", movie, ["BF", "FL"])
    same = InputSource("b", both, channel="BF", gt_channel="FL",
                       read=ReadSettings(bf_window=(0.0, 2550.0), fl_window=(0.0, 1275.0))).load()
    np.testing.assert_allclose(same.gt, np.clip(_raw(4) * 10 / 1275.0, 0, 1), rtol=1e-6)
    hot = _plain(tmp_path / "hot.tif", np.full(SHAPE, 5.0, np.float32))
    with pytest.raises(DataError, match=rf"^{hot}: float intensities span"):
        InputSource("h", hot).load()
    with pytest.raises(DataError, match=rf"^{hot}: float intensities span"):
        InputSource("h", plain_bf, gt_path=hot).load()
    hot_movie = _ome_movie(tmp_path / "hot.ome.tiff", np.full((1, 2, *SHAPE), 5.0, np.float32), ["BF", "FL"])
    with pytest.raises(DataError, match=rf"^{hot_movie}: float intensities span"):
        InputSource("h", hot_movie, channel=0, gt_channel=1, read=ReadSettings(bf_window=(0.0, 9.0))).load()
    with pytest.raises(DataError, match=rf"^{plain_bf}: channel index 1 out of range"):
        InputSource("p", plain_bf, channel=1).load()  # a plain TIFF has one channel
    # a known voxel size within the tolerance of the training one: no "no voxel size" line
    ome = write_tiff(tmp_path / "v.ome.tiff", _raw(5), VOXEL)
    with caplog.at_level(logging.DEBUG, logger="dm4isl.prediction.inputs"):
        InputSource("v", ome, read=ReadSettings(target_voxel=VOXEL)).load()
        InputSource("p", plain_bf, read=ReadSettings(target_voxel=VOXEL)).load()
    assert [r.getMessage() for r in caplog.records if r.name == "dm4isl.prediction.inputs"] == [
        f"{plain_bf}: no physical voxel size in the file; taken as the training voxel size (0.5, 0.25, 0.125) µm"]


def test_generative_state_reading_in_detail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    kind = _torch_load_error(junk)
    with pytest.raises(CheckpointError) as err:
        generative_import.read_generative_state(junk)
    assert str(err.value).startswith(f"{junk}: cannot be read as tensors only ({kind}: ")
    assert str(err.value).endswith("; expected a state dict — re-save a pickled network with "
                                   "torch.save(net.state_dict(), path)")
    calls = _spy_torch_load(monkeypatch)
    torch.save({"w": torch.ones(1)}, tmp_path / "ok.pt")
    generative_import.read_generative_state(tmp_path / "ok.pt")
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_convert_state_dict_edges() -> None:
    w = torch.ones(2)
    shapes = {"b.to_q.w": (2,), "b.attn.to_q.w": (2,)}  # a key that fits is kept, not renamed
    assert sorted(generative_import.convert_state_dict({"b.to_q.w": w, "b.attn.to_q.w": w + 1}, shapes)) == sorted(
        shapes)
    with pytest.raises(CheckpointError) as err:  # an unexpected key first: every other key is still converted
        generative_import.convert_state_dict({"zz": w, "a": w, "b": w}, {"a": (2,), "b": (2,), "c": (2,)}, source="s")
    assert str(err.value).startswith("s: keys do not fit the network; unexpected ['zz'], missing ['c'] ")
    with pytest.raises(CheckpointError, match=r"unexpected \['zz'\], missing \[\]"):
        generative_import.convert_state_dict({"a": w, "zz": w}, {"a": (2,)})
    many = {f"k{i}": w for i in range(10)}
    with pytest.raises(CheckpointError) as err:
        generative_import.convert_state_dict(many, {f"m{i}": (2,) for i in range(10)})
    assert f"unexpected {[f'k{i}' for i in range(8)]}, missing {[f'm{i}' for i in range(8)]} (" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        generative_import.convert_state_dict(many, {f"k{i}": (3,) for i in range(10)}, source="s")
    wrong = "; ".join(f"k{i} [2] (expected [3])" for i in range(8))
    assert str(err.value) == f"s: tensor shapes do not fit the network: {wrong} (check --net)"
    double = {"x.proj_attn.weight": torch.full((3, 3), 2.0, dtype=torch.float64)}
    out = generative_import.convert_state_dict(double, {"x.attn.out_proj.weight": (3, 3)})
    assert out["x.attn.out_proj.weight"].dtype == torch.float64


def test_config_interpolations_are_resolved(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text("width: 8\nchannels: ['${width}', 16]\n")
    assert generative_import._config("model/net", path) == {"width": 8, "channels": [8, 16]}


NET = {"name": "diffusion_unet", "channels": [8, 8], "attention_levels": [False, False], "num_res_blocks": 1,
       "num_head_channels": 8, "norm_num_groups": 8}


def test_import_generative_writes_a_checkpoint(tmp_path: Path) -> None:
    import lightning as L

    from dm4isl.io.provenance import git_revision
    from dm4isl.models.checkpoint import PROVENANCE_KEY, fingerprint
    from dm4isl.models.ddpm import DDPMModule

    torch.manual_seed(0)
    hparams = generative_import.reference_hparams(NET, ORGANELLE, (4, 8, 8))
    source = DDPMModule(**hparams).net.state_dict()
    old = tmp_path / "old.pt"
    torch.save({"model": {f"module.{k}": v + 0.01 for k, v in source.items()}}, old)
    new = generative_import.import_generative(old, tmp_path / "new.ckpt", NET, ORGANELLE, (4, 8, 8), old_axes="ZYX")
    ckpt = torch.load(new, map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"] == hparams and ckpt["pytorch-lightning_version"] == L.__version__
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 0
    block = ckpt[PROVENANCE_KEY]
    assert block["imported_from"] == str(old) and block["imported_sha256_16"] == fingerprint(old)
    assert block["imported_axes"] == "ZYX" and block["git"] == git_revision()
    for key, value in source.items():
        torch.testing.assert_close(ckpt["state_dict"][f"net.{key}"], value + 0.01)


def test_generative_import_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    with pytest.raises(SystemExit):
        generative_import.main(["--help"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert ("Import MONAI GenerativeModels ``DiffusionModelUNet`` weights (the published DM4ISL format) as a dm4isl "
            "checkpoint.") in lines
    assert "[--patch-size Z Y X]" in lines[0]  # the usage line
    assert any(line.startswith("--patch-size Z Y X ") or line == "--patch-size Z Y X" for line in lines)
    for help_text in (
        "state dict saved from generative.networks.nets.DiffusionModelUNet",
        "dm4isl checkpoint to write (.ckpt)",
        "net config name (conf/model/net) or YAML file",
        "organelle config name or YAML file",
        "spatial axis order of the old tensors",
        "the new checkpoint concatenates [x_t, brightfield] (swap inputs)",
        "copy the attention output projections (default: identity)",
    ):  # each option's help ends its line, after the option and two spaces or more
        assert any(line == help_text or line.endswith(f"  {help_text}") for line in lines), help_text


class _Stop(Exception):
    """Raised by a stand-in to end a call once it has seen what it needed."""


def test_import_generative_defaults_are_the_papers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def config(group, name):
        calls.append((group, name))
        if group == "organelle":
            raise _Stop
        return dict(NET)

    monkeypatch.setattr(generative_import, "_config", config)
    with pytest.raises(_Stop):
        generative_import.import_generative(tmp_path / "old.pt", tmp_path / "new.ckpt")
    assert calls == [("model/net", "paper"), ("organelle", "nuclear_envelope")]
