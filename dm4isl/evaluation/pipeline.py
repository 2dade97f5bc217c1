"""Evaluate method folders against ground truth: per-patch metrics, summary with statistics, written outputs."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dm4isl.evaluation.ensembles import CRPS, load_ensembles, score_ensembles
from dm4isl.evaluation.flags import FlagSettings, compute_flags
from dm4isl.evaluation.inputs import DEFAULT_BASELINES, DEFAULT_EXCLUDE, EvaluationInputs, load_inputs
from dm4isl.evaluation.report import write_report
from dm4isl.evaluation.result import EvaluationResult
from dm4isl.metrics.overlap import DEFAULT_VOXEL_SIZE_UM
from dm4isl.metrics.protocols import DEFAULT_PROTOCOL, get_protocol
from dm4isl.metrics.registry import (
    DATASET,
    DEFAULT_TORCH_THREADS,
    METRICS,
    PATCH,
    SEGMENTED,
    PairContext,
    resolve_metric_names,
    torch_threads,
)
from dm4isl.metrics.segmentation import SegmentationSettings
from dm4isl.metrics.table import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_RESAMPLES,
    DEFAULT_SEED,
    MethodValues,
    summarize,
)
from dm4isl.metrics.volume import VolumeFeatures
from dm4isl.prediction.classifier import ClassifierSpec, cached_feature_extractor

log = logging.getLogger(__name__)

#: Patches are handed to worker processes in about this many chunks per worker (load balance vs. overhead).
CHUNKS_PER_WORKER = 4


@dataclass
class _PatchJob:
    """Everything needed to measure one patch: ground truth and predictions ``(Z, Y, X)`` with their file names."""

    gt: np.ndarray
    gt_name: str
    preds: dict[str, np.ndarray]
    pred_names: dict[str, str]


def _patch_values(
    job: _PatchJob,
    voxel_size: Sequence[float],
    patch_names: Sequence[str],
    dataset_names: Sequence[str],
    classifier: ClassifierSpec | None = None,
    segmentation: SegmentationSettings | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-method metric values of one patch and the ground truth's companion values of dataset-level metrics."""
    gt = VolumeFeatures(job.gt, job.gt_name, segmentation)
    features = cached_feature_extractor(classifier) if classifier is not None else None
    companions = {k: METRICS[METRICS[k].companion].fn(PairContext(gt, gt, voxel_size)) for k in dataset_names}
    values: dict[str, dict[str, float]] = {}
    for m, pred_volume in job.preds.items():
        ctx = PairContext(gt, VolumeFeatures(pred_volume, job.pred_names[m], segmentation), voxel_size, features)
        values[m] = {k: METRICS[k].fn(ctx) for k in patch_names}
    return values, companions


def _chunk_values(
    jobs: list[_PatchJob],
    voxel_size: Sequence[float],
    patch_names: Sequence[str],
    dataset_names: Sequence[str],
    n_threads: int,
    classifier: ClassifierSpec | None = None,
    segmentation: SegmentationSettings | None = None,
) -> list[tuple[dict[str, dict[str, float]], dict[str, float]]]:
    """:func:`_patch_values` of several patches (the unit of work of a worker process)."""
    with torch_threads(n_threads):
        return [_patch_values(job, voxel_size, patch_names, dataset_names, classifier, segmentation) for job in jobs]


def _jobs(inputs: EvaluationInputs) -> Iterator[_PatchJob]:
    """One :class:`_PatchJob` per patch of ``inputs``, in patch order."""
    for i, patch in enumerate(inputs.patches):
        yield _PatchJob(
            gt=inputs.gts[i],
            gt_name=str(inputs.files[(inputs.gt_name, patch)]),
            preds={m: inputs.predictions[m][i] for m in inputs.methods},
            pred_names={m: str(inputs.files[(m, patch)]) for m in inputs.methods},
        )


def compute_results(
    inputs: EvaluationInputs,
    metrics: str | Iterable[str] = "paper",
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
    progress: bool = True,
    n_threads: int = DEFAULT_TORCH_THREADS,
    n_workers: int = 1,
    classifier: ClassifierSpec | None = None,
    segmentation: SegmentationSettings | None = None,
) -> tuple[list[str], dict[str, MethodValues], dict[str, np.ndarray]]:
    """Compute per-patch, pooled and dataset-level metric values for every method of ``inputs``.

    Returns ``(metric names, results per method, ground-truth companion values per dataset-level metric)``.
    Descriptors of each ground truth (segmentation, HOG, …) are computed once per patch and shared by all
    methods; nothing is kept beyond the patch, so memory stays flat in the number of patches. Torch runs with
    ``n_threads`` threads. ``n_workers`` > 1 spreads patches over that many worker processes (spawned, so each
    pays a few seconds of start-up: worth it for many patches); results do not depend on it. With a
    ``classifier`` (:class:`~dm4isl.prediction.classifier.ClassifierSpec`) ``cls_lpips`` is computed too; the
    classifier is loaded (and checked) before any patch is measured. ``segmentation`` chooses the masks of the
    segmentation metrics.
    """
    names = resolve_metric_names(metrics, with_classifier=classifier is not None)
    if classifier is not None:
        cached_feature_extractor(classifier)
        log.info("cls_lpips: classifier %s", classifier.path)
    patch_names = [n for n in names if METRICS[n].level == PATCH]
    dataset_names = [n for n in names if METRICS[n].level == DATASET]
    n = len(inputs.patches)
    jobs = list(_jobs(inputs))
    bar = tqdm(total=n, desc="evaluating patches", unit="patch", disable=not progress)
    outcomes: list[tuple[dict[str, dict[str, float]], dict[str, float]]] = []
    if n_workers <= 1:
        for job in jobs:
            outcomes += _chunk_values([job], voxel_size, patch_names, dataset_names, n_threads, classifier,
                                      segmentation)
            bar.update(1)
    else:
        size = max(1, math.ceil(n / (CHUNKS_PER_WORKER * n_workers)))
        chunks = [jobs[i : i + size] for i in range(0, n, size)]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(_chunk_values, c, tuple(voxel_size), patch_names, dataset_names, n_threads, classifier,
                            segmentation)
                for c in chunks
            ]
            for future, chunk in zip(futures, chunks, strict=True):
                outcomes += future.result()
                bar.update(len(chunk))
    bar.close()
    per_patch = {m: {k: np.array([o[0][m][k] for o in outcomes]) for k in patch_names} for m in inputs.methods}
    gt_companions = {k: np.array([o[1][k] for o in outcomes]) for k in dataset_names}
    results: dict[str, MethodValues] = {}
    for m in inputs.methods:
        dataset: dict[str, float] = {}
        for k in patch_names:
            if METRICS[k].pooled:
                dataset[f"{k}_pooled"] = float(METRICS[k].pooled_fn(inputs.gts, inputs.predictions[m]))
        for k in dataset_names:
            spec = METRICS[k]
            dataset[k] = float(spec.dataset_fn(gt_companions[k], per_patch[m][spec.companion]))
        results[m] = MethodValues(per_patch=per_patch[m], dataset=dataset)
    return names, results, gt_companions


def evaluate_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    metrics: str | Iterable[str] | None = None,
    gt_name: str = "GT",
    methods: Sequence[str] | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
    gt_window: Sequence[float] | None = None,
    pred_window: Sequence[float] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    n_threads: int = DEFAULT_TORCH_THREADS,
    n_workers: int = 1,
    classifier: ClassifierSpec | str | os.PathLike | None = None,
    ensembles: bool = True,
    segmentation: SegmentationSettings | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    flags: FlagSettings | None = None,
) -> EvaluationResult:
    """Evaluate every method folder of ``input_dir`` against ``input_dir/<gt_name>`` and write the report.

    ``protocol`` (:data:`dm4isl.metrics.protocols.PROTOCOLS`: ``benchmark`` or ``paper14``) names the definitions
    and gives the metric set when ``metrics`` is None; every output says which protocol made it. With ``flags``
    and a std-map folder beside the methods (the benchmark's ``DDPMstd/``) every patch is flagged from its std map
    and, in an annotated benchmark organelle folder, the flags are checked against the authors' annotations.

    All inputs are read and validated first (:func:`dm4isl.evaluation.inputs.load_inputs`); then metrics are
    computed (:func:`compute_results`) and summarised with improvement %, Wilcoxon p-values and bootstrap CIs
    against the better baseline present (:func:`dm4isl.metrics.table.summarize`); finally all outputs are
    rendered in memory and written atomically into ``output_dir`` (skipped when ``output_dir`` is None):
    ``metrics_per_patch.csv``, ``metrics_summary.csv``, ``metrics_summary.md``, ``figures/boxplot_<metric>.png``
    and ``report.html``. ``voxel_size`` is (Z, Y, X) in µm; ``n_threads`` and ``n_workers`` as in
    :func:`compute_results`. ``classifier``: an organelle classifier for ``cls_lpips`` (a
    :class:`~dm4isl.prediction.classifier.ClassifierSpec`, or a path read with its defaults); None: the perceptual
    distance is the random-feature one only. With ``ensembles``, a method folder ``M/`` with member folders
    ``M_seeds/<seed>/`` is scored as an ensemble: every method gets the per-patch ``crps`` (fair-ensemble CRPS
    of the members; the mean absolute error of a point prediction) and the report a spread–skill plot.
    ``segmentation`` chooses the masks of the segmentation metrics.
    """
    if classifier is not None and not isinstance(classifier, ClassifierSpec):
        classifier = ClassifierSpec(path=str(classifier))
    chosen = get_protocol(protocol)
    metrics = chosen.metrics if metrics is None else metrics
    inputs = load_inputs(input_dir, gt_name, methods, exclude, gt_window, pred_window)
    members = load_ensembles(inputs, pred_window) if ensembles else {}
    patch_flags = compute_flags(input_dir, inputs.patches, flags) if flags is not None else None
    log.info("evaluating %d patches of %d methods: %s", len(inputs.patches), len(inputs.methods), inputs.methods)
    names, results, gt_companions = compute_results(inputs, metrics, voxel_size, progress, n_threads, n_workers,
                                                    classifier, segmentation)
    ensemble_scores = {}
    if members:
        log.info("seed ensembles (CRPS, spread–skill): %s", {m: e.size for m, e in members.items()})
        ensemble_scores = score_ensembles(inputs, members, results)
        names = [*names, CRPS] if CRPS not in names else names
    present = [b for b in baselines if b in results]
    if not present:
        log.warning("no baseline folder among %s: improvement %% and statistics are not computed", list(baselines))
    result = EvaluationResult(Path(input_dir), gt_name, inputs.patches, names, results, gt_companions, present,
                              ensembles=ensemble_scores,
                              segmentation=(segmentation or SegmentationSettings()).describe()
                              if any(n in SEGMENTED for n in names) else "",
                              protocol=chosen.name, flags=patch_flags)
    result.summary = summarize(results, names, present, gt_companions, confidence, n_resamples, seed)
    if output_dir is not None:
        write_report(result, output_dir)
    return result
