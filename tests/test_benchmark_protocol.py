"""The benchmark protocol: the authors' newest calc_metrics reproduced per patch, its per-slice segmentation on
hand-made slices, and the protocol switch of dm4isl-evaluate."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf

from conftest import CONF_DIR
from dm4isl.evaluation import evaluate_folder
from dm4isl.evaluation.report import protocol_table
from dm4isl.metrics.protocols import PROTOCOLS, get_protocol
from dm4isl.metrics.registry import BENCHMARK, PAPER, patch_metrics, resolve_metric_names
from dm4isl.metrics.segmentation import (
    BENCHMARK_SLICES,
    SliceSettings,
    segment_slice,
    segment_volume,
)
from dm4isl.metrics.slices import compare_slices, contour, contour_hausdorff, neighbour_gap

PIXEL_UM = 0.29
METHODS = ["Unet", "GAN", "DDPM", "DDPMavg"]

# Golden values: calc_metrics of the authors' newest src/MetricsFunctions.py in zaritskylab/DM4ISL (the stored
# version with the SegParams dataclass, the one their BENCHMARK.ipynb at commit 040a8e8bce7c49b597635fca184af84c344fe767
# imports), run outside this repository on ../shared/data/nucenv_reference: GT and each method folder loaded as their
# load_patches does (tifffile.imread(<i>.tiff) / 255, float64, stacked to (5, 16, 64, 64)), called as
# calc_metrics(GT, method, None, rn=15) (default SegParams; rn=15 instead of their rn=4 to keep every digit), with
# numpy 2.4, scipy 1.17, scikit-image 0.26, monai-generative 0.2.3 (their MS-SSIM) and torch 2.13. Per patch 0..4.
# Their table rounds PCC, MSE, MS-SSIM, JSD and MI to 4 decimals (|rounded − unrounded| ≤ 5e-5).
GOLDEN_BENCHMARK = {
    "Unet": {
        "pcc": (0.9142383990, 0.9172247766, 0.7528542379, 0.7963661739, 0.8558297298),
        "mse": (0.0096071277, 0.0071666427, 0.0091848362, 0.0120254928, 0.0053671005),
        "ms_ssim": (0.8549690247, 0.9164400697, 0.7929218411, 0.8320176601, 0.8973035812),
        "jsd_histogram": (0.3945573329, 0.2156696040, 0.2317850822, 0.2270919362, 0.3043210206),
        "mi": (1.3097766017, 1.1163586734, 0.5665496864, 1.1397782302, 1.1562228595),
        "iou_2d": (0.8290372262, 0.8981515129, 0.5841323789, 0.6519022898, 0.7375686628),
        "f1_2d": (0.5167169432, 0.5982954545, 0.3506653069, 0.2292519980, 0.4450632701),
        "centroid_2d": (0.5802532965, 0.2614622230, 0.4404706523, 0.4512579702, 0.4176865803),
        "min_distance_2d": (0.2017024971, 0.2881352891, 2.2223556873, 0.1962861893, 0.8300609706),
        "area_2d": (2.4176997917, 1.9989518750, 2.9515095238, 1.7976375000, 4.8556967949),
        "hausdorff_2d": (1.4523206694, 1.1139009452, 1.2321159875, 1.4952542859, 1.2513523944),
    },
    "GAN": {
        "pcc": (0.9193979451, 0.9251251236, 0.7649759455, 0.8043715034, 0.8739708036),
        "mse": (0.0068469628, 0.0067213144, 0.0086739330, 0.0110284898, 0.0063707733),
        "ms_ssim": (0.8820811510, 0.9281200171, 0.8180686235, 0.8358623385, 0.8904011846),
        "jsd_histogram": (0.3943728064, 0.2594443474, 0.2282445545, 0.2149884575, 0.4677409071),
        "mi": (1.3143744671, 1.1745541615, 0.7475394585, 1.1289546247, 1.2042253815),
        "iou_2d": (0.8156016282, 0.9004265758, 0.5738171020, 0.6763505504, 0.7667708069),
        "f1_2d": (0.4364768197, 0.6082070707, 0.3538763320, 0.2363822452, 0.4562392469),
        "centroid_2d": (0.5858311979, 0.3588545517, 0.5511056109, 0.4487633711, 0.4975440510),
        "min_distance_2d": (0.4044897350, 0.3922378265, 1.7015465650, 0.1875830440, 0.7535997634),
        "area_2d": (2.3759184444, 2.9166931250, 3.4943550000, 3.3324625000, 3.8975677778),
        "hausdorff_2d": (1.5123470212, 1.2412572962, 1.4344812002, 1.6350536356, 1.3771468917),
    },
    "DDPM": {
        "pcc": (0.9121572846, 0.9151633823, 0.7730133225, 0.7472986725, 0.8108945000),
        "mse": (0.0053114677, 0.0061743791, 0.0082258716, 0.0141372302, 0.0065578554),
        "ms_ssim": (0.9138607979, 0.9377156496, 0.8358246088, 0.8132838011, 0.8602411747),
        "jsd_histogram": (0.1713925102, 0.1690747988, 0.1892820838, 0.1657678144, 0.1923732837),
        "mi": (1.2750243524, 1.1546093448, 0.7836417391, 1.0233963792, 1.0128831384),
        "iou_2d": (0.8232697346, 0.9074698740, 0.6919953538, 0.6434591328, 0.6826427797),
        "f1_2d": (0.4493410185, 0.7142045455, 0.4677575896, 0.2218025031, 0.4092532468),
        "centroid_2d": (0.4056162000, 0.3020976682, 0.5175104660, 0.5366301787, 0.4439343902),
        "min_distance_2d": (0.1737825367, 0.3672419326, 1.6263450801, 0.2043117488, 0.3844787982),
        "area_2d": (1.3497115556, 1.5858982292, 3.9456916667, 4.9450800000, 3.5962761905),
        "hausdorff_2d": (0.8852028304, 0.9712002949, 1.7658094988, 1.4455251108, 1.2858277553),
    },
    "DDPMavg": {
        "pcc": (0.9297345170, 0.9382277196, 0.8282928824, 0.7934834375, 0.8416050763),
        "mse": (0.0038064759, 0.0050516124, 0.0062778417, 0.0108926095, 0.0051425871),
        "ms_ssim": (0.9195682406, 0.9453970790, 0.8699061275, 0.8423790336, 0.8782472014),
        "jsd_histogram": (0.2703934323, 0.1505721993, 0.2287432001, 0.3142818986, 0.2455149090),
        "mi": (1.3188146540, 1.2576613898, 0.8769737166, 1.0925312093, 1.1089976186),
        "iou_2d": (0.8450161979, 0.9208135711, 0.6631484020, 0.6425128905, 0.7121124520),
        "f1_2d": (0.5174249158, 0.6755050505, 0.5449855700, 0.2281936813, 0.4402867965),
        "centroid_2d": (0.5631989070, 0.2865973829, 0.5238626449, 0.6344261666, 0.4311128522),
        "min_distance_2d": (0.3914835341, 0.5528736382, 1.6357838507, 0.1448230585, 0.6926290893),
        "area_2d": (2.4909368750, 1.6339053125, 2.2176994792, 4.4636712121, 4.7456428571),
        "hausdorff_2d": (1.3950656811, 1.0796681630, 1.3691412638, 1.6058205787, 1.1480130105),
    },
}
#: Our MS-SSIM runs MONAI in float32, theirs generative in float64 (1.2e-7 apart here); the rest agree to 1e-8.
GOLDEN_TOL = 1e-6


@pytest.fixture(scope="module")
def reference_eval(nucenv_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """dm4isl-evaluate's default protocol on the shared reference patches (the four methods of the paper's table)."""
    out = tmp_path_factory.mktemp("bench_eval")
    return evaluate_folder(nucenv_dir, out, methods=METHODS, n_resamples=99, progress=False), out


def test_golden_values_of_the_authors_calc_metrics_per_patch(reference_eval):
    result, _ = reference_eval
    assert result.protocol == "benchmark" and result.metric_names == list(BENCHMARK)
    for method, metrics in GOLDEN_BENCHMARK.items():
        for metric, golden in metrics.items():
            ours = result.results[method].per_patch[metric]
            np.testing.assert_allclose(ours, golden, rtol=0, atol=GOLDEN_TOL, err_msg=f"{method} {metric}")


def test_outputs_name_the_protocol_and_print_the_papers_table(reference_eval):
    result, out = reference_eval
    with open(out / "metrics_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["protocol"] for r in rows} == {"benchmark"}
    with open(out / "metrics_per_patch.csv", newline="") as fh:
        per_patch = list(csv.DictReader(fh))
    assert len(per_patch) == 4 * 5 * 11 and {r["protocol"] for r in per_patch} == {"benchmark"}
    md = (out / "metrics_summary.md").read_text(encoding="utf-8")
    assert "Protocol benchmark: the 11 columns of calc_metrics" in md
    assert "Protocol benchmark" in (out / "report.html").read_text(encoding="utf-8")
    table = protocol_table(result).splitlines()
    assert table[0] == ("| metric | U-Net | GAN | DM | DM4ISL | DM vs better baseline | DM4ISL vs better baseline |")
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| PCC ↑", "| MSE ↓", "| MS-SSIM ↑", "| JSD ↓", "| MI ↑", "| IoU ↑", "| F1 ↑", "| Centroid ↓",
        "| Min distance ↓", "| Area ↓", "| HD ↓"]
    # JSD of 256-bin histograms: DM4ISL 0.2419 (the voxel-distribution JSD of paper14 gives 0.1480)
    assert "| JSD ↓ | 0.2747 | 0.313 | 0.1776 | 0.2419 |" in table[5]
    assert "| IoU ↑ | 0.7402 | 0.7466 | 0.7498 | 0.7567 | +0.4 % (p = 1) | +1.4 % (p = 1) |" == table[7]


def test_protocols_and_their_config():
    assert get_protocol("benchmark").metrics == BENCHMARK and get_protocol("paper14").metrics == PAPER
    assert len(BENCHMARK) == 11 and len(PAPER) == 14
    assert [PROTOCOLS["benchmark"].heading(m) for m in BENCHMARK] == [
        "PCC", "MSE", "MS-SSIM", "JSD", "MI", "IoU", "F1", "Centroid", "Min distance", "Area", "HD"]
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        get_protocol("paper")
    assert resolve_metric_names("benchmark") == list(BENCHMARK)
    assert list(OmegaConf.load(CONF_DIR / "metrics" / "benchmark.yaml").names) == list(BENCHMARK)


def test_evaluate_config_defaults_to_the_benchmark_protocol(compose_cfg):
    cfg = compose_cfg("evaluate", ["input_dir=x"])
    assert cfg.protocol == "benchmark" and "metrics" not in cfg
    assert cfg.flags.threshold == 0.055 and "DDPMstd" in cfg.exclude
    cfg = compose_cfg("evaluate", ["input_dir=x", "protocol=paper14", "metrics=fast"])
    assert cfg.protocol == "paper14" and list(cfg.metrics.names) == ["pcc", "mse", "ms_ssim"]


def test_square_pixels_required():
    vol = np.zeros((2, 64, 64), np.float32)
    vol[:, 20:40, 20:40] = 1.0
    with pytest.raises(ValueError, match="square pixels"):
        patch_metrics(vol, vol, ["iou_2d"], voxel_size=[0.29, 0.276, 0.273])


# --- the per-slice segmentation on hand-made slices --------------------------------------------------------------

YY, XX = np.mgrid[:64, :64]


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    """A filled disc in a 64 × 64 slice."""
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def sizes(labels: np.ndarray) -> list[int]:
    """Pixel count of labels 1..n."""
    return [int((labels == k).sum()) for k in range(1, labels.max() + 1)]


def test_two_touching_discs_are_split_by_the_watershed():
    image = (disc(32, 21, 10) | disc(32, 41, 10)).astype(np.float64)
    mask, labels = segment_slice(image, BENCHMARK_SLICES)
    assert mask.sum() == 639 and labels.max() == 2
    assert sizes(labels) == [323, 316]
    assert labels[32, 21] != labels[32, 41] and {labels[32, 21], labels[32, 41]} == {1, 2}


def test_a_small_fragment_is_merged_into_its_neighbour():
    """A disc with a thin neck to a small knob: the knob's seed floods an instance of 38 px < 1 % of the slice
    (40.96 px), which the benchmark segmentation re-floods into the disc; a knob flooding 41 px stays."""
    no_merge = SliceSettings(BENCHMARK_SLICES.peak_min_distance_px, seed_every_component=True, merge_small=False)
    for knob_x, merged in ((41, True), (42, False)):
        neck = (abs(YY - 32) <= 1) & (XX >= 28) & (XX <= knob_x)
        image = (disc(32, 20, 10) | disc(32, knob_x, 3) | neck).astype(np.float64)
        _, split = segment_slice(image, no_merge)
        _, labels = segment_slice(image, BENCHMARK_SLICES)
        if merged:
            assert sizes(split) == [333, 38] and sizes(labels) == [371]
        else:
            assert sizes(split) == sizes(labels) == [333, 41]


def test_an_object_on_the_edge_keeps_its_cut_side_out_of_the_contour():
    gt = disc(0, 32, 12).astype(np.float64)[None]
    pred = disc(0, 32, 10).astype(np.float64)[None]
    seg_gt, seg_pred = segment_volume(gt, BENCHMARK_SLICES), segment_volume(pred, BENCHMARK_SLICES)
    assert seg_gt.labels.max() == seg_pred.labels.max() == 1  # kept, not cleared from the border
    edge = contour(seg_gt.mask[0])
    assert np.flatnonzero(edge[0]).tolist() == [22, 42]  # along the border only where the arc meets it
    result = compare_slices(seg_gt, seg_pred, PIXEL_UM)
    assert result.hausdorff[0] == pytest.approx(2 * PIXEL_UM)  # the arcs are 2 px apart; the cut side is ignored
    assert result.iou[0] == pytest.approx(165 / 229) and result.f1[0] == 1.0
    assert np.isnan(result.min_distance[0])  # a single instance has no neighbour


def test_neighbour_gap_centroid_and_area_of_matched_instances():
    gt = (disc(0, 16, 8) | disc(0, 48, 8)).astype(np.float64)[None]
    pred = (disc(0, 16, 8) | disc(0, 46, 8)).astype(np.float64)[None]
    r = compare_slices(segment_volume(gt, BENCHMARK_SLICES), segment_volume(pred, BENCHMARK_SLICES), PIXEL_UM)
    # gaps 15 and 13 px: |Δ| = 2 px for both instances; one instance moved by 2 px: mean centroid and HD 1 px
    assert r.min_distance[0] == pytest.approx(2 * PIXEL_UM)
    assert r.centroid[0] == pytest.approx(PIXEL_UM) and r.hausdorff[0] == pytest.approx(PIXEL_UM)
    assert r.area[0] == 0.0 and r.f1[0] == 1.0


def test_an_empty_slice_is_nan_not_zero():
    gt = np.zeros((3, 64, 64))
    gt[0][disc(32, 32, 10)] = 1.0
    gt[2][disc(20, 20, 8)] = 1.0
    pred = gt.copy()
    pred[2] = 0.0  # missed in the prediction: IoU 0, F1 0 on slice 2; slice 1 is empty in both: undefined
    r = compare_slices(segment_volume(gt, BENCHMARK_SLICES), segment_volume(pred, BENCHMARK_SLICES), PIXEL_UM)
    assert r.iou[0] == 1.0 and np.isnan(r.iou[1]) and r.iou[2] == 0.0
    assert r.f1[0] == 1.0 and np.isnan(r.f1[1]) and r.f1[2] == 0.0
    assert r.patch_value("iou") == 0.5 and r.patch_value("f1") == 0.5  # the mean over the defined slices
    assert np.isnan(r.centroid[1]) and np.isnan(r.centroid[2]) and r.patch_value("centroid") == 0.0
    empty = patch_metrics(np.zeros((2, 64, 64), np.float32), np.zeros((2, 64, 64), np.float32), BENCHMARK[5:])
    assert all(np.isnan(v) for v in empty.values()), empty


def test_a_chosen_metric_set_is_named_beside_the_protocol(tmp_path: Path):
    rng = np.random.default_rng(0)
    for folder in ("GT", "Unet", "DDPMavg"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for i in range(2):
            tifffile.imwrite(tmp_path / "in" / folder / f"{i}.tiff", rng.integers(0, 256, (16, 64, 64), np.uint8))
    evaluate_folder(tmp_path / "in", tmp_path / "out", metrics="fast", n_resamples=9, progress=False)
    md = (tmp_path / "out" / "metrics_summary.md").read_text(encoding="utf-8")
    assert "Protocol benchmark: " in md and "Metrics chosen instead of the protocol's set: pcc, mse, ms_ssim." in md


def test_contour_distance_and_neighbour_gap_by_hand():
    """A 5×5 square and the same square shifted by 2 pixels along X: contour Hausdorff distance 2 px. Two
    instances on one row, pixels 0–1 and 5–6: the least pixel distance is 4 (pixel 1 to pixel 5), so the gap is
    3 px (touching instances have gap 0). An empty mask has no contour and a lone instance no neighbour: NaN."""
    a = np.zeros((12, 12), bool)
    a[3:8, 2:7] = True
    b = np.roll(a, 2, axis=1)
    assert contour_hausdorff(a, b, 0.5) == pytest.approx(2 * 0.5)
    assert math.isnan(contour_hausdorff(a, np.zeros_like(a), 0.5))
    assert math.isnan(contour_hausdorff(np.zeros_like(a), a, 0.5))
    labels = np.zeros((3, 9), int)
    labels[1, 0:2] = 1
    labels[1, 5:7] = 2
    assert neighbour_gap(labels, 1, 0.5) == pytest.approx(3 * 0.5)
    touching = labels.copy()
    touching[1, 2:5] = 2
    assert neighbour_gap(touching, 1, 0.5) == 0.0
    assert math.isnan(neighbour_gap(np.where(labels == 1, 1, 0), 1, 0.5))


def test_constant_or_speck_only_slices_have_no_instances():
    """A constant slice has no foreground; a 3×3 speck (9 px < 1 % of a 64×64 slice) is dropped: both give an
    empty boolean mask and int32 labels of the slice's shape."""
    speck = np.zeros((64, 64))
    speck[30:33, 30:33] = 1.0
    for image in (np.full((64, 64), 0.5), np.zeros((64, 64)), speck):
        mask, labels = segment_slice(image, BENCHMARK_SLICES)
        assert mask.dtype == bool and not mask.any() and mask.shape == (64, 64)
        assert labels.dtype == np.int32 and labels.shape == (64, 64) and not labels.any()
