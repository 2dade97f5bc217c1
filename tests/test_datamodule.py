"""Splits by FOV, crop sampling and filtering, augmentation, and the fixed cached evaluation sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from dm4isl.data.datamodule import PatchFolderDataModule, RandomCropDataset
from dm4isl.data.normalize import unit_std_threshold
from dm4isl.data.patches import (
    Volume,
    apply_augment,
    fixed_patch_set,
    min_slice_std,
    passes_filter,
    sample_crop,
)
from dm4isl.data.splits import load_or_make_split, read_split, split_ids
from dm4isl.errors import DataError

NE = {
    "name": "nuclear_envelope", "bf_window": [12000, 55000], "fl_window": [390, 1500], "std_th": 70,
    "voxel_size": [0.29, 0.29, 0.29],
}


def test_split_without_replacement_and_reuse(tmp_path: Path) -> None:
    ids = [f"fov{i:03d}" for i in range(37)]
    split = split_ids(ids, {"val": 0.1, "test": 0.1}, seed=3)
    parts = split["train"] + split["val"] + split["test"]
    assert sorted(parts) == sorted(ids) and len(parts) == len(set(parts))  # no FOV twice, none lost
    assert len(split["test"]) == 4 and len(split["val"]) == 4
    assert split == split_ids(ids, {"val": 0.1, "test": 0.1}, seed=3)
    assert split != split_ids(ids, {"val": 0.1, "test": 0.1}, seed=4)
    path = tmp_path / "split.csv"
    assert load_or_make_split(ids, {"val": 0.1, "test": 0.1}, 3, path) == split
    assert read_split(path) == split
    # a later run with another seed reuses the saved split (resume/predict see the same FOVs)
    assert load_or_make_split(ids, {"val": 0.1, "test": 0.1}, 99, path) == split
    with pytest.raises(DataError, match=r"split\.csv: saved split lists 37 FOVs that differ from the 36 FOVs"):
        load_or_make_split(ids[:-1], {"val": 0.1, "test": 0.1}, 3, path)
    path.write_text("fov_id,split\na,train\na,test\n")
    with pytest.raises(DataError, match=r"FOV 'a' appears in both 'train' and 'test'"):
        read_split(path)
    with pytest.raises(DataError, match="too few"):
        split_ids(["a", "b"], {"val": 0.5, "test": 0.4}, 0)


def test_filter_threshold_units_and_blank_crop() -> None:
    thr = unit_std_threshold(70, (390, 1500))
    assert thr == pytest.approx(70 / 1110)
    rng = np.random.default_rng(0)
    raw_blank = np.clip(400 + rng.normal(0, 10, (16, 64, 64)), 390, 1500)
    raw_struct = raw_blank.copy()
    raw_struct[:, 20:40, 20:40] += 600
    for raw, keep in ((raw_blank, False), (raw_struct, True)):
        unit = (raw - 390) / 1110
        assert passes_filter(unit, thr) is keep
        assert bool(raw.reshape(16, -1).std(axis=1).min() > 70) == keep  # same rule on raw clipped grey levels
    one_empty_slice = raw_struct.copy()
    one_empty_slice[5] = 400.0
    assert min_slice_std(one_empty_slice) == 0.0


def _volumes(n: int = 4, shape=(20, 48, 48)) -> list[Volume]:
    rng = np.random.default_rng(1)
    vols = []
    for i in range(n):
        fl = np.zeros(shape, np.float32)
        fl[:, 10:30, 10:30] = 0.8  # structure in one corner only
        fl += rng.normal(0, 0.01, shape).astype(np.float32)
        vols.append(Volume(f"v{i}", rng.random(shape, dtype=np.float32), np.clip(fl, 0, 1), None))
    return vols


def test_sample_crop_filter_and_fallback() -> None:
    vols = _volumes()
    thr = 0.2
    for i in range(20):
        vi, corner, ok = sample_crop(np.random.default_rng(i), vols, (8, 16, 16), thr, 50)
        z, y, x = corner
        crop = vols[vi].fl[z : z + 8, y : y + 16, x : x + 16]
        assert ok and passes_filter(crop, thr)
    # impossible threshold: falls back to the best crop seen, never fails or returns nothing
    vi, corner, ok = sample_crop(np.random.default_rng(0), vols, (8, 16, 16), 10.0, 5)
    assert not ok and 0 <= vi < len(vols)


def test_random_crop_dataset_deterministic_by_seed_epoch_index() -> None:
    vols = _volumes()
    aug = {"flip_x": 0.64, "flip_y": 0.64, "rot90": 0.64}
    ds = RandomCropDataset(vols, (8, 16, 16), 10, 0.2, 20, aug, seed=5, epoch=2)
    a, b = ds[3], ds[3]
    assert torch.equal(a["bf"], b["bf"]) and a["bf"].shape == (1, 8, 16, 16)
    assert int(a["index"]) == 2 * 10 + 3
    other_epoch = RandomCropDataset(vols, (8, 16, 16), 10, 0.2, 20, aug, seed=5, epoch=3)[3]
    other_seed = RandomCropDataset(vols, (8, 16, 16), 10, 0.2, 20, aug, seed=6, epoch=2)[3]
    assert not torch.equal(a["bf"], other_epoch["bf"]) and not torch.equal(a["bf"], other_seed["bf"])


def test_augment_moves_bf_fl_mask_together() -> None:
    arr = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    out = apply_augment(arr, True, False, 1)
    np.testing.assert_array_equal(out, np.rot90(arr[:, :, ::-1], 1, axes=(1, 2)))
    assert out.flags.c_contiguous


def test_fixed_patch_set_is_reproducible() -> None:
    vols = _volumes()
    a = fixed_patch_set(vols, 6, (8, 16, 16), 0.2, seed=0, salt=33, max_tries=50, prefix="test")
    b = fixed_patch_set(vols, 6, (8, 16, 16), 0.2, seed=0, salt=33, max_tries=50, prefix="test")
    assert len(a) == 6 and a.names[0] == "test_0000"
    assert a.bf.tobytes() == b.bf.tobytes() and a.fl.tobytes() == b.fl.tobytes()
    assert all(passes_filter(p, 0.2) for p in a.fl)
    with pytest.raises(DataError, match="passed the empty-patch filter"):
        fixed_patch_set(vols, 3, (8, 16, 16), 5.0, seed=0, salt=33, max_tries=2, prefix="test")
    with pytest.raises(DataError, match=r"v\d: volume of shape \(20, 48, 48\).*smaller than the patch size"):
        fixed_patch_set(vols, 3, (32, 16, 16), 0.2, seed=0, salt=33, max_tries=2, prefix="test")


def _patch_folder(root: Path, n: int, shape=(16, 64, 64)) -> Path:
    rng = np.random.default_rng(2)
    for sub in ("BF", "GT"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tifffile.imwrite(root / "BF" / f"{i}.tiff", rng.integers(0, 255, shape, dtype=np.uint8))
        gt = np.zeros(shape, np.uint8)
        gt[:, 10:40, 10:40] = 200
        tifffile.imwrite(root / "GT" / f"{i}.tiff", gt)
    return root


def test_patch_folder_datamodule(tmp_path: Path) -> None:
    root = _patch_folder(tmp_path / "patches", 10)
    kw = dict(
        patch_size=[16, 32, 32], eval_patch_size=[16, 64, 64], samples_per_epoch=6, n_val_patches=4,
        n_test_patches=4, batch_size=3, split_fractions={"val": 0.2, "test": 0.2}, split_seed=0,
        split_file=tmp_path / "run" / "split.csv", cache_dir=tmp_path / "cache", seed=0,
    )
    dm = PatchFolderDataModule(NE, root, **kw)
    dm.setup("fit")
    names = {k: [v.name for v in dm.volumes[k]] for k in ("train", "val", "test")}
    assert sum(map(len, names.values())) == 10 and not set(names["test"]) & set(names["train"])
    assert read_split(tmp_path / "run" / "split.csv") == dm.split
    batch = next(iter(dm.train_dataloader()))
    assert batch["bf"].shape == (3, 1, 16, 32, 32) and batch["fl"].dtype == torch.float32
    assert float(batch["fl"].max()) == pytest.approx(200 / 255)
    test = next(iter(dm.test_dataloader()))
    # whole 16x64x64 patches are used as they are, under their own file names
    assert test["bf"].shape == (2, 1, 16, 64, 64) and sorted(test["name"]) == sorted(names["test"])
    # the cached test set is identical in a second datamodule (read back from the cache)
    dm2 = PatchFolderDataModule(NE, root, **kw)
    dm2.setup("test")
    assert dm2.test_set.fl.tobytes() == dm.test_set.fl.tobytes()
    assert len(list((tmp_path / "cache" / "eval_sets").glob("*.npz"))) == 2


def test_patch_folder_on_reference(nucenv_dir: Path, tmp_path: Path) -> None:
    dm = PatchFolderDataModule(
        NE, nucenv_dir, patch_size=[16, 64, 64], split_fractions={"val": 0.2, "test": 0.2},
        split_file=None, cache_dir=None, n_test_patches=128,
    )
    dm.setup("test")
    assert len(dm.test_set) == 1 and len(dm.val_set) == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["bf"].shape[1:] == (1, 16, 64, 64)
    assert 0.0 <= float(batch["fl"].min()) and float(batch["fl"].max()) <= 1.0
