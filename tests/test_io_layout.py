"""The output layout and the atomic writers, on their own: paths, channel names, stale products, OME-TIFF and CSV
files read back by independent readers (tifffile's OME-XML, the csv module, hashlib)."""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import matplotlib
import numpy as np
import pytest
import tifffile
from matplotlib.font_manager import FontProperties

from conftest import require
from dm4isl.errors import DataError
from dm4isl.io import provenance
from dm4isl.io import zarr as zarr_module
from dm4isl.io.atomic import read_channel_names, read_tiff_info, write_csv, write_text, write_tiff
from dm4isl.io.figures import GridRow, display_range, grid_figure, grid_image, grid_png, mid_z, prediction_grid
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
from dm4isl.io.zarr import missing_writer_modules, read_zarr_info, write_ome_zarr, zarr_path


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


def test_metadata_key_value_pairs_and_other_writers_tiffs(tmp_path: Path) -> None:
    meta = {"name": "x", "seed": 7, "ok": True, "cfg": {"a": 1}, "none": None}
    path = write_tiff(tmp_path / "m.ome.tiff", np.zeros((2, 3, 3), np.float32), metadata=meta)
    with tifffile.TiffFile(path) as tif:
        root = ElementTree.fromstring(tif.ome_metadata)
    ns = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
    pairs = {m.get("K"): m.text for m in root.iter(f"{ns}M")}  # the MapAnnotation Fiji and OMERO list
    assert pairs == {"name": "x", "seed": "7", "ok": "true", "cfg": '{"a": 1}', "none": "null"}  # text as is, else JSON
    assert read_tiff_info(path) == (None, meta)
    # an OME-TIFF of two images from another writer: the first image's voxel size, metadata and channel names
    two = tmp_path / "two.ome.tiff"
    with tifffile.TiffWriter(two, ome=True) as tw:
        for k, (voxel, name) in enumerate((((1.0, 0.5, 0.25), "first"), ((2.0, 0.6, 0.3), "second"))):
            tw.write(np.full((2, 3, 3), k, np.float32), photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeZ": voxel[0], "PhysicalSizeY": voxel[1],
                               "PhysicalSizeX": voxel[2], "Description": json.dumps({"k": k}),
                               "Channel": {"Name": name}})
    assert read_tiff_info(two) == ((1.0, 0.5, 0.25), {"k": 0}) and read_channel_names(two) == ["first"]
    # a JSON Description that is not an object gives no metadata
    listed = tmp_path / "list.ome.tiff"
    tifffile.imwrite(listed, np.zeros((2, 3, 3), np.float32), ome=True, photometric="minisblack",
                     metadata={"axes": "ZYX", "Description": "[1, 2]"})
    assert read_tiff_info(listed) == (None, {})


def require_formats_extra() -> None:
    """The OME-Zarr tests need the ``formats`` extra (bioio-ome-zarr, zarr, dask); CI installs it."""
    require(all(importlib.util.find_spec(m) is not None for m in ("bioio_ome_zarr", "zarr", "dask")),
            "the formats extra (bioio-ome-zarr, zarr, dask) is not installed")


@pytest.fixture
def synchronous_dask() -> Iterator[None]:
    """dask's synchronous scheduler: no thread pool, which a process forked after its first use would wait on
    forever (mutmut forks a process per mutant)."""
    require_formats_extra()
    import dask
    with dask.config.set(scheduler="synchronous"):
        yield


def test_ome_zarr_written_and_read_back(tmp_path: Path, synchronous_dask: None) -> None:
    import zarr
    assert missing_writer_modules() == []  # the formats extra is installed where this runs
    assert zarr_path(tmp_path, "fov") == tmp_path / "fov.ome.zarr"
    avg = (np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4) / 10).astype(np.float64)
    mask = (avg > 1).astype(np.uint8)
    channels = {"DDPMavg": avg, "error_mask": mask, "other": 2 * avg - 1}
    path = write_ome_zarr(tmp_path / "fov.ome.zarr", channels, (0.5, 0.29, 0.27), {"seed": 7, "ckpt": Path("m")},
                          chunks=(1, 1, 2, 4))
    assert path == tmp_path / "fov.ome.zarr" and sorted(p.name for p in tmp_path.iterdir()) == ["fov.ome.zarr"]
    array = zarr.open_group(str(path), mode="r")["0"]
    assert array.dtype == np.float32 and array.chunks == (1, 1, 2, 4)
    np.testing.assert_array_equal(array[:], np.stack([avg, mask, 2 * avg - 1]).astype(np.float32))
    attrs = json.loads((path / ".zattrs").read_text())
    multiscale = attrs["multiscales"][0]
    assert multiscale["version"] == "0.4" and multiscale["name"] == "fov"
    assert [a["name"] for a in multiscale["axes"]] == ["c", "z", "y", "x"]
    assert [a["type"] for a in multiscale["axes"]] == ["channel", "space", "space", "space"]
    assert [a.get("unit") for a in multiscale["axes"]] == [None, "micrometer", "micrometer", "micrometer"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.29, 0.27]
    omero = attrs["omero"]["channels"]
    assert [(c["label"], c["color"]) for c in omero] == [("DDPMavg", "FF00FF"), ("error_mask", "FF0000"),
                                                         ("other", "808080")]
    top = float(np.float32(3.1))  # each channel's own range, of the float32 values
    assert omero[0]["window"] == {"min": 0.0, "max": top, "start": 0.0, "end": top}
    assert omero[2]["window"] == pytest.approx({"min": -1.0, "max": 2 * 3.1 - 1, "start": -1.0, "end": 2 * 3.1 - 1})
    assert read_zarr_info(path) == ((0.5, 0.29, 0.27), ["DDPMavg", "error_mask", "other"], {"seed": 7, "ckpt": "m"})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not a temporary folder's 0o700
    # NGFF 0.5 (Zarr v3) without voxel size or metadata, replacing the image at the path; default chunks cut to size
    again = write_ome_zarr(path, {"DDPMavg": avg}, ngff_version="0.5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fov.ome.zarr"] and (again / "zarr.json").is_file()
    assert zarr.open_group(str(again), mode="r")["0"].chunks == (1, 2, 4, 4)
    attrs = json.loads((again / "zarr.json").read_text())["attributes"]
    assert attrs["ome"]["multiscales"][0]["axes"][1].get("unit") is None and attrs["dm4isl"] == {}
    assert attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0] * 4
    assert read_zarr_info(again) == (None, ["DDPMavg"], {})
    with pytest.raises(ValueError, match=r"zarr.ngff_version must be one of \['0.4', '0.5'\], got '0.6'"):
        write_ome_zarr(tmp_path / "v.ome.zarr", channels, ngff_version="0.6")
    for bad in ({}, {"a": avg, "b": avg[:1]}, {"a": avg[0]}):
        with pytest.raises(DataError, match=r"expected \(Z, Y, X\) channels of one shape to write"):
            write_ome_zarr(tmp_path / "bad.ome.zarr", bad)
    with pytest.raises(ValueError, match="shorter|longer"):  # a chunk shape per axis (C, Z, Y, X)
        write_ome_zarr(tmp_path / "c.ome.zarr", channels, chunks=(1, 16, 256))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fov.ome.zarr"]  # nothing left behind
    nested = write_ome_zarr(tmp_path / "a" / "b" / "n.ome.zarr", {"DDPMavg": avg})  # parent folders made
    assert read_zarr_info(nested)[1] == ["DDPMavg"]


def test_ome_zarr_written_beside_its_path_and_cleaned_up_on_failure(
    tmp_path: Path, synchronous_dask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image is written into a hidden folder beside the path and renamed into place (the same file system);
    an older image is moved aside beside it first; a failure leaves nothing behind."""
    image = {"DDPMavg": np.zeros((2, 4, 4), np.float32)}
    path = write_ome_zarr(tmp_path / "fov.ome.zarr", image)
    renames: list[tuple[Path, Path]] = []
    real_replace = zarr_module.os.replace

    def recording_replace(src, dst) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(zarr_module.os, "replace", recording_replace)
    write_ome_zarr(path, image)
    # (zarr's own file writes inside the hidden folder rename too)
    (old, aside), (part, final) = [(a, b) for a, b in renames if tmp_path in (a.parent, b.parent)]
    assert old == path and final == path and aside.name == "fov.ome.zarr"
    assert aside.parent.parent == tmp_path and aside.parent.name.startswith(".fov.ome.zarr.")
    assert aside.parent.name.endswith(".old")
    assert part.parent == tmp_path and part.name.startswith(".fov.ome.zarr.") and part.name.endswith(".part")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fov.ome.zarr"]

    def failing_chmod(*args, **kwargs) -> None:
        raise OSError("no permission change here")

    monkeypatch.setattr(zarr_module.os, "chmod", failing_chmod)
    with pytest.raises(OSError, match="no permission change here"):
        write_ome_zarr(tmp_path / "other.ome.zarr", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fov.ome.zarr"]  # the hidden folder is removed
    monkeypatch.setitem(sys.modules, "bioio_ome_zarr.writers", None)
    with pytest.raises(ImportError, match=r"output_format=ome-zarr needs bioio-ome-zarr: pip install -e"):
        write_ome_zarr(tmp_path / "other.ome.zarr", image)


def test_zarr_info_of_an_image_without_display_settings(tmp_path: Path) -> None:
    path = tmp_path / "bare.ome.zarr"
    path.mkdir()
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    multiscale = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 2.0, 0.5, 0.25]}]}], "version": "0.4"}
    (path / ".zattrs").write_text(json.dumps({"multiscales": [multiscale]}))
    assert read_zarr_info(path) == ((2.0, 0.5, 0.25), [], {})  # no omero channels, no provenance
    (path / ".zattrs").unlink()
    (path / "zarr.json").write_text(json.dumps({"attributes": {"ome": {"multiscales": [multiscale]}}}))
    assert read_zarr_info(path) == ((2.0, 0.5, 0.25), [], {})


def test_missing_writer_modules_named_by_their_pip_names(monkeypatch: pytest.MonkeyPatch) -> None:
    require_formats_extra()
    real = importlib.import_module

    def without_dask(name: str, *args, **kwargs):
        if name == "dask":
            raise ImportError("no dask here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_dask)
    assert missing_writer_modules() == ["dask"]


def test_figure_grids(tmp_path: Path) -> None:
    volume = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5)
    np.testing.assert_array_equal(mid_z(volume), volume[1])
    np.testing.assert_array_equal(mid_z(volume[:2]), volume[1])  # Z // 2 of an even depth
    with pytest.raises(ValueError, match=r"expected a \(Z, Y, X\) volume, got shape \(4, 5\)"):
        mid_z(volume[0])
    ramp = np.arange(101, dtype=np.float64)  # percentiles of 0 … 100 are the percent values themselves
    assert display_range(ramp, "bf") == pytest.approx((1.0, 99.0))
    assert display_range(np.zeros(4), "bf") == (0.0, float(np.finfo(np.float32).eps))
    assert display_range(ramp, "std") == (0.0, 100.0)
    assert display_range(np.zeros(4), "std") == (0.0, float(np.finfo(np.float32).eps))  # an empty map: no 0/0
    assert display_range(ramp, "intensity") == (0.0, 1.0) == display_range(ramp, "mask")
    rows = [GridRow("a", {"BF": volume, "DDPMavg": volume / 60, "std_intra": volume}), GridRow("b", {})]
    fig = grid_figure(rows, ["BF", "DDPMavg", "std_intra", "error_mask"], {"DDPMavg": "avg"})
    axes = fig.axes
    assert len(axes) == 8 and [ax.get_title() for ax in axes[:4]] == ["BF", "avg", "std_intra", "error_mask"]
    assert [ax.get_title() for ax in axes[4:]] == [""] * 4
    assert [axes[0].get_ylabel(), axes[4].get_ylabel(), axes[1].get_ylabel()] == ["a", "b", ""]
    small = FontProperties(size="small").get_size_in_points()
    assert axes[1].title.get_fontsize() == small and axes[4].yaxis.label.get_fontsize() == small
    image = axes[0].images[0]
    np.testing.assert_array_equal(image.get_array(), volume[1].astype(np.float32))
    assert image.get_array().dtype == np.float32 and image.get_interpolation() == "nearest"
    assert image.get_clim() == pytest.approx(tuple(np.percentile(volume[1], [1, 99])))
    assert image.get_cmap().name == "gray" and axes[2].images[0].get_cmap().name == "magma"
    assert axes[1].images[0].get_clim() == (0.0, 1.0) and axes[2].images[0].get_clim() == (0.0, 39.0)
    assert [t.get_text() for t in axes[3].texts] == ["n/a"] and not axes[3].images
    missing = axes[3].texts[0]  # centred in the panel
    assert missing.get_position() == (0.5, 0.5) and missing.get_transform() == axes[3].transAxes
    assert (missing.get_horizontalalignment(), missing.get_verticalalignment()) == ("center", "center")
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in axes)
    assert fig.get_size_inches() == pytest.approx((4 * 1.6, 2 * 1.6))
    with matplotlib.rc_context({"savefig.format": "svg"}):  # PNG whatever the user's default format
        png = grid_png(rows[:1], ["BF"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (176, 176)  # 1.6 in at 110 dpi
    assert grid_image(rows[:1], ["BF", "DDPMavg"]).shape == (176, 352, 4)
    out = prediction_grid(rows[:1], ["BF"], tmp_path / "g" / "grid.png")
    assert out == tmp_path / "g" / "grid.png" and out.read_bytes() == png
    titled = {"BF": "brightfield"}  # a heading drawn in place of the column name
    assert grid_png(rows[:1], ["BF"], titled) != png
    assert prediction_grid(rows[:1], ["BF"], tmp_path / "t.png", titled).read_bytes() == grid_png(rows[:1], ["BF"],
                                                                                                  titled)
    assert not np.array_equal(grid_image(rows[:1], ["BF"], titled), grid_image(rows[:1], ["BF"]))
    for empty_rows, empty_columns in (([], ["BF"]), (rows, [])):
        with pytest.raises(ValueError, match=r"a grid needs at least one row and one column"):
            grid_figure(empty_rows, empty_columns)
        with pytest.raises(ValueError, match=r"grid.png: a grid needs at least one row and one column"):
            prediction_grid(empty_rows, empty_columns, tmp_path / "grid.png")
