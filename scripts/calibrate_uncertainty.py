"""Calibrate intra/inter-process std thresholds on the validation split and score the maps on the test split.

    python scripts/calibrate_uncertainty.py --ckpt outputs/demo/runs/<run>/checkpoints/last.ckpt \\
        --method ddim --steps 50 --n-seeds 5

Writes ``uncertainty_calibration.json`` next to the checkpoint's run folder (or ``--out``): thresholds per std
map for this sampler setting (the std scale depends on the step count), and test AUROC against |error| > tau and
against the planted ambiguous structures, with flag precision/recall.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dm4isl.data.datamodule import SyntheticDataModule
from dm4isl.io.atomic import write_text
from dm4isl.prediction.checkpoint import load_model
from dm4isl.sampling.sampler import SamplerSettings
from dm4isl.uncertainty.evaluation import ERROR_TAU
from dm4isl.uncertainty.report import calibrate_and_score


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--method", choices=["ddpm", "ddim"], default="ddim")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--n-seeds", type=int, default=5)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--tau", type=float, default=ERROR_TAU, help="|error| above which a voxel is wrong")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    model = load_model(args.ckpt)
    organelle = dict(model.hparams["organelle"])
    dm = SyntheticDataModule(organelle, patch_size=model.hparams["patch_size"], eval_patch_size=[16, 64, 64],
                             n_val_patches=args.n_val, n_test_patches=args.n_test, cache_dir=args.cache_dir,
                             split_file=None)
    dm.setup("fit")
    base = dict(model.hparams.get("test_sampler") or {})
    settings = SamplerSettings.from_dict(
        {**base, "method": args.method, "num_steps": args.steps if args.method == "ddim" else None}
    )
    result = calibrate_and_score(model, dm.val_set, dm.test_set, settings, args.n_seeds, organelle, args.tau)
    out = args.out or args.ckpt.resolve().parent.parent / "uncertainty_calibration.json"
    write_text(out, json.dumps(result, indent=2, default=float))
    print(json.dumps(result["maps"], indent=2, default=float))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
