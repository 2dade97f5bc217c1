"""Calibrate std thresholds on the validation split, then score the uncertainty maps on the test split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch

from dm4isl.data.patches import PatchSet
from dm4isl.io.layout import DDPMAVG
from dm4isl.models.predictor import Predictor, PredictRequest
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.uncertainty.evaluation import ERROR_TAU, calibrate_threshold, evaluate_uncertainty
from dm4isl.uncertainty.masks import MaskSettings
from dm4isl.uncertainty.thresholds import describe, organelle_threshold, same_setting, sampling_setting


def predict_patch_set(
    model: Predictor, patches: PatchSet, settings: SamplerSettings, n_seeds: int, batch_size: int = 8,
    keep_seeds: bool = False,
) -> dict[str, np.ndarray]:
    """Sample every patch of a fixed set; returns ``(N, Z, Y, X)`` arrays by product name (patch id = position),
    with ``keep_seeds`` also every seed's DDPM and DDPMavg (:func:`dm4isl.io.layout.seed_product` names)."""
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(patches), batch_size):
        bf = torch.from_numpy(patches.bf[start : start + batch_size])[:, None]
        ids = list(range(start, start + bf.shape[0]))
        request = PredictRequest(settings=settings, n_seeds=n_seeds, keep_seeds=keep_seeds)
        for name, arr in model.predict_products(bf, ids, request).items():
            out.setdefault(name, []).append(arr[:, 0].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def calibrate_and_score(
    model: L.LightningModule,
    val: PatchSet,
    test: PatchSet,
    settings: SamplerSettings,
    n_seeds: int,
    organelle: Mapping[str, Any],
    tau: float = ERROR_TAU,
) -> dict[str, Any]:
    """Thresholds picked on ``val`` (per std map), then AUROC and flag precision/recall on ``test``.

    Returns a plain dict: the sampler settings and their canonical ``setting``, one report per (std map, threshold
    source) on the test split — the organelle's published threshold only where it is valid for this setting — and
    ``entries`` for a calibration file (:func:`~dm4isl.uncertainty.thresholds.write_calibration`).
    """
    setting = sampling_setting(settings.to_dict(), (model.target.low, model.target.high),
                               model.schedule.num_train_timesteps)
    val_pred = predict_patch_set(model, val, settings, n_seeds)
    test_pred = predict_patch_set(model, test, settings, n_seeds)
    result: dict[str, Any] = {"sampler": settings.to_dict(), "setting": setting, "setting_text": describe(setting),
                              "n_seeds": n_seeds, "tau": tau, "maps": {}, "entries": []}
    for source in ("intra", "inter"):
        key = f"std_{source}"
        if key not in val_pred:
            continue
        threshold, f1 = calibrate_threshold(val_pred[key], val_pred[DDPMAVG], val.fl, tau)
        own = organelle_threshold(organelle, source)
        valid = own is not None and same_setting(own.setting, setting)
        entry: dict[str, Any] = {"calibrated_threshold": threshold, "validation_f1": f1,
                                 "published_threshold": own.value if valid else None}
        result["entries"].append({"map": source, "threshold": threshold, "setting": setting, "split": "validation",
                                  "n_patches": len(val), "n_seeds": n_seeds, "tau": tau, "validation_f1": f1})
        for label in ("calibrated", "published"):
            thr = entry[f"{label}_threshold"]
            if thr is None:
                continue
            report = evaluate_uncertainty(test_pred[key], test_pred[DDPMAVG], test.fl, thr, test.mask, tau,
                                          MaskSettings.for_organelle(organelle.get("name")))
            entry[f"test_{label}"] = asdict(report)
        result["maps"][source] = entry
    return result
