"""The outcome of an evaluation: per-patch values, pooled/dataset values and summary rows of every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dm4isl.metrics.registry import METRICS

if TYPE_CHECKING:
    from dm4isl.evaluation.ensembles import EnsembleScore
    from dm4isl.evaluation.flags import PatchFlags
from dm4isl.metrics.table import MethodValues, SummaryRow


@dataclass
class EvaluationResult:
    """Metric values of every method and the summary rows.

    ``results[method]`` holds per-patch arrays (patch order of ``patches``) and pooled/dataset values;
    ``gt_companions[metric]`` the ground truth's per-patch companion values of dataset-level metrics;
    ``ensembles[method]`` the size and spread–skill curve of each method scored as a seed ensemble; ``flags`` the
    patch flags of the uncertainty maps and their check against the authors' annotations.
    """

    input_dir: Path
    gt_name: str
    patches: list[str]
    metric_names: list[str]
    results: dict[str, MethodValues]
    gt_companions: dict[str, np.ndarray]
    baselines: list[str]
    summary: list[SummaryRow] = field(default_factory=list)
    ensembles: dict[str, EnsembleScore] = field(default_factory=dict)
    segmentation: str = ""  #: how the masks of the segmentation metrics were made (one phrase, for the report)
    protocol: str = ""  #: the protocol that made the tables (:data:`dm4isl.metrics.protocols.PROTOCOLS`)
    flags: PatchFlags | None = None  #: uncertainty flags of every patch, when a std-map folder was evaluated

    @property
    def methods(self) -> list[str]:
        """Method names in evaluation order."""
        return list(self.results)

    def per_patch_rows(self) -> list[dict[str, object]]:
        """Long-format rows ``method, patch, metric, value`` (the ground truth's own companion values, e.g. its
        GLCM feature, appear under the ground-truth folder name)."""
        rows: list[dict[str, object]] = []
        for method, values in self.results.items():
            for metric in self.metric_names:
                if metric in values.per_patch:
                    rows += [
                        {"method": method, "patch": p, "metric": metric, "value": float(v)}
                        for p, v in zip(self.patches, values.per_patch[metric], strict=True)
                    ]
        for metric, values in self.gt_companions.items():
            rows += [
                {"method": self.gt_name, "patch": p, "metric": METRICS[metric].companion, "value": float(v)}
                for p, v in zip(self.patches, values, strict=True)
            ]
        return rows
