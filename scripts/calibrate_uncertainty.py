"""Calibrate intra/inter-process std thresholds on the validation split and score the maps on the test split.

    python scripts/calibrate_uncertainty.py --ckpt outputs/demo/runs/<run>/checkpoints/<best>.ckpt
    python scripts/calibrate_uncertainty.py --ckpt model.ckpt --method ddim --steps 50 --eta 1 --n-seeds 5

The sampler is the checkpoint's own test sampler unless ``--method``/``--steps``/``--eta``/``--window``/
``--mean-correction`` adjust it: a threshold is valid only for the sampling setting it was calibrated for
(:mod:`dm4isl.uncertainty.thresholds`). The thresholds are added to ``<checkpoint>.thresholds.json`` (or ``--out``)
with that setting, where ``dm4isl-predict`` finds them; a printed summary gives the test AUROC against
|error| > tau and against the planted ambiguous structures, with flag precision/recall, for the calibrated
thresholds and (where valid for this setting) the organelle's published ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dm4isl.data.datamodule import SyntheticDataModule
from dm4isl.models.checkpoint import fingerprint, load_model
from dm4isl.prediction.calibration import calibrate_and_score
from dm4isl.sampling.sampler import adjust_settings
from dm4isl.uncertainty.evaluation import ERROR_TAU
from dm4isl.uncertainty.thresholds import calibration_path, write_calibration


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--method", choices=["ddpm", "ddim"], default=None, help="default: the checkpoint's")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--window", type=int, nargs=2, default=None, metavar=("T_LOW", "T_HIGH"))
    parser.add_argument("--mean-correction", choices=["on", "off"], default=None)
    parser.add_argument("--n-seeds", type=int, default=5)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--tau", type=float, default=ERROR_TAU, help="|error| above which a voxel is wrong")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--out", type=Path, default=None, help="default: <ckpt>.thresholds.json")
    args = parser.parse_args(argv)

    model = load_model(args.ckpt)
    organelle = dict(model.hparams["organelle"])
    dm = SyntheticDataModule(organelle, patch_size=model.hparams["patch_size"], eval_patch_size=[16, 64, 64],
                             n_val_patches=args.n_val, n_test_patches=args.n_test, cache_dir=args.cache_dir,
                             split_file=None)
    dm.setup("fit")
    changes = {"method": args.method, "eta": args.eta, "window": args.window,
               "mean_correction": None if args.mean_correction is None else args.mean_correction == "on"}
    if args.method == "ddpm":
        changes["num_steps"] = None
    settings = adjust_settings(model.test_settings, changes)
    if args.steps is not None:
        settings = adjust_settings(settings, {"num_steps": args.steps})
    result = calibrate_and_score(model, dm.val_set, dm.test_set, settings, args.n_seeds, organelle, args.tau)
    out = args.out or calibration_path(args.ckpt)
    write_calibration(out, result["entries"], fingerprint(args.ckpt))
    print(json.dumps(result["maps"], indent=2, default=float))
    print(f"thresholds for {result['setting_text']} written to {out}")
    return result


if __name__ == "__main__":
    main()
