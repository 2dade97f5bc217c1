"""Resuming training: ckpt_path=last|auto, mid-epoch resume equal to an uninterrupted run, SIGKILL survival."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dm4isl.data.datamodule import RandomCropDataset
from dm4isl.data.patches import Volume
from dm4isl.errors import CheckpointError
from dm4isl.sampling.noise import training_noise
from dm4isl.train import train
from dm4isl.utils.resume import (
    LAST_CKPT,
    AtomicCheckpointIO,
    checkpoint_dir,
    resolve_ckpt_path,
    wandb_run_id,
)

#: A tiny, fast training run: 4 batches of 2 crops per epoch, last.ckpt every 3 steps (mid-epoch), no validation.
MAX_STEPS = 12
BATCHES_PER_EPOCH = 4
EVERY = 3
TINY = [
    "model/net=tiny",
    "data.patch_size=[8,32,32]",
    "data.samples_per_epoch=8",
    "data.batch_size=2",
    "data.n_val_patches=2",
    "data.n_test_patches=2",
    "model.lr=1e-3",
    f"trainer.max_steps={MAX_STEPS}",
    "+trainer.limit_val_batches=0",
    "trainer.enable_model_summary=false",
    f"checkpoint_every_n_steps={EVERY}",
    "test=false",
    "seed=7",
]
#: How long the killed run may take to write its first checkpoint, and how often it is polled.
START_TIMEOUT_S = 300
POLL_S = 0.02


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    """Same step, weights, training statistics and Adam moments (allclose 1e-6)."""
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], atol=1e-6, rtol=0, msg=key)
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert opt_a.keys() == opt_b.keys()
    for idx in opt_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_a[idx][name], opt_b[idx][name], atol=1e-6, rtol=0)
    assert a["lr_schedulers"] == b["lr_schedulers"]


# --- plain functions ---------------------------------------------------------------------------------------------
def test_resolve_ckpt_path(tmp_path: Path) -> None:
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("auto", tmp_path) is None  # nothing yet: fresh start
    with pytest.raises(CheckpointError, match=f"no {LAST_CKPT} in .*checkpoints; start without ckpt_path"):
        resolve_ckpt_path("last", tmp_path)
    with pytest.raises(CheckpointError, match="file not found"):
        resolve_ckpt_path(tmp_path / "missing.ckpt", tmp_path)
    last = checkpoint_dir(tmp_path) / LAST_CKPT
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert resolve_ckpt_path("last", tmp_path) == str(last)
    assert resolve_ckpt_path("auto", tmp_path) == str(last)


def test_offset_dataset_continues_the_epoch() -> None:
    rng = np.random.default_rng(0)
    vol = Volume("v", rng.random((8, 32, 32), dtype=np.float32), rng.random((8, 32, 32), dtype=np.float32))
    args = ([vol], (4, 16, 16), 10, 0.0, 5, {"flip_x": 0.5}, 3, 2)
    full, resumed = RandomCropDataset(*args), RandomCropDataset(*args, offset=6)
    assert len(resumed) == len(full) == 10  # the loader keeps its length: Lightning counts the batches seen
    for i in range(4):
        a, b = full[6 + i], resumed[i]
        assert int(a["index"]) == int(b["index"]) == 2 * 10 + 6 + i
        assert torch.equal(a["fl"], b["fl"]) and torch.equal(a["bf"], b["bf"])


def test_training_noise_depends_on_patch_id_only() -> None:
    like = torch.zeros(3, 1, 4, 8, 8)
    noise, t = training_noise(torch.tensor([5, 9, 11]), like, 1000, seed=1)
    torch.manual_seed(123)  # the global random state plays no part
    noise2, t2 = training_noise(torch.tensor([9, 11]), like[:2], 1000, seed=1)
    assert noise.shape == like.shape and noise.dtype == torch.float32 and t.shape == (3,)
    assert torch.equal(noise[1:], noise2) and torch.equal(t[1:], t2)
    assert not torch.equal(noise[0], noise[1])
    assert int(t.min()) >= 0 and int(t.max()) < 1000
    other, _ = training_noise(torch.tensor([5]), like[:1], 1000, seed=2)
    assert not torch.equal(other[0], noise[0])


def test_atomic_checkpoint_io_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning.fabric.plugins.io.torch_io as torch_io

    io = AtomicCheckpointIO()
    path = tmp_path / LAST_CKPT
    io.save_checkpoint({"w": torch.ones(2)}, path)

    def killed_mid_write(checkpoint: dict, filepath: str) -> None:
        Path(filepath).write_bytes(b"PK\x03\x04 truncated")
        raise OSError("process killed while writing")

    monkeypatch.setattr(torch_io, "_atomic_save", killed_mid_write)
    with pytest.raises(OSError, match="killed"):
        io.save_checkpoint({"w": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_CKPT]  # no temporary file left behind


def test_wandb_run_id_is_kept(tmp_path: Path) -> None:
    first = wandb_run_id(tmp_path)
    assert len(first) == 8 and first.isalnum() and first == first.lower()
    assert wandb_run_id(tmp_path) == first
    assert wandb_run_id(tmp_path / "other", write=False) != first
    assert not (tmp_path / "other").exists()


# --- resuming a fit ---------------------------------------------------------------------------------------------
def test_mid_epoch_resume_equals_uninterrupted_run(compose_cfg, tmp_path: Path) -> None:
    """Stop at step 6 (mid-epoch 1), resume with ckpt_path=last to step 12: same weights as 12 steps in one go.

    Only the step checkpoint writes ``last.ckpt`` (``callbacks=none``): a run that *ends* at max_steps also saves
    a finished-run ``last.ckpt``, whose resume starts a new epoch; a killed run's newest file is the step checkpoint.
    """
    ref_cfg = compose_cfg("train", [*TINY, "callbacks=none"])
    train(ref_cfg)
    ref = _state(checkpoint_dir(ref_cfg.paths.output_dir) / LAST_CKPT)

    cut_cfg = compose_cfg("train", [*TINY, "callbacks=none", "trainer.max_steps=6"])
    cut_cfg.paths.output_dir = str(tmp_path / "outputs" / "cut")
    train(cut_cfg)
    stopped = _state(checkpoint_dir(cut_cfg.paths.output_dir) / LAST_CKPT)
    assert stopped["global_step"] == 6 and stopped["global_step"] % BATCHES_PER_EPOCH != 0
    assert stopped["SyntheticDataModule"] == {"epoch": 1, "batches_done": 2}

    resume_cfg = compose_cfg("train", [*TINY, "callbacks=none", "ckpt_path=last"])
    resume_cfg.paths.output_dir = cut_cfg.paths.output_dir
    train(resume_cfg)
    _assert_same_training_state(ref, _state(checkpoint_dir(cut_cfg.paths.output_dir) / LAST_CKPT))


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path: Path, data_cache_dir: Path) -> None:
    """A training process killed with SIGKILL mid-run resumes (ckpt_path=last) to the weights of an unkilled run."""

    def command(run_name: str, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "dm4isl.train", *TINY, *extra,
            f"paths.root_dir={tmp_path}", f"paths.data_dir={data_cache_dir}", f"paths.log_dir={tmp_path}/outputs",
            "task_name=resume", f"run_name={run_name}", "hydra/job_logging=disabled",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    run_dir = tmp_path / "outputs" / "resume" / "runs"
    subprocess.run(command("full"), check=True, env=env, capture_output=True, timeout=START_TIMEOUT_S)

    last = checkpoint_dir(run_dir / "killed") / LAST_CKPT
    proc = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=START_TIMEOUT_S) == -signal.SIGKILL
    step = _state(last)["global_step"]
    assert 0 < step < MAX_STEPS and step % EVERY == 0 and step % BATCHES_PER_EPOCH != 0  # killed mid-epoch

    subprocess.run(command("killed", "ckpt_path=last"), check=True, env=env, capture_output=True,
                   timeout=START_TIMEOUT_S)
    _assert_same_training_state(_state(checkpoint_dir(run_dir / "full") / LAST_CKPT), _state(last))


def test_gan_mid_epoch_resume_equals_uninterrupted_run(compose_cfg, tmp_path: Path) -> None:
    """The GAN takes two optimiser steps per batch (global_step counts both): a resume at 12 of 24 steps is exact."""
    from test_baselines import SMALL_DATA, SMALL_NET

    gan = ["model=gan", *SMALL_DATA, *SMALL_NET["gan"], "data.samples_per_epoch=8", "data.batch_size=2",
           "+trainer.limit_val_batches=0", "checkpoint_every_n_steps=6", "test=false", "seed=7", "callbacks=none",
           "trainer.max_epochs=100"]
    states = {}
    for name, extra in (("ref", ["trainer.max_steps=24"]), ("cut", ["trainer.max_steps=12"]),
                        ("cut", ["trainer.max_steps=24", "ckpt_path=last"])):
        cfg = compose_cfg("train", [*gan, *extra])
        cfg.paths.output_dir = str(tmp_path / "outputs" / name)
        train(cfg)
        states[name] = _state(checkpoint_dir(cfg.paths.output_dir) / LAST_CKPT)
        if name == "cut" and "states_cut" not in states:
            states["states_cut"] = states[name]
            assert states[name]["global_step"] == 12 and states[name]["SyntheticDataModule"]["batches_done"] == 2
    ref, res = states["ref"], states["cut"]
    assert ref["global_step"] == res["global_step"] == 24
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(value, res["state_dict"][key], atol=1e-6, rtol=0, msg=key)
