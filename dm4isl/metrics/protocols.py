"""Evaluation protocols: which metric definitions make a comparison table, its column headings, and their source.

* ``benchmark`` — the 11 columns of ``calc_metrics`` in the authors' newest ``src/MetricsFunctions.py`` (the version
  with the ``SegParams`` dataclass), which their newest evaluation notebook, ``BENCHMARK.ipynb``, tabulates as the
  per-patch means over the 128 benchmark patches of each organelle ("Use 128 to reproduce the paper results").
* ``paper14`` — the paper's 14 metrics as the authors' earlier code computed them (``RESULTS_ANALYSIS.ipynb`` and the
  earlier ``src/MetricsFunctions.py``): JSD over voxels, one Otsu level per patch, 3-D masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dm4isl.metrics.registry import BENCHMARK, METRICS, PAPER


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol: its ``metrics`` (registry names, table order), the heading of each in the
    protocol's own table (``columns``; the registry label otherwise) and one phrase naming the source."""

    name: str
    metrics: tuple[str, ...]
    source: str
    columns: dict[str, str] = field(default_factory=dict)

    def heading(self, metric: str) -> str:
        """Column heading of ``metric`` in this protocol's table."""
        return self.columns.get(metric) or METRICS[metric].label

    def describe(self) -> str:
        """One line for reports: ``protocol benchmark: <source>``."""
        return f"protocol {self.name}: {self.source}"


PROTOCOLS: dict[str, Protocol] = {
    "benchmark": Protocol(
        "benchmark", BENCHMARK,
        "the 11 columns of calc_metrics in the authors' newest src/MetricsFunctions.py (default SegParams: per-slice "
        "Gaussian σ 1, Otsu, hole filling, opening, watershed, Hungarian matching at IoU ≥ 0.6; JSD of 256-bin "
        "histograms), per-patch means as in their BENCHMARK.ipynb",
        {"pcc": "PCC", "mse": "MSE", "ms_ssim": "MS-SSIM", "jsd_histogram": "JSD", "mi": "MI", "iou_2d": "IoU",
         "f1_2d": "F1", "centroid_2d": "Centroid", "min_distance_2d": "Min distance", "area_2d": "Area",
         "hausdorff_2d": "HD"},
    ),
    "paper14": Protocol(
        "paper14", PAPER,
        "the paper's 14 metrics as the authors' earlier code computed them (RESULTS_ANALYSIS.ipynb; JSD over voxels, "
        "3-D masks of one Otsu level per patch)",
    ),
}
#: The protocol of ``dm4isl-evaluate`` and ``scripts/reproduce_paper.py`` unless told otherwise (docs/metrics.md).
DEFAULT_PROTOCOL = "benchmark"


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
