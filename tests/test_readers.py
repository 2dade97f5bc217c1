"""Readers: the reference patch folder, single volumes, and a clear error for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import GOLDEN, GOLDEN_TOL
from dm4isl.data.normalize import to_unit
from dm4isl.data.readers import list_tiffs, read_patch_folder, read_volume
from dm4isl.errors import DataError
from dm4isl.io import write_tiff
from dm4isl.metrics import ms_ssim_batch, pooled_mse, pooled_pcc


def test_reference_patch_folder(nucenv_dir: Path) -> None:
    pairs = read_patch_folder(nucenv_dir)
    assert [p.name for p in pairs] == ["0", "1", "2", "3", "4"]
    for pair in pairs:
        bf, gt = pair.load()
        assert bf.shape == gt.shape == (16, 64, 64)
        assert bf.dtype == gt.dtype == np.float32
        assert 0.0 <= gt.min() and gt.max() <= 1.0 and 0.0 <= bf.min() and bf.max() <= 1.0
        assert gt.max() > 0.5  # uint8/255, not left in 0..255
        raw = read_volume(pair.gt_path)
        assert raw.dtype == np.uint8
        np.testing.assert_allclose(gt, raw / 255.0, rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_golden_pooled_metrics(nucenv_dir: Path, method: str) -> None:
    gts = np.stack([to_unit(read_volume(p), p) for p in list_tiffs(nucenv_dir / "GT")])
    preds = np.stack([to_unit(read_volume(p), p) for p in list_tiffs(nucenv_dir / method)])
    pcc_g, mse_g, msssim_g = GOLDEN[method]
    assert pooled_pcc(gts, preds) == pytest.approx(pcc_g, abs=GOLDEN_TOL)
    assert pooled_mse(gts, preds) == pytest.approx(mse_g, abs=GOLDEN_TOL)
    assert float(ms_ssim_batch(gts, preds).mean()) == pytest.approx(msssim_g, abs=GOLDEN_TOL)


def _folder(root: Path, n: int = 3, shape=(16, 32, 32), dtype=np.uint8) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("BF", "GT"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            tifffile.imwrite(root / sub / f"{i}.tiff", rng.integers(0, 255, shape).astype(dtype))
    return root


def test_natural_order_and_ome_volume(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        tifffile.imwrite(tmp_path / f"{i}.tif", np.zeros((2, 4, 4), np.uint8))
    assert [p.name for p in list_tiffs(tmp_path)] == ["1.tif", "2.tif", "10.tif"]
    vol = np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8)
    out = write_tiff(tmp_path / "v.ome.tiff", vol, voxel_size_zyx=(0.29, 0.108, 0.108), metadata={"a": 1})
    np.testing.assert_array_equal(read_volume(out), vol)
    with tifffile.TiffFile(out) as tf:
        assert tf.is_ome and "PhysicalSizeZ=\"0.29\"" in tf.ome_metadata
    # a leading singleton channel axis is squeezed
    tifffile.imwrite(tmp_path / "c.tiff", vol[None], photometric="minisblack")
    assert read_volume(tmp_path / "c.tiff").shape == (3, 8, 8)


def test_missing_partner(tmp_path: Path) -> None:
    root = _folder(tmp_path / "p")
    (root / "GT" / "1.tiff").unlink()
    with pytest.raises(DataError, match=r"BF/1\.tiff: no ground-truth partner"):
        read_patch_folder(root)
    root2 = _folder(tmp_path / "q")
    (root2 / "BF" / "2.tiff").unlink()
    with pytest.raises(DataError, match=r"GT/2\.tiff: no brightfield partner"):
        read_patch_folder(root2)


def test_shape_mismatch(tmp_path: Path) -> None:
    root = _folder(tmp_path / "p")
    tifffile.imwrite(root / "GT" / "0.tiff", np.zeros((16, 32, 30), np.uint8))
    pair = read_patch_folder(root)[0]
    with pytest.raises(DataError, match=r"GT/0\.tiff: shape \(16, 32, 30\).*BF/0\.tiff of shape \(16, 32, 32\)"):
        pair.load()


def test_truncated_and_unreadable(tmp_path: Path) -> None:
    good = tmp_path / "good.tiff"
    tifffile.imwrite(good, np.ones((4, 64, 64), np.uint16), photometric="minisblack")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.tiff"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"trunc\.tiff: unreadable or truncated TIFF"):
        read_volume(trunc)
    junk = tmp_path / "junk.tiff"
    junk.write_bytes(b"this is not a tiff file at all")
    with pytest.raises(DataError, match=r"junk\.tiff: unreadable or truncated TIFF"):
        read_volume(junk)
    with pytest.raises(DataError, match=r"missing\.tiff: file not found"):
        read_volume(tmp_path / "missing.tiff")


def test_2d_nan_and_empty(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "flat.tiff", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"flat\.tiff: expected a 3-D \(Z, Y, X\) volume, got .*\(32, 32\)"):
        read_volume(tmp_path / "flat.tiff")
    arr = np.zeros((2, 8, 8), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    tifffile.imwrite(tmp_path / "nan.tiff", arr)
    with pytest.raises(DataError, match=r"nan\.tiff: contains 2 NaN/inf voxels"):
        read_volume(tmp_path / "nan.tiff")
    (tmp_path / "e" / "BF").mkdir(parents=True)
    (tmp_path / "e" / "GT").mkdir()
    with pytest.raises(DataError, match=r"e/BF: empty folder"):
        read_patch_folder(tmp_path / "e")
    with pytest.raises(DataError, match=r"nowhere: patch folder not found"):
        read_patch_folder(tmp_path / "nowhere")
