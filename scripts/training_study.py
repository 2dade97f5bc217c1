"""Training study: what each deviation from the paper's recipe buys, measured on synthetic nuclear envelope.

Every arm trains the same tiny diffusion net on the same 16x32x32 crops (``experiment=study``) for a fixed number of
optimizer steps, saving a snapshot every 500 steps; arms differ only in the model keys of :data:`ARMS`. Afterwards
every snapshot is sampled on the validation patches (learning curves) and the last one on the test patches (final
table with paired bootstrap CIs against the paper arm), each with and without the ε̂ mean correction, so that the
correction (a sampling-time switch) is measured on the very same networks.

    python scripts/training_study.py train [--arms paper,eps_lr] [--steps 4000] [--threads 1]
    python scripts/training_study.py curves --out docs/study
    python scripts/training_study.py test --out docs/study

``train`` resumes every arm from its ``last.ckpt`` (``ckpt_path=auto``): a study killed at any point continues where
it stopped, and arms already at their step budget are skipped. Results are CSV/PNG files, written atomically.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

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
    "x0_plain": {**PAPER, "model.lr": "1e-3", "model.prediction_type": "sample"},
    "eps_pm1_z_minsnr": {**PAPER, "model.lr": "1e-3", "model.target_range": "[-1.0,1.0]", "model.cond_norm": "zscore",
                         "model.loss_weighting": "min_snr"},
}
#: Default order of training: the most informative arms first.
DEFAULT_ORDER = ("paper", "eps_lr", "eps_pm1_z", "x0_pm1_z", "eps_pm1", "v_pm1_z", "x0_plain", "eps_pm1_z_minsnr")
DEFAULT_STEPS = 4000
SNAPSHOT_EVERY = 500


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train (or resume) the arms")
    train.add_argument("--arms", default=",".join(DEFAULT_ORDER), help="comma-separated arm names")
    train.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps per arm")
    train.add_argument("--threads", type=int, default=1, help="CPU threads per training process")
    train.add_argument("--precision", default="bf16-mixed", help="Lightning precision of every arm")
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


if __name__ == "__main__":
    main()
