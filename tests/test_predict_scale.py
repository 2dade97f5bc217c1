"""Prediction at scale: OME-Zarr output read back by an independent reader, and inputs sharded over processes (DDP,
gloo on CPU) and cluster jobs, with the union equal to one process and each output written once."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_formats import PATCH, micro_checkpoint

from conftest import REPO_ROOT, require
from dm4isl.io.atomic import read_tiff_info
from dm4isl.io.zarr import read_zarr_info
from dm4isl.predict import predict_command
from dm4isl.prediction.sharding import CSV_NAME, SHARD_DIR, Shard

#: Products of the micro checkpoint with one seed (no error mask: the test organelle has no intra threshold).
PRODUCTS = ["DDPM", "DDPMavg", "std_intra"]
#: An odd number of inputs, so that the two shards differ in size.
N_INPUTS = 5
#: Agreement between one process and two (float32 sampling, batch-independent noise, other batch sizes).
ATOL = 1e-5
#: Unequal voxel sizes (Z, Y, X) µm written to the outputs: a Z <-> X swap anywhere shows.
VOXEL = (0.5, 0.29, 0.27)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def scale_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A micro checkpoint and a folder of :data:`N_INPUTS` uint8 TIFFs of the training patch shape."""
    root = tmp_path_factory.mktemp("scale")
    folder = root / "fovs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_INPUTS):
        tifffile.imwrite(folder / f"fov{i}.tif", rng.integers(0, 256, PATCH, dtype=np.uint8))
    return {"ckpt": micro_checkpoint(root / "micro.ckpt"), "inputs": folder}


def _overrides(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [f"ckpt_path={setup['ckpt']}", f"input={setup['inputs']}", f"output_dir={out}", "device=cpu", *extra]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_shards_partition_inputs_by_name() -> None:
    names = [f"fov{i}" for i in range(11)]
    parts = [Shard(i, 3).select(names, names) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(names) and [len(p) for p in parts] == [4, 4, 3]
    assert parts[0] == ["fov0", "fov3", "fov6", "fov9"]  # natural order: fov10 after fov9
    job = Shard(1, 2)
    assert [job.split(r, 2) for r in range(2)] == [Shard(2, 4), Shard(3, 4)]
    with pytest.raises(ValueError, match="expected 0 <= shard < num_shards"):
        Shard(2, 2)


def test_ome_zarr_output_read_by_an_independent_reader(compose_cfg, scale_setup, tmp_path: Path) -> None:
    require(_has("bioio_ome_zarr"), 'bioio-ome-zarr (the formats extra) is not installed: pip install -e ".[formats]"')
    require(_has("ome_zarr"), "ome-zarr (the reference NGFF reader, ci extra) is not installed")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    require(_has("bioio_ome_tiff"), "bioio-ome-tiff (an independent OME-TIFF reader) is not installed")
    from bioio import BioImage
    from bioio_ome_tiff import Reader as OmeTiffReader

    for version in ("0.4", "0.5"):
        out = tmp_path / version
        cfg = compose_cfg("predict", _overrides(scale_setup, out, "output_format=both", f"zarr.ngff_version={version}",
                                                f"voxel_size=[{','.join(map(str, VOXEL))}]"))
        rows = predict_command(cfg)
        assert len(rows) == N_INPUTS
        for row in rows:
            image = out / f"{row['name']}.ome.zarr"
            node = next(iter(Reader(parse_url(str(image)))()))  # ome-zarr-py: NGFF's reference implementation
            data = np.asarray(node.data[0])
            assert data.shape == (1 + len(PRODUCTS), *PATCH) and data.dtype == np.float32
            assert node.metadata["channel_names"] == ["BF", *PRODUCTS]
            assert [a["name"] for a in node.metadata["axes"]] == ["c", "z", "y", "x"]
            assert [a.get("unit") for a in node.metadata["axes"]] == [None, *["micrometer"] * 3]
            assert node.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx([1.0, *VOXEL])
            assert node.data[0].chunksize == (1, *PATCH)  # one channel per chunk (DEFAULT_CHUNKS, shrunk)
            for k, name in enumerate(["BF", *PRODUCTS]):
                np.testing.assert_array_equal(data[k], tifffile.imread(out / name / f"{row['name']}.ome.tiff"))
            assert np.abs(data[1] - data[2]).max() > 1e-3  # DDPM and DDPMavg differ: a swap of the two would show
            tiff = BioImage(out / "DDPMavg" / f"{row['name']}.ome.tiff", reader=OmeTiffReader)  # bioio, not dm4isl
            assert tuple(tiff.physical_pixel_sizes) == pytest.approx(VOXEL)
            np.testing.assert_array_equal(tiff.get_image_data("ZYX"), data[2])
            voxel, names, provenance = read_zarr_info(image)
            tiff_voxel, tiff_meta = read_tiff_info(out / "DDPMavg" / f"{row['name']}.ome.tiff")
            assert voxel == pytest.approx(tiff_voxel) and names == ["BF", *PRODUCTS]
            assert provenance == {**tiff_meta, "products": ["BF", *PRODUCTS]}
            assert provenance["checkpoint_sha256_16"] and provenance["seeds"] == [0]
        marker = (out / f"{rows[0]['name']}.ome.zarr").stat().st_mtime_ns
        assert len(predict_command(cfg)) == N_INPUTS  # a rerun skips every input
        assert (out / f"{rows[0]['name']}.ome.zarr").stat().st_mtime_ns == marker
    assert not list(tmp_path.rglob("*.part"))


def _run_two_processes(setup: dict[str, Path], out: Path, tmp: Path) -> subprocess.CompletedProcess:
    """``dm4isl-predict devices=2`` on CPU: Lightning Fabric starts a second process, gloo process group."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("MASTER_PORT", None)
    cmd = [sys.executable, "-m", "dm4isl.predict", *_overrides(setup, out, "devices=2", "batch_size=2"),
           f"hydra.run.dir={tmp / 'hydra'}"]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_processes_equal_one_and_write_each_output_once(compose_cfg, scale_setup, tmp_path: Path) -> None:
    one = tmp_path / "one"
    predict_command(compose_cfg("predict", _overrides(scale_setup, one)))
    two = tmp_path / "two"
    _run_two_processes(scale_setup, two, tmp_path)
    names = sorted(r["name"] for r in _rows(one / CSV_NAME))
    merged = _rows(two / CSV_NAME)
    assert sorted(r["name"] for r in merged) == names and len(names) == N_INPUTS
    shard_csvs = sorted((two / SHARD_DIR).iterdir())
    assert [p.name for p in shard_csvs] == ["predictions.0-of-2.csv", "predictions.1-of-2.csv"]
    owners: dict[str, str] = {}
    for index, path in enumerate(shard_csvs):
        for row in _rows(path):
            assert row["name"] not in owners, f"{row['name']} predicted by two processes"
            owners[row["name"]] = f"{index}/2"
    assert sorted(owners) == names and len({v for v in owners.values()}) == 2
    # the stand-in's products depend on its input: a product written under another input's name would show
    spread = [tifffile.imread(one / "DDPMavg" / f"{name}.ome.tiff") for name in names]
    assert min(float(np.abs(a - b).max()) for i, a in enumerate(spread) for b in spread[i + 1:]) > 100 * ATOL
    max_diff = 0.0
    for name in names:
        for product in PRODUCTS:
            ref = tifffile.imread(one / product / f"{name}.ome.tiff")
            got = tifffile.imread(two / product / f"{name}.ome.tiff")
            max_diff = max(max_diff, float(np.abs(ref - got).max()))
            assert read_tiff_info(two / product / f"{name}.ome.tiff")[1]["shard"] == owners[name]
        np.testing.assert_array_equal(tifffile.imread(two / "BF" / f"{name}.ome.tiff"),
                                      tifffile.imread(one / "BF" / f"{name}.ome.tiff"))
    assert max_diff <= ATOL, max_diff
    expected = {f"{p}/{n}.ome.tiff" for p in [*PRODUCTS, "BF"] for n in names}
    written = {str(p.relative_to(two)) for p in two.rglob("*.tiff")}
    assert written == expected and not list(two.rglob("*.part"))


def test_cluster_jobs_one_shard_each_merge_into_one_csv(compose_cfg, scale_setup, tmp_path: Path) -> None:
    out = tmp_path / "jobs"
    first = predict_command(compose_cfg("predict", _overrides(scale_setup, out, "shard=1", "num_shards=2")))
    assert len(first) == 2  # fov1, fov3: the merge after the first job holds what is done so far
    assert sorted(r["name"] for r in _rows(out / CSV_NAME)) == ["fov1", "fov3"]
    rows = predict_command(compose_cfg("predict", _overrides(scale_setup, out, "shard=0", "num_shards=2")))
    assert [r["name"] for r in rows] == [f"fov{i}" for i in range(N_INPUTS)]
    assert [r["name"] for r in _rows(out / CSV_NAME)] == [f"fov{i}" for i in range(N_INPUTS)]
    # a later unsharded run over the same folder sees every input as done
    assert len(predict_command(compose_cfg("predict", _overrides(scale_setup, out)))) == N_INPUTS
    assert {read_tiff_info(p)[1].get("shard") for p in (out / "DDPMavg").iterdir()} == {"0/2", "1/2"}
    # resume: a lost file is predicted again by its owner only; every other file stays untouched
    (out / "DDPMavg" / "fov3.ome.tiff").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tiff")}
    assert predict_command(compose_cfg("predict", _overrides(scale_setup, out, "shard=0", "num_shards=2")))
    assert not (out / "DDPMavg" / "fov3.ome.tiff").exists()  # fov3 belongs to shard 1
    predict_command(compose_cfg("predict", _overrides(scale_setup, out, "shard=1", "num_shards=2")))
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.tiff")}
    changed = sorted(str(p.relative_to(out)) for p in after if before.get(p) != after[p])
    assert changed == sorted(f"{p}/fov3.ome.tiff" for p in [*PRODUCTS, "BF"])
    assert [r["name"] for r in _rows(out / CSV_NAME)] == [f"fov{i}" for i in range(N_INPUTS)]


@pytest.mark.slow
def test_one_sweep_job_per_shard_with_a_launcher(scale_setup, tmp_path: Path) -> None:
    """``-m 'shard=range(0,2)' num_shards=2`` through a Hydra launcher (joblib here, submitit on SLURM)."""
    require(_has("hydra_plugins.hydra_joblib_launcher"), "the launchers extra is not installed")
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "dm4isl.predict", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           "shard=range(0,2)", "num_shards=2", *_overrides(scale_setup, out), f"hydra.sweep.dir={tmp_path / 'sw'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["name"] for r in _rows(out / CSV_NAME)] == [f"fov{i}" for i in range(N_INPUTS)]
    assert sorted(p.name for p in (out / SHARD_DIR).iterdir()) == ["predictions.0-of-2.csv", "predictions.1-of-2.csv"]
