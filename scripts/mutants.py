"""Mutation testing per module with mutmut: how many deliberate faults in each room do its own tests catch?

For each module (``metrics``, ``sampling``, ``uncertainty``, ``io``, ``prediction``) the script prepares a scratch
folder ``build/mutation/<module>/`` holding a copy of the package and the tests and a ``pyproject.toml`` whose
``[tool.mutmut]`` section mutates only ``dm4isl/<module>/`` and runs only the tests that cover it
(:data:`MODULES`), runs ``mutmut run`` there, and reads mutmut's counts (``mutmut export-cicd-stats``). It prints
one line per module and a summary table; the table is also written to ``build/mutation/scores.md``, mutmut's own
output to ``build/mutation/<module>.log`` (``cd build/mutation/<module> && mutmut browse`` lists the survivors).

Score = killed / (killed + survived + timeout + suspicious): mutants that no selected test executes ("no tests") are
counted apart, since no test could have caught them. mutmut runs, per mutant, only the selected tests that executed
the mutated function, so a module costs minutes, not hours (docs/testing.md lists the measured times).

    python scripts/mutants.py                       # every module
    python scripts/mutants.py uncertainty io        # some
    python scripts/mutants.py --max-children 2      # parallel mutmut workers (default: 2)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRATCH = REPO_ROOT / "build" / "mutation"
#: Tests that cover each module (quick ones: no training runs, no subprocesses), with an optional ``-k`` filter.
MODULES: dict[str, tuple[list[str], str]] = {
    "metrics": (["tests/test_metrics.py", "tests/test_benchmark_protocol.py"], ""),
    "sampling": (["tests/test_sampling.py", "tests/test_ensemble.py", "tests/test_tiled.py"],
                 "not predict_a_volume and not python_api"),
    "uncertainty": (["tests/test_uncertainty_masks.py", "tests/test_uncertainty_scores.py", "tests/test_thresholds.py",
                     "tests/test_uncertainty_eval.py"], ""),
    "io": (["tests/test_readers.py", "tests/test_checkpoint.py", "tests/test_benchmark_layout.py"], ""),
    "prediction": (["tests/test_predict_scale.py", "tests/test_equivalence.py", "tests/test_formats.py"],
                   "not two_processes"),
}
#: mutmut's outcome counts, as ``export-cicd-stats`` writes them.
COUNTS = ("killed", "survived", "timeout", "suspicious", "no_tests", "skipped", "total")


@dataclass
class Score:
    """mutmut's counts for one module and the wall time of its run."""

    module: str
    counts: dict[str, int]
    seconds: float

    @property
    def score(self) -> float:
        """Killed fraction of the mutants some selected test executed (NaN when there are none)."""
        c = self.counts
        tried = c["killed"] + c["survived"] + c["timeout"] + c["suspicious"]
        return c["killed"] / tried if tried else float("nan")


def mutmut_config(module: str) -> dict[str, object]:
    """The ``[tool.mutmut]`` settings of one module's run."""
    tests, keyword = MODULES[module]
    selection = [*tests, *(["-k", keyword] if keyword else [])]
    return {
        "source_paths": ["dm4isl/"],
        "only_mutate": [f"dm4isl/{module}/*"],
        "pytest_add_cli_args_test_selection": selection,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-x"],
    }


def _toml_value(value: object) -> str:
    return json.dumps(value)  # lists of strings: TOML and JSON spell them alike


def prepare(module: str) -> Path:
    """A fresh scratch folder for ``module``: the package, the tests, ``../shared`` and a pyproject with its config."""
    folder = SCRATCH / module
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "dm4isl", folder / "dm4isl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "tests", folder / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shared = REPO_ROOT.parent / "shared"
    if shared.is_dir():  # the tests find the reference patches beside the repository (mutmut works in ./mutants)
        (folder / "shared").symlink_to(shared)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    tomllib.loads(pyproject)  # the project's own file must parse before a section is added
    section = "\n[tool.mutmut]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in mutmut_config(module).items())
    (folder / "pyproject.toml").write_text(pyproject + section, encoding="utf-8")
    return folder


def run_module(module: str, max_children: int) -> Score:
    """Run mutmut on one module in its scratch folder; returns its counts."""
    folder = prepare(module)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts ./mutants first itself
    env.setdefault("OMP_NUM_THREADS", "1")
    mutmut = [sys.executable, "-m", "mutmut"]
    tic = time.perf_counter()
    with open(SCRATCH / f"{module}.log", "w", encoding="utf-8") as log:  # mutmut's progress lines, kept apart
        subprocess.run([*mutmut, "run", "--max-children", str(max_children)], cwd=folder, env=env, check=False,
                       stdout=log, stderr=subprocess.STDOUT)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=folder, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - tic
    stats = json.loads((folder / "mutants" / "mutmut-cicd-stats.json").read_text(encoding="utf-8"))
    return Score(module, {k: int(stats.get(k, 0)) for k in COUNTS}, seconds)


def table(scores: list[Score]) -> str:
    """A Markdown table: one row per module."""
    head = "| module | score | " + " | ".join(COUNTS) + " | minutes |"
    rows = [head, "|" + "---|" * (len(COUNTS) + 3)]
    for s in scores:
        rows.append(f"| {s.module} | {s.score:.1%} | " + " | ".join(str(s.counts[k]) for k in COUNTS)
                    + f" | {s.seconds / 60:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", choices=[*MODULES, []], help="modules to mutate (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutmut workers")
    args = parser.parse_args()
    scores = []
    for module in args.modules or list(MODULES):
        score = run_module(module, args.max_children)
        print(f"mutants: {module}: score {score.score:.1%} ({score.counts['killed']} of "
              f"{score.counts['total']} killed) in {score.seconds / 60:.1f} min", flush=True)
        scores.append(score)
    summary = table(scores)
    (SCRATCH / "scores.md").write_text(summary + "\n", encoding="utf-8")
    print(summary)


if __name__ == "__main__":
    main()
