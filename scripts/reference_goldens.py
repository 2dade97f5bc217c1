"""Recompute the MI and JSD goldens of tests/test_metrics.py with the authors' own functions.

The authors' ``mi`` and ``jsd`` (``src/MetricsFunctions.py`` of zaritskylab/DM4ISL) are taken from a checkout of
their repository by their source text: only those two function definitions are executed (NumPy and SciPy's
``jensenshannon``, as their module imports them), so that the rest of the module's imports (MONAI Generative, OpenCV,
glrlm) are not needed. They are applied patch by patch, ground truth ``GT`` against each method folder, to
``uint8 / 255`` data, without their rounding (``rn=12``); the script prints the per-patch means.

    python scripts/reference_goldens.py --metrics-functions <DM4ISL checkout>/src/MetricsFunctions.py \\
        --patches ../shared/data/nucenv_reference
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import tifffile
from scipy.spatial.distance import jensenshannon

#: Method folders of the reference patches, as the goldens list them.
METHODS = ("Unet", "GAN", "DDPM", "DDPMavg", "FL_pred", "FLavg_pred")
#: The authors' functions taken from their module.
FUNCTIONS = ("mi", "jsd")
#: Digits passed as their ``rn`` (rounding) argument: none in effect.
DIGITS = 12


def load_functions(path: Path) -> dict[str, object]:
    """The named functions of ``path``, defined in a namespace holding only ``np`` and ``jensenshannon``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in FUNCTIONS]
    if sorted(d.name for d in defs) != sorted(FUNCTIONS):
        raise SystemExit(f"{path}: expected functions {FUNCTIONS}, found {[d.name for d in defs]}")
    namespace: dict[str, object] = {"np": np, "jensenshannon": jensenshannon}
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return {name: namespace[name] for name in FUNCTIONS}


def goldens(functions: dict[str, object], patches: Path) -> dict[str, tuple[float, float]]:
    """``{method: (mean MI, mean JSD)}`` over the patches ``GT/<i>.tiff`` vs ``<method>/<i>.tiff``."""
    names = sorted((p.name for p in (patches / "GT").glob("*.tiff")), key=lambda n: int(n.split(".")[0]))
    out = {}
    for method in METHODS:
        values = []
        for name in names:
            gt = tifffile.imread(patches / "GT" / name).astype(np.float64) / 255
            pred = tifffile.imread(patches / method / name).astype(np.float64) / 255
            values.append([functions[f](gt, pred, rn=DIGITS) for f in FUNCTIONS])
        mi_mean, jsd_mean = np.mean(values, axis=0)
        out[method] = (float(mi_mean), float(jsd_mean))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-functions", type=Path, required=True, help="src/MetricsFunctions.py of DM4ISL")
    parser.add_argument("--patches", type=Path, required=True, help="folder with GT/ and the method folders")
    args = parser.parse_args()
    for method, (mi, jsd) in goldens(load_functions(args.metrics_functions), args.patches).items():
        print(f"{method:11s} mi={mi:.6f} jsd={jsd:.6f}")


if __name__ == "__main__":
    main()
