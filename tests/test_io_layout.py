"""The output layout and the atomic writers, on their own: paths, channel names, stale products, OME-TIFF and CSV
files read back by independent readers (tifffile's OME-XML, the csv module, hashlib)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dm4isl.errors import DataError
from dm4isl.io import provenance
from dm4isl.io.atomic import read_channel_names, read_tiff_info, write_csv, write_text, write_tiff
from dm4isl.io.layout import (
    benchmark_organelle,
    channel_name,
    compared,
    product_file,
    remove_stale_products,
    seed_product,
    seeds_folder,
    std_product,
    write_products,
)
from dm4isl.io.provenance import file_fingerprint


def test_paths_names_and_compared_products(tmp_path: Path) -> None:
    assert product_file(tmp_path, "DDPMavg", "p1") == tmp_path / "DDPMavg" / "p1.ome.tiff"
    assert seed_product("DDPM", 3) == "DDPM_seeds/seed3" and seeds_folder("DDPM") == "DDPM_seeds"
    assert std_product("inter") == "std_inter"
    assert channel_name("DDPMavg", "nuclear_envelope") == "DDPMavg (nuclear envelope)"
    assert channel_name("DDPM_seeds/seed3", "dna") == "DDPM seed 3 (dna)"
    assert channel_name("BF", "dna") == "BF (brightfield)"
    assert channel_name("DDPMavg", None) == "DDPMavg"
    assert compared(["BF", "GT", "DDPM", "std_intra", "error_mask", "DDPMavg"]) == ["DDPM", "DDPMavg"]
    (tmp_path / "DNA" / "GT").mkdir(parents=True)
    (tmp_path / "Nucleoli").mkdir()
    assert benchmark_organelle(tmp_path / "DNA") == "dna"
    assert benchmark_organelle(tmp_path / "Nucleoli") is None  # no GT folder
    assert benchmark_organelle(tmp_path / "Other") is None


def test_products_written_with_voxel_size_names_and_metadata_and_stale_ones_removed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {"DDPMavg": rng.random((2, 4, 5)).astype(np.float32), "DDPM_seeds/seed1": np.zeros((2, 4, 5), np.uint8)}
    stale = product_file(tmp_path, "std_inter", "p1")
    write_tiff(stale, np.zeros((1, 2, 2), np.float32))
    other_input = product_file(tmp_path, "std_inter", "p2")
    write_tiff(other_input, np.zeros((1, 2, 2), np.float32))
    paths = write_products(tmp_path, "p1", images, (0.5, 0.29, 0.27), {"seed": 7}, "dna", product_key="product")
    assert paths == [product_file(tmp_path, p, "p1") for p in images]
    assert not stale.exists() and other_input.exists()  # only this input's files of other products go
    for product, path in zip(images, paths, strict=True):
        with tifffile.TiffFile(path) as tif:
            np.testing.assert_array_equal(tif.asarray(), images[product])
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert (pixels["PhysicalSizeZ"], pixels["PhysicalSizeY"], pixels["PhysicalSizeX"]) == (0.5, 0.29, 0.27)
        assert [pixels[f"PhysicalSize{a}Unit"] for a in "ZYX"] == ["µm"] * 3
        assert read_tiff_info(path) == ((0.5, 0.29, 0.27), {"seed": 7, "product": product})
        assert read_channel_names(path) == [channel_name(product, "dna")]
    assert remove_stale_products(tmp_path, "p1", set(images)) == []
    # without a product key the metadata are stored as given; values JSON cannot hold are stored as text
    plain = write_products(tmp_path / "plain", "p1", {"DDPMavg": images["DDPMavg"]}, None, {"ckpt": Path("m.ckpt")},
                           None)
    assert read_tiff_info(plain[0]) == (None, {"ckpt": "m.ckpt"})
    removed = remove_stale_products(tmp_path, "p1", {"DDPMavg"})
    assert removed == [product_file(tmp_path, "DDPM_seeds/seed1", "p1")] and not removed[0].exists()


def test_plain_tiffs_csv_text_and_fingerprints(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 3, 3), np.uint8))
    assert read_tiff_info(plain) == (None, {})
    bare = write_tiff(tmp_path / "bare.ome.tiff", np.zeros((2, 3, 3), np.float32))
    assert read_tiff_info(bare) == (None, {})
    with pytest.raises(DataError, match="expected a 3-D"):
        write_tiff(tmp_path / "flat.ome.tiff", np.zeros((3, 3)))
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with open(write_csv(tmp_path / "t.csv", rows), encoding="utf-8", newline="") as f:
        assert list(csv.DictReader(f)) == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    assert (tmp_path / "t.csv").read_bytes() == b"a,b\n1,x\n2,y\n"  # Unix line ends
    assert write_csv(tmp_path / "one.csv", rows[:1]).read_bytes() == b"a,b\n1,x\n"
    assert write_csv(tmp_path / "c.csv", rows, ["b", "a"]).read_text(encoding="utf-8") == "b,a\nx,1\ny,2\n"
    assert write_csv(tmp_path / "e.csv", []).read_text(encoding="utf-8") == "\n"
    text = write_text(tmp_path / "sub" / "n.txt", "µm ✓\n")
    assert text.read_bytes() == "µm ✓\n".encode()
    assert json.loads(write_text(tmp_path / "j.json", '{"k": 1}').read_text(encoding="utf-8")) == {"k": 1}
    data = bytes(range(256)) * 5000  # more than one read block
    (tmp_path / "blob").write_bytes(data)
    assert file_fingerprint(tmp_path / "blob") == hashlib.sha256(data).hexdigest()[:16]


def test_git_revision_of_a_checkout_and_of_a_plain_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 12-digit commit of a checkout (as ``git rev-parse`` gives it), ``-dirty`` once a tracked file changes,
    ``unknown`` outside a checkout; the recorded revision falls back to the package version."""
    assert provenance.git_revision(tmp_path) == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    (repo / "f.txt").write_text("a\n", encoding="utf-8")
    for args in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "one"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()
    assert provenance.git_revision(repo) == head and len(head) == 12
    (repo / "f.txt").write_text("b\n", encoding="utf-8")
    assert provenance.git_revision(repo) == f"{head}-dirty"
    monkeypatch.setattr(provenance, "git_revision", lambda path=None: "unknown")
    assert provenance.source_revision("1.2") == "dm4isl 1.2"
    monkeypatch.setattr(provenance, "git_revision", lambda path=None: "abc")
    assert provenance.source_revision("1.2") == "abc"
