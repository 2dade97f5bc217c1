"""Training study: what each deviation from the paper's recipe buys, measured on synthetic nuclear envelope.

Every arm trains the same tiny diffusion net on the same 16x32x32 crops (``experiment=study``) for a fixed number of
optimizer steps, saving a snapshot every 500 steps; arms differ only in the model keys of :data:`ARMS`. Afterwards
every snapshot is sampled on the validation patches (learning curves) and the last one on the test patches (final
table with paired bootstrap CIs against the paper arm), each with and without the ε̂ mean correction, so that the
correction (a sampling-time switch) is measured on the very same networks.

    python scripts/training_study.py train [--arms paper,eps_lr] [--steps 4000] [--threads 1]
    python scripts/training_study.py curves [--out docs/study] [--every 1000]
    python scripts/training_study.py test [--at-step 2000] [--uncertainty paper:off,x0_pm1_z:on] [--n-seeds 5]
    python scripts/training_study.py uncertainty [--arms x0_pm1_z,eps_pm1_z] [--n-test 32] [--n-seeds 4]

``train`` resumes every arm from its ``last.ckpt`` (``ckpt_path=auto``): a study killed at any point continues where
it stopped, and arms already at their step budget are skipped. Results are CSV/PNG files, written atomically.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

#: Repository root; run folders live under ``<root>/outputs/study/runs/<arm>`` (``DM4ISL_ROOT`` moves them).
ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("DM4ISL_ROOT", ROOT)) / "outputs" / "study" / "runs"
#: The paper's settings (SPEC §2) on the tiny net: ε-prediction, targets in [0, 1], brightfield as normalised.
PAPER = {
    "model.prediction_type": "epsilon",
    "model.target_range": "[0.0,1.0]",
    "model.cond_norm": "none",
    "model.lr": "2.5e-5",
    "model.loss": "l1",
}
#: Arms: each a one-change step from the previous one (a ladder from the paper's recipe), plus x0 at paper settings.
ARMS: dict[str, dict[str, str]] = {
    "paper": dict(PAPER),
    "eps_lr": {**PAPER, "model.lr": "1e-3"},
    "eps_pm1": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]"},
    "eps_pm1_z": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.cond_norm": "zscore"},
    "x0_pm1_z": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.cond_norm": "zscore",
                 "model.prediction_type": "sample"},
    "v_pm1_z": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.cond_norm": "zscore",
                "model.prediction_type": "v_prediction"},
    # the same two recipes on the DNA flavour (filled nuclei: coarse structures) instead of the thin nuclear envelope
    "eps_pm1_dna": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "organelle": "dna"},
    "x0_pm1_z_dna": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.cond_norm": "zscore",
                     "model.prediction_type": "sample", "organelle": "dna"},
    "eps_pm1_l2": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.loss": "l2"},
    "x0_pm1": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.prediction_type": "sample"},
    "x0_plain": {**PAPER, "model.lr": "1e-3", "model.prediction_type": "sample"},
    "eps_pm1_z_minsnr": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.cond_norm": "zscore",
                         "model.loss_weighting": "min_snr"},
}
#: Organelle of the study's synthetic data (an arm may set its own with an ``organelle`` key).
DEFAULT_ORGANELLE = "nuclear_envelope"
#: Default order of training: the most informative arms first.
DEFAULT_ORDER = ("paper", "eps_lr", "eps_pm1_z", "x0_pm1_z", "eps_pm1", "eps_pm1_l2", "v_pm1_z", "x0_pm1",
                 "x0_plain", "eps_pm1_z_minsnr")
DEFAULT_STEPS = 4000
SNAPSHOT_EVERY = 500
#: Samplers of the study (one for all arms, so that arms differ only in training): learning curves on the
#: validation patches, the final table on the test patches.
CURVE_SAMPLER = {"method": "ddim", "num_steps": 20, "eta": 1.0}
TEST_SAMPLER = {"method": "ddim", "num_steps": 50, "eta": 1.0}
#: Test patch size: 16 × 64 × 64 (MS-SSIM needs 64 px); validation curves use the training crop size.
TEST_PATCH = [16, 64, 64]
#: The reference arm of the paired comparisons, and bootstrap settings.
REFERENCE_ARM = "paper"
N_BOOT_AUROC = 200
#: The arm whose training ``recipe=fast`` uses (conf/recipe/fast.yaml).
FAST_ARM = "x0_pm1_z"
#: Samplers of the uncertainty table: the study's DDIM-50 (eta 1; what recipe=fast ships), the demo's DDIM-20 (eta 1;
#: 2.5x cheaper, what the calibrated round used on a CPU) and the paper's DDPM-1000.
UNCERTAINTY_SAMPLERS = {"ddim50": TEST_SAMPLER, "ddim20": CURVE_SAMPLER,
                        "ddpm1000": {"method": "ddpm", "num_steps": None, "eta": 0.0}}
#: Columns of docs/study/uncertainty_arms.csv that lead every row (the rest: further maps and diagnostics).
UNCERTAINTY_COLUMNS = ["arm", "recipe", "sampler", "step", "n_patches", "n_seeds",
                       *[f"auroc_{t}_{m}{b}" for t in ("error", "planted", "surprise") for m in ("intra", "inter")
                         for b in ("", "_lo", "_hi")],
                       "flag_recall", "flag_precision", "crps", "spread_skill", "pcc"]


def snapshot_path(arm: str, step: int) -> Path:
    """The snapshot of ``arm`` after ``step`` optimizer steps."""
    return RUNS / arm / "checkpoints" / "snapshots" / f"step{step:06d}.ckpt"


def train_arm(arm: str, steps: int, threads: int, precision: str) -> None:
    """Train (or resume) one arm up to ``steps`` optimizer steps in a child ``dm4isl-train`` process."""
    if snapshot_path(arm, steps).is_file():
        print(f"[study] {arm}: {steps} steps done", flush=True)
        return
    overrides = [f"{k}={v}" for k, v in ARMS[arm].items()]
    cmd = [sys.executable, "-m", "dm4isl.train", "experiment=study", f"run_name={arm}", "ckpt_path=auto",
           f"trainer.max_steps={steps}", f"trainer.precision={precision}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"[study] {arm}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def arm_organelle(arm: str) -> str:
    """The organelle whose synthetic data an arm trains on."""
    return ARMS.get(arm, {}).get("organelle", DEFAULT_ORGANELLE)


def study_datamodule(eval_patch_size: Sequence[int] | None = None, n_test: int | None = None,
                     organelle: str = DEFAULT_ORGANELLE) -> Any:
    """The study's datamodule (``experiment=study``: same FOV split, cached validation and test patches)."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from dm4isl.utils.compose import compose_config

    cfg = compose_config("train", ["experiment=study", f"organelle={organelle}"], output_dir=RUNS.parent / "eval",
                         data_dir=RUNS.parent.parent.parent / "data")
    with open_dict(cfg):
        cfg.data.split_file = None
        if eval_patch_size is not None:
            cfg.data.eval_patch_size = list(eval_patch_size)
        if n_test is not None:
            cfg.data.n_test_patches = int(n_test)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    dm.setup("test")
    return dm


def sample_scores(model: Any, patches: Any, sampler: dict[str, Any], correction: bool, n_seeds: int = 1,
                  keep: bool = False) -> dict[str, Any]:
    """Sample every patch of a set; per-patch DDPMavg PCC/MSE/MS-SSIM and final-sample PCC (``(N,)`` arrays)."""
    from dm4isl.metrics.basic import ms_ssim_batch, mse, pcc
    from dm4isl.prediction.calibration import predict_patch_set

    settings = replace(model.test_settings, **sampler, mean_correction=correction)
    if correction and model.fl_mean is None:
        raise SystemExit("a snapshot without training statistics cannot use the mean correction")
    tic = time.perf_counter()
    pred = predict_patch_set(model, patches, settings, n_seeds)
    gt = patches.fl
    out: dict[str, Any] = {
        "ddpmavg_pcc": np.array([pcc(g, p) for g, p in zip(gt, pred["DDPMavg"], strict=True)]),
        "ddpmavg_mse": np.array([mse(g, p) for g, p in zip(gt, pred["DDPMavg"], strict=True)]),
        "ddpm_pcc": np.array([pcc(g, p) for g, p in zip(gt, pred["DDPM"], strict=True)]),
        "brightness_error": pred["DDPMavg"].mean(axis=(1, 2, 3)) - gt.mean(axis=(1, 2, 3)),
        "seconds": time.perf_counter() - tic,
    }
    if gt.shape[-1] >= 64:
        out["ddpmavg_ms_ssim"] = ms_ssim_batch(gt, pred["DDPMavg"])
    if keep:
        out["products"] = pred
    return out


def snapshots(arm: str) -> list[tuple[int, Path]]:
    """``(step, path)`` of an arm's snapshots, by step."""
    folder = RUNS / arm / "checkpoints" / "snapshots"
    found = [(int(p.stem.removeprefix("step")), p) for p in folder.glob("step*.ckpt")]
    return sorted(found)


def curves(arms: Sequence[str], out: Path, threads: int, every: int = SNAPSHOT_EVERY,
           corrections: Sequence[str] = ("off", "on")) -> list[dict[str, Any]]:
    """Validation DDPMavg PCC/MSE of the snapshots of every arm at multiples of ``every`` steps, with the mean
    correction ``off`` and/or ``on``; CSV + PNG (resumable)."""
    import torch

    from dm4isl.io.atomic import write_csv
    from dm4isl.models.checkpoint import load_model

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "study_curves.csv"
    rows = read_rows(csv_path)
    done = {(r["arm"], int(r["step"]), r["correction"]) for r in rows}
    val_sets: dict[str, Any] = {}
    for arm in arms:
        organelle = arm_organelle(arm)
        if organelle not in val_sets and snapshots(arm):
            val_sets[organelle] = study_datamodule(organelle=organelle).val_set
        for step, path in snapshots(arm):
            val = val_sets[organelle]
            if step % every:
                continue
            for correction in corrections:
                if (arm, step, correction) in done:
                    continue
                model = load_model(path)
                if correction == "on" and model.fl_mean is None:
                    print(f"[curves] {arm} step {step}: no training statistics, correction on not scored", flush=True)
                    continue
                scores = sample_scores(model, val, CURVE_SAMPLER, correction == "on")
                rows.append({"arm": arm, "step": step, "correction": correction, "n_patches": len(val),
                             "ddpmavg_pcc": float(np.nanmean(scores["ddpmavg_pcc"])),
                             "ddpmavg_mse": float(scores["ddpmavg_mse"].mean()),
                             "ddpm_pcc": float(np.nanmean(scores["ddpm_pcc"])),
                             "abs_brightness_error": float(np.abs(scores["brightness_error"]).mean()),
                             "sample_seconds": round(scores["seconds"], 1)})
                write_csv(csv_path, rows, list(rows[0]))
                print(f"[curves] {arm} step {step} correction {correction}: "
                      f"PCC {rows[-1]['ddpmavg_pcc']:.3f}", flush=True)
    plot_curves(rows, out / "study_curves.png")
    return rows


def write_png(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from dm4isl.io.atomic import write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file ([] when it does not exist)."""
    import csv

    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Validation DDPMavg PCC vs step, one colour per arm; solid: correction off, dashed: on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    palette = plt.get_cmap("tab20" if len(arms) > 10 else "tab10")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for i, arm in enumerate(arms):
        colour = palette(i % palette.N)
        for correction, style in (("off", "-"), ("on", "--")):
            pts = sorted((int(r["step"]), float(r["ddpmavg_pcc"]), float(r["ddpmavg_mse"])) for r in rows
                         if r["arm"] == arm and r["correction"] == correction)
            if not pts:
                continue
            steps, pccs, mses = zip(*pts, strict=True)
            label = f"{arm} ({'corr.' if correction == 'on' else 'no corr.'})"
            axes[0].plot(steps, pccs, style, color=colour, marker="o", ms=3, label=label)
            axes[1].plot(steps, mses, style, color=colour, marker="o", ms=3)
    axes[0].set(xlabel="optimizer step", ylabel="validation DDPMavg PCC", title="DDPMavg PCC (DDIM-20, 16 patches)")
    axes[1].set(xlabel="optimizer step", ylabel="validation DDPMavg MSE", yscale="log", title="DDPMavg MSE")
    axes[0].grid(alpha=0.3)
    axes[1].grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    write_png(fig, path)


def paired_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``a − b`` over patches and its paired bootstrap 95 % CI."""
    from dm4isl.metrics.table import bootstrap_ci, mean_difference

    low, high = bootstrap_ci(mean_difference, [a, b], vectorized=True)
    return float(np.nanmean(a - b)), low, high


def auroc_ci(std: np.ndarray, truth: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Pooled voxel AUROC of ``std`` for ``truth`` ``(N, Z, Y, X)``, with a 95 % CI resampling patches."""
    from dm4isl.uncertainty.evaluation import auroc

    value = auroc(std, truth)
    rng = np.random.default_rng(seed)
    boots = [auroc(std[i], truth[i]) for i in (rng.integers(0, len(std), len(std)) for _ in range(N_BOOT_AUROC))]
    boots = np.array([b for b in boots if np.isfinite(b)])
    if boots.size == 0:
        return value, float("nan"), float("nan")
    return value, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def test_table(arms: Sequence[str], out: Path, threads: int, n_test: int, uncertainty_arms: Sequence[str],
               n_seeds: int, tau: float, at_step: int | None = None,
               corrections: Sequence[str] = ("off", "on")) -> list[dict[str, Any]]:
    """One snapshot of each arm on the test patches — the last, or the one after ``at_step`` steps (so that arms
    trained for different budgets are compared at equal steps): per-patch scores (CSV), paired CIs against the paper
    arm. ``corrections`` limits the sampling settings scored (``off``, ``on`` or ``arm:off`` pairs)."""
    import torch

    from dm4isl.io.atomic import write_csv
    from dm4isl.models.checkpoint import load_model
    from dm4isl.uncertainty.evaluation import error_truth

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    test = study_datamodule(TEST_PATCH, n_test).test_set
    per_patch_path = out / "study_test_patches.csv"
    per_patch = read_rows(per_patch_path)
    done = {(r["arm"], r["correction"]) for r in per_patch}
    for arm in arms:
        found = [(st, p) for st, p in snapshots(arm) if at_step is None or st == at_step]
        if not found:
            continue
        step, path = found[-1]
        for correction in ("off", "on"):
            if (arm, correction) in done or not ({correction, f"{arm}:{correction}"} & set(corrections)):
                continue
            scores = sample_scores(load_model(path), test, TEST_SAMPLER, correction == "on")
            for i in range(len(test)):
                per_patch.append({"arm": arm, "step": step, "correction": correction, "patch": i,
                                  **{k: float(scores[k][i]) for k in ("ddpmavg_pcc", "ddpmavg_mse", "ddpmavg_ms_ssim",
                                                                      "ddpm_pcc", "brightness_error")},
                                  "seconds_per_patch": round(scores["seconds"] / len(test), 2)})
            write_csv(per_patch_path, per_patch, list(per_patch[0]))
            print(f"[test] {arm} step {step} correction {correction}: PCC "
                  f"{np.nanmean(scores['ddpmavg_pcc']):.3f}", flush=True)
    table = summarize(per_patch) if per_patch else []
    if table:
        write_csv(out / "study_test.csv", table, list(table[0]))
    unc_rows = []
    unc_path = out / "study_uncertainty.csv"
    unc_rows = read_rows(unc_path)
    unc_done = {(r["arm"], r["correction"]) for r in unc_rows}
    for arm, correction in (a.split(":") for a in uncertainty_arms):
        found = [(st, p) for st, p in snapshots(arm) if at_step is None or st == at_step]
        if (arm, correction) in unc_done or not found:
            continue
        step, path = found[-1]
        scores = sample_scores(load_model(path), test, TEST_SAMPLER, correction == "on", n_seeds=n_seeds, keep=True)
        pred = scores["products"]
        errors = error_truth(pred["DDPMavg"], test.fl, tau)
        row: dict[str, Any] = {"arm": arm, "step": step, "correction": correction, "n_patches": len(test),
                               "n_seeds": n_seeds, "tau": tau,
                               "error_voxel_fraction": float(errors.mean()),
                               "planted_voxel_fraction": float(np.asarray(test.mask).astype(bool).mean())}
        for name in ("std_intra", "std_inter"):
            for label, truth in (("error", errors), ("planted", np.asarray(test.mask).astype(bool))):
                value, low, high = auroc_ci(pred[name], truth)
                row[f"{name}_auroc_{label}"] = value
                row[f"{name}_auroc_{label}_ci"] = f"{low:.3f}..{high:.3f}"
        unc_rows.append(row)
        write_csv(unc_path, unc_rows, list(unc_rows[0]))
        print(f"[uncertainty] {arm} ({correction}): {row}", flush=True)
    return table


def ensemble_products(model: Any, patches: Any, sampler: dict[str, Any], n_seeds: int, cache: Path) -> Any:
    """Sample a K-seed ensemble of every patch (correction off), cached as an ``.npz`` in ``cache`` (resumable)."""
    from dm4isl.evaluation.uncertainty_scores import EnsembleProducts
    from dm4isl.io.atomic import atomic_path
    from dm4isl.io.layout import DDPM, DDPMAVG, STD_INTRA, seed_product
    from dm4isl.prediction.calibration import predict_patch_set

    if cache.is_file():
        with np.load(cache) as z:
            return EnsembleProducts(ddpm=z["ddpm"], ddpmavg=z["ddpmavg"], std_intra=z["std_intra"])
    settings = replace(model.test_settings, **sampler, mean_correction=False)
    tic = time.perf_counter()
    pred = predict_patch_set(model, patches, settings, n_seeds, keep_seeds=True)
    seeds = range(settings.seed, settings.seed + n_seeds)
    products = EnsembleProducts(
        ddpm=np.stack([pred[seed_product(DDPM, k)] for k in seeds]),
        ddpmavg=np.stack([pred[seed_product(DDPMAVG, k)] for k in seeds]),
        std_intra=pred[STD_INTRA],
    )
    np.testing.assert_allclose(products.mean, pred[DDPMAVG], atol=1e-5)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ddpm=products.ddpm, ddpmavg=products.ddpmavg, std_intra=products.std_intra)
    print(f"[uncertainty] sampled {len(patches)} patches x {n_seeds} seeds in {time.perf_counter() - tic:.0f} s "
          f"-> {cache.name}", flush=True)
    return products


def uncertainty_table(arms: Sequence[str], out: Path, threads: int, n_test: int, n_val: int, n_seeds: int,
                      samplers: dict[str, str], tau: float, at_step: int | None,
                      patch: Sequence[int] = TEST_PATCH) -> list[dict[str, Any]]:
    """Uncertainty of every arm on the calibrated synthetic data: voxel AUROCs of the intra- and inter-process std
    against errors, planted ambiguities and surprises (95 % CIs over patches), the patch flag at a threshold
    calibrated on validation, fair CRPS, spread–skill and test DDPMavg PCC; ``uncertainty_arms.csv`` + PNG."""
    import torch

    from dm4isl.evaluation.uncertainty_scores import calibrate_flag_thresholds, ensemble_uncertainty_scores
    from dm4isl.io.atomic import write_csv
    from dm4isl.models.checkpoint import load_model
    from dm4isl.uncertainty.masks import MaskSettings

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    dm = study_datamodule(patch, n_test)
    val, test = dm.val_set, dm.test_set
    val = replace(val, **{k: getattr(val, k)[:n_val] for k in ("bf", "fl", "mask", "corners")},
                  names=val.names[:n_val], sources=val.sources[:n_val])
    patch_zyx = "x".join(map(str, patch))
    csv_path = out / "uncertainty_arms.csv"
    rows = read_rows(csv_path)
    cache_dir = RUNS.parent / "uncertainty"
    for arm in arms:
        sampler_name = samplers.get(arm, samplers["*"])
        found = [(st, p) for st, p in snapshots(arm) if at_step is None or st == at_step]
        if not found or any(r["arm"] == arm and r["sampler"] == sampler_name for r in rows):
            continue
        step, path = found[-1]
        model = load_model(path)
        sampler = UNCERTAINTY_SAMPLERS[sampler_name]
        tag = f"{arm}-step{step}-{sampler_name}-k{n_seeds}-{patch_zyx}"
        val_products = ensemble_products(model, val, sampler, n_seeds, cache_dir / f"{tag}-val{len(val)}.npz")
        test_products = ensemble_products(model, test, sampler, n_seeds, cache_dir / f"{tag}-test{len(test)}.npz")
        thresholds = calibrate_flag_thresholds(val_products, val.fl, tau)
        scores = ensemble_uncertainty_scores(test_products, test.fl, test.mask, thresholds, tau,
                                             MaskSettings.for_organelle(DEFAULT_ORGANELLE))
        row = {"arm": arm, "recipe": "fast" if arm == FAST_ARM else "", "sampler": sampler_name, "step": step,
               "n_patches": len(test), "n_seeds": n_seeds, "n_val_patches": len(val), "tau": tau,
               "patch_zyx": patch_zyx,
               **scores,
               "flag_recall": scores["flag_recall_intra"], "flag_precision": scores["flag_precision_intra"]}
        rows = [r for r in rows if not (r["arm"] == arm and r["sampler"] == sampler_name)] + [row]
        columns = UNCERTAINTY_COLUMNS + sorted({k for r in rows for k in r} - set(UNCERTAINTY_COLUMNS))
        write_csv(csv_path, rows, columns)
        print(f"[uncertainty] {arm} ({sampler_name}): PCC {row['pcc']:.3f}, AUROC error intra "
              f"{row['auroc_error_intra']:.3f}, planted inter {row['auroc_planted_inter']:.3f}", flush=True)
    if rows:
        plot_uncertainty(rows, out / "uncertainty_arms.png")
    return rows


def plot_uncertainty(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Voxel AUROCs (95 % CIs) per arm: intra/inter std against errors, planted ambiguities and surprises; PCC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    labels = [f"{r['arm']} ({r['sampler']})" + (" [fast]" if r.get("recipe") == "fast" else "") for r in rows]
    panels = [("error", "std vs |error| > tau"), ("planted", "std vs planted ambiguities"),
              ("surprise", "std vs surprises")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 0.6 * len(rows) + 2.2),
                             sharey=True)
    y = np.arange(len(rows))
    for ax, (truth, title) in zip(axes, panels, strict=False):
        for offset, (name, colour) in zip((-0.15, 0.15), (("intra", "tab:blue"), ("inter", "tab:orange")),
                                          strict=True):
            key = f"auroc_{truth}_{name}"
            v = np.array([float(r.get(key, "nan") or "nan") for r in rows])
            lo = np.array([float(r.get(f"{key}_lo", "nan") or "nan") for r in rows])
            hi = np.array([float(r.get(f"{key}_hi", "nan") or "nan") for r in rows])
            ax.errorbar(v, y + offset, xerr=[v - lo, hi - v], fmt="o", color=colour, capsize=3, label=name)
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(title=title, xlabel="voxel AUROC", xlim=(0.3, 1.0))
        ax.grid(alpha=0.3)
    axes[0].set_yticks(y, labels)
    axes[0].legend(fontsize=8, loc="lower left")
    axes[-1].barh(y, [float(r["pcc"]) for r in rows], color="tab:green")
    axes[-1].set(title="test DDPMavg PCC", xlim=(0.0, 1.0))
    axes[-1].grid(alpha=0.3)
    write_png(fig, path)


def summarize(per_patch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean per arm × correction, and the paired difference from the paper arm (no correction) with 95 % CIs."""
    def values(arm: str, correction: str, key: str) -> np.ndarray:
        rows = sorted((int(r["patch"]), float(r[key])) for r in per_patch
                      if r["arm"] == arm and r["correction"] == correction)
        return np.array([v for _, v in rows])

    table = []
    keys = ("ddpmavg_pcc", "ddpmavg_mse", "ddpmavg_ms_ssim", "ddpm_pcc")
    have_ref = any(r["arm"] == REFERENCE_ARM and r["correction"] == "off" for r in per_patch)
    for arm, correction in dict.fromkeys((r["arm"], r["correction"]) for r in per_patch):
        step = next(r["step"] for r in per_patch if r["arm"] == arm and r["correction"] == correction)
        row: dict[str, Any] = {"arm": arm, "correction": correction, "step": step,
                               "n_patches": len(values(arm, correction, "ddpmavg_pcc"))}
        for key in keys:
            row[key] = float(np.nanmean(values(arm, correction, key)))
        row["abs_brightness_error"] = float(np.abs(values(arm, correction, "brightness_error")).mean())
        if have_ref:
            for key in ("ddpmavg_pcc", "ddpmavg_ms_ssim", "ddpmavg_mse"):
                diff, low, high = paired_ci(values(arm, correction, key), values(REFERENCE_ARM, "off", key))
                row[f"delta_{key}_vs_paper"] = diff
                row[f"delta_{key}_ci"] = f"{low:+.3f}..{high:+.3f}" if key != "ddpmavg_mse" else \
                    f"{low:+.5f}..{high:+.5f}"
        table.append(row)
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) the arms")
    train.add_argument("--arms", default=",".join(DEFAULT_ORDER), help="comma-separated arm names")
    train.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps per arm")
    train.add_argument("--threads", type=int, default=1, help="CPU threads per training process")
    train.add_argument("--precision", default="bf16-mixed", help="Lightning precision of every arm")
    for name in ("curves", "test", "uncertainty"):
        cmd = sub.add_parser(name, help=f"{name} of the trained arms")
        cmd.add_argument("--arms", default=",".join(DEFAULT_ORDER))
        cmd.add_argument("--out", type=Path, default=ROOT / "docs" / "study")
        cmd.add_argument("--threads", type=int, default=2)
    sub.choices["curves"].add_argument("--every", type=int, default=SNAPSHOT_EVERY,
                                       help="score the snapshots at multiples of this many steps")
    sub.choices["curves"].add_argument("--corrections", default="off,on", help="mean correction settings scored")
    test = sub.choices["test"]
    test.add_argument("--at-step", type=int, default=None, help="score every arm's snapshot after this many steps "
                      "(default: each arm's last)")
    test.add_argument("--n-test", type=int, default=32, help="test patches (16 x 64 x 64)")
    test.add_argument("--uncertainty", default="paper:off", help="arm:correction pairs scored for uncertainty")
    test.add_argument("--n-seeds", type=int, default=5, help="seeds of the uncertainty ensembles")
    test.add_argument("--corrections", default="off,on",
                      help="sampling settings scored: off, on, or arm:off / arm:on pairs (e.g. paper:off,eps_pm1:on)")
    test.add_argument("--tau", type=float, default=0.2, help="|error| above which a voxel is wrong")
    unc = sub.choices["uncertainty"]
    unc.add_argument("--at-step", type=int, default=None, help="score every arm's snapshot after this many steps "
                     "(default: each arm's last)")
    unc.add_argument("--n-test", type=int, default=32, help="test patches")
    unc.add_argument("--patch", type=int, nargs=3, default=TEST_PATCH, metavar=("Z", "Y", "X"),
                     help="size of the validation and test patches (default: the test table's)")
    unc.add_argument("--n-val", type=int, default=16, help="validation patches (threshold calibration)")
    unc.add_argument("--n-seeds", type=int, default=4, help="seeds per patch")
    unc.add_argument("--sampler", default="ddim50", help=f"one of {sorted(UNCERTAINTY_SAMPLERS)} for every arm, "
                     "then optional arm:sampler pairs, e.g. ddim50,paper:ddpm1000")
    unc.add_argument("--tau", type=float, default=0.2, help="|error| above which a voxel is wrong")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "train":
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = sorted(set(arms) - set(ARMS))
        if unknown:
            raise SystemExit(f"unknown arms {unknown}; expected some of {sorted(ARMS)}")
        for arm in arms:
            train_arm(arm, args.steps, args.threads, args.precision)
        return
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if args.command == "curves":
        curves(arms, args.out, args.threads, args.every,
               [c.strip() for c in args.corrections.split(",") if c.strip()])
    elif args.command == "uncertainty":
        parts = [p.strip() for p in args.sampler.split(",") if p.strip()]
        samplers = {"*": parts[0], **dict(p.split(":") for p in parts[1:])}
        unknown = sorted(set(samplers.values()) - set(UNCERTAINTY_SAMPLERS))
        if unknown:
            raise SystemExit(f"unknown samplers {unknown}; expected some of {sorted(UNCERTAINTY_SAMPLERS)}")
        uncertainty_table(arms, args.out, args.threads, args.n_test, args.n_val, args.n_seeds, samplers, args.tau,
                          args.at_step, args.patch)
    else:
        pairs = [p.strip() for p in args.uncertainty.split(",") if p.strip()]
        corrections = [c.strip() for c in args.corrections.split(",") if c.strip()]
        for row in test_table(arms, args.out, args.threads, args.n_test, pairs, args.n_seeds, args.tau, args.at_step,
                              corrections):
            print(row)


if __name__ == "__main__":
    main()
