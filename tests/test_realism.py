"""Realism statistics of synthetic vs real patches: each statistic on hand-made arrays, the calibrated generator
against the real nuclear-envelope patches, the legacy generator failing them, and the config switch between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, load_script
from dm4isl.data import realism
from dm4isl.data.synthetic import GeneratorSettings

ORGANELLE = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "organelle" / "nuclear_envelope.yaml"), resolve=True)


def _statistic(name: str) -> realism.Statistic:
    return next(s for s in realism.STATISTICS if s.name == name)


def test_band_fractions_of_a_pure_sinusoid() -> None:
    """All the power of a sinusoid of 0.125 cycles/px lies in the mid band; of 0.3125 cycles/px in the high band."""
    y, x = np.mgrid[0:64, 0:64]
    mid = np.broadcast_to(np.sin(2 * np.pi * 0.125 * x), (1, 4, 64, 64))
    high = np.broadcast_to(np.sin(2 * np.pi * 0.3125 * y), (1, 4, 64, 64))
    assert _statistic("bf_mid_band_power").compute(mid, mid) == pytest.approx(1.0, abs=1e-9)
    assert _statistic("bf_high_band_power").compute(mid, mid) == pytest.approx(0.0, abs=1e-9)
    assert _statistic("bf_high_band_power").compute(high, high) == pytest.approx(1.0, abs=1e-9)
    assert _statistic("bf_low_band_power").compute(high, high) == pytest.approx(0.0, abs=1e-9)


def test_slice_statistics_by_hand() -> None:
    rng = np.random.default_rng(0)
    texture = rng.normal(size=(1, 1, 64, 64))
    same = np.repeat(texture, 6, axis=1)  # every slice identical: neighbours correlate perfectly
    assert _statistic("bf_adjacent_slice_r").compute(same, same) == pytest.approx(1.0)
    alternating = same * np.array([1, -1, 1, -1, 1, -1])[None, :, None, None]
    assert _statistic("bf_adjacent_slice_r").compute(alternating, same) == pytest.approx(-1.0)
    ramp = same * np.arange(1, 7)[None, :, None, None]  # slice std grows 1..6 times
    assert _statistic("bf_slice_std_ratio").compute(ramp, ramp) == pytest.approx(6.0)
    assert _statistic("bf_min_slice_std").compute(ramp, ramp) == pytest.approx(texture.std())
    means = np.stack([np.full((2, 4, 4), v) for v in (0.2, 0.4, 0.6)])  # three constant patches
    assert _statistic("bf_mean_spread").compute(means, means) == pytest.approx(np.std([0.2, 0.4, 0.6]))


def test_mutual_information_by_hand() -> None:
    """Two values, equally likely: 1 bit with itself, 0 bits with an independent coin (exactly, by construction)."""
    a = np.tile([0.0, 1.0], 50)
    b = np.repeat([0.0, 1.0], 50)  # each (a, b) pair occurs 25 times: independent
    assert realism.mutual_information(a, a) == pytest.approx(1.0)
    assert realism.mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)


def test_quantise_rounds_to_8_bit_levels_and_compare_checks_shapes() -> None:
    np.testing.assert_allclose(realism.quantise(np.array([-0.1, 0.5, 1.2, 0.31])), [0.0, 128 / 255, 1.0, 79 / 255])
    with pytest.raises(ValueError, match="real_fl"):
        realism.compare(np.zeros((2, 4, 8, 8)), np.zeros((4, 8, 8)), np.zeros((2, 4, 8, 8)), np.zeros((2, 4, 8, 8)))


@pytest.fixture(scope="module")
def real(nucenv_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return realism.real_patches(nucenv_dir, ORGANELLE)


def _rows(real, tmp_path: Path, data: str) -> list[realism.Comparison]:
    """Realism table of the ``data=<data>`` config (its generator and surprise fraction) against the real patches."""
    cfg = OmegaConf.load(CONF_DIR / "data" / f"{data}.yaml")
    base = OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml")
    cfg = OmegaConf.to_container(OmegaConf.merge(base, cfg))
    patches = realism.synthetic_patches(ORGANELLE, cfg["generator"], n=64, size=(16, 64, 64), seed=12345, n_fovs=16,
                                        fov_shape=(32, 128, 128), cache_dir=tmp_path,
                                        ambiguous_fraction=cfg["ambiguous_fraction"])
    assert patches.bf.shape == (64, 16, 64, 64)
    return realism.compare(*real, patches.bf, patches.fl)


def test_real_reference_values(real) -> None:
    """The real side of the table: medians over the five reference patches (their values one by one in docs)."""
    bf, fl = real
    assert bf.shape == fl.shape == (5, 16, 64, 64)
    rows = {r.name: r for r in realism.compare(bf, fl, bf, fl)}
    assert rows["bf_patch_std"].real == pytest.approx(np.median(bf.std(axis=(1, 2, 3))))
    assert rows["bf_mean_spread"].real == pytest.approx(0.1801, abs=1e-4)
    assert rows["fl_patch_std"].real == pytest.approx(0.1616, abs=1e-4)
    assert rows["bf_min_slice_std"].real == pytest.approx(0.0432, abs=1e-4)
    assert all(r.within for r in rows.values())  # the real patches are within tolerance of themselves


def test_calibrated_generator_is_within_every_tolerance(real, tmp_path: Path) -> None:
    rows = _rows(real, tmp_path, "synthetic")
    assert [r.name for r in rows if not r.within] == []
    assert len(rows) == len(realism.STATISTICS) == 18


def test_legacy_generator_fails_most_statistics(real, tmp_path: Path) -> None:
    """The first generator: brightness varies 20× too little between patches, in-focus slices are flat."""
    rows = {r.name: r for r in _rows(real, tmp_path, "synthetic_v1")}
    assert sum(r.within for r in rows.values()) <= 8
    assert rows["bf_mean_spread"].synthetic < 0.02 and not rows["bf_mean_spread"].within
    assert rows["bf_min_slice_std"].synthetic < 0.015 and not rows["bf_min_slice_std"].within


def test_realism_script_prints_the_verdict_line(nucenv_dir: Path, tmp_path: Path, capsys) -> None:
    module = load_script("synthetic_realism")
    out_csv = tmp_path / "realism.csv"
    assert module.main(["--real", str(nucenv_dir), "--cache-dir", str(tmp_path), "--csv", str(out_csv)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "realism: 18 of 18 statistics within tolerance"
    assert any("d' inside 0" in line for line in lines)
    assert out_csv.read_text().splitlines()[0].startswith("statistic,real,synthetic,tolerance,within")
    assert module.main(["--real", str(tmp_path / "nowhere")]) == 2


def test_data_synthetic_v1_is_one_override_for_the_legacy_generator(compose_cfg) -> None:
    calibrated = instantiate(compose_cfg("train", ["data=synthetic"]).data, _convert_="all")
    legacy = instantiate(compose_cfg("train", ["data=synthetic_v1"]).data, _convert_="all")
    assert calibrated.generator == GeneratorSettings()
    assert legacy.generator == GeneratorSettings.legacy()
    assert calibrated.cache_key() != legacy.cache_key()
