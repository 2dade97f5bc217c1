"""Train/validation/test splits by field of view (never by patch), drawn without replacement and saved as CSV."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dm4isl.errors import DataError
from dm4isl.io.atomic import write_csv

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_ids(ids: Sequence[str], fractions: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Partition FOV ids into train/val/test without replacement.

    ``fractions`` gives the val and test shares (train takes the rest). Each non-zero share gets at least one FOV
    while at least one FOV is left for training. The same ids, fractions and seed always give the same split.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"FOV ids must be unique, found repeats: {dupes[:5]}")
    n = len(ids)
    f_val, f_test = float(fractions.get("val", 0.0)), float(fractions.get("test", 0.0))
    if f_val < 0 or f_test < 0 or f_val + f_test >= 1:
        raise ValueError(f"split fractions need val, test >= 0 and val + test < 1, got val={f_val}, test={f_test}")
    n_test = max(1, round(f_test * n)) if f_test > 0 else 0
    n_val = max(1, round(f_val * n)) if f_val > 0 else 0
    if n_test + n_val >= n:
        raise DataError(
            f"{n} FOVs are too few for a split with val={f_val}, test={f_test}: need at least {n_test + n_val + 1}"
        )
    order = np.random.default_rng(int(seed)).permutation(n)
    shuffled = [ids[i] for i in order]
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
    }


def write_split(path: str | os.PathLike, split: Mapping[str, Sequence[str]]) -> Path:
    """Write a split as CSV with columns ``fov_id, split``."""
    rows = [{"fov_id": fid, "split": name} for name in SPLITS for fid in split.get(name, [])]
    return write_csv(path, rows, fieldnames=["fov_id", "split"])


def read_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split CSV written by :func:`write_split`; checks that no FOV is in two splits."""
    path = Path(path)
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    seen: dict[str, str] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"fov_id", "split"} <= set(reader.fieldnames):
                raise DataError(f"{path}: expected CSV columns fov_id, split; found {reader.fieldnames}")
            for row in reader:
                fid, name = row["fov_id"], row["split"]
                if name not in out:
                    raise DataError(f"{path}: unknown split {name!r} for FOV {fid!r}; expected one of {SPLITS}")
                if fid in seen:
                    raise DataError(f"{path}: FOV {fid!r} appears in both {seen[fid]!r} and {name!r}")
                seen[fid] = name
                out[name].append(fid)
    except OSError as err:
        raise DataError(f"{path}: cannot read split file ({err})") from err
    return out


def load_or_make_split(
    ids: Sequence[str],
    fractions: Mapping[str, float],
    seed: int,
    path: str | os.PathLike | None,
    groups: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Reuse the split saved at ``path`` (it must cover exactly ``ids``); else draw it and save it there.

    With ``groups`` (one per id, e.g. the well of each FOV) whole groups are split (:func:`split_groups`).
    """
    if path is not None and Path(path).is_file():
        split = read_split(path)
        if sorted(sum(split.values(), [])) == sorted(ids):
            log.info("reusing split %s", path)
            return split
        raise DataError(
            f"{path}: saved split lists {len(sum(split.values(), []))} FOVs that differ from the {len(ids)} FOVs "
            "of the dataset; point split_file elsewhere or delete it to draw a new split"
        )
    split = split_ids(ids, fractions, seed) if groups is None else split_groups(ids, groups, fractions, seed)
    if path is not None:
        write_split(path, split)
    return split


def split_groups(
    ids: Sequence[str], groups: Sequence[str], fractions: Mapping[str, float], seed: int
) -> dict[str, list[str]]:
    """Partition FOV ids so that all FOVs of one group (e.g. one well) land in the same split.

    The groups are drawn without replacement by :func:`split_ids` (so ``fractions`` are shares of groups, not of
    FOVs); each FOV then follows its group.
    """
    ids, groups = list(ids), [str(g) for g in groups]
    if len(ids) != len(groups):
        raise ValueError(f"need one group per FOV id, got {len(ids)} ids and {len(groups)} groups")
    group_split = split_ids(sorted(set(groups)), fractions, seed)
    where = {g: name for name, members in group_split.items() for g in members}
    return {name: sorted(i for i, g in zip(ids, groups, strict=True) if where[g] == name) for name in SPLITS}
