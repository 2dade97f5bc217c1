"""3-D ResNet classifiers (MONAI ``ResNet``) from a plain config dict, and checked loading of their state dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks import nets as monai_nets

from dm4isl.errors import CheckpointError

#: Spatial dimensionality: tensors are ``(B, C, Z, Y, X)``.
SPATIAL_DIMS = 3
#: Depths MONAI builds (``monai.networks.nets.resnet<depth>``; Hara et al., CVPR 2018, "Can spatiotemporal 3D CNNs
#: retrace the history of 2D CNNs and ImageNet?").
DEPTHS = (10, 18, 34, 50, 101, 152, 200)
#: Keys of a ``resnet3d`` config and their defaults: the reference's organelle classifier (a 3-D ResNet-101 built
#: with ``conv1_t_size=7``, stride (1, 2, 2) in its first convolution, max pooling, shortcut B, no bias in the
#: shortcut convolutions).
RESNET3D_DEFAULTS: dict[str, Any] = {
    "depth": 101,
    "conv1_t_size": 7,
    "conv1_t_stride": [1, 2, 2],
    "no_max_pool": False,
    "shortcut_type": "B",
    "widen_factor": 1.0,
    "bias_downsample": False,
}
#: Shortcut convolutions with a bias have this key suffix in a state dict (MONAI's default ``bias_downsample=True``).
DOWNSAMPLE_BIAS_SUFFIX = ".downsample.0.bias"
#: Prefixes a saved state dict may carry on every key (``nn.DataParallel``, a wrapping module).
STRIPPED_PREFIXES = ("module.", "net.")
#: BatchNorm counters: absent from very old files and irrelevant to the forward pass in eval mode.
OPTIONAL_KEY_SUFFIX = ".num_batches_tracked"
#: At most this many keys are listed per kind of mismatch in an error message.
MAX_LISTED_KEYS = 20


def resnet3d_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` completed with :data:`RESNET3D_DEFAULTS`; raises ``ValueError`` on unknown keys or bad values."""
    unknown = sorted(set(config) - set(RESNET3D_DEFAULTS) - {"name"})
    if unknown:
        raise ValueError(f"resnet3d config has unknown keys {unknown}; expected a subset of {list(RESNET3D_DEFAULTS)}")
    if config.get("name", "resnet3d") != "resnet3d":
        raise ValueError(f"net config names network {config.get('name')!r}; the classifier expects 'resnet3d'")
    settings = {**RESNET3D_DEFAULTS, **{k: v for k, v in config.items() if k != "name"}}
    if int(settings["depth"]) not in DEPTHS:
        raise ValueError(f"resnet3d depth {settings['depth']}; expected one of {DEPTHS}")
    if settings["shortcut_type"] not in ("A", "B"):
        raise ValueError(f"resnet3d shortcut_type {settings['shortcut_type']!r}; expected 'A' or 'B'")
    return settings


def build_resnet3d(config: Mapping[str, Any], in_channels: int = 1, num_classes: int = 6) -> torch.nn.Module:
    """A MONAI 3-D ResNet mapping ``(B, in_channels, Z, Y, X)`` to class logits ``(B, num_classes)``.

    Its sub-modules ``layer1`` … ``layer4`` and ``fc`` are the feature layers of CLS-LPIPS
    (:mod:`dm4isl.metrics.perceptual`). ``conv1_t_stride`` may be one int or one per axis.
    """
    s = resnet3d_settings(config)
    stride = s["conv1_t_stride"]
    stride = tuple(int(v) for v in stride) if isinstance(stride, list | tuple) else int(stride)
    factory = getattr(monai_nets, f"resnet{int(s['depth'])}")
    return factory(
        pretrained=False,
        spatial_dims=SPATIAL_DIMS,
        n_input_channels=int(in_channels),
        num_classes=int(num_classes),
        conv1_t_size=int(s["conv1_t_size"]),
        conv1_t_stride=stride,
        no_max_pool=bool(s["no_max_pool"]),
        shortcut_type=str(s["shortcut_type"]),
        widen_factor=float(s["widen_factor"]),
        bias_downsample=bool(s["bias_downsample"]),
    )


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without a prefix that every key shares (``module.`` of DataParallel, ``net.``)."""
    state = dict(state_dict)
    for prefix in STRIPPED_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def has_downsample_bias(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when the shortcut convolutions of a ResNet state dict carry a bias (MONAI's default layout)."""
    return any(k.endswith(DOWNSAMPLE_BIAS_SUFFIX) for k in state_dict)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f", … and {more} more" if more > 0 else "")


def state_dict_mismatches(net: torch.nn.Module, state_dict: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between ``net``'s state dict and ``state_dict``: unexpected keys, missing keys
    (BatchNorm ``num_batches_tracked`` counters may be missing) and shapes that differ; empty when they fit."""
    expected = net.state_dict()
    problems = []
    unexpected = sorted(k for k in state_dict if k not in expected)
    missing = sorted(k for k in expected if k not in state_dict and not k.endswith(OPTIONAL_KEY_SUFFIX))
    shapes = sorted(
        f"{k}: found {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)
    )
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if shapes:
        problems.append(f"{len(shapes)} key(s) with another shape: {_listed(shapes)}")
    return problems


def load_resnet_state_dict(
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    source: str = "<state dict>",
    in_channels: int = 1,
    num_classes: int = 6,
) -> torch.nn.Module:
    """Build :func:`build_resnet3d` ``(config, in_channels, num_classes)`` and load a plain ``state_dict`` into it.

    A prefix shared by all keys (``module.``) is removed; whether the shortcut convolutions have a bias is read from
    the state dict (MONAI's default layout has one, the reference's 3-D ResNets do not). Any other difference —
    unknown or missing keys, other shapes — raises :class:`CheckpointError` naming ``source`` and listing them.
    Returns the network in eval mode.
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"{source}: expected a state dict (parameter name → tensor), got {type(state_dict)}")
    state = strip_prefix(state_dict)
    settings = {**resnet3d_settings(config), "bias_downsample": has_downsample_bias(state)}
    net = build_resnet3d(settings, in_channels, num_classes)
    problems = state_dict_mismatches(net, state)
    if problems:
        arch = f"3-D ResNet-{settings['depth']} with {in_channels} input channel(s) and {num_classes} classes"
        raise CheckpointError(f"{source}: the state dict does not fit a {arch}: " + "; ".join(problems))
    net.load_state_dict(state, strict=False)
    return net.eval()
