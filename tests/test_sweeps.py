"""Hydra multirun sweeps over experiments, organelles and models, and the Optuna search of hparams_search/."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn

from conftest import CONF_DIR
from dm4isl.train import main as train_main

ORGANELLES = ["actin", "dna", "microtubules", "mitochondria", "nuclear_envelope", "nucleoli"]
#: One training batch, tiny synthetic data (FOVs of 32 x 64 x 64, crops and evaluation patches of 16 x 32 x 32).
FAST = ["debug=fast_dev_run", "data.n_fovs=6", "data.fov_shape=[32,64,64]", "data.patch_size=[16,32,32]",
        "data.eval_patch_size=[16,32,32]"]
#: CPU-sized networks per model family, as overrides valid for every experiment of that family.
SMALL_NET = {
    "ddpm": ["model/net=tiny", "sampler=ddim_fast", "sampler.num_steps=5", "model.val_sampler.num_steps=5"],
    "unet": ["model.net.depth=2", "model.net.base_channels=4", "model.net.num_res_units=1"],
    "gan": ["model.generator.depth=2", "model.generator.base_channels=4", "model.generator.num_res_units=1",
            "model.discriminator.channels=4", "model.discriminator.num_layers=1"],
}
#: The search space of conf/hparams_search/ddpm_optuna.yaml, as the trials must see it.
OPTUNA_LR = (1.0e-5, 3.0e-3)
OPTUNA_LOSSES = {"l1", "l2"}
OPTUNA_WINDOWS = {"[200,800]", "[300,800]", "[400,900]", "[100,600]"}


@pytest.fixture()
def multirun(tmp_path: Path, data_cache_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``dm4isl-train -m <overrides>`` in this process (Hydra's multirun, the task function of ``dm4isl.train``)
    from ``tmp_path``; returns every job's :class:`JobReturn` (return value = the monitored validation metric)."""
    monkeypatch.chdir(tmp_path)
    # Sweepers resolve the sweep folder before Hydra's runtime exists: paths.root_dir must not fall back to
    # ${hydra:runtime.cwd} there, so the root is given
    monkeypatch.setenv("DM4ISL_ROOT", str(tmp_path))
    monkeypatch.setenv("DM4ISL_DATA_DIR", str(data_cache_dir))

    def _run(overrides: list[str]) -> list[JobReturn]:
        GlobalHydra.instance().clear()
        app = Hydra.create_main_hydra2("train", create_config_search_path(str(CONF_DIR)))
        try:
            batches = app.multirun("train", train_main.__wrapped__, [*overrides, "run_name=sweep"],
                                   with_log_configuration=False)
        finally:
            GlobalHydra.instance().clear()
        return [job for batch in batches or [] for job in batch]

    return _run


def _check_jobs(jobs: list[JobReturn], expected: list[tuple[str, str]]) -> None:
    """Every job finished, returned its finite monitored metric and ran the expected (organelle, model target)."""
    assert len(jobs) == len(expected)
    for job, (organelle, target) in zip(jobs, expected, strict=True):
        value = job.return_value  # re-raises the job's exception if it failed
        assert isinstance(value, float) and math.isfinite(value) and -1.0 <= value <= 1.0, (job.overrides, value)
        assert job.cfg.organelle.name == organelle and job.cfg.model._target_.endswith(target)
        assert Path(job.hydra_cfg.hydra.runtime.output_dir, ".hydra", "overrides.yaml").is_file()


def test_multirun_experiments(multirun, tmp_path: Path) -> None:
    jobs = multirun(["experiment=demo,study", *FAST, *SMALL_NET["ddpm"]])
    _check_jobs(jobs, [("nuclear_envelope", "DDPMModule"), ("nuclear_envelope", "DDPMModule")])
    assert [j.cfg.monitor for j in jobs] == ["val/ddpmavg_pcc"] * 2
    # fast_dev_run names the task "debug": one numbered folder per job under the sweep folder
    sweep = tmp_path / "outputs" / "debug" / "multiruns" / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert [Path(j.hydra_cfg.hydra.runtime.output_dir) for j in jobs] == [sweep / "0", sweep / "1"]


def test_multirun_organelles_by_model(multirun) -> None:
    jobs = multirun(["organelle=dna,nucleoli", "model=unet", *FAST, *SMALL_NET["unet"]])
    _check_jobs(jobs, [("dna", "UNetModule"), ("nucleoli", "UNetModule")])
    assert [j.cfg.monitor for j in jobs] == ["val/pcc"] * 2


@pytest.mark.slow
def test_multirun_every_organelle_and_model(multirun) -> None:
    targets = {"ddpm": "DDPMModule", "unet": "UNetModule", "gan": "GANModule"}
    for model, target in targets.items():
        jobs = multirun([f"organelle={','.join(ORGANELLES)}", f"model={model}", *FAST, *SMALL_NET[model]])
        _check_jobs(jobs, [(o, target) for o in ORGANELLES])


def test_optuna_config_searches_the_validation_window(compose_cfg) -> None:
    cfg = compose_cfg("train", ["hparams_search=ddpm_optuna", "sampler.window=[400,900]"], return_hydra_config=True)
    assert list(cfg.model.val_sampler.window) == [400, 900]  # validation scores the searched window
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.monitor == "val/ddpmavg_pcc" and cfg.test is False


def test_optuna_tiny_search(multirun, tmp_path: Path) -> None:
    overrides = ["hparams_search=ddpm_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                 *FAST, *SMALL_NET["ddpm"]]
    multirun(overrides)
    sweep = tmp_path / "outputs" / "debug" / "multiruns" / "sweep"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and math.isfinite(results["best_value"])
    best = results["best_params"]
    assert OPTUNA_LR[0] <= best["model.lr"] <= OPTUNA_LR[1]
    assert best["model.loss"] in OPTUNA_LOSSES and best["sampler.window"] in OPTUNA_WINDOWS
    trials = []
    for trial in ("0", "1"):
        applied = yaml.safe_load((sweep / trial / ".hydra" / "overrides.yaml").read_text())
        trials.append({o.split("=", 1)[0]: o.split("=", 1)[1] for o in applied if o.split("=", 1)[0] in best})
    assert len(trials[0]) == len(best) and trials[0] != trials[1]  # each trial ran its own sampled parameters
