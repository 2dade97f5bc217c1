"""Std thresholds belong to a sampling setting: published, calibrated on validation, or none (with the reason).

A std map's scale depends on how it was sampled — the reverse process and its step count, DDIM's eta, the x̂0
window, the x̂0 clip, the ε̂ mean correction and the model's target range — so a threshold is only valid for the
setting it was published or calibrated for. :func:`sampling_setting` describes a setting canonically;
:func:`resolve_threshold` picks, for one std map, the threshold valid for the setting at hand: a value given by
the user, the organelle's published one when the setting is the published one, a calibration stored next to the
checkpoint for exactly this setting, or none (then no error mask is written, and the reason says why).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dm4isl.errors import DataError
from dm4isl.io.atomic import write_text

#: The std maps that have thresholds: inside one reverse process and across seeds.
MAPS = ("intra", "inter")
#: The setting the paper's thresholds were tuned for (SPEC §3: the reference's ancestral DDPM over all 1000 steps,
#: x̂0 averaged over t in [300, 800) and clipped to [-1, 1], fluorescence targets in [0, 1], no ε̂ correction).
PUBLISHED_SETTING: dict[str, Any] = {
    "method": "ddpm", "num_steps": 1000, "eta": None, "window": [300, 800], "clip_x0": [-1.0, 1.0],
    "mean_correction": False, "target_range": [0.0, 1.0],
}
#: Value of an organelle's ``std_thresholds_for`` key meaning "valid for :data:`PUBLISHED_SETTING`".
PUBLISHED = "published"
#: File format tag of a calibration file, and the suffix appended to a checkpoint's path to name it.
CALIBRATION_FORMAT = "dm4isl-std-thresholds/1"
CALIBRATION_SUFFIX = ".thresholds.json"
#: Relative tolerance when comparing the real-valued parts of two settings.
SETTING_RTOL = 1e-6


def sampling_setting(
    sampler: Mapping[str, Any], target_range: Sequence[float], num_train_timesteps: int = 1000
) -> dict[str, Any]:
    """The canonical setting of a sampler config (``SamplerSettings.to_dict()``) with the model's target range.

    Ancestral DDPM runs every one of ``num_train_timesteps`` steps and ignores eta; DDIM is described by its step
    count and eta. Seeds, noise mode and output mode do not change a std map's scale and are left out.
    """
    method = str(sampler["method"])
    ddpm = method == "ddpm"
    clip = sampler.get("clip_x0")
    return {
        "method": method,
        "num_steps": int(num_train_timesteps) if ddpm else int(sampler["num_steps"]),
        "eta": None if ddpm else float(sampler.get("eta") or 0.0),
        "window": [int(w) for w in sampler["window"]],
        "clip_x0": None if clip is None else [float(c) for c in clip],
        "mean_correction": bool(sampler.get("mean_correction", False)),
        "target_range": [float(x) for x in target_range],
    }


def describe(setting: Mapping[str, Any]) -> str:
    """A setting in words, e.g. ``ddim-50 eta 1, window [300, 800), targets [-1, 1], mean correction on``."""
    eta = "" if setting.get("eta") is None else f" eta {setting['eta']:g}"
    lo, hi = setting["window"]
    tr = setting["target_range"]
    clip = setting.get("clip_x0")
    clip_text = "no x̂0 clip" if clip is None else f"x̂0 clip [{clip[0]:g}, {clip[1]:g}]"
    corr = "on" if setting.get("mean_correction") else "off"
    return (f"{setting['method']}-{setting['num_steps']}{eta}, window [{lo}, {hi}), targets [{tr[0]:g}, {tr[1]:g}], "
            f"{clip_text}, mean correction {corr}")


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            _close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=SETTING_RTOL, abs_tol=1e-12)


def same_setting(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two canonical settings (:func:`sampling_setting`) agree on every key."""
    keys = set(PUBLISHED_SETTING)
    return all(_close(a.get(k), b.get(k)) for k in keys)


@dataclass(frozen=True)
class Threshold:
    """A std threshold and where it comes from: ``given`` (by the user), ``published`` or ``calibrated``.

    ``setting`` is the sampling setting it is valid for (None for a value given by the user, who vouches for it).
    """

    value: float
    source: str
    setting: dict[str, Any] | None = None


def organelle_threshold(organelle: Mapping[str, Any], std_map: str) -> Threshold | None:
    """The organelle config's threshold for ``std_map`` with the setting it is valid for (None when it has none).

    ``std_thresholds_for`` is ``published`` (the default: :data:`PUBLISHED_SETTING`) or a setting mapping.
    """
    value = organelle.get(f"{std_map}_std_threshold")
    if value is None:
        return None
    valid_for = organelle.get("std_thresholds_for", PUBLISHED)
    if valid_for in (None, PUBLISHED):
        return Threshold(float(value), PUBLISHED, dict(PUBLISHED_SETTING))
    return Threshold(float(value), "organelle", {**PUBLISHED_SETTING, **dict(valid_for)})


def calibration_path(checkpoint: str | os.PathLike) -> Path:
    """Where the thresholds calibrated for a checkpoint live: beside it, ``<checkpoint>.thresholds.json``."""
    return Path(f"{os.fspath(checkpoint)}{CALIBRATION_SUFFIX}")


def read_calibration(path: str | os.PathLike, checkpoint_id: str | None = None) -> list[dict[str, Any]]:
    """Calibrated thresholds of a file (a list of entries; [] when the file does not exist).

    Each entry holds ``map``, ``threshold``, ``setting`` and how it was calibrated. With ``checkpoint_id`` (the
    16-hex SHA-256 prefix), a file written for another checkpoint raises :class:`DataError`.
    """
    p = Path(path)
    if not p.is_file():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{p}: unreadable threshold calibration ({err}); expected JSON written by "
                        "scripts/calibrate_uncertainty.py") from err
    found = data.get("format") if isinstance(data, dict) else None
    if found != CALIBRATION_FORMAT:
        raise DataError(f"{p}: not a threshold calibration file (format {found!r}; expected {CALIBRATION_FORMAT!r})")
    if checkpoint_id and data.get("checkpoint_sha256_16") not in (None, checkpoint_id):
        raise DataError(f"{p}: calibrated for checkpoint {data.get('checkpoint_sha256_16')}, not for this one "
                        f"({checkpoint_id}); calibrate again")
    return list(data.get("entries", []))


def write_calibration(
    path: str | os.PathLike, entries: Sequence[Mapping[str, Any]], checkpoint_id: str | None = None
) -> Path:
    """Add ``entries`` to a calibration file atomically, replacing any entry for the same map and setting."""
    kept = [e for e in read_calibration(path, checkpoint_id)
            if not any(e["map"] == n["map"] and same_setting(e["setting"], n["setting"]) for n in entries)]
    data = {"format": CALIBRATION_FORMAT, "checkpoint_sha256_16": checkpoint_id,
            "entries": [*kept, *[dict(e) for e in entries]]}
    write_text(path, json.dumps(data, indent=2, default=float) + "\n")
    return Path(path)


def resolve_threshold(
    std_map: str,
    setting: Mapping[str, Any],
    organelle: Mapping[str, Any],
    calibrations: Sequence[Mapping[str, Any]] = (),
    given: float | None = None,
) -> tuple[Threshold | None, str]:
    """The threshold valid for ``std_map`` under ``setting``, and one sentence saying which (or why there is none).

    Order: ``given`` (the user's value), the organelle's threshold when its setting is ``setting``, a calibrated
    entry for exactly ``setting``. A threshold tuned for another setting is never used.
    """
    if std_map not in MAPS:
        raise ValueError(f"std map {std_map!r}; expected one of {MAPS}")
    if given is not None:
        return Threshold(float(given), "given"), f"{std_map}-process std threshold {given:g} as given"
    own = organelle_threshold(organelle, std_map)
    if own is not None and same_setting(own.setting, setting):
        return own, f"{std_map}-process std threshold {own.value:g} ({own.source}, for {describe(setting)})"
    for entry in calibrations:
        if entry.get("map") == std_map and same_setting(entry["setting"], setting):
            found = Threshold(float(entry["threshold"]), "calibrated", dict(entry["setting"]))
            return found, f"{std_map}-process std threshold {found.value:.4g} (calibrated on validation, this setting)"
    other = f"; the organelle's {own.value:g} is for {describe(own.setting)}" if own is not None else ""
    return None, (f"no {std_map}-process std threshold valid for {describe(setting)}{other}: no error masks written "
                  "(calibrate one on validation: python scripts/calibrate_uncertainty.py --ckpt <checkpoint>)")
