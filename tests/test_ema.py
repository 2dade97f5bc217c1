"""EMA of the weights (callbacks=ema): update rule, validation/checkpoint use of the EMA weights, a tiny fit."""

from __future__ import annotations

import pytest
import torch

from dm4isl.callbacks.ema import EMA, WARMUP_OFFSET, warmup_decay
from dm4isl.models.checkpoint import load_model
from dm4isl.train import train
from dm4isl.utils.resume import LAST_CKPT, checkpoint_dir

FIT = [
    "model/net=tiny",
    "callbacks=ema",
    "data.patch_size=[8,32,32]",
    "data.samples_per_epoch=8",
    "data.batch_size=2",
    "data.n_val_patches=2",
    "data.n_test_patches=2",
    "model.val_num_patches=1",
    "model.val_sampler.num_steps=4",
    "model.val_sampler.window=[0,1000]",
    "model.lr=1e-3",
    "trainer.max_steps=4",
    "trainer.enable_model_summary=false",
    "checkpoint_every_n_steps=0",
    "test=false",
    "seed=3",
]


def test_warmup_decay() -> None:
    assert warmup_decay(0.999, 0) == pytest.approx(1 / WARMUP_OFFSET)
    assert warmup_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmup_decay(0.999, 10**6) == 0.999
    assert warmup_decay(0.9, 5, warmup=False) == 0.9
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)


def test_ema_update_rule() -> None:
    ema = EMA(decay=0.5, warmup=False)
    averaged = ema._average(torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor(7))
    assert torch.equal(averaged, torch.tensor([2.0]))


def test_callbacks_ema_fit_stores_ema_weights(compose_cfg) -> None:
    """callbacks=ema composes and fits; checkpoints hold the EMA weights (live ones kept for resuming)."""
    cfg = compose_cfg("train", FIT)
    assert list(cfg.callbacks)[-1] == "ema" and "model_checkpoint" in cfg.callbacks
    train(cfg)
    ckpt = torch.load(checkpoint_dir(cfg.paths.output_dir) / LAST_CKPT, map_location="cpu", weights_only=True)
    ema_sd, live_sd = ckpt["state_dict"], ckpt["current_model_state"]
    weights = [k for k in ema_sd if k.endswith("weight")]
    assert any(not torch.equal(ema_sd[k], live_sd[k]) for k in weights)  # the two differ after a few steps
    assert torch.equal(ema_sd["data_stats"], live_sd["data_stats"])  # buffers: exact, never averaged
    assert float(ema_sd["data_stats"][0]) > 0
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"] > 0  # one update per optimizer step
    model = load_model(checkpoint_dir(cfg.paths.output_dir) / LAST_CKPT)  # prediction loads the EMA weights
    for key in weights:
        assert torch.equal(model.state_dict()[key], ema_sd[key])


def test_ema_follows_the_warmup_recursion() -> None:
    """With warm-up decay (1+n)/(10+n) and a linear parameter trajectory the EMA lags the live value."""
    ema = EMA(decay=0.999)
    values = [torch.tensor([float(k)]) for k in range(1, 21)]
    avg = values[0].clone()
    for n, v in enumerate(values[1:], start=1):
        avg = ema._average(avg, v, torch.tensor(n))
    assert 1.0 < float(avg) < 20.0
    d = [warmup_decay(0.999, n) for n in range(1, 20)]
    expected = 1.0
    for n, dn in enumerate(d, start=2):
        expected = dn * expected + (1 - dn) * n
    assert float(avg) == pytest.approx(expected, rel=1e-6)
