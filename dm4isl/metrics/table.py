"""Comparison tables: headline values, improvement % against the better baseline, paired Wilcoxon test, bootstrap CI."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import wilcoxon

from dm4isl.metrics.registry import DATASET, METRICS, MetricSpec

PERCENT = 100.0
#: Defaults of the statistics (config keys ``statistics.*`` of ``evaluate.yaml``).
DEFAULT_CONFIDENCE = 0.95
DEFAULT_N_RESAMPLES = 9999
DEFAULT_SEED = 0
#: Fewest valid patch pairs for a Wilcoxon test or a bootstrap interval.
MIN_PAIRS = 2

#: Statistic names used as the ``statistic`` column of the summary.
MEAN, STD, POOLED, DATASET_VALUE, N_DEFINED = "mean", "std", "pooled", "dataset", "n_defined"
IMPROVEMENT, WILCOXON_P, CI_LOW, CI_HIGH = "improvement_pct", "wilcoxon_p", "ci95_low", "ci95_high"


def improvement_pct(model: float, baseline: float, higher_is_better: bool) -> float:
    """Improvement of ``model`` over ``baseline`` in percent: ``100 · ((model / baseline)^sign − 1)`` (SPEC §5),
    sign = +1 when higher is better and −1 when lower is better. Positive means better than the baseline.
    NaN (documented) when a value is NaN, or when the two values are not both positive: a ratio of values of
    opposite sign (e.g. a PCC of −0.02) has no meaning as an improvement."""
    num, den = (model, baseline) if higher_is_better else (baseline, model)
    if np.isnan(num) or not np.isfinite(den) or den <= 0 or num < 0:
        return float("nan")
    return PERCENT * (num / den - 1.0)


def best_baseline(values: Mapping[str, float], baselines: Sequence[str], higher_is_better: bool) -> str | None:
    """Name of the best of ``baselines`` present in ``values`` with a finite value; ``None`` if there is none.

    Ties go to the baseline listed first.
    """
    present = [b for b in baselines if b in values and np.isfinite(values[b])]
    if not present:
        return None
    pick = max if higher_is_better else min
    return pick(present, key=lambda b: values[b])


def _finite_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(N,)`` per-patch pairs of ``a`` and ``b`` where both values are finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired statistics need equally long per-patch values, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired per-patch values ``a`` vs ``b`` (scipy).

    Pairs with a non-finite value are dropped. 1.0 when all differences are 0; NaN (documented) for fewer than
    2 valid pairs. With n patches the smallest attainable p-value is 2 / 2^n (0.0625 for 5 patches).
    """
    a, b = _finite_pairs(a, b)
    if len(a) < MIN_PAIRS:
        return float("nan")
    if np.all(a == b):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def bootstrap_ci(
    statistic: Callable[..., float],
    samples: Sequence[Sequence[float]],
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = DEFAULT_SEED,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic(*samples)``, resampling patches jointly (paired).

    ``samples`` are equally long per-patch arrays; patches with a non-finite value in any sample are dropped.
    Resamples draw patch indices with replacement from ``numpy.random.default_rng(seed)`` (reproducible); the
    bounds are the ``(1 ± confidence) / 2`` quantiles of the resampled statistics, ignoring resamples where the
    statistic is undefined (NaN, e.g. a correlation of a resample that repeats one patch). A ``vectorized``
    statistic takes ``(n_resamples, n)`` arrays and an ``axis`` keyword. NaN bounds (documented) for fewer than
    2 patches.
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    keep = np.logical_and.reduce([np.isfinite(x) for x in arrays])
    arrays = [x[keep] for x in arrays]
    n = len(arrays[0])
    if n < MIN_PAIRS:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    if vectorized:
        values = np.asarray(statistic(*(x[idx] for x in arrays), axis=-1), dtype=np.float64)
    else:
        values = np.array([statistic(*(x[i] for x in arrays)) for i in idx], dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of the paired differences ``a − b`` along ``axis`` (vectorised for :func:`bootstrap_ci`)."""
    return np.mean(np.asarray(a) - np.asarray(b), axis=axis)


@dataclass
class MethodValues:
    """Everything measured for one method: ``per_patch[metric]`` is ``(N,)`` in patch order; ``dataset`` holds
    ``"<metric>_pooled"`` and dataset-level values."""

    per_patch: dict[str, np.ndarray]
    dataset: dict[str, float] = field(default_factory=dict)


def headline_statistic(spec: MetricSpec) -> str:
    """Which value a table reports for a metric: ``dataset`` for dataset-level metrics, the ``mean`` over patches
    for every other one (SPEC §5: the paper's figures are means over its test patches). Values pooled over all
    voxels (PCC, MSE) are extra rows, never the headline."""
    return DATASET_VALUE if spec.level == DATASET else MEAN


def headline_value(spec: MetricSpec, values: MethodValues) -> float:
    """The headline value (see :func:`headline_statistic`) of one method."""
    if headline_statistic(spec) == DATASET_VALUE:
        return values.dataset[spec.name]
    return _nanmean(values.per_patch[spec.name])


def _nanmean(x: np.ndarray) -> float:
    """Mean of the defined (non-NaN) values; NaN when none is defined. ``inf`` values propagate."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _nanstd(x: np.ndarray) -> float:
    """Sample standard deviation (ddof 1) of the finite values; NaN for fewer than 2."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.std(ddof=1)) if x.size >= MIN_PAIRS else float("nan")


@dataclass
class SummaryRow:
    """One row of the summary: a statistic of one metric for every method (``values[method]``).

    ``reference`` names the baseline the comparison statistics were computed against (per metric).
    """

    metric: str
    statistic: str
    values: dict[str, float]
    reference: str = ""


def summarize(
    results: Mapping[str, MethodValues],
    metric_names: Sequence[str],
    baselines: Sequence[str],
    gt_companions: Mapping[str, np.ndarray] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[SummaryRow]:
    """Build the summary rows for all methods in ``results``.

    Per metric: ``mean`` and ``std`` over patches (patch-level), ``pooled`` (PCC, MSE), ``dataset``
    (dataset-level), ``n_defined`` when some patch value is NaN; and for score metrics, when a baseline of
    ``baselines`` is present: ``improvement_pct`` of the headline value against the better baseline,
    ``wilcoxon_p`` of the paired per-patch values and the bootstrap ``ci95_low``/``ci95_high`` of the mean
    paired difference method − baseline (for a dataset-level metric: of the difference of the dataset values
    under paired patch resampling; no Wilcoxon test). ``gt_companions[metric]`` are the ground truth's
    per-patch companion values of a dataset-level metric (e.g. GLCM features), needed for its bootstrap.
    """
    rows: list[SummaryRow] = []
    methods = list(results)
    for name in metric_names:
        spec = METRICS[name]
        if spec.level == DATASET:
            rows.append(SummaryRow(name, DATASET_VALUE, {m: results[m].dataset[name] for m in methods}))
        else:
            per = {m: np.asarray(results[m].per_patch[name], dtype=np.float64) for m in methods}
            rows.append(SummaryRow(name, MEAN, {m: _nanmean(per[m]) for m in methods}))
            rows.append(SummaryRow(name, STD, {m: _nanstd(per[m]) for m in methods}))
            if spec.pooled:
                rows.append(SummaryRow(name, POOLED, {m: results[m].dataset[f"{name}_pooled"] for m in methods}))
            if any(np.isnan(per[m]).any() for m in methods):
                rows.append(SummaryRow(name, N_DEFINED, {m: float((~np.isnan(per[m])).sum()) for m in methods}))
        if not spec.is_score:
            continue
        headline = {m: headline_value(spec, results[m]) for m in methods}
        ref = best_baseline(headline, baselines, spec.higher_is_better)
        if ref is None:
            continue
        rows.append(SummaryRow(name, IMPROVEMENT, {
            m: improvement_pct(headline[m], headline[ref], spec.higher_is_better) for m in methods
        }, ref))
        p_values, lows, highs = {}, {}, {}
        for m in methods:
            if m == ref:
                p_values[m] = lows[m] = highs[m] = float("nan")
                continue
            if spec.level == DATASET:
                if not gt_companions or name not in gt_companions:
                    raise ValueError(f"{name}: the ground truth's per-patch {spec.companion} values are needed")
                stat = _dataset_difference(spec)
                samples = [gt_companions[name], results[m].per_patch[spec.companion],
                           results[ref].per_patch[spec.companion]]
                p_values[m] = float("nan")
            else:
                stat = mean_difference
                samples = [results[m].per_patch[name], results[ref].per_patch[name]]
                p_values[m] = paired_wilcoxon(*samples)
            lows[m], highs[m] = bootstrap_ci(stat, samples, confidence, n_resamples, seed, vectorized=True)
        rows.append(SummaryRow(name, WILCOXON_P, p_values, ref))
        rows.append(SummaryRow(name, CI_LOW, lows, ref))
        rows.append(SummaryRow(name, CI_HIGH, highs, ref))
    return rows


def _dataset_difference(spec: MetricSpec) -> Callable[[np.ndarray, np.ndarray, np.ndarray], float]:
    """``(gt, method, baseline) -> dataset_fn(gt, method) − dataset_fn(gt, baseline)`` for a dataset-level metric
    (vectorised over leading axes: ``dataset_fn`` works along the last axis)."""

    def difference(gt: np.ndarray, method: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(spec.dataset_fn(gt, method)) - np.asarray(spec.dataset_fn(gt, baseline))

    return difference
