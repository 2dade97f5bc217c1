"""Render an evaluation as CSV tables, a Markdown table, box plots and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dm4isl.evaluation.ensembles import CRPS
from dm4isl.evaluation.result import EvaluationResult
from dm4isl.io.atomic import write_bytes, write_csv, write_text
from dm4isl.io.layout import BENCHMARK_METHODS
from dm4isl.metrics.protocols import get_protocol
from dm4isl.metrics.registry import CLS_LPIPS, METRICS, PATCH
from dm4isl.metrics.table import (
    CI_HIGH,
    CI_LOW,
    IMPROVEMENT,
    MEAN,
    POOLED,
    STD,
    WILCOXON_P,
    SummaryRow,
    headline_statistic,
)
from dm4isl.uncertainty.annotations import annotation_source

PER_PATCH_CSV = "metrics_per_patch.csv"
SUMMARY_CSV = "metrics_summary.csv"
SUMMARY_MD = "metrics_summary.md"
REPORT_HTML = "report.html"
SPREAD_SKILL_CSV = "spread_skill.csv"
SPREAD_SKILL_PNG = "spread_skill.png"
FLAGS_CSV = "uncertainty_flags.csv"
ANNOTATIONS_CSV = "annotation_check.csv"
#: First column of every CSV: the protocol that made it.
PROTOCOL = "protocol"
FIGURE_DIR = "figures"
#: Spread–skill plot size in inches (square: the calibrated diagonal at 45°).
SPREAD_SKILL_SIZE_IN = (4.4, 4.0)
#: Box-plot size in inches and resolution.
FIGURE_SIZE_IN = (5.0, 3.2)
FIGURE_DPI = 100
#: Fixed margins (figure fractions) leave room for rotated method names without a layout engine's cost.
FIGURE_MARGINS = {"left": 0.16, "right": 0.97, "top": 0.9, "bottom": 0.28}
DIRECTION_ARROW = {True: "↑", False: "↓", None: ""}
DIRECTION_WORD = {True: "higher", False: "lower", None: "none"}


def _fmt(value: float, spec: str = ".4g") -> str:
    """Format a number for a human table; NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _rows_by(result: EvaluationResult) -> dict[tuple[str, str], SummaryRow]:
    """Summary rows keyed by ``(metric, statistic)``."""
    return {(r.metric, r.statistic): r for r in result.summary}


def summary_rows(result: EvaluationResult) -> list[dict[str, object]]:
    """``metrics_summary.csv`` rows: ``protocol, metric, statistic, direction, unit, reference`` then one column per
    method (unrounded values; ``reference`` is the baseline the comparison rows are computed against)."""
    return [
        {
            PROTOCOL: result.protocol,
            "metric": r.metric,
            "statistic": r.statistic,
            "direction": DIRECTION_WORD[METRICS[r.metric].higher_is_better],
            "unit": METRICS[r.metric].unit,
            "reference": r.reference,
            **{m: r.values[m] for m in result.methods},
        }
        for r in result.summary
    ]


def _headline_cells(result: EvaluationResult, metric: str) -> tuple[str, dict[str, str], str | None]:
    """(statistic label, formatted headline value per method, best method) of one metric."""
    spec = METRICS[metric]
    rows = _rows_by(result)
    stat = headline_statistic(spec)
    values = rows[(metric, stat)].values
    std = rows.get((metric, STD))
    cells = {}
    for m in result.methods:
        text = _fmt(values[m])
        if stat == MEAN and std is not None:
            text += f" ± {_fmt(std.values[m], '.2g')}"
        cells[m] = text
    best = None
    finite = {m: v for m, v in values.items() if not math.isnan(v)}
    if spec.is_score and finite:
        best = (max if spec.higher_is_better else min)(finite, key=finite.get)
    return stat, cells, best


def _comparison_cells(result: EvaluationResult, metric: str) -> tuple[str, dict[str, str]] | None:
    """(reference baseline, "improvement % · p · CI" per method) of one metric, or None without a baseline."""
    rows = _rows_by(result)
    imp = rows.get((metric, IMPROVEMENT))
    if imp is None:
        return None
    p, lo, hi = rows[(metric, WILCOXON_P)], rows[(metric, CI_LOW)], rows[(metric, CI_HIGH)]
    cells = {}
    for m in result.methods:
        if m == imp.reference:
            cells[m] = "reference"
            continue
        cells[m] = (
            f"{_fmt(imp.values[m], '+.2f')} % · p = {_fmt(p.values[m], '.3g')} · "
            f"Δ CI [{_fmt(lo.values[m])}, {_fmt(hi.values[m])}]"
        )
    return imp.reference, cells


def _metric_label(metric: str) -> str:
    """Table label: heading (name, or what the values are, e.g. ``perceptual_distance (random features)``),
    direction arrow and unit, e.g. ``hausdorff↓ (µm)``."""
    spec = METRICS[metric]
    unit = f" ({spec.unit})" if spec.unit else ""
    return f"{spec.label}{DIRECTION_ARROW[spec.higher_is_better]}{unit}"


def _confidence_note(result: EvaluationResult) -> str:
    """One paragraph saying which values the tables show and how the statistics were computed."""
    return (
        f"{len(result.patches)} patches. Values: mean ± std over patches (the paper's figures are means over its "
        "test patches); GLCM correlation is dataset-level (Pearson across patches); PCC and MSE pooled over all "
        "voxels of all patches are extra rows. Improvement % = 100·((method/baseline)^sign − 1) of the means "
        f"against the better baseline per metric (baselines present: {', '.join(result.baselines) or 'none'}); "
        "p: paired two-sided Wilcoxon signed-rank test of per-patch values; Δ CI: percentile bootstrap 95 % "
        "interval of the mean paired per-patch difference method − baseline (for GLCM correlation: of the "
        "difference of the dataset values)."
        + (f" Masks of the segmentation metrics: {result.segmentation}." if result.segmentation else "")
    )


def _pooled_rows(result: EvaluationResult) -> list[tuple[str, dict[str, str]]]:
    """(label, formatted value per method) of the pooled-over-voxels rows (PCC, MSE) present in the summary."""
    rows = _rows_by(result)
    out = []
    for metric in result.metric_names:
        pooled = rows.get((metric, POOLED))
        if pooled is not None:
            out.append((f"{_metric_label(metric)} · pooled", {m: _fmt(pooled.values[m]) for m in result.methods}))
    return out


def _protocol_line(result: EvaluationResult) -> str:
    """``Protocol benchmark: <source>.`` (the protocol's one-line description), and the metrics when they were chosen
    instead of the protocol's own set."""
    protocol = get_protocol(result.protocol)
    line = protocol.describe()
    chosen = [m for m in result.metric_names if METRICS[m].is_score and m not in (CLS_LPIPS, CRPS)]
    if chosen != list(protocol.metrics):
        line += f". Metrics chosen instead of the protocol's set: {', '.join(chosen)}"
    return line[0].upper() + line[1:] + "."


def _table_methods(result: EvaluationResult) -> list[str]:
    """Methods in the paper's order: the benchmark's U-Net, GAN, DM, DM4ISL folders first, then the others."""
    known = [m for m in BENCHMARK_METHODS if m in result.results]
    return known + [m for m in result.methods if m not in known]


def protocol_table(result: EvaluationResult) -> str:
    """The protocol's comparison table in the paper's form (Markdown): one row per metric under the protocol's
    heading, one column per method (benchmark folder names shown as U-Net, GAN, DM, DM4ISL) with the mean over
    patches, then for every method that is not a baseline its improvement % over the better baseline with the
    paired Wilcoxon p-value."""
    protocol = get_protocol(result.protocol)
    rows = _rows_by(result)
    methods = _table_methods(result)
    compared = [m for m in methods if m not in result.baselines] if result.baselines else []
    label = {m: BENCHMARK_METHODS.get(m, m) for m in methods}
    header = ["metric", *(label[m] for m in methods), *(f"{label[m]} vs better baseline" for m in compared)]
    lines = [f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    for metric in result.metric_names:
        spec = METRICS[metric]
        if not spec.is_score:
            continue
        values = rows[(metric, headline_statistic(spec))].values
        cells = [_fmt(values[m]) for m in methods]
        imp, p = rows.get((metric, IMPROVEMENT)), rows.get((metric, WILCOXON_P))
        for m in compared:
            cells.append("–" if imp is None else f"{_fmt(imp.values[m], '+.1f')} % (p = {_fmt(p.values[m], '.2g')})")
        lines.append(f"| {protocol.heading(metric)} {DIRECTION_ARROW[spec.higher_is_better]} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + "\n"


def flag_rows(result: EvaluationResult) -> list[dict[str, object]]:
    """``uncertainty_flags.csv`` rows: per patch, the share of it in the error mask, its flag and the annotation
    lists it is on (benchmark organelles)."""
    flags = result.flags
    if flags is None:
        return []
    listed = {}
    if flags.report is not None:
        listed = {str(r["patch"]): r["annotations"] for r in flags.report.patch_rows()}
    return [{PROTOCOL: result.protocol, "patch": p, "std_fraction": flags.fractions[p],
             "flagged": int(flags.flagged[p]), "annotations": listed.get(p, "")} for p in result.patches]


def _flag_section(result: EvaluationResult) -> list[str]:
    """Markdown lines of the uncertainty flags and their check against the authors' annotations."""
    flags = result.flags
    if flags is None:
        return []
    n_flagged = sum(flags.flagged.values())
    lines = ["", "## Uncertainty flags", "", f"{flags.settings.describe()}: {n_flagged} of {len(result.patches)} "
             f"patches flagged (per patch: {FLAGS_CSV})."]
    report = flags.report
    if report is None:
        return lines
    row = report.summary()
    source = annotation_source()
    lines += [
        "", f"Against the authors' manual annotations of {row['organelle']} ({source['repository']} "
        f"{source['file']} at {source['commit'][:7]}, cell {source['cell']}; patches 0–{report.n_patches - 1}):", "",
        "| what | count | patches |", "|---|---|---|",
        f"| annotated DM4ISL errors flagged (recall {_fmt(report.recall, '.3f')}) | {row['errors_flagged']} of "
        f"{row['dm4isl_errors']} | {_indices(report.caught)} |",
        f"| annotated DM4ISL errors not flagged | {row['errors_missed']} | {_indices(report.missed)} |",
        f"| flags without an annotated DM4ISL error | {row['flags_without_error']} | "
        + ", ".join(f"{p} ({report.flag_kind(p)})" for p in report.unannotated_flags) + " |",
        f"| annotated errors: U-Net vs DM4ISL | {row['unet_errors']} vs {row['dm4isl_errors']} | |",
        f"| the authors' caught (UncMap_TP) also flagged here | {row['agree_with_authors_caught']} of "
        f"{row['authors_caught']} | |",
        f"| the authors' missed (UncMap_FN) also unflagged here | {row['agree_with_authors_missed']} of "
        f"{row['authors_missed']} | |",
    ]
    return lines


def _indices(patches: list[int]) -> str:
    """Patch indices as a comma-separated list (an en dash when empty)."""
    return ", ".join(str(p) for p in patches) or "–"


def markdown_summary(result: EvaluationResult) -> str:
    """Paper-style Markdown tables: the protocol's table, headline values (best in bold), the comparison against
    the baseline and, with a std-map folder, the uncertainty flags."""
    methods = result.methods
    lines = ["# Evaluation summary", "", _protocol_line(result), "", _confidence_note(result), "",
             f"## The paper's table (protocol {result.protocol})", "", protocol_table(result).rstrip("\n"),
             *_flag_section(result), "", "## Metrics", ""]
    lines.append("| metric | value | " + " | ".join(methods) + " |")
    lines.append("|---|---|" + "---|" * len(methods))
    for metric in result.metric_names:
        stat, cells, best = _headline_cells(result, metric)
        shown = [f"**{cells[m]}**" if m == best else cells[m] for m in methods]
        lines.append(f"| {_metric_label(metric)} | {stat} | " + " | ".join(shown) + " |")
    for label, cells in _pooled_rows(result):
        lines.append(f"| {label} | {POOLED} | " + " | ".join(cells[m] for m in methods) + " |")
    if result.ensembles:
        lines += ["", "## Seed ensembles", "", _ensemble_note(result), "", "| method | bin | spread | RMSE | voxels |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['bin']} | {_fmt(r['spread'])} | {_fmt(r['rmse'])} | {r['voxels']} |"
                  for r in spread_skill_rows(result)]
    comparisons = [(m, _comparison_cells(result, m)) for m in result.metric_names]
    comparisons = [(m, c) for m, c in comparisons if c is not None]
    if comparisons:
        lines += ["", "## Against the better baseline", ""]
        lines.append("| metric | baseline | " + " | ".join(methods) + " |")
        lines.append("|---|---|" + "---|" * len(methods))
        for metric, (ref, cells) in comparisons:
            lines.append(f"| {_metric_label(metric)} | {ref} | " + " | ".join(cells[m] for m in methods) + " |")
    return "\n".join(lines) + "\n"


def boxplot_png(result: EvaluationResult, metric: str) -> bytes:
    """PNG bytes of a box plot of one per-patch metric, one box per method (NaN patches left out)."""
    series = {m: result.results[m].per_patch[metric] for m in result.methods}
    if metric in {METRICS[k].companion for k in result.gt_companions}:
        dataset_metric = next(k for k in result.gt_companions if METRICS[k].companion == metric)
        series = {result.gt_name: result.gt_companions[dataset_metric], **series}
    data = [np.asarray(v, dtype=np.float64) for v in series.values()]
    data = [v[np.isfinite(v)] for v in data]
    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI)
    fig.subplots_adjust(**FIGURE_MARGINS)
    ax = fig.add_subplot()
    ax.boxplot(data, tick_labels=list(series), showmeans=True)
    ax.set_title(_metric_label(metric))
    ax.set_ylabel(METRICS[metric].unit or "value")
    ax.tick_params(axis="x", labelrotation=30)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def spread_skill_rows(result: EvaluationResult) -> list[dict[str, object]]:
    """``spread_skill.csv`` rows: per ensemble method and spread bin, the std range, predicted spread, observed RMSE
    of the ensemble mean and voxel count (intensity units)."""
    rows: list[dict[str, object]] = []
    for method, score in result.ensembles.items():
        curve = score.spread_skill
        for b in range(len(curve.spread)):
            rows.append({
                "method": method, "members": score.n_members, "bin": b, "spread": float(curve.spread[b]),
                "rmse": float(curve.rmse[b]), "voxels": int(curve.count[b]),
            })
    return rows


def spread_skill_png(result: EvaluationResult) -> bytes:
    """PNG of the spread–skill curves: RMSE of the ensemble mean against the predicted spread, per spread bin, one
    line per ensemble method; the diagonal is perfect calibration (below it: over-dispersed, above: over-confident)."""
    fig = Figure(figsize=SPREAD_SKILL_SIZE_IN, dpi=FIGURE_DPI)
    fig.subplots_adjust(left=0.17, right=0.96, top=0.9, bottom=0.14)
    ax = fig.add_subplot()
    top = 0.0
    for method, score in result.ensembles.items():
        curve = score.spread_skill
        ax.plot(curve.spread, curve.rmse, marker="o", label=f"{method} ({score.n_members} members)")
        top = max(top, float(np.max(curve.spread)), float(np.max(curve.rmse)))
    top = top * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="calibrated")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted spread √((M+1)/M · var)")
    ax.set_ylabel("RMSE of the ensemble mean")
    ax.set_title("spread–skill (binned by ensemble std)")
    ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _ensemble_note(result: EvaluationResult) -> str:
    """One paragraph on the ensembles scored with the CRPS."""
    sizes = ", ".join(f"{m} ({s.n_members} members: {', '.join(s.member_names)})" for m, s in result.ensembles.items())
    return (
        f"Seed ensembles: {sizes}. crps = fair-ensemble continuous ranked probability score per voxel, averaged per "
        "patch (scoringrules, estimator 'fair'); for a method without members it is the CRPS of its point "
        "prediction, i.e. its mean absolute error, so every method is ranked by the same proper scoring rule. The "
        "spread–skill plot bins voxels by the members' standard deviation: a calibrated ensemble lies on the "
        "diagonal."
    )


def _html_table(header: list[str], body: list[list[str]], bold: list[int | None] | None = None) -> str:
    """An escaped HTML table; ``bold[r]`` is the column index to emphasise in row ``r`` (or None)."""
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r, row in enumerate(body):
        cells = []
        for c, cell in enumerate(row):
            text = html.escape(cell)
            cells.append(f"<td><b>{text}</b></td>" if bold and bold[r] == c else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_report(result: EvaluationResult, figures: dict[str, bytes]) -> str:
    """A self-contained HTML report: tables, definitions and box plots embedded as base64 PNG; links to the CSV
    and Markdown files written beside it."""
    methods = result.methods
    body, bold = [], []
    for metric in result.metric_names:
        stat, cells, best = _headline_cells(result, metric)
        body.append([_metric_label(metric), stat] + [cells[m] for m in methods])
        bold.append(methods.index(best) + 2 if best is not None else None)
    for label, cells in _pooled_rows(result):
        body.append([label, POOLED] + [cells[m] for m in methods])
        bold.append(None)
    protocol_rows = [line.strip("|").split(" | ") for line in protocol_table(result).splitlines()]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>dm4isl evaluation</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
        "td:first-child{text-align:left}figure{display:inline-block;margin:0.5em}</style></head><body>",
        "<h1>dm4isl evaluation</h1>",
        f"<p>Input: <code>{html.escape(str(result.input_dir))}</code>; ground truth "
        f"<code>{html.escape(result.gt_name)}</code>; methods: {html.escape(', '.join(methods))}.</p>",
        f"<p><b>{html.escape(_protocol_line(result))}</b></p>",
        f"<p>{html.escape(_confidence_note(result))}</p>",
        f"<h2>The paper's table (protocol {html.escape(result.protocol)})</h2>",
        _html_table([c.strip() for c in protocol_rows[0]], [[c.strip() for c in r] for r in protocol_rows[2:]]),
        f'<p>Files: <a href="{PER_PATCH_CSV}">{PER_PATCH_CSV}</a>, <a href="{SUMMARY_CSV}">{SUMMARY_CSV}</a>, '
        f'<a href="{SUMMARY_MD}">{SUMMARY_MD}</a>.</p>',
        "<h2>Metrics</h2>",
        _html_table(["metric", "value"] + methods, body, bold),
    ]
    comp_body = []
    for metric in result.metric_names:
        comp = _comparison_cells(result, metric)
        if comp is not None:
            comp_body.append([_metric_label(metric), comp[0]] + [comp[1][m] for m in methods])
    if comp_body:
        parts += ["<h2>Against the better baseline</h2>", _html_table(["metric", "baseline"] + methods, comp_body)]
    defs = [
        [s.name, DIRECTION_WORD[s.higher_is_better], s.unit or "–", s.level, "yes" if s.pooled else "no"]
        for s in (METRICS[m] for m in result.metric_names)
    ]
    flag_lines = _flag_section(result)
    if flag_lines:
        parts += ["<h2>Uncertainty flags</h2>", "<pre>" + html.escape("\n".join(flag_lines[3:])) + "</pre>"]
    if result.ensembles:
        data = base64.b64encode(spread_skill_png(result)).decode("ascii")
        parts += [
            "<h2>Seed ensembles</h2>", f"<p>{html.escape(_ensemble_note(result))}</p>",
            f'<figure><img alt="spread-skill plot" src="data:image/png;base64,{data}">'
            "<figcaption>spread–skill</figcaption></figure>",
        ]
    parts += ["<h2>Definitions</h2>", _html_table(["metric", "better", "unit", "level", "pooled"], defs)]
    parts.append("<h2>Per-patch distributions</h2>")
    for metric, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="box plot of {html.escape(metric)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(metric)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(result: EvaluationResult, output_dir: str | os.PathLike) -> list[Path]:
    """Render every output in memory, then write each atomically into ``output_dir``; returns the paths written.

    Files: ``metrics_per_patch.csv`` (long: protocol, method, patch, metric, value), ``metrics_summary.csv``,
    ``metrics_summary.md``, ``figures/boxplot_<metric>.png`` (per-patch metrics) and ``report.html``; with seed
    ensembles also ``spread_skill.csv`` and ``figures/spread_skill.png``; with uncertainty flags
    ``uncertainty_flags.csv`` and, for an annotated benchmark organelle, ``annotation_check.csv``.
    """
    output_dir = Path(output_dir)
    figures = {m: boxplot_png(result, m) for m in result.metric_names if METRICS[m].level == PATCH}
    per_patch = result.per_patch_rows()
    summary = summary_rows(result)
    md = markdown_summary(result)
    page = html_report(result, figures)
    per_patch = [{PROTOCOL: result.protocol, **row} for row in per_patch]
    written = [
        write_csv(output_dir / PER_PATCH_CSV, per_patch, [PROTOCOL, "method", "patch", "metric", "value"]),
        write_csv(output_dir / SUMMARY_CSV, summary, [PROTOCOL, "metric", "statistic", "direction", "unit",
                                                      "reference", *result.methods]),
        write_text(output_dir / SUMMARY_MD, md),
    ]
    if result.flags is not None:
        written.append(write_csv(output_dir / FLAGS_CSV, flag_rows(result),
                                 [PROTOCOL, "patch", "std_fraction", "flagged", "annotations"]))
        if result.flags.report is not None:
            check = {PROTOCOL: result.protocol, **result.flags.report.summary()}
            written.append(write_csv(output_dir / ANNOTATIONS_CSV, [check], list(check)))
    written += [write_bytes(output_dir / FIGURE_DIR / f"boxplot_{m}.png", png) for m, png in figures.items()]
    if result.ensembles:
        written.append(write_csv(output_dir / SPREAD_SKILL_CSV, spread_skill_rows(result),
                                 ["method", "members", "bin", "spread", "rmse", "voxels"]))
        written.append(write_bytes(output_dir / FIGURE_DIR / SPREAD_SKILL_PNG, spread_skill_png(result)))
    written.append(write_text(output_dir / REPORT_HTML, page))
    return written
