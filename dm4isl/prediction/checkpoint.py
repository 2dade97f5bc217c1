"""Loading a dm4isl checkpoint safely (weights_only) and resolving its model class, with clear errors."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dm4isl.callbacks.provenance import FITTED_WINDOWS_KEY, PROVENANCE_KEY
from dm4isl.errors import CheckpointError
from dm4isl.io.provenance import file_fingerprint

#: Model classes a checkpoint may name; anything else is refused (a checkpoint must not import arbitrary code).
ALLOWED_PREFIX = "dm4isl.models."


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint dict with ``torch.load(weights_only=True)``; missing or corrupt files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (expected a .ckpt file written by dm4isl-train)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: expected a Lightning checkpoint with state_dict and hyper_parameters")
    return ckpt


def model_class(ckpt: dict[str, Any], path: str | os.PathLike = "<checkpoint>") -> type[L.LightningModule]:
    """The LightningModule class that wrote ``ckpt`` (from its provenance block, else from its hyperparameters)."""
    name = (ckpt.get(PROVENANCE_KEY) or {}).get("model_class")
    if name is None:
        name = _class_from_hparams(ckpt["hyper_parameters"])
        if name is None:
            raise CheckpointError(f"{path}: cannot tell which model wrote this checkpoint (no provenance block)")
    if not name.startswith(ALLOWED_PREFIX):
        raise CheckpointError(f"{path}: model class {name!r} is not a dm4isl model (expected {ALLOWED_PREFIX}*)")
    module_name, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{path}: model class {name!r} not found in this version of dm4isl") from err
    return cls


def _class_from_hparams(hp: dict[str, Any]) -> str | None:
    """Recognise a model by its hyperparameters (checkpoints written without the provenance callback)."""
    if "schedule" in hp and "net" in hp:
        return "dm4isl.models.ddpm.DDPMModule"
    if "generator" in hp and "discriminator" in hp:
        return "dm4isl.models.gan.GANModule"
    if (hp.get("net") or {}).get("name") == "unet3d":
        return "dm4isl.models.unet.UNetModule"
    if "organelles" in hp and (hp.get("net") or {}).get("name") == "resnet3d":
        return "dm4isl.models.classifier.ClassifierModule"
    return None


def with_fitted_windows(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's hyperparameters, with organelle windows fitted on the training data filled in.

    ``organelle=custom`` computes its normalisation windows from the training FOVs; the provenance callback stores
    them beside the weights, and they replace the organelle's null windows here, so prediction normalises its
    input exactly as training did.
    """
    hparams = dict(ckpt["hyper_parameters"])
    fitted = (ckpt.get(PROVENANCE_KEY) or {}).get(FITTED_WINDOWS_KEY)
    if fitted and hparams.get("organelle") is not None:
        hparams["organelle"] = {**hparams["organelle"], **fitted}
    return hparams


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> L.LightningModule:
    """Rebuild the model of a checkpoint from its stored hyperparameters and weights, in eval mode."""
    return model_from_checkpoint(read_checkpoint(path), path).to(device)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike = "<checkpoint>") -> L.LightningModule:
    """Rebuild the model of a checkpoint dict already read (:func:`read_checkpoint`), on the CPU, in eval mode."""
    cls = model_class(ckpt, path)
    try:
        model = cls(**with_fitted_windows(ckpt))
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: weights or hyperparameters do not fit {cls.__name__} ({err})") from err
    return model.eval()


def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of a checkpoint file, recorded with every prediction."""
    return file_fingerprint(path)
