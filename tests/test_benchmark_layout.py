"""The authors' benchmark layout read as it is (``<root>/<Organelle>/<Method>/<i>.tiff``), its uncertainty flags checked
against their manual error annotations, and the same flag written by dm4isl-predict."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import require
from dm4isl.errors import DataError
from dm4isl.evaluate import run
from dm4isl.io.layout import BENCHMARK_ORGANELLES, benchmark_organelle
from dm4isl.uncertainty.annotations import annotation_source, annotations, flag_report
from dm4isl.uncertainty.masks import MaskSettings, patch_flag

#: Small benchmark patches (Z, Y, X): 64 × 64 in-plane as the benchmark's, few slices to keep the test fast.
SHAPE = (6, 64, 64)
N_PATCHES = 17
#: Patches whose synthetic DDPMstd is made to cover well over 1 % of the patch; patch 12 gets a small blob (0.4 %).
FLAGGED = {4, 6, 10, 11, 16}
SMALL_BLOB = 12
METHODS = ("Unet", "GAN", "DDPM", "DDPMavg")


def _u8(volume: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(volume, 0, 1) * 255).astype(np.uint8)


def write_benchmark_organelle(root: Path, organelle: str = "DNA", n: int = N_PATCHES) -> Path:
    """``root/<organelle>/{BF,GT,Unet,GAN,DDPM,DDPMavg,DDPMstd}/<i>.tiff`` as the authors publish them (uint8)."""
    rng = np.random.default_rng(0)
    folder = root / organelle
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for i in range(n):
        gt = np.zeros(SHAPE)
        for cy, cx in rng.uniform(12, 52, (4, 2)):
            gt += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        gt = np.clip(gt + rng.normal(0, 0.02, SHAPE), 0, 1)
        std = np.full(SHAPE, 0.01)
        if i in FLAGGED:
            std[:, 20:40, 20:40] = 0.2
        if i == SMALL_BLOB:
            std[1, 30:38, 30:38] = 0.2
        arrays = {"BF": 1 - gt, "GT": gt, "DDPMstd": std}
        for k, m in enumerate(METHODS):
            arrays[m] = gt + rng.normal(0, 0.03 * (k + 1), SHAPE)
        for name, volume in arrays.items():
            (folder / name).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / name / f"{i}.tiff", _u8(volume))
    return folder


def test_layout_names_and_the_annotations_as_published():
    assert set(BENCHMARK_ORGANELLES) == {"Nuclear_envelope", "Nucleoli", "DNA", "Actin_filaments", "Mitochondria",
                                         "Microtubules"}
    source = annotation_source()
    assert source["commit"] == "040a8e8bce7c49b597635fca184af84c344fe767" and source["file"] == "BENCHMARK.ipynb"
    found = annotations()
    assert set(found) == set(BENCHMARK_ORGANELLES) - {"Mitochondria"}
    # U-Net vs DM4ISL annotated errors per 128 patches, as the paper reports them (SPEC §5)
    counts = {k: (len(a.unet_errors), len(a.dm4isl_errors)) for k, a in found.items()}
    assert counts == {"DNA": (44, 24), "Nuclear_envelope": (9, 5), "Nucleoli": (18, 6), "Actin_filaments": (17, 11),
                      "Microtubules": (25, 12)}
    # the uncertainty maps caught 53 annotated errors, missed 4, with 2 false alarms (SPEC §5)
    totals = [sum(len(getattr(a, k)) for a in found.values()) for k in ("caught", "missed", "false_alarms")]
    assert totals == [53, 4, 2]
    listed = [i for a in found.values() for k in ("unet_errors", "dm4isl_errors", "recovered", "out_of_distribution")
              for i in getattr(a, k)]
    assert min(listed) == 0 and max(listed) == 125 < source["n_patches"]


def test_flag_report_of_known_flags():
    dna = annotations()["DNA"]
    report = flag_report(dna, [i in FLAGGED for i in range(N_PATCHES)])
    assert report.caught == [4, 6, 10] and report.missed == [13, 14] and report.recall == pytest.approx(0.6)
    assert report.unannotated_flags == [11, 16]
    assert [report.flag_kind(p) for p in report.unannotated_flags] == ["unannotated", "out_of_distribution"]
    summary = report.summary()
    assert (summary["unet_errors"], summary["dm4isl_errors"]) == (11, 5)  # the annotations of patches 0..16
    assert (summary["agree_with_authors_caught"], summary["authors_caught"]) == (3, 5)
    with pytest.raises(ValueError, match="every index"):
        flag_report(dna, {0: True, 2: False})


def test_benchmark_organelle_folder_end_to_end(tmp_path: Path, compose_cfg):
    folder = write_benchmark_organelle(tmp_path / "bia")
    assert benchmark_organelle(folder) == "dna" and benchmark_organelle(tmp_path) is None
    out = tmp_path / "eval"
    cfg = compose_cfg("evaluate", [f"input_dir={folder}", f"output_dir={out}", "statistics.n_resamples=99",
                                   "progress=false"])
    result = run(cfg)
    assert cfg.organelle.name == "dna" and cfg.flags.threshold == 0.045  # taken from the folder name
    assert result.protocol == "benchmark" and result.methods == ["DDPM", "DDPMavg", "GAN", "Unet"]
    assert result.patches == [str(i) for i in range(N_PATCHES)]
    flags = result.flags
    assert {int(p) for p, f in flags.flagged.items() if f} == FLAGGED
    assert 0 < flags.fractions[str(SMALL_BLOB)] < 0.01
    # DNA's 5 × 5 median rounds each corner of the 20 × 20 square by 3 px (a 3 × 3 median: by 1 px)
    assert flags.fractions["4"] == pytest.approx((400 - 4 * 3) / 4096)
    assert flags.report.caught == [4, 6, 10] and flags.report.unannotated_flags == [11, 16]
    with open(out / "uncertainty_flags.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["flagged"]) for r in rows] == [int(i in FLAGGED) for i in range(N_PATCHES)]
    assert rows[4]["annotations"] == "unet_errors;dm4isl_errors;caught" and rows[16]["protocol"] == "benchmark"
    with open(out / "annotation_check.csv", newline="") as fh:
        check = next(csv.DictReader(fh))
    assert (check["errors_flagged"], check["dm4isl_errors"], check["flags_without_error"]) == ("3", "5", "2")
    md = (out / "metrics_summary.md").read_text(encoding="utf-8")
    assert "| annotated DM4ISL errors flagged (recall 0.600) | 3 of 5 | 4, 6, 10 |" in md
    assert "| flags without an annotated DM4ISL error | 2 | 11 (unannotated), 16 (out_of_distribution) |" in md
    assert "| annotated errors: U-Net vs DM4ISL | 11 vs 5 | |" in md
    assert "| metric | U-Net | GAN | DM | DM4ISL |" in md


def test_missing_std_map_names_the_file_and_writes_nothing(tmp_path: Path):
    from dm4isl.evaluation import evaluate_folder
    from dm4isl.evaluation.flags import FlagSettings

    folder = write_benchmark_organelle(tmp_path / "bia", "Nuclear_envelope", n=3)
    (folder / "DDPMstd" / "1.tiff").unlink()
    out = tmp_path / "eval"
    with pytest.raises(DataError, match=r"DDPMstd/1\.tiff: missing std map of patch '1'"):
        evaluate_folder(folder, out, metrics="fast", flags=FlagSettings(threshold=0.055, organelle="nuclear_envelope"),
                        progress=False)
    assert not out.exists()


def test_console_script_prints_the_papers_table(tmp_path: Path):
    script = Path(sys.executable).with_name("dm4isl-evaluate")
    require(script.exists(), f"console script not installed at {script} (pip install -e .)")
    folder = write_benchmark_organelle(tmp_path / "bia", "Nuclear_envelope", n=4)
    proc = subprocess.run(
        [str(script), f"input_dir={folder}", f"output_dir={tmp_path / 'eval'}", "statistics.n_resamples=99",
         "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "protocol benchmark, 4 patches" in proc.stdout
    assert "| metric | U-Net | GAN | DM | DM4ISL | DM vs better baseline | DM4ISL vs better baseline |" in proc.stdout
    shutil.rmtree(folder / "GAN")
    (folder / "Unet" / "2.tiff").write_bytes(b"not a tiff")
    bad = subprocess.run(
        [str(script), f"input_dir={folder}", f"output_dir={tmp_path / 'bad'}", "progress=false",
         f"hydra.run.dir={tmp_path / 'hydra2'}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Unet/2.tiff" in bad.stderr and not (tmp_path / "bad").exists()


def test_the_flag_is_the_authors_pipeline_on_a_continuous_std_map():
    """std above the threshold kept continuous → 3 × 3 median per slice → one Otsu level → small outlines dropped →
    holes filled → flagged above 1 %: a 4 × 16 × 16 region of std 0.08 (1.54 % of the patch once the median has
    rounded its corners) is flagged, the same region under the threshold is not, and a 4 × 6 × 6 one is not."""
    std = np.full((16, 64, 64), 0.02, np.float32)
    std[4:8, 10:26, 10:26] = 0.08
    flagged, fraction = patch_flag(std, 0.055, MaskSettings.for_organelle("nuclear_envelope"))
    assert flagged and fraction == pytest.approx(4 * (256 - 4) / std.size)
    assert not patch_flag(std, 0.09, MaskSettings.for_organelle("nuclear_envelope"))[0]
    small = np.full((16, 64, 64), 0.02, np.float32)
    small[4:8, 10:16, 10:16] = 0.08
    assert patch_flag(small, 0.055, MaskSettings.for_organelle("nuclear_envelope")) == (False, 4 * 32 / std.size)
    # a barely uncertain region (0.06) beside a very uncertain one (0.5): Otsu on the kept continuous values keeps only
    # the latter (0.2 %), so the patch is not flagged; thresholding first would keep both (1.7 %) and flag it
    mixed = np.full((16, 64, 64), 0.02, np.float32)
    mixed[4:8, 10:26, 10:26] = 0.06
    mixed[4:8, 40:46, 40:46] = 0.5
    assert patch_flag(mixed, 0.055, MaskSettings.for_organelle("nuclear_envelope")) == (False, 4 * 32 / std.size)
