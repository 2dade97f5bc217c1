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

Adjusted score: the same with the survivors listed in ``docs/mutants_justified.csv`` (mutant name, reason, note:
an equivalent mutant, a changed error message, ...) left out of the denominator. Listed names that this run did not
produce, or that it killed, are reported as stale (mutant names change when the code changes). The survivors that
are neither killed nor listed are written to ``build/mutation/<module>.survivors.txt``, one name a line, for
``cd build/mutation/<module> && python -m mutmut show <name>``.

    python scripts/mutants.py                       # every module
    python scripts/mutants.py uncertainty io        # some
    python scripts/mutants.py --max-children 2      # parallel mutmut workers (default: 2)
    python scripts/mutants.py uncertainty --no-run  # score the last run again (after editing the justified list)
    python scripts/mutants.py metrics --resume      # finish an interrupted run; retest survivors and timeouts
"""

from __future__ import annotations

import argparse
import csv
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
    "metrics": (["tests/test_metrics.py", "tests/test_benchmark_protocol.py", "tests/test_classifier.py"],
                "not classifier_learns_beyond"),
    "sampling": (["tests/test_sampling.py", "tests/test_ensemble.py", "tests/test_tiled.py"],
                 "not predict_a_volume and not python_api"),
    "uncertainty": (["tests/test_uncertainty_masks.py", "tests/test_uncertainty_scores.py", "tests/test_thresholds.py",
                     "tests/test_uncertainty_eval.py", "tests/test_benchmark_layout.py"],
                    "not end_to_end and not console_script and not missing_std_map"),
    "io": (["tests/test_io_layout.py", "tests/test_readers.py", "tests/test_checkpoint.py",
            "tests/test_benchmark_layout.py"], ""),
    "prediction": (["tests/test_prediction_units.py", "tests/test_generative_import.py",
                    "tests/test_predict_scale.py::test_shards_partition_inputs_by_name"],
                   "not predicts_with_dm4isl_predict"),
}
#: mutmut's outcome counts, as ``export-cicd-stats`` writes them.
COUNTS = ("killed", "survived", "timeout", "suspicious", "no_tests", "skipped", "total")
#: Survivors judged harmless, one ``mutant,reason,note`` row each (docs/testing.md, "Justified survivors").
JUSTIFIED = REPO_ROOT / "docs" / "mutants_justified.csv"
#: The reasons a survivor may be listed for.
REASONS = ("equivalent", "message", "defensive", "dtype", "performance")


@dataclass
class Score:
    """mutmut's counts for one module and the wall time of its run."""

    module: str
    counts: dict[str, int]
    seconds: float
    justified: int = 0  #: survivors listed in :data:`JUSTIFIED`
    stale: tuple[str, ...] = ()  #: listed names of this module that did not survive this run
    open_survivors: tuple[str, ...] = ()  #: survivors neither killed nor listed

    @property
    def tried(self) -> int:
        c = self.counts
        return c["killed"] + c["survived"] + c["timeout"] + c["suspicious"]

    @property
    def score(self) -> float:
        """Killed fraction of the mutants some selected test executed (NaN when there are none)."""
        return self.counts["killed"] / self.tried if self.tried else float("nan")

    @property
    def adjusted(self) -> float:
        """Killed fraction once the justified survivors are left out of the denominator."""
        tried = self.tried - self.justified
        return self.counts["killed"] / tried if tried else float("nan")


def read_justified(path: Path = JUSTIFIED) -> dict[str, tuple[str, str]]:
    """``{mutant name: (reason, note)}`` of the justified-survivor list (empty when there is none)."""
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, str]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            if None in row or None in row.values():
                raise SystemExit(f"{path}: line {line}: expected 3 fields (mutant,reason,note); quote a note that "
                                 f"holds a comma")
            name, reason = row["mutant"].strip(), row["reason"].strip()
            if reason not in REASONS:
                raise SystemExit(f"{path}: {name}: reason {reason!r}; expected one of {REASONS}")
            out[name] = (reason, row.get("note", "").strip())
    return out


def mutant_statuses(folder: Path, env: dict[str, str]) -> dict[str, str]:
    """``{mutant name: status}`` of a finished run (``mutmut results --all``)."""
    done = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=folder, env=env,
                          check=True, capture_output=True, text=True)
    statuses = {}
    for line in done.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("dm4isl."):
            statuses[name] = status.strip()
    return statuses


def judge(score: Score, statuses: dict[str, str], justified: dict[str, tuple[str, str]]) -> Score:
    """``score`` with the justified survivors counted and the stale or open names listed."""
    prefix = f"dm4isl.{score.module}."
    listed = {name for name in justified if name.startswith(prefix)}
    survived = {name for name, status in statuses.items() if status == "survived"}
    score.justified = len(listed & survived)
    score.stale = tuple(sorted(listed - survived))
    score.open_survivors = tuple(sorted(survived - listed))
    return score


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


def prepare(module: str, fresh: bool = True) -> Path:
    """A scratch folder for ``module``: the package, the tests, ``../shared`` and a pyproject with its config.

    ``fresh=False`` keeps an existing folder and mutmut's results in it and copies the current package and tests
    over it (``--resume``)."""
    folder = SCRATCH / module
    if fresh or not (folder / "mutants").is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dm4isl", "tests"):
        shutil.copytree(REPO_ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    shared = REPO_ROOT.parent / "shared"
    # the tests find the reference patches beside the repository (mutmut works in ./mutants)
    if shared.is_dir() and not (folder / "shared").exists():
        (folder / "shared").symlink_to(shared)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    tomllib.loads(pyproject)  # the project's own file must parse before a section is added
    section = "\n[tool.mutmut]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in mutmut_config(module).items())
    (folder / "pyproject.toml").write_text(pyproject + section, encoding="utf-8")
    return folder


def run_module(module: str, max_children: int, mode: str = "fresh") -> Score:
    """Run mutmut on one module in its scratch folder; returns its counts.

    ``mode``: ``fresh`` (a new folder, every mutant), ``resume`` (keep the folder's verdicts: finish the mutants an
    interrupted run left undecided, then test the unreached mutants, the timeouts (a busy machine can cause them)
    and the survivors not in the justified list again with the current tests; valid while tests are only added,
    since a killed mutant stays killed), or
    ``score`` (judge the last run again, e.g. after editing the justified list)."""
    folder = SCRATCH / module if mode == "score" else prepare(module, fresh=mode == "fresh")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts ./mutants first itself
    env.setdefault("OMP_NUM_THREADS", "1")
    mutmut = [sys.executable, "-m", "mutmut"]
    tic = time.perf_counter()
    runs = [[]] if mode == "fresh" else []
    if mode == "resume":
        listed = read_justified()  # a justified survivor is not worth a rerun
        again = sorted(n for n, st in mutant_statuses(folder, env).items()
                       if (st == "survived" and n not in listed) or st in ("no tests", "timeout"))
        runs = [[], again] if again else [[]]
    with open(SCRATCH / f"{module}.log", "a" if mode == "resume" else "w", encoding="utf-8") as log:
        for names in runs:  # mutmut's progress lines, kept apart
            subprocess.run([*mutmut, "run", "--max-children", str(max_children), *names], cwd=folder, env=env,
                           check=False, stdout=log, stderr=subprocess.STDOUT)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=folder, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - tic
    stats = json.loads((folder / "mutants" / "mutmut-cicd-stats.json").read_text(encoding="utf-8"))
    score = Score(module, {k: int(stats.get(k, 0)) for k in COUNTS}, seconds)
    judge(score, mutant_statuses(folder, env), read_justified())
    (SCRATCH / f"{module}.survivors.txt").write_text("".join(f"{n}\n" for n in score.open_survivors),
                                                     encoding="utf-8")
    return score


def table(scores: list[Score]) -> str:
    """A Markdown table: one row per module."""
    head = "| module | score | adjusted | " + " | ".join(COUNTS) + " | justified | minutes |"
    rows = [head, "|" + "---|" * (len(COUNTS) + 5)]
    for s in scores:
        rows.append(f"| {s.module} | {s.score:.1%} | {s.adjusted:.1%} | "
                    + " | ".join(str(s.counts[k]) for k in COUNTS) + f" | {s.justified} | {s.seconds / 60:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", choices=[*MODULES, []], help="modules to mutate (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutmut workers")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--no-run", action="store_true",
                      help="score the last run in build/mutation/<module>/ again (after editing the justified list)")
    when.add_argument("--resume", action="store_true",
                      help="keep the last run's verdicts: finish an interrupted run, retest survivors and unreached "
                           "mutants with the current tests")
    args = parser.parse_args()
    mode = "score" if args.no_run else "resume" if args.resume else "fresh"
    scores = []
    for module in args.modules or list(MODULES):
        score = run_module(module, args.max_children, mode)
        print(f"mutants: {module}: score {score.score:.1%} ({score.counts['killed']} of {score.tried} reached "
              f"killed, {score.counts['total']} in all), adjusted {score.adjusted:.1%} ({score.justified} justified "
              f"survivors left out), {len(score.open_survivors)} open survivors in "
              f"build/mutation/{module}.survivors.txt, {score.seconds / 60:.1f} min", flush=True)
        for name in score.stale:
            print(f"mutants: {module}: stale entry in {JUSTIFIED.relative_to(REPO_ROOT)}: {name} did not survive "
                  "this run (killed, renamed or gone)", flush=True)
        scores.append(score)
    summary = table(scores)
    (SCRATCH / "scores.md").write_text(summary + "\n", encoding="utf-8")
    print(summary)


if __name__ == "__main__":
    main()
