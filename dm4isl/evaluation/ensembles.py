"""Seed ensembles beside method folders (``<method>_seeds/seed<k>/``): loading, CRPS per patch, spread–skill."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dm4isl.data.readers import list_tiffs
from dm4isl.errors import DataError
from dm4isl.evaluation.inputs import MAX_LISTED_PROBLEMS, EvaluationInputs, _index_folder, _load
from dm4isl.io.layout import seeds_folder
from dm4isl.metrics.probabilistic import MIN_MEMBERS, SPREAD_SKILL_BINS, SpreadSkill, crps, spread_skill
from dm4isl.metrics.table import MethodValues

#: Name of the per-patch CRPS metric in the results (registered in :mod:`dm4isl.metrics.registry`).
CRPS = "crps"


@dataclass
class Ensemble:
    """The members of one method's ensemble: ``members[i]`` is ``(M, Z, Y, X)`` float32 for patch ``i``."""

    method: str
    member_names: list[str]
    members: list[np.ndarray]

    @property
    def size(self) -> int:
        """Number of members M."""
        return len(self.member_names)


@dataclass
class EnsembleScore:
    """What was measured on one ensemble: its size, member folders and spread–skill curve."""

    n_members: int
    member_names: list[str]
    spread_skill: SpreadSkill


def _natural(name: str) -> tuple:
    return tuple(int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name))


def load_ensembles(
    inputs: EvaluationInputs, window: Sequence[float] | None = None
) -> dict[str, Ensemble]:
    """Find ``<input_dir>/<method>_seeds/<member>/`` folders of the evaluated methods and read their members.

    A member folder holds one TIFF per patch, named like the ground truth's; an ensemble needs at least
    :data:`~dm4isl.metrics.probabilistic.MIN_MEMBERS` members. Every problem (missing or extra patch, shape
    mismatch, unreadable file) is collected; one :class:`DataError` lists them all, naming each file.
    """
    problems: list[str] = []
    found: dict[str, Ensemble] = {}
    for method in inputs.methods:
        root = inputs.input_dir / seeds_folder(method)
        if not root.is_dir():
            continue
        member_dirs = [d for d in root.iterdir() if d.is_dir() and list_tiffs(d)]
        member_dirs.sort(key=lambda d: _natural(d.name))
        if len(member_dirs) < MIN_MEMBERS:
            problems.append(f"{root}: {len(member_dirs)} member folder(s) with TIFFs; an ensemble needs {MIN_MEMBERS}")
            continue
        stacks: list[list[np.ndarray | None]] = [[] for _ in inputs.patches]
        for folder in member_dirs:
            index = _index_folder(folder, problems)
            for stem, path in index.items():
                if stem not in inputs.patches:
                    problems.append(f"{path}: no ground-truth partner among {len(inputs.patches)} patches")
            for i, patch in enumerate(inputs.patches):
                if patch not in index:
                    problems.append(f"{folder}: missing member for patch {patch!r} (ground truth "
                                    f"{inputs.files[(inputs.gt_name, patch)]})")
                    stacks[i].append(None)
                    continue
                arr = _load(index[patch], window, problems)
                if arr is not None and arr.shape != inputs.gts[i].shape:
                    problems.append(f"{index[patch]}: shape {arr.shape} (Z, Y, X) differs from its ground truth "
                                    f"of shape {inputs.gts[i].shape}")
                    arr = None
                stacks[i].append(arr)
        if all(a is not None for stack in stacks for a in stack):
            found[method] = Ensemble(method, [d.name for d in member_dirs], [np.stack(s) for s in stacks])
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        suffix = f"\n  … and {more} more" if more > 0 else ""
        raise DataError(
            f"{inputs.input_dir}: {len(problems)} invalid ensemble input(s), nothing was written:\n  {listed}{suffix}"
        )
    return found


def score_ensembles(
    inputs: EvaluationInputs,
    ensembles: Mapping[str, Ensemble],
    results: Mapping[str, MethodValues],
    n_bins: int = SPREAD_SKILL_BINS,
) -> dict[str, EnsembleScore]:
    """Add the per-patch ``crps`` to every method's results and return the spread–skill of each ensemble.

    A method with an ensemble gets the fair-ensemble CRPS of its members; every other method the CRPS of its point
    prediction (its mean absolute error), so that all methods are ranked by one proper scoring rule.
    """
    scores: dict[str, EnsembleScore] = {}
    for method in inputs.methods:
        ens = ensembles.get(method)
        preds = inputs.predictions[method]
        values = [
            crps(gt, ens.members[i] if ens is not None else preds[i][None]) for i, gt in enumerate(inputs.gts)
        ]
        results[method].per_patch[CRPS] = np.asarray(values, dtype=np.float64)
        if ens is not None:
            scores[method] = EnsembleScore(ens.size, ens.member_names, spread_skill(inputs.gts, ens.members, n_bins))
    return scores
