"""The organelle classifier of CLS-LPIPS from a file: a dm4isl checkpoint or a plain 3-D ResNet state dict."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dm4isl.errors import CheckpointError
from dm4isl.metrics.perceptual import FEATURE_LAYERS, ClassifierFeatures
from dm4isl.models.checkpoint import model_from_checkpoint
from dm4isl.models.classifier import ClassifierModule
from dm4isl.models.nets.resnet3d import RESNET3D_DEFAULTS, load_resnet_state_dict

#: Axis order the reference's classifier was trained on: it was fed ``(B, C, Y, X, Z)`` tensors.
REFERENCE_INPUT_AXES = "YXZ"
#: Classes of the reference's classifier (the six organelles).
REFERENCE_NUM_CLASSES = 6
#: Keys under which a saved dict may wrap a plain state dict.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


@dataclass(frozen=True)
class ClassifierSpec:
    """Where the CLS-LPIPS classifier comes from and how its features are compared (hashable, picklable).

    ``path``: a checkpoint written by ``dm4isl-train model=classifier`` (it describes its network, classes and axes)
    or a plain state dict of a 3-D ResNet (the reference's ``CLS.pth`` layout). For a plain state dict, ``net`` is
    the ``resnet3d`` config as JSON (default: the reference's ResNet-101), ``num_classes`` its classes and
    ``input_axes`` the axis order it was trained on (the reference: ``YXZ``). ``normalize``: compare
    channel-normalised features (LPIPS style) instead of raw ones (the reference). ``device``: where it runs.
    """

    path: str
    normalize: bool = False
    net: str = json.dumps(RESNET3D_DEFAULTS, sort_keys=True)
    num_classes: int = REFERENCE_NUM_CLASSES
    input_axes: str = REFERENCE_INPUT_AXES
    device: str = "cpu"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClassifierSpec | None:
        """From the ``perceptual`` block of ``evaluate.yaml``; None when it names no classifier."""
        if not config.get("classifier"):
            return None
        net = {k: v for k, v in dict(config.get("net") or RESNET3D_DEFAULTS).items() if k != "name"}
        return cls(
            path=str(config["classifier"]),
            normalize=bool(config.get("normalize", False)),
            net=json.dumps(net, sort_keys=True),
            num_classes=int(config.get("num_classes", REFERENCE_NUM_CLASSES)),
            input_axes=str(config.get("input_axes", REFERENCE_INPUT_AXES)),
            device=str(config.get("device", "cpu")),
        )


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: classifier file not found (expected a dm4isl classifier checkpoint or a "
                              "3-D ResNet state dict)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


def _plain_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict of a file that holds one, possibly wrapped (``{"state_dict": …}``)."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(f"{path}: expected a state dict (parameter name → tensor) or a dm4isl checkpoint, found "
                          f"{type(obj).__name__} with keys {list(obj)[:10] if isinstance(obj, Mapping) else '–'}")


def load_feature_extractor(spec: ClassifierSpec) -> ClassifierFeatures:
    """The CLS-LPIPS feature extractor (layer1–layer4 and the logits) of the classifier ``spec`` names.

    A dm4isl checkpoint must come from ``model=classifier`` (another model's checkpoint is refused, naming its
    class); a plain state dict must fit the configured 3-D ResNet exactly (:class:`CheckpointError` listing the
    unknown, missing and mis-shaped keys otherwise).
    """
    path = Path(spec.path)
    obj = _read(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and "hyper_parameters" in obj:
        model = model_from_checkpoint(obj, path)
        if not isinstance(model, ClassifierModule):
            raise CheckpointError(f"{path}: a {type(model).__name__} checkpoint, not an organelle classifier "
                                  "(train one with dm4isl-train experiment=classifier)")
        features = model.feature_extractor(spec.normalize)
    else:
        net = load_resnet_state_dict(json.loads(spec.net), _plain_state_dict(obj, path), str(path),
                                     num_classes=spec.num_classes)
        features = ClassifierFeatures(net, FEATURE_LAYERS, spec.input_axes, spec.normalize, name=str(path))
    return features.to(spec.device)


def cached_feature_extractor(spec: ClassifierSpec) -> ClassifierFeatures:
    """:func:`load_feature_extractor`, loaded once per process and file version (evaluation workers share the spec,
    not the weights; a rewritten file is read again)."""
    path = Path(spec.path)
    return _cached(spec, path.stat().st_mtime_ns if path.is_file() else None)


@functools.lru_cache(maxsize=2)
def _cached(spec: ClassifierSpec, mtime_ns: int | None) -> ClassifierFeatures:
    return load_feature_extractor(spec)
