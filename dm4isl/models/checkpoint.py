"""The checkpoint contract: key names, provenance block, axes, compatibility checks, reading and loading models.

A dm4isl checkpoint is a Lightning checkpoint dict (``state_dict``, ``hyper_parameters``, ...) with a provenance
block under :data:`PROVENANCE_KEY` (written by :class:`dm4isl.callbacks.provenance.Provenance` through
:func:`provenance_block`) and, for diffusion models saved mid-epoch, the training-data sums not yet merged under
:data:`PENDING_STATS_KEY`. Arrays are ``(Z, Y, X)`` (:data:`ARRAY_AXES`), tensors ``(B, C, Z, Y, X)``
(:data:`TENSOR_AXES`); every model stores both in its hyperparameters.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

import dm4isl
from dm4isl.errors import CheckpointError
from dm4isl.io.provenance import file_fingerprint, source_revision
from dm4isl.models.nets import downsampling_factor
from dm4isl.models.predictor import Predictor

#: Key of the provenance block inside a Lightning checkpoint dict.
PROVENANCE_KEY = "dm4isl"
#: Fields of the provenance block: import path of the model class, dm4isl version and git revision that wrote it.
MODEL_CLASS_FIELD = "model_class"
VERSION_FIELD = "version"
GIT_FIELD = "git"
#: Field of the provenance block holding the organelle windows fitted on the training data (``{bf_window,
#: fl_window}``).
FITTED_WINDOWS_KEY = "fitted_windows"
#: Checkpoint key of a diffusion model's training-data sums not yet merged into its statistics (mid-epoch
#: checkpoints), and the ``state_dict`` entry of those statistics (``DDPMModule.data_stats``: voxel count, Σbf, Σfl,
#: Σbf², Σbf·fl).
PENDING_STATS_KEY = "ddpm_pending_stats"
TRAINING_STATS_KEY = "data_stats"
#: Axis conventions stored in every checkpoint: arrays ``(Z, Y, X)``, tensors ``(B, C, Z, Y, X)``.
ARRAY_AXES = "ZYX"
TENSOR_AXES = "BCZYX"
#: Organelle keys a checkpoint must agree on with its input, and the relative tolerance for voxel sizes.
COMPATIBLE_KEYS = ("bf_window", "fl_window", "voxel_size")
VOXEL_SIZE_RTOL = 1e-3
#: Model classes a checkpoint may name; anything else is refused (a checkpoint must not import arbitrary code).
ALLOWED_PREFIX = "dm4isl.models."
#: Key of a callback's state in a checkpoint written by Lightning's ModelCheckpoint, and the field of its score.
MODEL_CHECKPOINT_STATE = "ModelCheckpoint"
BEST_SCORE_FIELD = "best_model_score"


# --- writing --------------------------------------------------------------------------------------------------------
def model_class_path(module: L.LightningModule) -> str:
    """Import path ``package.module.Class`` of a LightningModule instance."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def provenance_block(
    module: L.LightningModule, git: str, fitted_windows: Mapping[str, Sequence[float]] | None = None
) -> dict[str, Any]:
    """The provenance block ``{model_class, version, git[, fitted_windows]}`` stored under :data:`PROVENANCE_KEY`.

    ``git`` is the source revision (:func:`dm4isl.io.provenance.git_revision`); ``fitted_windows`` the organelle
    windows computed from the training data (``organelle=custom``), reused at predict time.
    """
    block: dict[str, Any] = {
        MODEL_CLASS_FIELD: model_class_path(module),
        VERSION_FIELD: dm4isl.__version__,
        GIT_FIELD: git,
    }
    if fitted_windows:
        block[FITTED_WINDOWS_KEY] = {k: [float(v) for v in w] for k, w in fitted_windows.items()}
    return block


# --- axes and compatibility -----------------------------------------------------------------------------------------
def check_axes(array_axes: str, tensor_axes: str) -> None:
    """Raise :class:`CheckpointError` unless the stored axis conventions are the project's ``ZYX``/``BCZYX``."""
    if (array_axes, tensor_axes) != (ARRAY_AXES, TENSOR_AXES):
        raise CheckpointError(f"axes {array_axes}/{tensor_axes}; expected {ARRAY_AXES}/{TENSOR_AXES}")


def check_compatible(
    hparams: Mapping[str, Any],
    organelle: Mapping[str, Any] | None = None,
    patch_shape: Sequence[int] | None = None,
    source: str = "<checkpoint>",
) -> None:
    """Raise :class:`CheckpointError` when a checkpoint's stored settings do not fit the input.

    Compares the organelle's normalisation windows and voxel size with ``organelle`` (a window left null, as with
    ``organelle=custom``, defers to the checkpoint's fitted one), and the input patch
    shape ``(Z, Y, X)`` with the training patch size: Z must match (the network saw that depth), Y and X must be
    multiples of the network's downsampling factor. ``source`` names the checkpoint in the message.
    """
    if hparams.get("array_axes", ARRAY_AXES) != ARRAY_AXES or hparams.get("tensor_axes", TENSOR_AXES) != TENSOR_AXES:
        raise CheckpointError(
            f"{source}: axes {hparams.get('array_axes')}/{hparams.get('tensor_axes')}; expected "
            f"{ARRAY_AXES}/{TENSOR_AXES} (import reference checkpoints with the converter)"
        )
    stored = hparams.get("organelle") or {}
    if organelle is not None:
        if stored.get("name") not in (None, organelle.get("name")):
            raise CheckpointError(
                f"{source}: trained on organelle {stored.get('name')!r}; the input is {organelle.get('name')!r}"
            )
        for key in COMPATIBLE_KEYS:
            if stored.get(key) is None or organelle.get(key) is None:
                continue  # a window fitted on the training data (organelle=custom) is the checkpoint's
            a, b = np.asarray(stored[key], dtype=float), np.asarray(organelle[key], dtype=float)
            if a.shape != b.shape or not np.allclose(a, b, rtol=VOXEL_SIZE_RTOL, atol=0.0):
                raise CheckpointError(
                    f"{source}: organelle {key} is {b.tolist()} for the input; the checkpoint was trained with "
                    f"{a.tolist()}"
                )
    if patch_shape is not None:
        trained = hparams.get("patch_size")
        factor = downsampling_factor(hparams["net"])
        if trained is not None and int(patch_shape[0]) != int(trained[0]):
            raise CheckpointError(
                f"{source}: input patches have Z = {patch_shape[0]} slices; the checkpoint was trained on "
                f"Z = {trained[0]} (patch size {list(trained)} (Z, Y, X))"
            )
        if any(int(s) % factor for s in patch_shape):
            raise CheckpointError(
                f"{source}: input patch shape {list(patch_shape)} (Z, Y, X) is not a multiple of the network's "
                f"downsampling factor {factor} in every axis"
            )


# --- reading --------------------------------------------------------------------------------------------------------
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


def model_class(ckpt: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> type[L.LightningModule]:
    """The LightningModule class that wrote ``ckpt`` (from its provenance block, else from its hyperparameters)."""
    name = (ckpt.get(PROVENANCE_KEY) or {}).get(MODEL_CLASS_FIELD)
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


def _class_from_hparams(hp: Mapping[str, Any]) -> str | None:
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


def with_fitted_windows(ckpt: Mapping[str, Any]) -> dict[str, Any]:
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


def with_pending_stats(ckpt: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> dict[str, Any]:
    """The checkpoint's ``state_dict`` with the training-data sums of a mid-epoch save merged into the statistics.

    A diffusion model adds each epoch's sums (voxel count, Σbf, Σfl, Σbf², Σbf·fl, float64 ``(5,)``) to
    :data:`TRAINING_STATS_KEY` only at the epoch's end; a checkpoint saved before keeps them apart under
    :data:`PENDING_STATS_KEY`. A loaded model counts them, so its training-set fluorescence mean (the sampler's ε̂
    mean correction) covers every batch seen. Checkpoints without pending sums are returned unchanged.
    """
    state = dict(ckpt["state_dict"])
    pending = ckpt.get(PENDING_STATS_KEY)
    if pending is None:
        return state
    stats = state.get(TRAINING_STATS_KEY)
    if stats is None or tuple(stats.shape) != tuple(pending.shape):
        found = None if stats is None else list(stats.shape)
        raise CheckpointError(
            f"{path}: pending training statistics of shape {list(pending.shape)} but state_dict "
            f"{TRAINING_STATS_KEY!r} is {found}; expected both of the same shape"
        )
    state[TRAINING_STATS_KEY] = stats + pending.to(stats)
    return state


def selection_score(ckpt: Mapping[str, Any]) -> float:
    """The validation score a checkpoint was selected with (its ModelCheckpoint state); NaN when it has none."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith(MODEL_CHECKPOINT_STATE) and state.get(BEST_SCORE_FIELD) is not None:
            return float(state[BEST_SCORE_FIELD])
    return math.nan


# --- loading --------------------------------------------------------------------------------------------------------
def model_from_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> L.LightningModule:
    """Rebuild the model of a checkpoint dict already read (:func:`read_checkpoint`), on the CPU, in eval mode.

    Pending training-data sums of a mid-epoch checkpoint are merged (:func:`with_pending_stats`).
    """
    cls = model_class(ckpt, path)
    state = with_pending_stats(ckpt, path)
    try:
        model = cls(**with_fitted_windows(ckpt))
        model.load_state_dict(state)
    except (TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: weights or hyperparameters do not fit {cls.__name__} ({err})") from err
    return model.eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> L.LightningModule:
    """Rebuild the model of a checkpoint from its stored hyperparameters and weights, in eval mode."""
    return model_from_checkpoint(read_checkpoint(path), path).to(device)


def load_predictor(path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
    """:func:`load_model` for prediction: the model must answer the prediction interface
    (:class:`~dm4isl.models.predictor.Predictor`: the diffusion model and the baselines)."""
    model = load_model(path, device)
    if not isinstance(model, Predictor):
        raise CheckpointError(f"{path}: a {type(model).__name__} checkpoint predicts no fluorescence (an organelle "
                              "classifier is used by dm4isl-evaluate perceptual.classifier=<checkpoint>)")
    return model


# --- identity -------------------------------------------------------------------------------------------------------
def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of a checkpoint file, recorded with every prediction."""
    return file_fingerprint(path)


def prediction_provenance(path: str | os.PathLike) -> dict[str, str]:
    """What every prediction made with the checkpoint at ``path`` records: its path, fingerprint and the source
    revision (git commit, else ``dm4isl <version>``)."""
    return {
        "checkpoint": str(path),
        "checkpoint_sha256_16": fingerprint(path),
        "revision": source_revision(dm4isl.__version__),
    }
