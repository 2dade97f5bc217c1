"""Reproduce the paper's comparison: train (or reuse) U-Net, GAN and DDPM per organelle, predict, evaluate, tabulate.

Per organelle: train ``organelle=<organelle> model=<model>`` for model in unet, gan, ddpm (checkpoint chosen on the
validation split), predict the cached test split with each (DDPM final sample, DDPMavg, intra-process std and error
mask for the diffusion model), evaluate the four methods with :func:`dm4isl.evaluation.evaluate_folder` (the metrics
of ``--protocol``: ``benchmark``, the default, = the 11 columns of the authors' newest calc_metrics; ``paper14`` = the
paper's 14 metrics as their earlier code computed them; improvement % against the better baseline, Wilcoxon test,
bootstrap CI), and assemble the paper-style table (``results.md``, ``results.csv``, both naming the protocol) and a
figure grid (``figure_grid.png``: BF | GT | U-Net | GAN | DDPM | DDPMavg | intra std | error mask, middle Z slice).

Layout under ``--output-dir`` (deterministic: a re-run reuses finished checkpoints and predictions)::

    runs/<organelle>_<model>/          training run (checkpoints/, split.csv, csv logs, done.json when finished)
    <organelle>/predict_<model>/       test-split predictions of one model (predictions.csv)
    <organelle>/methods/               GT/ BF/ Unet/ GAN/ DDPM/ DDPMavg/ std_intra/ error_mask/ (evaluation input)
    <organelle>/evaluation/            dm4isl-evaluate outputs (report.html, metrics_summary.csv, ...)
    results.md  results.csv  figure_grid.png  throughput.csv (with --throughput)
    runs/classifier/                   the organelle classifier of CLS-LPIPS (with --classifier train)

``--classifier <checkpoint>`` adds the paper's perceptual metric, ``cls_lpips``, in that classifier's features (a
checkpoint of ``dm4isl-train experiment=classifier[_cpu]`` or a plain 3-D ResNet-101 state dict);
``--classifier train`` trains one first (``experiment=classifier_cpu`` with --synthetic, else ``experiment=classifier``,
plus ``--classifier-override``s). Without it the perceptual distance is the random-feature one only, labelled so.

``--synthetic``: the embedded synthetic data, tiny networks, CPU-sized step budgets (measured on a shared 2-core CPU:
23 minutes for both organelles on a quiet machine; on a busy one use OMP_NUM_THREADS=1 — docs/reproduce.md).
Without it, the experiment files are used as they are (paper networks and settings); add data and trainer
overrides, e.g. ``--override data=patch_folder --override data.root=/data/nucenv --override trainer=gpu``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dm4isl.data.readers import read_volume
from dm4isl.evaluation import EvaluationResult, evaluate_folder
from dm4isl.io.atomic import write_csv, write_text
from dm4isl.io.figures import GridRow, prediction_grid
from dm4isl.metrics.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from dm4isl.metrics.registry import METRICS
from dm4isl.metrics.table import CI_HIGH, CI_LOW, IMPROVEMENT, WILCOXON_P, headline_statistic
from dm4isl.models.checkpoint import load_predictor, prediction_provenance, read_checkpoint, selection_score
from dm4isl.prediction.classifier import ClassifierSpec
from dm4isl.prediction.runner import UncertaintySettings, inputs_from_patch_set, run_predict
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.train import train
from dm4isl.utils.compose import compose_config
from dm4isl.utils.instantiate import build_model

log = logging.getLogger("reproduce_paper")

MODELS = ("unet", "gan", "ddpm")
#: Method folders in table order, with their column headings.
METHODS = ("Unet", "GAN", "DDPM", "DDPMavg")
BASELINES = ("Unet", "GAN")
LABELS = {"Unet": "U-Net", "GAN": "GAN", "DDPM": "DDPM", "DDPMavg": "DDPMavg", "BF": "BF", "GT": "GT",
          "std_intra": "intra std", "error_mask": "error mask"}
GRID_COLUMNS = ("BF", "GT", "Unet", "GAN", "DDPM", "DDPMavg", "std_intra", "error_mask")
#: Folders each model's predictions contribute to the evaluation input.
PRODUCTS = {"unet": ("Unet",), "gan": ("GAN",), "ddpm": ("DDPM", "DDPMavg", "std_intra", "error_mask", "GT", "BF")}
DEFAULT_ORGANELLES = ("nuclear_envelope", "dna", "nucleoli", "actin", "microtubules", "mitochondria")
SYNTHETIC_ORGANELLES = ("nuclear_envelope", "dna")
DONE_FILE = "done.json"
#: File names of the validation-selected checkpoints (conf/callbacks/default.yaml: epoch{epoch:03d}-step{step:06d}).
TOP_K_PATTERN = "epoch*-step*.ckpt"

#: --synthetic: shared data settings (crops of 16 x 32 x 32 for training, the paper's 16 x 64 x 64 for evaluation).
SYNTHETIC_DATA = [
    "data=synthetic", "data.patch_size=[16,32,32]", "data.eval_patch_size=[16,64,64]", "data.samples_per_epoch=400",
    "data.n_val_patches=4", "data.n_test_patches=16", "data.batch_size=4", "data.eval_batch_size=4",
    "trainer=cpu", "trainer.max_epochs=100", "trainer.log_every_n_steps=20", "callbacks.progress_bar.refresh_rate=50",
]
#: --synthetic: per-model networks and training lengths. Budgets are optimiser steps only, never wall time, so the
#: results do not depend on the machine's speed or load. The diffusion model is the demo's (recipe=fast, tiny net:
#: conf/experiment/demo.yaml), not the paper recipe — stated in results.md; the baselines are shrunk
#: fnet-style U-Nets (depth 3, 16 base channels), about 15x cheaper per step than the tiny diffusion net, so they get
#: more steps in less time. GAN steps count both optimisers (2 per batch).
SYNTHETIC_MODEL = {
    "unet": ["model.net.depth=3", "model.net.base_channels=16", "model.net.num_res_units=1",
             "trainer.max_steps=1000", "trainer.max_time=null", "trainer.check_val_every_n_epoch=2"],
    "gan": ["model.generator.depth=3", "model.generator.base_channels=16", "model.generator.num_res_units=1",
            "model.discriminator.channels=16", "trainer.max_steps=2000", "trainer.max_time=null",
            "trainer.check_val_every_n_epoch=2"],
    "ddpm": ["model/net=tiny", "recipe=fast", "sampler.num_steps=25", "sampler.mean_correction=true",
             "model.lr=1.0e-3", "model.val_num_patches=4", "model.val_sampler.num_steps=20", "trainer.max_steps=500",
             "trainer.max_time=null", "trainer.check_val_every_n_epoch=1"],
}
#: Training batches timed per model by --throughput (after one warm-up batch).
THROUGHPUT_BATCHES = 20
#: --classifier train: the classifier's experiment with and without --synthetic, and its run folder name.
CLASSIFIER_EXPERIMENT = {True: "classifier_cpu", False: "classifier"}
CLASSIFIER_RUN = "classifier"


def run_config(
    organelle: str, model: str, run_dir: Path, root: Path, overrides: Sequence[str], experiment: str | None = None
) -> DictConfig:
    """The training config of ``organelle=<organelle> model=<model>`` (or ``experiment``) with ``overrides``, writing
    into ``run_dir``.

    Composed with Hydra's compose API (no Hydra runtime): the paths are set explicitly.
    """
    cfg = compose_config("train", [
        *([f"experiment={experiment}"] if experiment else [f"organelle={organelle}", f"model={model}"]),
        *overrides, f"paths.root_dir={root}",
        f"paths.log_dir={run_dir.parent}", f"paths.output_dir={run_dir}", f"run_name={run_dir.name}", "test=false",
    ])
    return cfg


def model_overrides(model: str, synthetic: bool, extra: Sequence[str]) -> list[str]:
    """Config overrides of one model: the --synthetic profile (if chosen), then the user's ``extra``."""
    return [*(SYNTHETIC_DATA + SYNTHETIC_MODEL[model] if synthetic else []), *extra]


def best_checkpoint(run_dir: Path) -> Path:
    """The validation-selected checkpoint of a finished run (``done.json``), else its newest top-k file."""
    done = run_dir / DONE_FILE
    if done.is_file():
        return Path(json.loads(done.read_text())["best_checkpoint"])
    folder = run_dir / "checkpoints"
    found = sorted(folder.glob(TOP_K_PATTERN))
    if found:
        return found[-1]
    if (folder / "last.ckpt").is_file():
        log.warning("%s: no validation ran before training stopped; using last.ckpt", run_dir.name)
        return folder / "last.ckpt"
    raise FileNotFoundError(f"{folder}: no checkpoint (expected epoch*-step*.ckpt or last.ckpt)")


def train_or_reuse(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the configured model unless ``run_dir/done.json`` exists; a killed run resumes from ``last.ckpt``.

    Returns the run record (best checkpoint, training seconds, validation metric).
    """
    done = run_dir / DONE_FILE
    if done.is_file():
        log.info("%s: finished earlier, reusing %s", run_dir.name, json.loads(done.read_text())["best_checkpoint"])
        return json.loads(done.read_text())
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("%s: resuming from %s", run_dir.name, last)
        OmegaConf.update(cfg, "ckpt_path", str(last), force_add=True)
    tic = time.perf_counter()
    metrics = train(cfg)
    record = {
        "best_checkpoint": str(best_checkpoint(run_dir)),
        "train_seconds": round(time.perf_counter() - tic, 1),
        "monitor": cfg.monitor,
        "last_monitor_value": metrics.get(cfg.monitor),
    }
    write_text(done, json.dumps(record, indent=2))
    return record


def best_score(checkpoint: Path) -> float:
    """The validation score a checkpoint file was selected with; NaN when it has none."""
    return selection_score(read_checkpoint(checkpoint))


def classifier_checkpoint(
    classifier: str, output_dir: Path, root: Path, synthetic: bool, overrides: Sequence[str]
) -> tuple[Path, str]:
    """The CLS-LPIPS classifier: the file ``classifier`` names, or (``"train"``) one trained (or reused) in
    ``runs/classifier``. Returns its path and a note for the results."""
    if classifier != "train":
        return Path(classifier), f"- cls_lpips: classifier {classifier}"
    run_dir = output_dir / "runs" / CLASSIFIER_RUN
    cfg = run_config("", "", run_dir, root, overrides, experiment=CLASSIFIER_EXPERIMENT[synthetic])
    record = train_or_reuse(cfg, run_dir)
    best = Path(record["best_checkpoint"])
    return best, (f"- cls_lpips: classifier {best.name} ({cfg.model.net.name}-{cfg.model.net.depth}), "
                  f"{record['monitor']} = {_fmt(best_score(best), '.3f')}, trained in {record['train_seconds']:.0f} s")


def predict_test_split(cfg: DictConfig, checkpoint: Path, output_dir: Path) -> None:
    """Predict the cached test split of ``cfg.data`` with ``checkpoint`` into ``output_dir`` (skips finished
    patches: :func:`dm4isl.prediction.runner.run_predict`). Diffusion models sample with ``cfg.sampler``; every file
    records the checkpoint's provenance as ``dm4isl-predict`` does."""
    model = load_predictor(checkpoint)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    ts = dm.test_set
    organelle = OmegaConf.to_container(cfg.organelle, resolve=True)
    settings = SamplerSettings.from_dict(OmegaConf.to_container(cfg.sampler, resolve=True))
    meta = prediction_provenance(checkpoint)
    run_predict(
        model, inputs_from_patch_set(ts.bf, ts.fl, ts.names, "test split"), output_dir, organelle=organelle,
        settings=settings, batch_size=int(cfg.data.eval_batch_size), uncertainty=UncertaintySettings(),
        checkpoint_id=meta["checkpoint_sha256_16"], metadata=meta,
    )


def assemble_methods(organelle_dir: Path) -> Path:
    """Copy every model's product folders into ``<organelle_dir>/methods`` (the evaluation input); returns it."""
    methods = organelle_dir / "methods"
    for model, products in PRODUCTS.items():
        for product in products:
            source = organelle_dir / f"predict_{model}" / product
            if source.is_dir():
                shutil.copytree(source, methods / product, dirs_exist_ok=True)
    return methods


def organelle_rows(organelle: str, result: EvaluationResult) -> list[dict[str, Any]]:
    """Paper-style rows of one organelle: per score metric (with the protocol that made it and its heading there),
    the headline value of each method, the reference baseline, DDPM's and DDPMavg's improvement %, and DDPMavg's
    Wilcoxon p-value and 95 % CI vs that baseline."""
    by_key = {(r.metric, r.statistic): r for r in result.summary}
    protocol = get_protocol(result.protocol)
    rows = []
    for name in result.metric_names:
        spec = METRICS[name]
        if not spec.is_score:
            continue
        stat = headline_statistic(spec)
        headline = by_key[(name, stat)]
        row: dict[str, Any] = {"protocol": protocol.name, "organelle": organelle, "metric": name,
                               "heading": protocol.heading(name), "statistic": stat,
                               "higher_is_better": spec.higher_is_better}
        row.update({m: headline.values.get(m, math.nan) for m in METHODS})
        improvement = by_key.get((name, IMPROVEMENT))
        row["reference"] = improvement.reference if improvement else ""
        for m in ("DDPM", "DDPMavg"):
            row[f"{m}_improvement_pct"] = improvement.values.get(m, math.nan) if improvement else math.nan
        for stat_name in (WILCOXON_P, CI_LOW, CI_HIGH):
            found = by_key.get((name, stat_name))
            row[f"DDPMavg_{stat_name}"] = found.values.get("DDPMavg", math.nan) if found else math.nan
        row["DDPMavg_beats_both"] = beats_both(row)
        rows.append(row)
    return rows


def beats_both(row: dict[str, Any]) -> bool:
    """True when DDPMavg's headline value is strictly better than both baselines' in a table row."""
    sign = 1.0 if row["higher_is_better"] else -1.0
    return all(sign * (row["DDPMavg"] - row[b]) > 0 for b in BASELINES)


def _fmt(value: Any, spec: str = ".4g") -> str:
    """A table cell: numbers formatted with ``spec``, NaN as an en dash."""
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    """The Markdown results: one table per organelle (metrics × methods, best value in bold, DDPMavg's
    improvement % over the better baseline with its Wilcoxon p-value) and a closing summary."""
    lines = ["# DM4ISL reproduction: U-Net, GAN, DDPM and DDPMavg on the test split", ""]
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        line = get_protocol(protocol).describe()
        lines += [line[0].upper() + line[1:] + ".", ""]
    lines += [f"{n}" for n in notes] + ([""] if notes else [])
    organelles = list(dict.fromkeys(r["organelle"] for r in rows))
    for organelle in organelles:
        org_rows = [r for r in rows if r["organelle"] == organelle]
        lines += [f"## {organelle}", "",
                  "| metric | " + " | ".join(LABELS[m] for m in METHODS) + " | DDPMavg vs best baseline | p |",
                  "|---|" + "---|" * (len(METHODS) + 2)]
        for r in org_rows:
            pick = max if r["higher_is_better"] else min
            finite = [r[m] for m in METHODS if not math.isnan(r[m])]
            best = pick(finite) if finite else math.nan
            cells = [f"**{_fmt(r[m])}**" if r[m] == best else _fmt(r[m]) for m in METHODS]
            arrow = "↑" if r["higher_is_better"] else "↓"
            improvement = _fmt(r["DDPMavg_improvement_pct"], "+.1f")
            ref = LABELS.get(r["reference"], r["reference"])
            lines.append(f"| {r['heading']} {arrow} | " + " | ".join(cells)
                         + f" | {improvement} % ({ref}) | {_fmt(r[f'DDPMavg_{WILCOXON_P}'], '.2g')} |")
        wins = sum(r["DDPMavg_beats_both"] for r in org_rows)
        gains = [r["DDPMavg_improvement_pct"] for r in org_rows if not math.isnan(r["DDPMavg_improvement_pct"])]
        mean_gain = _fmt(float(np.mean(gains)) if gains else math.nan, "+.1f")
        lines += ["", f"DDPMavg beats both baselines on {wins} of {len(org_rows)} metrics; mean improvement over "
                  f"the better baseline {mean_gain} %.", ""]
    return "\n".join(lines)


def figure_rows(organelles: Sequence[str], output_dir: Path, patch_index: int) -> list[GridRow]:
    """One grid row per organelle: patch ``patch_index`` (in sorted file order) of every method folder."""
    rows = []
    for organelle in organelles:
        methods = output_dir / organelle / "methods"
        names = sorted(p.name for p in (methods / "GT").iterdir())
        name = names[min(patch_index, len(names) - 1)]
        volumes = {c: read_volume(methods / c / name) for c in GRID_COLUMNS if (methods / c / name).is_file()}
        rows.append(GridRow(f"{organelle}\n{Path(name).stem}", volumes))
    return rows


def measure_throughput(cfg: DictConfig, n_batches: int = THROUGHPUT_BATCHES) -> dict[str, Any]:
    """Training patches per second of the configured model: ``n_batches`` timed after one warm-up batch
    (no validation, logging or checkpoints; threads as set by the environment)."""
    dm = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg)
    L.seed_everything(int(cfg.seed))

    def fit(batches: int) -> float:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=-1, max_epochs=1, limit_train_batches=batches,
                            limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        tic = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        return time.perf_counter() - tic

    fit(1)
    seconds = fit(n_batches)
    patches = n_batches * int(cfg.data.batch_size)
    log.info("%s: %d training patches in %.1f s", cfg.model._target_, patches, seconds)
    return {"model": cfg.model._target_.rsplit(".", 1)[-1], "patch_size": "x".join(map(str, cfg.data.patch_size)),
            "batch_size": int(cfg.data.batch_size), "batches": n_batches, "seconds": round(seconds, 2),
            "patches_per_s": round(patches / seconds, 2), "s_per_batch": round(seconds / n_batches, 3)}


def reproduce(
    organelles: Sequence[str],
    output_dir: Path,
    synthetic: bool,
    overrides: Sequence[str] = (),
    metrics: str | None = None,
    n_resamples: int = 9999,
    patch_index: int = 0,
    throughput: bool = False,
    classifier: str | None = None,
    classifier_overrides: Sequence[str] = (),
    protocol: str = DEFAULT_PROTOCOL,
) -> list[dict[str, Any]]:
    """Run the whole comparison (module docstring) and return the table rows; writes everything under
    ``output_dir``. ``overrides`` apply to every model after the --synthetic profile. ``classifier`` (a file, or
    ``"train"`` with ``classifier_overrides``) adds CLS-LPIPS to the evaluation. ``protocol`` names the metric
    definitions; ``metrics`` (a set name or list) replaces the protocol's own set."""
    output_dir = output_dir.resolve()
    root = Path.cwd()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    speed: list[dict[str, Any]] = []
    spec = None
    if classifier is not None:
        path, note = classifier_checkpoint(classifier, output_dir, root, synthetic, classifier_overrides)
        spec, notes = ClassifierSpec(path=str(path)), [note]
    for organelle in organelles:
        for model in MODELS:
            run_dir = output_dir / "runs" / f"{organelle}_{model}"
            cfg = run_config(organelle, model, run_dir, root, model_overrides(model, synthetic, overrides))
            if throughput and organelle == organelles[0]:
                speed.append(measure_throughput(cfg))
            record = train_or_reuse(cfg, run_dir)
            recipe = f" (recipe={cfg.recipe.name})" if model == "ddpm" else ""
            notes.append(f"- {organelle} {model}{recipe}: checkpoint {Path(record['best_checkpoint']).name}, "
                         f"{record['monitor']} = {_fmt(best_score(Path(record['best_checkpoint'])), '.3f')}, "
                         f"trained in {record['train_seconds']:.0f} s")
            tic = time.perf_counter()
            predict_test_split(cfg, Path(record["best_checkpoint"]), output_dir / organelle / f"predict_{model}")
            log.info("%s %s: test split predicted in %.1f s", organelle, model, time.perf_counter() - tic)
        methods = assemble_methods(output_dir / organelle)
        result = evaluate_folder(methods, output_dir / organelle / "evaluation", metrics=metrics,
                                 methods=list(METHODS), baselines=list(BASELINES),
                                 voxel_size=list(cfg.organelle.metric_voxel_size), n_resamples=n_resamples,
                                 progress=False, classifier=spec, protocol=protocol)
        rows += organelle_rows(organelle, result)
    write_csv(output_dir / "results.csv", rows)
    write_text(output_dir / "results.md", markdown_table(rows, notes))
    prediction_grid(figure_rows(organelles, output_dir, patch_index), GRID_COLUMNS, output_dir / "figure_grid.png",
                    LABELS)
    if speed:
        write_csv(output_dir / "throughput.csv", speed)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python scripts/reproduce_paper.py [--synthetic] [--organelles ...] [--override key=value]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", action="store_true", help="embedded synthetic data, tiny nets, CPU time caps")
    parser.add_argument("--organelles", nargs="+", default=None,
                        help=f"default: {' '.join(SYNTHETIC_ORGANELLES)} with --synthetic, else all six")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="default: outputs/reproduce/synthetic or outputs/reproduce/paper")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override applied to every model (repeatable), e.g. trainer=gpu")
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=sorted(PROTOCOLS),
                        help="metric definitions of the tables (docs/metrics.md): benchmark = the authors' newest "
                             "calc_metrics (11 columns), paper14 = the paper's 14 metrics as their earlier code")
    parser.add_argument("--metrics", default=None,
                        help="a metric set (fast | paper | benchmark | all) instead of the protocol's own")
    parser.add_argument("--n-resamples", type=int, default=9999, help="bootstrap resamples of the CIs")
    parser.add_argument("--patch-index", type=int, default=0, help="test patch shown in the figure grid")
    parser.add_argument("--throughput", action="store_true", help="also time training patches/s per model")
    parser.add_argument("--classifier", default=None, metavar="CHECKPOINT|train",
                        help="add cls_lpips in this organelle classifier's features ('train': train one first)")
    parser.add_argument("--classifier-override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override of the classifier's training (with --classifier train; repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    organelles = args.organelles or list(SYNTHETIC_ORGANELLES if args.synthetic else DEFAULT_ORGANELLES)
    output_dir = args.output_dir or Path("outputs") / "reproduce" / ("synthetic" if args.synthetic else "paper")
    tic = time.perf_counter()
    reproduce(organelles, output_dir, args.synthetic, args.override, args.metrics, args.n_resamples,
              args.patch_index, args.throughput, args.classifier, args.classifier_override, args.protocol)
    log.info("done in %.1f min: %s/results.md", (time.perf_counter() - tic) / 60.0, output_dir)


if __name__ == "__main__":
    main()
