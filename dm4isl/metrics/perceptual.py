"""CLS-LPIPS: distance of two ``(Z, Y, X)`` volumes in the feature layers of a trained organelle classifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Sub-modules whose outputs are compared (the paper: layer1–layer4 of its 3-D ResNet-101 and the final layer, the
#: class logits of ``fc``).
FEATURE_LAYERS = ("layer1", "layer2", "layer3", "layer4", "fc")
#: Axis order of the volumes handed to :class:`ClassifierFeatures` (the project's convention).
ARRAY_AXES = "ZYX"
#: Guards the optional channel normalisation against all-zero feature vectors.
NORM_EPS = 1e-10


class ClassifierFeatures(torch.nn.Module):
    """Outputs of the named sub-modules of a classifier network for ``(N, 1, Z, Y, X)`` inputs in [0, 1].

    ``net`` is any ``torch.nn.Module`` with sub-modules named ``layers`` (e.g. a MONAI or a Hara et al. 3-D ResNet);
    it is put in eval mode and frozen. ``input_axes`` is the spatial axis order the network was trained on: ``ZYX``
    (dm4isl's classifier) or e.g. ``YXZ`` (the reference fed ``(B, C, Y, X, Z)`` tensors); inputs are permuted to it.
    ``normalize`` unit-normalises every feature vector over channels before it is compared (LPIPS, Zhang et al.,
    CVPR 2018); off, the raw activations are compared as the reference did.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        layers: Sequence[str] = FEATURE_LAYERS,
        input_axes: str = ARRAY_AXES,
        normalize: bool = False,
        name: str = "classifier",
    ) -> None:
        super().__init__()
        modules = dict(net.named_modules())
        missing = [layer for layer in layers if layer not in modules]
        if missing:
            raise ValueError(f"{name}: the network has no sub-module(s) {missing}; expected all of {list(layers)}")
        if sorted(input_axes) != sorted(ARRAY_AXES):
            raise ValueError(f"{name}: input_axes {input_axes!r}; expected a permutation of {ARRAY_AXES!r}")
        self.net = net.eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.layers = tuple(layers)
        self.input_axes = input_axes
        self.normalize = bool(normalize)
        self.name = name
        self._permutation = (0, 1, *(2 + ARRAY_AXES.index(a) for a in input_axes))

    @property
    def device(self) -> torch.device:
        """Device of the network's parameters (inputs are moved there, features come back on the CPU)."""
        return next(self.net.parameters()).device

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One feature tensor per layer, ``(N, C, …)`` (spatial maps or ``(N, classes)`` logits), for ``x``
        ``(N, 1, Z, Y, X)``; channel-normalised when :attr:`normalize` is set."""
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.net.named_modules())
        hooks = [
            modules[layer].register_forward_hook(lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out))
            for layer in self.layers
        ]
        try:
            self.net(x.permute(*self._permutation))
        finally:
            for hook in hooks:
                hook.remove()
        feats = [captured[layer].float() for layer in self.layers]
        if self.normalize:
            feats = [f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + NORM_EPS) for f in feats]
        return feats

    def features(self, volumes: np.ndarray) -> list[torch.Tensor]:
        """Features of ``(N, Z, Y, X)`` volumes (no gradients), one CPU tensor per layer."""
        x = torch.as_tensor(np.asarray(volumes, dtype=np.float32))[:, None].to(self.device)
        with torch.no_grad():
            return [f.cpu() for f in self(x)]


def layer_distances(gt_features: Sequence[torch.Tensor], pred_features: Sequence[torch.Tensor]) -> list[float]:
    """Mean squared difference of each pair of feature tensors (over channels and positions), one per layer."""
    if len(gt_features) != len(pred_features):
        raise ValueError(f"{len(gt_features)} ground-truth and {len(pred_features)} prediction feature layers")
    return [float(((g - p) ** 2).mean()) for g, p in zip(gt_features, pred_features, strict=True)]


def cls_lpips_from_features(gt_features: Sequence[torch.Tensor], pred_features: Sequence[torch.Tensor]) -> float:
    """CLS-LPIPS of one pair from its features: the mean over layers of :func:`layer_distances`."""
    return float(np.mean(layer_distances(gt_features, pred_features)))
