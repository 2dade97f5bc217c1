"""Distributed training: DDP on CPU (trainer=ddp_sim) equals one process; cluster trainer and sweep launchers."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf, open_dict

from conftest import require
from dm4isl.train import train
from dm4isl.utils.instantiate import build_model, build_trainer, instantiate_group

#: Small synthetic data (Z, Y, X); odd numbers of validation and test patches so that DDP pads with repeats.
N_VAL, N_TEST = 5, 3
DATA = ["data.n_fovs=6", "data.fov_shape=[32,64,64]", "data.patch_size=[16,32,32]", "data.samples_per_epoch=4",
        f"data.n_val_patches={N_VAL}", f"data.n_test_patches={N_TEST}", "data.eval_batch_size=2", "data.batch_size=2"]
#: Tiny networks and a 3-step DDIM sampler; 3 of the 5 validation patches are sampled.
NETS = {
    "ddpm": ["model=ddpm", "model/net=tiny", "sampler=ddim_fast", "sampler.num_steps=3",
             "model.val_sampler.num_steps=3", "model.val_num_patches=3"],
    "unet": ["model=unet", "model.net.depth=2", "model.net.base_channels=4", "model.net.num_res_units=1"],
}
#: Methods the DDPM's test step writes to metrics.csv.
METHODS = {"DDPM", "DDPMavg", "linear"}
#: Extra overrides per trainer: forked DDP processes start in a fraction of a spawned one's time (no re-import).
SIM = {"cpu": [], "ddp_sim": ["trainer.strategy.start_method=fork"]}
#: Training-data sums of an untrained DDPM (count, Σbf, Σfl, Σbf², Σbf·fl): fl mean 0.3 and a linear baseline.
DATA_STATS = [1.0, 0.5, 0.3, 0.3, 0.2]
#: Agreement of metrics between one process and two (float32 sampling, batch-independent noise).
RTOL, ATOL = 1e-4, 1e-5


def _evaluate(compose_cfg, model: str, trainer: str, out: Path) -> tuple[dict[str, float], dict[str, float], list]:
    """Validate (and, for the DDPM, test) an untrained seeded model with ``trainer``.

    Returns the validation metrics, the test metrics and the rows of the prediction writer's metrics.csv (empty
    without a test). The U-Net is only validated: the scoring code is shared, and each DDP stage starts processes.
    """
    cfg = compose_cfg("train", [*DATA, *NETS[model], f"trainer={trainer}", "metrics=fast", *SIM[trainer]])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        del cfg.callbacks.progress_bar, cfg.callbacks.lr_monitor
    dm = instantiate(cfg.data, _convert_="all")
    L.seed_everything(int(cfg.seed))
    net = build_model(cfg)
    if model == "ddpm":
        net.data_stats += torch.tensor(DATA_STATS, dtype=torch.float64)
    tr = build_trainer(cfg, instantiate_group(cfg.callbacks))
    val = tr.validate(net, datamodule=dm, verbose=False)[0]
    if model != "ddpm":
        return val, {}, []
    test = tr.test(net, datamodule=dm, verbose=False)[0]
    with open(out / "predictions" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return val, test, rows


@pytest.mark.parametrize("model", [pytest.param("ddpm", marks=pytest.mark.slow), "unet"])
def test_ddp_sim_metrics_equal_one_process(compose_cfg, tmp_path: Path, model: str) -> None:
    one = _evaluate(compose_cfg, model, "cpu", tmp_path / "one")
    two = _evaluate(compose_cfg, model, "ddp_sim", tmp_path / "two")
    assert len(one[0]) >= 4, one[0]
    for single, sharded in zip(one[:2], two[:2], strict=True):
        assert set(single) == set(sharded)
        for key, value in single.items():
            assert sharded[key] == pytest.approx(value, rel=RTOL, abs=ATOL, nan_ok=True), key
    if model != "ddpm":
        return
    for rows in (one[2], two[2]):
        pairs = [(r["patch"], r["method"]) for r in rows]
        assert len(pairs) == len(set(pairs)) == N_TEST * len(METHODS)  # each test patch once per method
        assert {r["method"] for r in rows} == METHODS
    assert len(list((tmp_path / "two" / "predictions" / "GT").iterdir())) == N_TEST


def test_ddpm_trains_under_ddp_simulation(compose_cfg) -> None:
    cfg = compose_cfg("train", [*DATA, *NETS["ddpm"], "trainer=ddp_sim", *SIM["ddp_sim"], "debug=limit", "test=false",
                                "trainer.limit_train_batches=2", "trainer.max_epochs=1"])
    metrics = train(cfg)
    assert math.isfinite(metrics["val/ddpmavg_pcc"]) and math.isfinite(metrics["train/loss"])
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


# --- cluster trainer and sweep launchers -----------------------------------------------------------------------------
@pytest.mark.parametrize("launcher", ["joblib", "slurm"])
def test_launchers_compose(compose_cfg, launcher: str) -> None:
    plugin = {"joblib": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher"}
    require(_importable(plugin[launcher]), f"{plugin[launcher]} is not installed (pip install -e '.[launchers]')")
    cfg = compose_cfg("train", [f"hydra/launcher={launcher}", "trainer=slurm"], return_hydra_config=True)
    node = cfg.hydra.launcher
    assert get_class(node._target_).__name__ == {"joblib": "JoblibLauncher", "slurm": "SlurmLauncher"}[launcher]
    if launcher == "slurm":
        assert node.gpus_per_node == 1 and node.tasks_per_node == 1 and node.nodes == 1  # one GPU per sweep point
        assert {"partition", "timeout_min", "mem_gb"} <= set(node)
    else:
        assert node.n_jobs == 2
    trainer = OmegaConf.to_container(cfg.trainer, resolve=False)
    assert trainer["strategy"] == "ddp" and trainer["num_nodes"] == 2 and trainer["accelerator"] == "gpu"


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.mark.slow
def test_joblib_multirun_of_two_fast_dev_runs(tmp_path: Path, data_cache_dir: Path) -> None:
    require(_importable("hydra_plugins.hydra_joblib_launcher"), "hydra-joblib-launcher is not installed")
    script = Path(sys.executable).parent / "dm4isl-train"
    overrides = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "debug=fast_dev_run", *DATA,
                 "model=unet", *NETS["unet"][1:], "seed=1,2", "run_name=sweep", "logger=csv"]
    env = {**os.environ, "DM4ISL_ROOT": str(tmp_path), "DM4ISL_DATA_DIR": str(data_cache_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(script), *overrides], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "outputs" / "debug" / "multiruns" / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    seeds = {OmegaConf.load(sweep / job / ".hydra" / "config.yaml").seed for job in jobs}
    assert seeds == {1, 2}
    assert (sweep / "multirun.yaml").is_file()
