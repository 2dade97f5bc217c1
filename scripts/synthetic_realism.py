"""How realistic the synthetic data are: image statistics of synthetic vs real nuclear-envelope patches, and the
ideal-observer check of the planted ambiguities.

Real patches: a patch folder (``BF/`` and ``GT/`` 8-bit TIFFs, value / 255), by default the five reference patches in
``../shared/data/nucenv_reference``. Synthetic patches: crops of the same size that pass the organelle's empty-patch
filter, drawn from every FOV of a dataset made by the chosen generator (``synthetic``: the calibrated default;
``synthetic_v1``: the first generator). Prints every statistic of :data:`dm4isl.data.realism.STATISTICS` with its
tolerance, then the ideal-observer check, and ends with ``realism: K of N statistics within tolerance``.

    python scripts/synthetic_realism.py [--data synthetic_v1] [--real ../shared/data/nucenv_reference] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from dm4isl.data.realism import compare, real_patches, synthetic_patches
from dm4isl.data.synthetic import GeneratorSettings, ideal_observer_check
from dm4isl.io.atomic import write_csv

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "dm4isl" / "conf"
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "nucenv_reference"


def data_config(name: str) -> dict:
    """The ``data=<name>`` config (its own keys over those of the configs it extends), resolved as plain values."""
    path = CONF / "data" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"{path}: no such data config (choose synthetic or synthetic_v1)")
    cfg = OmegaConf.load(path)
    parents = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d not in ("_self_", "_shared")]
    merged = OmegaConf.merge(*(OmegaConf.create(data_config(p)) for p in parents), cfg) if parents else cfg
    return OmegaConf.to_container(merged, resolve=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="data config of the generator (synthetic, synthetic_v1)")
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real patch folder (BF/, GT/)")
    parser.add_argument("--organelle", default="nuclear_envelope")
    parser.add_argument("--n-patches", type=int, default=64)
    parser.add_argument("--seed", type=int, default=12345, help="synthetic dataset seed (the demo's data.seed)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="synthetic FOV cache (default: a temporary one)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)

    if not (args.real / "BF").is_dir() or not (args.real / "GT").is_dir():
        print(f"{args.real}: real patch folder with BF/ and GT/ not found (--real)", file=sys.stderr)
        return 2
    organelle = OmegaConf.to_container(OmegaConf.load(CONF / "organelle" / f"{args.organelle}.yaml"), resolve=True)
    data = data_config(args.data)
    real_bf, real_fl = real_patches(args.real, organelle)
    with tempfile.TemporaryDirectory() as tmp:
        syn = synthetic_patches(
            organelle, data.get("generator"), n=args.n_patches, size=real_bf.shape[1:], seed=args.seed,
            n_fovs=int(data["n_fovs"]), fov_shape=data["fov_shape"], cache_dir=args.cache_dir or tmp,
            ambiguous_fraction=float(data["ambiguous_fraction"]),
        )
    rows = compare(real_bf, real_fl, syn.bf, syn.fl)

    print(f"real: {len(real_bf)} patches of {args.real}; synthetic: {len(syn.bf)} patches of data={args.data} "
          f"(seed {args.seed}, {data['n_fovs']} FOVs of {data['fov_shape']}), quantised to 8 bits")
    print(f"{'statistic':26s} {'real':>8s} {'synthetic':>10s} {'tolerance':>10s}  within  description")
    for r in rows:
        print(f"{r.name:26s} {r.real:8.4f} {r.synthetic:10.4f} {r.tolerance:10.3f}  {'yes' if r.within else 'NO':6s}  "
              f"{r.description}")
    if args.csv:
        write_csv(args.csv, [{"statistic": r.name, "real": f"{r.real:.6g}", "synthetic": f"{r.synthetic:.6g}",
                              "tolerance": f"{r.tolerance:g}", "within": r.within, "description": r.description,
                              "tolerance_from": r.why} for r in rows])

    settings = GeneratorSettings.from_config(data.get("generator"))
    print("\nideal observer (brightfield rendered with and without the structure of the occluded / ordinary cells):")
    for k in range(3):
        check = ideal_observer_check(args.organelle, data["fov_shape"], k, bf_window=tuple(organelle["bf_window"]),
                                     fl_window=tuple(organelle["fl_window"]), settings=settings)
        print(f"  FOV seed {k}: {check.n_occluded} occluded cells, max |ΔBF| inside {check.inside_max_delta:.4g}, "
              f"d' inside {check.inside_dprime:.3g}; {check.n_control} ordinary cells, "
              f"smallest d' {check.outside_dprime:.3g}")
    within = sum(r.within for r in rows)
    print(f"\nrealism: {within} of {len(rows)} statistics within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
