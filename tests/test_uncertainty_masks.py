"""Error-mask pipeline: the reference's masks reproduced exactly, and hand-built cases for every step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from dm4isl.data.readers import list_tiffs, read_volume
from dm4isl.metrics.segmentation import otsu_threshold_8bit, outline_area, to_uint8
from dm4isl.uncertainty.masks import MaskSettings, error_mask, flag, segment_binary, segment_map


def test_reproduces_reference_inter_process_masks(nucenv_dir: Path) -> None:
    """FLavg_std_seg_seeds = FLavg_std_seeds after a 3×3 median per Z-slice and Otsu (faithful rule)."""
    for src in list_tiffs(nucenv_dir / "FLavg_std_seeds"):
        expected = read_volume(nucenv_dir / "FLavg_std_seg_seeds" / src.name) > 0
        got = segment_binary(read_volume(src), MaskSettings.faithful())
        np.testing.assert_array_equal(got, expected, err_msg=src.name)


def test_reproduces_reference_intra_process_masks_sliced_along_y(nucenv_dir: Path) -> None:
    """The reference segmented its intra-process masks slice by slice along Y; slice_axis=1 reproduces it."""
    mismatch_z = 0
    for src in list_tiffs(nucenv_dir / "FLavg_std"):
        expected = read_volume(nucenv_dir / "FLavg_std_seg" / src.name) > 0
        np.testing.assert_array_equal(segment_binary(read_volume(src), MaskSettings.faithful(slice_axis=1)), expected)
        mismatch_z += int((segment_binary(read_volume(src), MaskSettings.faithful()) != expected).sum())
    assert mismatch_z > 0  # the Z-sliced default really differs from the reference's Y-sliced masks


def _square(img: np.ndarray, y: int, x: int, h: int, w: int) -> None:
    img[y : y + h, x : x + w] = 1


def test_small_object_removal_boundary_by_pixel_count() -> None:
    vol = np.zeros((1, 40, 40), np.uint8)
    _square(vol[0], 2, 2, 3, 5)  # 15 px: removed
    _square(vol[0], 20, 20, 4, 4)  # 16 px: kept
    settings = MaskSettings.binary(median_size=1, fill_holes=False)
    out = segment_binary(vol, settings)
    assert out[0, 2:5, 2:7].sum() == 0 and out[0, 20:24, 20:24].all() and out.sum() == 16


def test_small_object_rule_by_outline_area() -> None:
    """The reference keeps a contour when the polygon through its border pixel centres encloses more than 15 px²:
    a 5×5 square encloses 4·4 = 16 (kept), a 4×6 rectangle 3·5 = 15 (dropped), a 1×40 line 0 (dropped); a kept
    ring comes back with its hole filled."""
    assert outline_area(np.ones((5, 5), bool)) == 16 and outline_area(np.ones((4, 6), bool)) == 15
    vol = np.zeros((1, 48, 48), np.uint8)
    _square(vol[0], 2, 2, 5, 5)
    _square(vol[0], 10, 2, 4, 6)
    _square(vol[0], 46, 2, 1, 40)
    _square(vol[0], 20, 20, 9, 9)
    vol[0, 23:26, 23:26] = 0  # ring with a 3×3 hole
    l_shape = np.zeros((3, 3), bool)
    l_shape[:, 0] = l_shape[2, :] = True
    assert outline_area(l_shape) == 0.5  # the outline through the pixel centres encloses one half-pixel triangle
    out = segment_binary(vol, MaskSettings(median_size=1, fill_holes=False))
    assert out[0, 2:7, 2:7].all() and not out[0, 10:14].any() and not out[0, 46].any()
    assert out[0, 20:29, 20:29].all() and out.sum() == 25 + 81


def test_hole_filling_and_median() -> None:
    vol = np.zeros((1, 32, 32), np.uint8)
    _square(vol[0], 5, 5, 12, 12)
    vol[0, 9:12, 9:12] = 0  # 3x3 hole
    vol[0, 25, 25] = 1  # isolated speck: the median removes it
    for settings in (MaskSettings(small_objects="none"), MaskSettings.binary(min_object_area=0)):
        out = segment_binary(vol, settings)
        assert out[0, 9:12, 9:12].all() and not out[0, 25, 25]
    kept_hole = segment_binary(vol, MaskSettings(median_size=1, small_objects="none", fill_holes=False))
    assert not kept_hole[0, 10, 10]


def test_flag_boundary_and_threshold() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask.flat[:10] = True  # exactly 1 %
    assert flag(mask) == (False, 0.01)
    mask.flat[10] = True
    assert flag(mask)[0] is True
    std = np.zeros((2, 32, 32), np.float32)
    std[:, 8:20, 8:20] = 0.2
    m = error_mask(std, 0.1)
    # the 3x3 median rounds off the square's four corners
    assert m[:, 9:19, 9:19].all() and m.sum() == 2 * (144 - 4) and not m[:, 8, 8].any()
    assert not error_mask(std, 0.25).any()
    std[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        error_mask(std, 0.1)


def test_fully_uncertain_slice_stays_masked() -> None:
    """A slice entirely above the threshold has no background for Otsu: it is masked whole, so a patch that is
    uncertain everywhere is flagged (the previous rule returned an empty mask for it)."""
    std = np.zeros((4, 32, 32), np.float32)
    std[0] = 0.3  # constant, above the threshold
    std[1] = np.linspace(0.11, 0.5, 32 * 32, dtype=np.float32).reshape(32, 32)  # all above, not constant
    std[2, 8:16, 8:16] = 0.3
    for settings in (MaskSettings(), MaskSettings.binary()):
        m = error_mask(std, 0.1, settings)
        assert m[0].all() and m[1].all() and not m[3].any()
    uncertain = np.full((2, 16, 16), 0.2, np.float32)
    assert flag(error_mask(uncertain, 0.1)) == (True, 1.0)
    assert not error_mask(uncertain, 0.25).any()


def test_reference_rule_lets_otsu_separate_continuous_values() -> None:
    """Above the threshold 0.1: a small very uncertain square (0.4) and a large faintly uncertain one (0.11). The
    reference rule keeps their values, so Otsu (one level for the patch) can separate them; the binary rule only
    sees 'above' and keeps both."""
    std = np.zeros((2, 48, 48), np.float32)
    std[:, 4:16, 4:16] = 0.4
    std[:, 20:44, 20:44] = 0.11
    reference, binary = error_mask(std, 0.1), error_mask(std, 0.1, MaskSettings.binary())
    assert binary[:, 21:43, 21:43].all() and binary[:, 5:15, 5:15].all()
    eight_bit = (std * 255).astype(np.uint8)  # the median changes nothing inside the squares
    levels = np.arange(256)
    hist = np.bincount(eight_bit.ravel(), minlength=256) / eight_bit.size

    def between(t: int) -> float:  # between-class variance of {≤ t} and {> t}, computed independently
        w0 = hist[: t + 1].sum()
        w1 = 1 - w0
        if w0 == 0 or w1 == 0:
            return 0.0
        m0 = (levels[: t + 1] * hist[: t + 1]).sum() / w0
        m1 = (levels[t + 1 :] * hist[t + 1 :]).sum() / w1
        return w0 * w1 * (m0 - m1) ** 2

    t = int(np.argmax([between(k) for k in range(256)]))
    assert otsu_threshold_8bit(eight_bit) == t and 28 <= t < 102  # between the faint (28) and high (102) levels
    assert reference[:, 5:15, 5:15].all() and not reference[:, 20:44, 20:44].any()


def test_dna_uses_a_five_pixel_median() -> None:
    """A 3×3 speck survives a 3×3 median as a plus sign but vanishes under the DNA's 5×5 median."""
    assert MaskSettings.for_organelle("dna").median_size == 5
    assert MaskSettings.for_organelle("nuclear_envelope").median_size == 3
    assert MaskSettings.for_organelle(None, flag_fraction=0.5).flag_fraction == 0.5
    vol = np.zeros((1, 20, 20), np.uint8)
    _square(vol[0], 8, 8, 3, 3)
    keep = {"small_objects": "none", "fill_holes": False}
    assert segment_binary(vol, MaskSettings.for_organelle("nuclear_envelope", **keep)).sum() == 5
    assert segment_binary(vol, MaskSettings.for_organelle("dna", **keep)).sum() == 0
    with pytest.raises(ValueError, match="mask rule"):
        MaskSettings(rule="otsu")


def test_binary_rule_for_an_organelle_and_the_reference_default() -> None:
    dna = MaskSettings.for_organelle("dna", rule="binary")
    assert (dna.rule, dna.small_objects, dna.median_size) == ("binary", "pixels", 5)
    ref = MaskSettings.for_organelle("dna")
    assert (ref.rule, ref.small_objects, ref.median_size) == ("reference", "outline", 5)


def test_two_pixel_median_and_one_pixel_objects() -> None:
    """A 2×2 median window is a real filter (an isolated pixel has three zero neighbours in it); a pixel-count
    rule of 1 drops single pixels and keeps a 2-pixel object."""
    vol = np.zeros((1, 16, 16), np.uint8)
    _square(vol[0], 4, 4, 6, 6)
    vol[0, 13, 13] = 1
    keep = {"small_objects": "none", "fill_holes": False}
    two = segment_binary(vol, MaskSettings.binary(median_size=2, **keep))
    np.testing.assert_array_equal(two[0], ndi.median_filter(vol[0], size=2) > 0)
    assert not two[0, 13, 13]
    vol[0, 1, 1:3] = 1  # a 2-pixel object
    one = segment_binary(vol, MaskSettings.binary(median_size=1, min_object_area=1, fill_holes=False))
    assert not one[0, 13, 13] and one[0, 1, 1:3].all() and one.sum() == 36 + 2


def test_reference_rule_fills_holes_with_an_eight_connected_background() -> None:
    """A square ring whose corner pixel is missing: its inside touches the outside diagonally. With the reference's
    3×3 structure (8-connected background) that is no hole; the binary rule's default (4-connected) fills it."""
    vol = np.zeros((1, 16, 16), np.uint8)
    _square(vol[0], 3, 3, 9, 9)
    vol[0, 4:11, 4:11] = 0
    vol[0, 3, 3] = 0
    inside = np.s_[0, 4:11, 4:11]
    reference = segment_binary(vol, MaskSettings(median_size=1, small_objects="none"))
    binary = segment_binary(vol, MaskSettings.binary(median_size=1, min_object_area=0))
    assert not reference[inside].any() and binary[inside].all()
    assert reference.dtype == bool and reference.sum() == vol.sum()


def test_reference_rule_takes_one_otsu_level_for_the_whole_patch() -> None:
    """Slice 0 holds only a faint square (0.2), slice 1 a faint and a bright one (0.9). One Otsu level over both
    slices falls between the two levels and drops every faint square; a level per slice would keep slice 0's."""
    std = np.zeros((2, 24, 24), np.float32)
    std[:, 2:10, 2:10] = 0.2
    std[1, 12:22, 12:22] = 0.9
    eight_bit = to_uint8(std)
    t = otsu_threshold_8bit(eight_bit)
    assert 51 <= t < 229  # between the faint (51) and bright (229) 8-bit levels
    mask = segment_map(std, std > 0, MaskSettings(median_size=1, small_objects="none", fill_holes=False))
    np.testing.assert_array_equal(mask, eight_bit > t)
    assert not mask[0].any() and mask[1, 12:22, 12:22].all()


def test_saturated_slice_mask_is_boolean_and_shapes_are_checked() -> None:
    std = np.zeros((2, 16, 16), np.float32)
    std[0] = 0.3
    m = error_mask(std, 0.1)
    assert m.dtype == bool and m[0].all() and not m[1].any()
    with pytest.raises(ValueError, match="one shape"):
        segment_map(std, np.zeros((2, 16, 15), bool))
    # a std value equal to the threshold is not above it
    assert not error_mask(np.full((1, 8, 8), 0.25, np.float32), 0.25).any()
