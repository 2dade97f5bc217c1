"""Every Hydra config composes; datamodules and trainers instantiate from their ``_target_`` keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO_ROOT

ORGANELLES = ["actin", "dna", "microtubules", "mitochondria", "nuclear_envelope", "nucleoli"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_all_six_organelles_present() -> None:
    assert _options("organelle") == sorted([*ORGANELLES, "custom"])


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_organelle_values(compose_cfg, organelle: str) -> None:
    org = compose_cfg("train", [f"organelle={organelle}"]).organelle
    lo, hi = org.fl_window
    assert org.name == organelle and hi > lo and org.bf_window[1] > org.bf_window[0]
    assert org.std_th > 0 and org.inter_std_threshold == 0.1
    # true voxel size of the resampled Allen arrays (files) vs the paper's 0.29 µm convention (metrics)
    assert list(org.voxel_size) == pytest.approx([0.29, 0.108 * 624 / 244, 0.108 * 924 / 366], abs=1e-8)
    assert list(org.metric_voxel_size) == [0.29, 0.29, 0.29]
    expected = {"dna": 0.045, "nuclear_envelope": 0.055, "nucleoli": 0.065, "actin": 0.09, "microtubules": 0.04}
    assert org.intra_std_threshold == expected.get(organelle)


@pytest.mark.parametrize(
    "group",
    [
        "data",
        "organelle",
        "trainer",
        "logger",
        "callbacks",
        "debug",
        "experiment",
        "model",
        "sampler",
        "hparams_search",
    ],
)
def test_every_option_composes(compose_cfg, group: str, tmp_path: Path) -> None:
    overrides_for = {"data": {"patch_folder": [f"data.root={tmp_path}"]}}
    for option in _options(group):
        cfg = compose_cfg("train", [f"{group}={option}", *overrides_for.get(group, {}).get(option, [])])
        OmegaConf.resolve(cfg)  # every interpolation resolves
        assert cfg.monitor.startswith("val/")


def test_synthetic_datamodule_instantiates(compose_cfg) -> None:
    cfg = compose_cfg("train", ["data.n_fovs=8", "data.fov_shape=[24,96,96]"])
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.patch_size == [16, 64, 64] and dm.organelle["name"] == "nuclear_envelope"
    assert dm.threshold == pytest.approx(70 / 1110)


def test_patch_folder_datamodule_instantiates(compose_cfg, nucenv_dir: Path) -> None:
    cfg = compose_cfg("train", ["data=patch_folder", f"data.root={nucenv_dir}"])
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.root == nucenv_dir and dm.intensity == "auto"


@pytest.mark.parametrize("trainer", ["cpu", "ddp_sim"])
def test_trainers_instantiate(compose_cfg, trainer: str) -> None:
    cfg = compose_cfg("train", [f"trainer={trainer}"])
    t = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert t.max_epochs == cfg.trainer.max_epochs
    if trainer == "ddp_sim":
        assert cfg.trainer.devices == 2
        assert cfg.trainer.strategy.start_method == "spawn" and cfg.trainer.strategy.process_group_backend == "gloo"


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "many"])
def test_loggers_instantiate_and_log_offline(compose_cfg, logger: str) -> None:
    """Every logger config builds and writes a metric without network access (W&B offline)."""
    from conftest import require
    from dm4isl.utils.instantiate import finish_loggers, instantiate_group

    if logger in ("tensorboard", "many"):
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            require(False, "the tensorboard extra (tensorboardX) is not installed: pip install -e '.[tensorboard]'")
    cfg = compose_cfg("train", [f"logger={logger}"])
    loggers = instantiate_group(cfg.logger)
    assert len(loggers) == (2 if logger == "many" else 1)
    for lg in loggers:
        lg.log_metrics({"val/ddpmavg_pcc": 0.5}, step=1)
        lg.finalize("success")
    finish_loggers(loggers)  # close the W&B run: a later run in this process must start its own
    out = Path(cfg.paths.output_dir)
    assert out.is_dir() and any(out.rglob("*"))


@pytest.mark.parametrize("organelle", ORGANELLES)
def test_paper_recipe_is_the_ddpm_experiments_method(compose_cfg, organelle: str) -> None:
    """Every organelle's DDPM (organelle=<name> model=ddpm, the defaults) runs the published method (SPEC §2–3),
    value by value."""
    cfg = compose_cfg("train", [f"organelle={organelle}", "model=ddpm"])
    OmegaConf.resolve(cfg)
    m = cfg.model
    assert cfg.recipe.name == "paper"
    assert (m.prediction_type, m.loss, m.loss_weighting, m.lr, m.lr_schedule, m.warmup_steps) == (
        "epsilon", "l1", "none", 2.5e-5, "constant", 0)
    assert list(m.target_range) == [0.0, 1.0] and m.cond_norm == "none" and m.cond_first
    assert dict(m.schedule) == {"num_train_timesteps": 1000, "beta_start": 0.0005, "beta_end": 0.0195,
                                "kind": "scaled_linear"}
    assert cfg.data.batch_size == 4 and list(cfg.data.patch_size) == [16, 64, 64]
    assert list(m.net.channels) == [128, 256, 256, 512] and list(m.net.attention_levels) == [False] * 3 + [True]
    test = m.test_sampler
    assert (test.method, test.num_steps, list(test.window), list(test.clip_x0), test.mean_correction) == (
        "ddpm", None, [300, 800], [-1.0, 1.0], False)
    assert (test.noise, test.output) == ("per_patch", "clip")  # the reference's flaws stay fixed
    assert m.val_sampler.mean_correction is False
    assert cfg.data.split_fractions.val > 0


def test_fast_recipe_and_demo_deviate_only_where_documented(compose_cfg) -> None:
    cfg = compose_cfg("train", ["recipe=fast"])
    OmegaConf.resolve(cfg)
    assert cfg.model.test_sampler.method == "ddim" and cfg.model.prediction_type != "epsilon"
    demo = compose_cfg("train", ["experiment=demo"])
    OmegaConf.resolve(demo)
    assert demo.recipe.name == "fast" and demo.trainer.max_time is None and demo.trainer.max_steps > 0
    # budgeted in steps, and validated (checkpoint choice) at least twice, the last time at the final step
    steps_per_val = demo.data.samples_per_epoch // demo.data.batch_size * demo.trainer.check_val_every_n_epoch
    assert demo.trainer.max_steps % steps_per_val == 0 and demo.trainer.max_steps // steps_per_val >= 2
    # every crop the net sees fits its downsampling (the demo trains on 24 px crops)
    from dm4isl.models.nets import downsampling_factor

    factor = downsampling_factor(demo.model.net)
    for key in ("patch_size", "val_patch_size", "eval_patch_size"):
        assert all(int(n) % factor == 0 for n in demo.data[key]), (key, list(demo.data[key]), factor)


#: The rows of the README's recipe table ("Recipes: the paper's method, and a measured fast variant") and the config
#: keys each row is about (the std thresholds are no config key: calibrated on validation).
RECIPE_ROWS = {
    "network output, loss": {"recipe.prediction_type", "recipe.loss", "recipe.loss_weighting"},
    "fluorescence range in training": {"recipe.target_range"},
    "brightfield fed to the network": {"recipe.cond_norm"},
    "optimiser": {"recipe.lr", "recipe.lr_schedule", "recipe.warmup_steps"},
    "test / predict sampler": {"sampler.name", "sampler.method", "sampler.num_steps", "sampler.eta"},
    "DDPMavg window, x̂0 clip": {"sampler.window", "sampler.clip_x0"},
    "ε̂ mean correction": {"sampler.mean_correction"},
    "std thresholds": set(),
}


def _flat(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _recipe_table() -> dict[str, tuple[str, str]]:
    """``{setting: (paper cell, fast cell)}`` of the README's recipe table."""
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| setting | `recipe=paper` (default) | `recipe=fast` |")
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        setting, paper, fast = (cell.strip() for cell in line.strip("|").split("|"))
        rows[setting] = (paper, fast)
    return rows


def test_fast_recipe_deviates_from_paper_exactly_as_the_readme_table_says(compose_cfg) -> None:
    """Every config key that differs between recipe=paper and recipe=fast is a row of the README's table whose fast
    column says how it differs; every row whose fast column says "same" (or repeats the paper's value) differs in
    no key."""
    from omegaconf import OmegaConf

    paper = _flat(OmegaConf.to_container(compose_cfg("train", ["recipe=paper"]), resolve=False))
    fast = _flat(OmegaConf.to_container(compose_cfg("train", ["recipe=fast"]), resolve=False))
    differ = {k for k in set(paper) | set(fast) if paper.get(k) != fast.get(k)} - {"recipe.name"}
    table = _recipe_table()
    assert set(table) == set(RECIPE_ROWS)
    documented = set()
    for setting, (paper_cell, fast_cell) in table.items():
        keys = RECIPE_ROWS[setting]
        assert keys <= set(paper), (setting, keys - set(paper))  # the mapping names real keys
        same = fast_cell.startswith("same") or fast_cell.split(" (")[0] == paper_cell.split(" (")[0]
        if same:
            assert not keys & differ, (setting, sorted(keys & differ))
        else:
            assert not keys or keys & differ, (setting, "documented as different, but no key differs")
            documented |= keys & differ
    assert differ == documented, sorted(differ ^ documented)


def test_recipe_does_not_touch_baselines(compose_cfg) -> None:
    for model in ("unet", "gan"):
        cfg = compose_cfg("train", [f"model={model}", "recipe=fast"])
        OmegaConf.resolve(cfg)
        assert "prediction_type" not in cfg.model and "target_range" not in cfg.model


def test_compose_config_for_scripts(tmp_path) -> None:
    """Scripts compose configs through one helper: overrides applied, run paths set, Hydra left clean."""
    from hydra.core.global_hydra import GlobalHydra

    from dm4isl.utils.compose import compose_config

    cfg = compose_config("train", ["experiment=demo", "seed=3"], output_dir=tmp_path / "run", data_dir=tmp_path)
    assert cfg.seed == 3 and cfg.task_name == "demo"
    assert cfg.paths.output_dir == str(tmp_path / "run") and cfg.paths.data_dir == str(tmp_path)
    assert not GlobalHydra.instance().is_initialized()
