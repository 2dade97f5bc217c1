"""Shared fixtures: the reference patches in ../shared, Hydra config composition, the slow-test switch."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "dm4isl" / "conf"
NUCENV_DIR = REPO_ROOT.parent / "shared" / "data" / "nucenv_reference"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: The smallest DiffusionModelUNet the unit tests train (two levels of 8 channels), and a nuclear-envelope organelle
#: with the published windows and an isotropic voxel size.
MICRO_NET = {"name": "diffusion_unet", "channels": [8, 8], "attention_levels": [False, False], "num_res_blocks": 1,
             "num_head_channels": 8, "norm_num_groups": 8}
MICRO_ORGANELLE = {"name": "nuclear_envelope", "bf_window": [12000, 55000], "fl_window": [390, 1500],
                   "voxel_size": [0.29, 0.29, 0.29]}
#: Golden values of ../shared/data/nucenv_reference/README.md: pooled PCC, pooled MSE, mean MS-SSIM vs GT.
GOLDEN = {
    "DDPM": (0.8426, 0.0081, 0.8722),
    "DDPMavg": (0.8728, 0.0062, 0.8911),
    "FL_pred": (0.8400, 0.0092, 0.8666),
    "FLavg_pred": (0.8704, 0.0067, 0.8879),
    "Unet": (0.8516, 0.0087, 0.8587),
    "GAN": (0.8663, 0.0079, 0.8709),
}
#: The README's tolerance for a correct metrics module.
GOLDEN_TOL = 5e-4


#: Spread of the noise :func:`perturb_` adds to a stand-in network's weights.
PERTURB_STD = 0.05


def perturb_(net, seed: int = 0, std: float = PERTURB_STD):
    """Add seeded Gaussian noise to every weight of ``net`` (in place) and return it.

    MONAI zero-initialises the output layer of its diffusion U-Net, so an untrained stand-in predicts the same
    constant for every input: a test that a product belongs to its input, or that two products differ, cannot fail
    on it. A perturbed net's outputs depend on its input.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * std)
    return net


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("DM4ISL_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: run with --runslow or DM4ISL_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (the scripts folder is not a package), registered under ``name``
    so that its dataclasses can look their module up."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def require(condition: bool, reason: str) -> None:
    """Skip with ``reason`` when ``condition`` is false — but fail under CI=true, where nothing may be missing.

    Every skip for missing data or a missing extra goes through here (also at module level), never through
    ``pytest.skip`` or ``pytest.importorskip`` directly: tests/test_ci.py checks it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def nucenv_dir() -> Path:
    """The 5 real nuclear-envelope reference patches (../shared/data/nucenv_reference)."""
    require(NUCENV_DIR.is_dir(), f"reference patches not found at {NUCENV_DIR} (../shared beside the repository)")
    return NUCENV_DIR


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network: W&B offline, Hugging Face offline."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data/cache folder for the whole test session (synthetic FOVs are generated once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture()
def compose_cfg(tmp_path: Path, data_cache_dir: Path):
    """Compose a Hydra config of ``dm4isl/conf`` with overrides; paths point into ``tmp_path``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    def _compose(config_name: str = "train", overrides: list[str] | None = None, return_hydra_config: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose(config_name, overrides=list(overrides or []), return_hydra_config=return_hydra_config)
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.data_dir = str(data_cache_dir)
            cfg.paths.log_dir = str(tmp_path / "outputs")
            cfg.paths.output_dir = str(tmp_path / "outputs" / "run")
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
