"""Importing MONAI GenerativeModels DiffusionModelUNet weights (reference format): same ε̂ as the old network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from conftest import require
from dm4isl.errors import CheckpointError
from dm4isl.models.checkpoint import load_model
from dm4isl.prediction.generative_import import import_generative, kernel_permutation, main

#: A small old-format network with attention at the deepest level, like the paper's.
OLD_NET = dict(num_channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
               norm_num_groups=8)
NEW_NET = {"name": "diffusion_unet", "channels": [8, 16], "attention_levels": [False, True], "num_res_blocks": 1,
           "num_head_channels": 8, "norm_num_groups": 8}
#: Spatial sizes in the reference order (Y, X, Z), all different so a wrong permutation cannot pass.
YXZ = (12, 8, 6)
ATOL = 1e-5


def _old_net() -> torch.nn.Module:
    require(importlib.util.find_spec("generative") is not None, "monai-generative (import generative) not installed")
    from generative.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    net = DiffusionModelUNet(spatial_dims=3, in_channels=2, out_channels=1, **OLD_NET).eval()
    with torch.no_grad():  # the output convolution starts at zero; give every weight a value
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def old_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    net = _old_net()
    path = tmp_path_factory.mktemp("gen") / "old.pt"
    torch.save({"model_state_dict": net.state_dict()}, path)
    return net, path


def _net_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "small_net.yaml"
    path.write_text(yaml.safe_dump(NEW_NET))
    return path


def _eps_pair(old: torch.nn.Module, ckpt: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂ of the imported checkpoint on (Z, Y, X) tensors, the old network's ε̂ on the same (Y, X, Z) data, permuted)."""
    model = load_model(ckpt)
    torch.manual_seed(1)
    bf_yxz, xt_yxz = torch.rand(2, 1, *YXZ), torch.randn(2, 1, *YXZ)
    t = torch.tensor([10, 700])
    to_zyx = kernel_permutation("YXZ")
    with torch.no_grad():
        ref = old(torch.cat([bf_yxz, xt_yxz], dim=1), timesteps=t)  # the reference: [brightfield, x_t], Z last
        eps = model.eps(xt_yxz.permute(*to_zyx), t, bf_yxz.permute(*to_zyx))
    return eps, ref.permute(*to_zyx)


@pytest.mark.parametrize("cond_first", [True, False])
def test_imported_network_gives_the_reference_eps(old_weights, tmp_path: Path, cond_first: bool) -> None:
    old, path = old_weights
    ckpt = import_generative(path, tmp_path / "new.ckpt", net=_net_yaml(tmp_path), organelle="nuclear_envelope",
                             patch_size=(6, 12, 8), cond_first=cond_first)
    hp = load_model(ckpt).hparams
    assert hp.cond_first is cond_first and hp.target_range == [0.0, 1.0] and hp.prediction_type == "epsilon"
    assert hp.test_sampler["mean_correction"] is False and hp.patch_size == [6, 12, 8]
    eps, ref = _eps_pair(old, ckpt)
    assert eps.shape == (2, 1, 6, 12, 8)
    assert float(ref.abs().mean()) > 0.01  # a non-trivial output
    torch.testing.assert_close(eps, ref, atol=ATOL, rtol=0)


def test_wrong_axes_or_used_projection_change_the_output(old_weights, tmp_path: Path) -> None:
    """Negative controls: the equivalence above depends on the kernel permutation and the identity projection."""
    old, path = old_weights
    net = _net_yaml(tmp_path)
    for kwargs in ({"old_axes": "ZYX"}, {"apply_proj_attn": True}):
        ckpt = import_generative(path, tmp_path / "wrong.ckpt", net=net, patch_size=(6, 12, 8), **kwargs)
        eps, ref = _eps_pair(old, ckpt)
        assert float((eps - ref).abs().max()) > 100 * ATOL, kwargs


def test_kernel_permutation_and_errors(old_weights, tmp_path: Path) -> None:
    assert kernel_permutation("YXZ") == (0, 1, 4, 2, 3)
    assert kernel_permutation("ZYX") == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="'YXQ'"):
        kernel_permutation("YXQ")
    _, path = old_weights
    with pytest.raises(CheckpointError, match=r"old\.pt: .*check --net"):
        import_generative(path, tmp_path / "x.ckpt", net="tiny")  # another architecture
    assert not (tmp_path / "x.ckpt").exists()
    with pytest.raises(CheckpointError, match=r"nope\.pt: file not found"):
        import_generative(tmp_path / "nope.pt", tmp_path / "x.ckpt", net=_net_yaml(tmp_path))


def test_imported_checkpoint_predicts_with_dm4isl_predict(old_weights, compose_cfg, tmp_path: Path) -> None:
    from dm4isl.predict import predict_command

    _, path = old_weights
    ckpt = tmp_path / "imported.ckpt"
    main([str(path), str(ckpt), "--net", str(_net_yaml(tmp_path)), "--patch-size", "4", "8", "8"])
    folder = tmp_path / "bf"
    folder.mkdir()
    tifffile.imwrite(folder / "v.tiff", np.random.default_rng(0).integers(0, 255, (4, 16, 12), dtype=np.uint8))
    out = tmp_path / "pred"
    rows = predict_command(compose_cfg("predict", [
        f"ckpt_path={ckpt}", f"input={folder}", f"output_dir={out}", "sampler=ddim", "sampler.num_steps=4",
        "sampler.mean_correction=false", "device=cpu",
    ]))
    assert rows[0]["model"] == "DDPMModule"
    pred = tifffile.imread(out / "DDPMavg" / "v.ome.tiff")
    assert pred.shape == (4, 16, 12) and np.isfinite(pred).all()
