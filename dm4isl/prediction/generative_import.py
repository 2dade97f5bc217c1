"""Import MONAI GenerativeModels ``DiffusionModelUNet`` weights (the published DM4ISL format) as a dm4isl checkpoint.

The reference implementation trained ``generative.networks.nets.DiffusionModelUNet`` (MONAI GenerativeModels
0.2.x) on tensors ``(B, C, Y, X, Z)`` with ``[brightfield, x_t]`` on the channel axis. dm4isl runs MONAI's own
``monai.networks.nets.DiffusionModelUNet`` on ``(B, C, Z, Y, X)``. The conversion

* renames the keys that changed between the two libraries (attention projections, the upsampling convolution),
* sets each attention block's output projection to the identity: GenerativeModels 0.2's ``AttentionBlock`` holds
  a ``proj_attn`` layer but never applies it in ``forward``, so the trained network never used those weights,
* permutes every 3-D convolution kernel from the old axis order to ``(Z, Y, X)`` — the rest of the network
  (group norms, attention over all voxels, nearest-neighbour upsampling, symmetric strides) does not depend on the
  axis order, so the imported network gives the same ε̂ up to that permutation,
* swaps the two input channels when the dm4isl checkpoint is to concatenate ``[x_t, brightfield]``,

and writes a Lightning-format checkpoint that ``dm4isl-predict`` and :func:`dm4isl.predict` load like a trained one.
Run ``python -m dm4isl.prediction.generative_import OLD.pt NEW.ckpt --net paper --organelle nuclear_envelope``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from dm4isl.conf import CONF_DIR
from dm4isl.errors import CheckpointError
from dm4isl.io.atomic import atomic_path
from dm4isl.io.provenance import git_revision
from dm4isl.models.checkpoint import ARRAY_AXES, PROVENANCE_KEY, fingerprint, provenance_block
from dm4isl.models.ddpm import DDPMModule

#: Axis order of the reference's spatial tensors, ``(B, C, Y, X, Z)`` (SPEC §6).
REFERENCE_AXES = "YXZ"
#: Key renames from MONAI GenerativeModels 0.2 to MONAI 1.4+ ``DiffusionModelUNet`` (old fragment, new fragment).
KEY_RENAMES = (
    (".to_q.", ".attn.to_q."),
    (".to_k.", ".attn.to_k."),
    (".to_v.", ".attn.to_v."),
    (".proj_attn.", ".attn.out_proj."),
    (".upsampler.conv.", ".upsampler.postconv."),
    (".to_out.0.", ".out_proj."),
)
#: The old attention blocks' output projection, which their ``forward`` skips (see the module docstring).
UNUSED_PROJECTION = ".proj_attn."
#: Where a saved dict may keep the network's state dict, and the prefix ``DistributedDataParallel`` adds.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "unet")
DDP_PREFIX = "module."
#: First convolution of the network: its input channels are ``[brightfield, x_t]`` in the reference.
INPUT_CONV_WEIGHT = "conv_in.conv.weight"
#: Spatial rank of a 3-D convolution kernel ``(out, in, k, k, k)``.
KERNEL_NDIM = 5
#: The reference's training and inference settings the imported checkpoint gets (SPEC §2–3): fluorescence in
#: [0, 1] as the model space, the brightfield as normalised, ε-prediction.
REFERENCE_TARGET_RANGE = (0.0, 1.0)
REFERENCE_PATCH_SIZE = (16, 64, 64)


def read_generative_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network state dict in a file written by ``torch.save`` (a state dict, or a dict holding one).

    Read with ``weights_only=True``; a ``module.`` prefix (DistributedDataParallel) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected a saved DiffusionModelUNet state dict)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for pickled modules and foreign files
        raise CheckpointError(
            f"{path}: cannot be read as tensors only ({type(err).__name__}: {err}); expected a state dict — "
            "re-save a pickled network with torch.save(net.state_dict(), path)"
        ) from err
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{path}: holds a {type(saved).__name__}; expected a dict of tensors")
    for key in STATE_DICT_KEYS:
        if isinstance(saved.get(key), Mapping):
            saved = saved[key]
            break
    state = {k.removeprefix(DDP_PREFIX): v for k, v in saved.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: no tensors found; expected a DiffusionModelUNet state dict")
    return state


def kernel_permutation(old_axes: str = REFERENCE_AXES) -> tuple[int, ...]:
    """Permutation of a kernel ``(out, in, *old_axes)`` to ``(out, in, Z, Y, X)``, e.g. ``(0, 1, 4, 2, 3)`` for YXZ."""
    if sorted(old_axes) != sorted(ARRAY_AXES):
        raise ValueError(f"old axis order {old_axes!r}; expected a permutation of {ARRAY_AXES!r}")
    return (0, 1, *(2 + old_axes.index(axis) for axis in ARRAY_AXES))


def convert_state_dict(
    old: Mapping[str, torch.Tensor],
    new_shapes: Mapping[str, Sequence[int]],
    old_axes: str = REFERENCE_AXES,
    cond_first: bool = True,
    source: str = "<state dict>",
    apply_proj_attn: bool = False,
) -> dict[str, torch.Tensor]:
    """Convert an old-format state dict to the keys and axes of the new network (``new_shapes``: key → shape).

    Keys are renamed (:data:`KEY_RENAMES`), 3-D kernels permuted from ``old_axes`` to ``(Z, Y, X)``, and with
    ``cond_first=False`` the input convolution's two channels swapped (the reference's are ``[brightfield, x_t]``).
    The attention output projections become the identity, as the old network never applied its ``proj_attn``
    (``apply_proj_attn=True`` copies them instead, for a network whose code did apply them). Keys left over,
    missing or of the wrong shape raise :class:`CheckpointError` naming them.
    """
    perm = kernel_permutation(old_axes)
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in old.items():
        name = key
        if name not in new_shapes:
            name = next(
                (key.replace(a, b) for a, b in KEY_RENAMES if a in key and key.replace(a, b) in new_shapes), key
            )
        if name not in new_shapes:
            unexpected.append(key)
            continue
        tensor = value.detach().clone()
        if UNUSED_PROJECTION in key and not apply_proj_attn:
            tensor = torch.eye(tensor.shape[0], dtype=tensor.dtype) if tensor.ndim == 2 else torch.zeros_like(tensor)
        if tensor.ndim == KERNEL_NDIM:
            tensor = tensor.permute(*perm).contiguous()
        if name == INPUT_CONV_WEIGHT and not cond_first:
            tensor = tensor.flip(1).contiguous()
        out[name] = tensor
    missing = sorted(set(new_shapes) - set(out))
    if unexpected or missing:
        raise CheckpointError(
            f"{source}: keys do not fit the network; unexpected {sorted(unexpected)[:8]}, missing {missing[:8]} "
            "(expected a DiffusionModelUNet of the same architecture: check --net)"
        )
    wrong = [f"{k} {list(v.shape)} (expected {list(new_shapes[k])})" for k, v in out.items()
             if tuple(v.shape) != tuple(new_shapes[k])]
    if wrong:
        raise CheckpointError(f"{source}: tensor shapes do not fit the network: {'; '.join(wrong[:8])} (check --net)")
    return out


def _config(group: str, name: str | os.PathLike) -> dict[str, Any]:
    """A config of ``conf/<group>/<name>.yaml``, or of the YAML file ``name``, as a plain dict."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"{path}: no such {group} config (expected a name in {CONF_DIR / group} or a YAML file)")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {k: v for k, v in cfg.items() if k != "defaults"}


def reference_hparams(
    net: Mapping[str, Any],
    organelle: Mapping[str, Any],
    patch_size: Sequence[int] = REFERENCE_PATCH_SIZE,
    cond_first: bool = True,
) -> dict[str, Any]:
    """``DDPMModule`` hyperparameters for imported reference weights: the paper's schedule, ε-prediction, the
    reference's [0, 1] model space, and samplers without the ε̂ mean correction (no training statistics travel with
    the weights)."""
    model = OmegaConf.load(CONF_DIR / "model" / "ddpm.yaml")
    recipe = _config("recipe", "paper")["recipe"]
    sampler = {**_config("sampler", "ddpm"), "mean_correction": False}
    return {
        "net": dict(net),
        "organelle": dict(organelle),
        "patch_size": [int(s) for s in patch_size],
        "schedule": OmegaConf.to_container(model.schedule),
        "loss": str(recipe["loss"]),
        "lr": float(recipe["lr"]),
        "target_range": list(REFERENCE_TARGET_RANGE),
        "cond_first": bool(cond_first),
        "cond_norm": "none",
        "prediction_type": "epsilon",
        "val_sampler": {**sampler, "method": "ddim", "num_steps": _config("sampler", "ddim_fast")["num_steps"]},
        "test_sampler": sampler,
    }


def import_generative(
    old_path: str | os.PathLike,
    new_path: str | os.PathLike,
    net: str | os.PathLike | Mapping[str, Any] = "paper",
    organelle: str | os.PathLike | Mapping[str, Any] = "nuclear_envelope",
    patch_size: Sequence[int] = REFERENCE_PATCH_SIZE,
    old_axes: str = REFERENCE_AXES,
    cond_first: bool = True,
    apply_proj_attn: bool = False,
) -> Path:
    """Convert the weights in ``old_path`` into a dm4isl checkpoint ``new_path`` (written atomically).

    ``net`` and ``organelle`` are config names (``conf/model/net``, ``conf/organelle``), YAML files or dicts;
    ``patch_size`` ``(Z, Y, X)`` is the training patch of the weights (the default tile at prediction);
    ``old_axes``, ``cond_first`` and ``apply_proj_attn`` as in :func:`convert_state_dict`.
    """
    net_cfg = dict(net) if isinstance(net, Mapping) else _config("model/net", net)
    org_cfg = dict(organelle) if isinstance(organelle, Mapping) else _config("organelle", organelle)
    hparams = reference_hparams(net_cfg, org_cfg, patch_size, cond_first)
    module = DDPMModule(**hparams)
    shapes = {k: tuple(v.shape) for k, v in module.net.state_dict().items()}
    state = convert_state_dict(
        read_generative_state(old_path), shapes, old_axes, cond_first, str(old_path), apply_proj_attn
    )
    module.net.load_state_dict(state)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": hparams,
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
        PROVENANCE_KEY: {
            **provenance_block(module, git_revision()),
            "imported_from": str(old_path),
            "imported_sha256_16": fingerprint(old_path),
            "imported_axes": old_axes,
        },
    }
    with atomic_path(new_path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(new_path)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command line: ``python -m dm4isl.prediction.generative_import OLD NEW [--net …] [--organelle …] …``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="state dict saved from generative.networks.nets.DiffusionModelUNet")
    parser.add_argument("new", help="dm4isl checkpoint to write (.ckpt)")
    parser.add_argument("--net", default="paper", help="net config name (conf/model/net) or YAML file")
    parser.add_argument("--organelle", default="nuclear_envelope", help="organelle config name or YAML file")
    parser.add_argument("--patch-size", type=int, nargs=3, default=list(REFERENCE_PATCH_SIZE), metavar=("Z", "Y", "X"))
    parser.add_argument("--old-axes", default=REFERENCE_AXES, help="spatial axis order of the old tensors")
    parser.add_argument(
        "--noisy-first", action="store_true", help="the new checkpoint concatenates [x_t, brightfield] (swap inputs)"
    )
    parser.add_argument(
        "--apply-proj-attn", action="store_true", help="copy the attention output projections (default: identity)"
    )
    args = parser.parse_args(argv)
    out = import_generative(
        args.old, args.new, args.net, args.organelle, args.patch_size, args.old_axes, not args.noisy_first,
        args.apply_proj_attn,
    )
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
