"""The authors' manual error annotations of the 128-patch benchmark, and how patch flags of uncertainty maps compare.

The lists (``data/benchmark_annotations.yaml``, with their source) are patch indices into each organelle's benchmark
patches: U-Net errors, DM4ISL (DDPMavg) errors, and which DM4ISL errors the authors' uncertainty maps caught, missed,
recovered or marked out of distribution. :func:`flag_report` checks a set of patch flags against them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

import yaml

ANNOTATIONS_FILE = "benchmark_annotations.yaml"


@dataclass(frozen=True)
class ErrorAnnotations:
    """One organelle's annotated patch indices (see ``data/benchmark_annotations.yaml`` for each list's meaning)."""

    organelle: str
    unet_errors: frozenset[int]
    dm4isl_errors: frozenset[int]
    caught: frozenset[int]
    false_alarms: frozenset[int]
    missed: frozenset[int]
    recovered: frozenset[int]
    out_of_distribution: frozenset[int]

    def within(self, n_patches: int) -> ErrorAnnotations:
        """The annotations of patches ``0 .. n_patches − 1`` only (for an evaluation of the first patches)."""
        kept = {f.name: frozenset(i for i in getattr(self, f.name) if i < n_patches)
                for f in fields(self) if f.name != "organelle"}
        return ErrorAnnotations(self.organelle, **kept)


@cache
def _load() -> dict[str, Any]:
    text = resources.files("dm4isl.uncertainty").joinpath("data", ANNOTATIONS_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def annotation_source() -> dict[str, Any]:
    """Where the annotations come from: repository, commit, file, notebook cell, number of patches."""
    return dict(_load()["source"])


def annotations() -> dict[str, ErrorAnnotations]:
    """The annotations of every annotated organelle, keyed by its benchmark folder name (e.g. ``Nuclear_envelope``)."""
    keys = [f.name for f in fields(ErrorAnnotations) if f.name != "organelle"]
    return {
        organelle: ErrorAnnotations(organelle, **{k: frozenset(int(i) for i in lists.get(k, [])) for k in keys})
        for organelle, lists in _load()["organelles"].items()
    }


@dataclass(frozen=True)
class FlagReport:
    """Patch flags of one organelle checked against its annotations (``n_patches`` evaluated, indices 0..n−1).

    ``flagged``: the patches whose uncertainty map covers more than the flag fraction.
    """

    annotations: ErrorAnnotations
    n_patches: int
    flagged: frozenset[int]

    @property
    def caught(self) -> list[int]:
        """Annotated DM4ISL errors that are flagged."""
        return sorted(self.annotations.dm4isl_errors & self.flagged)

    @property
    def missed(self) -> list[int]:
        """Annotated DM4ISL errors that are not flagged."""
        return sorted(self.annotations.dm4isl_errors - self.flagged)

    @property
    def recall(self) -> float:
        """Share of the annotated DM4ISL errors that are flagged; NaN when none is annotated."""
        errors = self.annotations.dm4isl_errors
        return len(self.caught) / len(errors) if errors else float("nan")

    @property
    def unannotated_flags(self) -> list[int]:
        """Flagged patches without an annotated DM4ISL error."""
        return sorted(self.flagged - self.annotations.dm4isl_errors)

    def flag_kind(self, patch: int) -> str:
        """What the authors said of a flagged patch without an annotated error: ``recovered``, ``out_of_distribution``,
        ``false_alarm``, or ``unannotated`` (none of their lists)."""
        a = self.annotations
        for kind, members in (("recovered", a.recovered), ("out_of_distribution", a.out_of_distribution),
                              ("false_alarm", a.false_alarms)):
            if patch in members:
                return kind
        return "unannotated"

    def summary(self) -> dict[str, Any]:
        """One row: counts, recall, and agreement with the authors' own verdicts (their caught/missed lists)."""
        a = self.annotations
        kinds = [self.flag_kind(p) for p in self.unannotated_flags]
        return {
            "organelle": a.organelle, "patches": self.n_patches, "flagged": len(self.flagged),
            "unet_errors": len(a.unet_errors), "dm4isl_errors": len(a.dm4isl_errors),
            "errors_flagged": len(self.caught), "errors_missed": len(self.missed), "recall": self.recall,
            "flags_without_error": len(self.unannotated_flags),
            **{f"of_which_{k}": kinds.count(k) for k in ("recovered", "out_of_distribution", "false_alarm",
                                                          "unannotated")},
            "agree_with_authors_caught": len(a.caught & self.flagged), "authors_caught": len(a.caught),
            "agree_with_authors_missed": len(a.missed - self.flagged), "authors_missed": len(a.missed),
        }

    def patch_rows(self) -> list[dict[str, Any]]:
        """One row per evaluated patch: its flag and every annotation list it is on (``;``-joined)."""
        a = self.annotations
        lists = [f.name for f in fields(a) if f.name != "organelle"]
        return [{"patch": i, "flagged": int(i in self.flagged),
                 "annotations": ";".join(k for k in lists if i in getattr(a, k))} for i in range(self.n_patches)]


def flag_report(annotations: ErrorAnnotations, flags: Mapping[int, bool] | Iterable[bool]) -> FlagReport:
    """Check per-patch flags (``flags[i]`` for patch index ``i``, all of ``0 .. n − 1``) against ``annotations``;
    annotations of patches beyond the evaluated ones are left out."""
    flags = dict(flags) if isinstance(flags, Mapping) else dict(enumerate(flags))
    n = len(flags)
    if sorted(flags) != list(range(n)):
        raise ValueError(f"flags for patch indices {sorted(flags)[:5]}…; expected every index 0..{n - 1}")
    return FlagReport(annotations.within(n), n, frozenset(i for i, f in flags.items() if f))
