"""Uncertainty flags of an evaluation: the std maps of a folder (the benchmark's ``DDPMstd/``) → error masks → patch
flags, checked against the authors' manual error annotations when the folder is one of their benchmark organelles."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dm4isl.data.normalize import to_unit
from dm4isl.data.readers import read_volume
from dm4isl.errors import DataError
from dm4isl.evaluation.inputs import MAX_LISTED_PROBLEMS
from dm4isl.io.layout import BENCHMARK_STD, benchmark_organelle
from dm4isl.uncertainty.annotations import FlagReport, annotations, flag_report
from dm4isl.uncertainty.masks import FLAG_FRACTION, MaskSettings, patch_flag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlagSettings:
    """How patches are flagged: std maps in ``std_folder`` (uint8 = value / 255, as the benchmark's, or float),
    the organelle's intra-process ``threshold`` (None: no flags) and its config name ``organelle`` (for the median
    size of the authors' segmentation), flagged above ``flag_fraction`` of the patch."""

    std_folder: str = BENCHMARK_STD
    threshold: float | None = None
    organelle: str | None = None
    flag_fraction: float = FLAG_FRACTION

    def describe(self) -> str:
        """One sentence for reports."""
        return (f"{self.std_folder}/ > {self.threshold:g} (the organelle's intra-process std threshold) → the authors' "
                f"per-patch segmentation (segmentation_pipeline_per_patch: median, one Otsu level, small objects, "
                f"holes) → flagged above {100 * self.flag_fraction:g} % of the patch")


@dataclass(frozen=True)
class PatchFlags:
    """Flags of every evaluated patch (``fractions[patch]``: share of the patch in the error mask) and, for a benchmark
    organelle with annotations, the :class:`~dm4isl.uncertainty.annotations.FlagReport`."""

    settings: FlagSettings
    fractions: dict[str, float]
    flagged: dict[str, bool]
    report: FlagReport | None = None


def _annotation_report(input_dir: Path, patches: Sequence[str], flagged: dict[str, bool]) -> FlagReport | None:
    """The annotation check when ``input_dir`` is an annotated benchmark organelle folder whose patches are 0..n−1."""
    annotated = annotations().get(input_dir.name)
    if annotated is None:
        return None
    if sorted(patches, key=lambda p: int(p) if p.isdigit() else -1) != [str(i) for i in range(len(patches))]:
        log.warning("%s: patch names are not 0..%d; the annotations (patch indices) are not checked", input_dir,
                    len(patches) - 1)
        return None
    return flag_report(annotated, {int(p): f for p, f in flagged.items()})


def compute_flags(input_dir: str | Path, patches: Sequence[str], settings: FlagSettings) -> PatchFlags | None:
    """Flag every patch of ``patches`` from ``input_dir/<std_folder>/<patch>.tiff``; None when there is no such folder
    or no threshold (a log line says why). Every std map is read and checked before any is segmented: one
    :class:`DataError` lists all problems (missing, unreadable, out of range), each naming its file."""
    input_dir = Path(input_dir)
    folder = input_dir / settings.std_folder
    if not folder.is_dir():
        return None
    if settings.threshold is None:
        log.warning("%s: no intra-process std threshold for organelle %s; patches are not flagged", folder,
                    settings.organelle)
        return None
    problems: list[str] = []
    maps = {}
    for patch in patches:
        path = next((p for p in (folder / f"{patch}.tiff", folder / f"{patch}.tif", folder / f"{patch}.ome.tiff")
                     if p.is_file()), None)
        if path is None:
            problems.append(f"{folder / f'{patch}.tiff'}: missing std map of patch {patch!r}")
            continue
        try:
            maps[patch] = to_unit(read_volume(path), path)
        except DataError as err:
            problems.append(str(err))
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        raise DataError(f"{folder}: {len(problems)} invalid std map(s), nothing was written:\n  {listed}")
    masks = MaskSettings.for_organelle(settings.organelle, flag_fraction=settings.flag_fraction)
    fractions, flagged = {}, {}
    for patch, std in maps.items():
        flagged[patch], fractions[patch] = patch_flag(std, settings.threshold, masks)
    if benchmark_organelle(input_dir) is None:
        return PatchFlags(settings, fractions, flagged)
    return PatchFlags(settings, fractions, flagged, _annotation_report(input_dir, patches, flagged))
