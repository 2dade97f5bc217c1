"""Tests of the embedded synthetic z-stack generator: determinism, raw units, filter, ambiguities, cache, speed."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import REPO_ROOT, load_script
from dm4isl.data import synthetic
from dm4isl.data.normalize import clip_raw, window_normalize
from dm4isl.data.synthetic import ORGANELLES, SyntheticFOV, generate_fov, load_fov, save_fov, synthetic_dataset
from dm4isl.errors import DataError
from dm4isl.metrics.basic import pcc

#: SPEC §1 windows and std_th: (BF window, FL window, std_th) in raw grey levels.
SPEC_WINDOWS = {
    "dna": ((10000, 55000), (380, 650), 20.0),
    "mitochondria": ((10000, 55000), (385, 800), 18.0),
    "nuclear_envelope": ((12000, 55000), (390, 1500), 70.0),
    "nucleoli": ((10000, 55000), (390, 2500), 53.0),
    "actin": ((12000, 35000), (390, 800), 25.0),
    "microtubules": ((10000, 55000), (395, 5000), 250.0),
}
FOV_SHAPE = (32, 128, 128)
PATCH_SHAPE = (16, 64, 64)
SEEDS = (0, 1)
N_CROPS = 100


def _fov(organelle: str, seed: int = 0, shape=FOV_SHAPE, **kwargs) -> SyntheticFOV:
    bf_window, fl_window, _ = SPEC_WINDOWS[organelle]
    return generate_fov(organelle, shape, seed, bf_window=bf_window, fl_window=fl_window, **kwargs)


@pytest.fixture(scope="module")
def fovs() -> dict[tuple[str, int], SyntheticFOV]:
    """Default-size FOVs of every organelle for two seeds (generated once per module)."""
    return {(org, seed): _fov(org, seed) for org in ORGANELLES for seed in SEEDS}


def _random_crops(rng: np.random.Generator, volume: np.ndarray, size, n: int):
    for _ in range(n):
        corner = [int(rng.integers(0, d - s + 1)) for d, s in zip(volume.shape, size, strict=True)]
        yield volume[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))]


def _passes(raw_crop: np.ndarray, fl_window, std_th: float) -> bool:
    """SPEC §1 rule: min over Z of per-slice std of the raw crop clipped to the FL window exceeds std_th."""
    clipped = clip_raw(raw_crop, fl_window)
    return float(clipped.reshape(clipped.shape[0], -1).std(axis=1).min()) > std_th


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_same_seed_gives_identical_bytes_and_other_seed_differs(organelle: str) -> None:
    a = _fov(organelle, 3, PATCH_SHAPE)
    b = _fov(organelle, 3, PATCH_SHAPE)
    c = _fov(organelle, 4, PATCH_SHAPE)
    for name in ("bf", "fl", "ambiguous"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    assert a.meta == b.meta
    assert a.bf.tobytes() != c.bf.tobytes()
    assert a.fl.tobytes() != c.fl.tobytes()


def test_same_seed_shows_the_same_cells_for_every_nuclear_organelle() -> None:
    """The scene depends on the seed only: nuclear organelles add nothing to BF, so equal windows give identical BF."""
    bf = {org: _fov(org, 5, PATCH_SHAPE).bf for org in ("dna", "nucleoli")}
    assert bf["dna"].tobytes() == bf["nucleoli"].tobytes()


@pytest.mark.parametrize("shape", [(16, 64, 64), (32, 128, 128), (48, 256, 256), (20, 40, 90)])
def test_shapes_dtypes_and_meta(shape) -> None:
    fov = _fov("microtubules", 0, shape)
    assert fov.bf.shape == fov.fl.shape == fov.ambiguous.shape == shape
    assert (fov.bf.dtype, fov.fl.dtype, fov.ambiguous.dtype) == (np.uint16, np.uint16, np.uint8)
    assert set(np.unique(fov.ambiguous)) <= {0, synthetic.MASK_SURPRISE, synthetic.MASK_AMBIGUITY}
    assert fov.meta["shape_zyx"] == list(shape)
    assert fov.meta["organelle"] == "microtubules"
    # Dense colony: about one cell per hexagon of the lattice spacing, counting cells cut by the border.
    spacing = synthetic.GeneratorSettings().cell_spacing_px
    expected_cells = shape[1] * shape[2] / (spacing**2 * np.sqrt(3) / 2)
    assert 0.6 * expected_cells <= fov.meta["n_cells"] <= 2.5 * expected_cells + 4


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_fluorescence_is_not_a_voxelwise_function_of_brightfield(fovs, organelle: str) -> None:
    bf_window, fl_window, _ = SPEC_WINDOWS[organelle]
    for seed in SEEDS:
        fov = fovs[(organelle, seed)]
        r = pcc(window_normalize(fov.bf, bf_window), window_normalize(fov.fl, fl_window))
        assert abs(r) < 0.2, f"{organelle} seed {seed}: voxel-wise PCC(BF, FL) = {r:.3f}"


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_raw_grey_levels_sit_in_the_organelle_windows(fovs, organelle: str) -> None:
    bf_window, fl_window, std_th = SPEC_WINDOWS[organelle]
    fov = fovs[(organelle, 0)]
    bf_raw = fov.bf.astype(np.float64)
    assert np.mean((bf_raw >= bf_window[0]) & (bf_raw <= bf_window[1])) > 0.99
    bf = window_normalize(fov.bf, bf_window)
    lo_bf, hi_bf = np.percentile(bf, [1, 99])
    assert hi_bf - lo_bf > 0.15, f"BF spans only [{lo_bf:.2f}, {hi_bf:.2f}] of its window"

    fl = window_normalize(fov.fl, fl_window)
    background = np.percentile(fl, 5)
    assert 0.0 < background < 0.08, f"FL background at {background:.3f} of the window, expected just above 0"
    peak = np.percentile(fl, 99.9)
    assert 0.4 < peak, f"FL structures reach only {peak:.2f} of the window"
    # Real nuclear-envelope patches have 0.2-0.9 % of their voxels at the window's top (../shared reference patches).
    assert np.mean(fl >= 1.0) < 0.01 and np.mean(fl <= 0.0) < 0.01, "FL clipped at the window ends"


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_empty_patch_filter_keeps_plenty_of_crops(fovs, organelle: str) -> None:
    _, fl_window, std_th = SPEC_WINDOWS[organelle]
    rng = np.random.default_rng(0)
    for seed in SEEDS:
        fl = fovs[(organelle, seed)].fl
        kept = np.mean([_passes(c, fl_window, std_th) for c in _random_crops(rng, fl, PATCH_SHAPE, N_CROPS)])
        assert kept >= 0.3, f"{organelle} seed {seed}: only {kept:.0%} of random 16×64×64 crops pass std_th"


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_background_only_crops_fail_the_filter(organelle: str) -> None:
    _, fl_window, std_th = SPEC_WINDOWS[organelle]
    blank = _fov(organelle, 0, colony_coverage=0.0)
    assert blank.meta["n_cells"] == 0 and not blank.ambiguous.any()
    clipped = clip_raw(blank.fl, fl_window)
    noise = clipped.reshape(clipped.shape[0], -1).std(axis=1).max()
    assert noise < 0.5 * std_th, f"background noise std {noise:.1f} is not well below std_th {std_th}"
    rng = np.random.default_rng(0)
    assert not any(_passes(c, fl_window, std_th) for c in _random_crops(rng, blank.fl, PATCH_SHAPE, 20))


#: Per generator: (largest mask fraction, smallest mean |ΔBF| inside the mask). The calibrated cells are larger (a
#: planted one covers more of a 128 px FOV) and its brightfield shows a nucleus with realistic, lower contrast
#: (BF-FL mutual information of the real patches, scripts/synthetic_realism.py).
SURPRISE_BOUNDS = {"legacy": (0.4, 0.005), "calibrated": (0.45, 0.003)}


@pytest.mark.parametrize("generator", sorted(SURPRISE_BOUNDS))
@pytest.mark.parametrize("organelle", ORGANELLES)
def test_planted_surprises_mark_where_fl_and_bf_disagree(organelle: str, generator: str) -> None:
    """Surprises change FL (unlabelled cells) and BF (hidden cells) inside their mask (value 1) and nowhere else."""
    bf_window, fl_window, _ = SPEC_WINDOWS[organelle]
    base = synthetic.GeneratorSettings.legacy() if generator == "legacy" else synthetic.GeneratorSettings()
    no_occluders = replace(base, occluded_fraction=0.0)  # occluders avoid surprise cells: leave them out here
    max_fraction, min_bf_change = SURPRISE_BOUNDS[generator]
    for seed in SEEDS:
        fov = _fov(organelle, seed, settings=no_occluders)
        plain = _fov(organelle, seed, ambiguous_fraction=0.0, settings=no_occluders)
        meta = fov.meta
        assert abs(meta["n_ambiguous"] - 0.15 * meta["n_cells"]) <= 1
        assert meta["n_unlabelled"] >= 1 and meta["n_hidden"] >= 1
        assert meta["n_unlabelled"] + meta["n_hidden"] == meta["n_ambiguous"]
        assert plain.meta["n_ambiguous"] == 0 and not (plain.ambiguous == synthetic.MASK_SURPRISE).any()
        mask = fov.ambiguous == synthetic.MASK_SURPRISE
        assert 0.01 < mask.mean() < max_fraction
        d_fl = np.abs(window_normalize(fov.fl, fl_window) - window_normalize(plain.fl, fl_window))
        d_bf = np.abs(window_normalize(fov.bf, bf_window) - window_normalize(plain.bf, bf_window))
        assert d_fl[mask].sum() / d_fl.sum() > 0.98
        assert d_bf[mask].sum() / d_bf.sum() > 0.7
        assert d_fl[mask].mean() > 0.02 and d_bf[mask].mean() > min_bf_change
        assert d_fl[~mask].max() < 0.05


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_occluders_change_only_the_brightfield_over_their_footprint(fovs, organelle: str) -> None:
    """Planted ambiguities (mask value 2): debris over ~15 % of the cells; FL untouched, BF changed only under them."""
    bf_window, fl_window, _ = SPEC_WINDOWS[organelle]
    settings = synthetic.GeneratorSettings()
    for seed in SEEDS:
        fov = fovs[(organelle, seed)]
        clear = _fov(organelle, seed, settings=replace(settings, occluded_fraction=0.0))
        region = fov.ambiguous == synthetic.MASK_AMBIGUITY
        assert fov.meta["n_occluded"] == len(fov.meta["occluded_cells"]) >= 1
        assert abs(fov.meta["n_occluded"] - settings.occluded_fraction * fov.meta["n_cells"]) <= 1
        assert not set(fov.meta["occluded_cells"]) & {int(c) for c in fov.meta["ambiguous_cells"]}
        assert 0.01 < region.mean() < 0.4 and not (clear.ambiguous == synthetic.MASK_AMBIGUITY).any()
        assert fov.fl.tobytes() == clear.fl.tobytes()
        changed = np.any(fov.bf != clear.bf, axis=0)  # (Y, X): the occluders reach through every slice
        footprint = region.any(axis=0)
        reach = settings.occluder_margin_px + settings.occluder_edge_px
        near = ndimage.distance_transform_edt(~footprint) < reach + 1.0
        assert footprint.sum() > 0 and changed[footprint].mean() > 0.99
        assert not changed[~near].any()


@pytest.mark.parametrize(("organelle", "seed"), [("nuclear_envelope", 0), ("nuclear_envelope", 1), ("actin", 2)])
def test_ideal_observer_sees_nothing_under_an_occluder_and_everything_elsewhere(organelle: str, seed: int) -> None:
    """Inside a planted ambiguity the brightfield is identical with and without the structure under it (d' = 0);
    an ordinary cell's structure is detectable far above the noise (d' in the tens or more)."""
    bf_window, fl_window, _ = SPEC_WINDOWS[organelle]
    check = synthetic.ideal_observer_check(organelle, FOV_SHAPE, seed, bf_window=bf_window, fl_window=fl_window)
    assert check.n_occluded >= 1 and check.n_control >= 1
    assert check.inside_max_delta == 0.0 and check.inside_dprime == 0.0
    assert check.outside_dprime > 20.0, check
    legacy = synthetic.ideal_observer_check(organelle, FOV_SHAPE, seed, bf_window=bf_window, fl_window=fl_window,
                                            settings=synthetic.GeneratorSettings.legacy())
    assert legacy.n_occluded == 0 and np.isnan(legacy.inside_dprime)


#: sha256 (first 16 hex digits) of bf, fl and ambiguous bytes of a (16, 64, 64) FOV, seed 7, SPEC windows, made by the
#: generator before its calibration: GeneratorSettings.legacy() must keep reproducing them bit for bit.
LEGACY_FINGERPRINTS = {
    "nuclear_envelope": "405a3dff3b47f6c9",
    "mitochondria": "8be38eabf8a82ca6",
    "dna": "f7c9c7c032ed3b90",
}


@pytest.mark.parametrize("organelle", sorted(LEGACY_FINGERPRINTS))
def test_legacy_settings_reproduce_the_first_generator(organelle: str) -> None:
    fov = _fov(organelle, 7, PATCH_SHAPE, settings=synthetic.GeneratorSettings.legacy())
    digest = hashlib.sha256()
    for a in (fov.bf, fov.fl, fov.ambiguous):
        digest.update(np.ascontiguousarray(a).tobytes())
    assert digest.hexdigest()[:16] == LEGACY_FINGERPRINTS[organelle]
    assert "generator" not in fov.meta and "n_occluded" not in fov.meta
    assert fov.meta["n_cells"] == 11 and fov.meta["n_ambiguous"] == 2


def test_generator_config_states_the_defaults_and_v1_is_the_legacy_generator() -> None:
    from omegaconf import OmegaConf

    conf = REPO_ROOT / "dm4isl" / "conf" / "data"
    calibrated = OmegaConf.to_container(OmegaConf.load(conf / "synthetic.yaml"))["generator"]
    assert synthetic.GeneratorSettings.from_config(calibrated) == synthetic.GeneratorSettings()
    assert set(calibrated) == {f.name for f in fields(synthetic.GeneratorSettings)}
    v1 = {**calibrated, **OmegaConf.to_container(OmegaConf.load(conf / "synthetic_v1.yaml"))["generator"]}
    assert synthetic.GeneratorSettings.from_config(v1) == synthetic.GeneratorSettings.legacy()
    with pytest.raises(ValueError, match="bf_levle"):
        synthetic.GeneratorSettings.from_config({"bf_levle": 0.3})


def test_settings_enter_the_cache_key_except_the_legacy_ones() -> None:
    bf_window, fl_window, _ = SPEC_WINDOWS["dna"]
    key = lambda s: synthetic.dataset_key("dna", FOV_SHAPE, 0, bf_window, fl_window, 0.15, settings=s)  # noqa: E731
    base = synthetic.GeneratorSettings()
    assert key(base) == key(None) != key(replace(base, fl_haze=base.fl_haze + 0.05))
    assert key(synthetic.GeneratorSettings.legacy()) == "dna-" + hashlib.sha256(json.dumps({
        "organelle": "dna", "shape_zyx": list(FOV_SHAPE), "seed": 0, "bf_window": [10000.0, 55000.0],
        "fl_window": [380.0, 650.0], "ambiguous_fraction": 0.15, "generator_version": synthetic.GENERATOR_VERSION,
    }, sort_keys=True).encode()).hexdigest()[:16]


def test_ambiguous_fraction_scales_the_number_of_planted_cells() -> None:
    counts = {f: _fov("nucleoli", 2, ambiguous_fraction=f).meta for f in (0.0, 0.3)}
    assert counts[0.0]["n_ambiguous"] == 0
    assert counts[0.3]["n_ambiguous"] == round(0.3 * counts[0.3]["n_cells"])


def test_dataset_is_generated_then_reused_from_cache(tmp_path: Path, monkeypatch) -> None:
    bf_window, fl_window, _ = SPEC_WINDOWS["nuclear_envelope"]
    kwargs = {"bf_window": bf_window, "fl_window": fl_window, "ambiguous_fraction": 0.15, "cache_dir": tmp_path}
    calls = []
    real = synthetic.generate_fov
    monkeypatch.setattr(synthetic, "generate_fov", lambda *a, **k: calls.append(a) or real(*a, **k))

    paths = synthetic_dataset("nuclear_envelope", 12, FOV_SHAPE, 0, **kwargs)
    assert len(calls) == 12 and len(paths) == 12
    assert paths[0].parent.name.startswith("nuclear_envelope-")
    assert [p.name for p in paths[:3]] == ["fov_0.npz", "fov_1.npz", "fov_2.npz"]
    assert not list(paths[0].parent.glob("*.part"))
    mtimes = [p.stat().st_mtime_ns for p in paths]

    again = synthetic_dataset("nuclear_envelope", 12, FOV_SHAPE, 0, **kwargs)
    assert again == paths and len(calls) == 12
    assert [p.stat().st_mtime_ns for p in paths] == mtimes

    more = synthetic_dataset("nuclear_envelope", 14, FOV_SHAPE, 0, **kwargs)
    assert more[:12] == paths and len(calls) == 14

    other = synthetic_dataset("nuclear_envelope", 1, FOV_SHAPE, 0, **{**kwargs, "ambiguous_fraction": 0.3})
    assert other[0].parent != paths[0].parent

    fovs = [load_fov(p) for p in paths[:2]]
    assert fovs[0].fl.tobytes() != fovs[1].fl.tobytes(), "FOVs of one dataset must differ"
    expected = real("nuclear_envelope", FOV_SHAPE, synthetic.fov_seed(0, 1), bf_window=bf_window, fl_window=fl_window)
    assert fovs[1].fl.tobytes() == expected.fl.tobytes()
    assert fovs[1].meta == expected.meta


def test_save_load_round_trip(tmp_path: Path) -> None:
    fov = _fov("actin", 0, PATCH_SHAPE)
    loaded = load_fov(save_fov(tmp_path / "a.npz", fov))
    for name in ("bf", "fl", "ambiguous"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fov, name))
    assert loaded.meta == fov.meta


def test_load_fov_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.npz"
    with pytest.raises(DataError, match="nothere.npz"):
        load_fov(missing)

    good = save_fov(tmp_path / "good.npz", _fov("dna", 0, PATCH_SHAPE))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.npz"):
        load_fov(truncated)

    lacking = tmp_path / "lacking.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(lacking, "w") as zout:
        for item in zin.infolist():
            if item.filename != "fl.npy":
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(DataError, match=r"lacking.npz.*\['fl'\]"):
        load_fov(lacking)

    wrong = tmp_path / "wrong.npz"
    fov = _fov("dna", 0, PATCH_SHAPE)
    np.savez(wrong, bf=fov.bf.astype(np.float32), fl=fov.fl, ambiguous=fov.ambiguous, meta=np.array("{}"))
    with pytest.raises(DataError, match=r"wrong.npz.*'bf'.*float32.*uint16"):
        load_fov(wrong)


def test_invalid_arguments_are_refused() -> None:
    windows = {"bf_window": (10000, 55000), "fl_window": (380, 650)}
    with pytest.raises(ValueError, match="golgi"):
        generate_fov("golgi", PATCH_SHAPE, **windows)
    with pytest.raises(ValueError, match="shape_zyx"):
        generate_fov("dna", (2, 64, 64), **windows)
    with pytest.raises(ValueError, match="fl_window"):
        generate_fov("dna", PATCH_SHAPE, bf_window=(10000, 55000), fl_window=(650, 380))
    with pytest.raises(ValueError, match="ambiguous_fraction"):
        generate_fov("dna", PATCH_SHAPE, ambiguous_fraction=1.5, **windows)


def _load_check_script():
    return load_script("check_synthetic")


@pytest.mark.slow
def test_a_small_unet_learns_what_a_voxelwise_linear_map_cannot(tmp_path: Path) -> None:
    import torch

    check = _load_check_script()
    bf_window, fl_window, std_th = SPEC_WINDOWS["nuclear_envelope"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is several times faster than two on a busy 2-core machine
    try:
        res = check.probe_organelle(
            "nuclear_envelope",
            bf_window=bf_window,
            fl_window=fl_window,
            std_th=std_th,
            cache_dir=tmp_path,
            n_train=4,
            n_test=1,
            n_test_crops=16,
            budget_s=600.0,
            max_steps=800,
        )
    finally:
        torch.set_num_threads(threads)
    assert abs(res["linear_pcc"]) < 0.2
    assert res["unet_pcc"] > abs(res["linear_pcc"]) + 0.3, res
