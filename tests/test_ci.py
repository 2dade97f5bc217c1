"""The CI entry point runs the README's test command (`make test`) and never drops the slow tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, load_script, require

CI_SCRIPT = REPO_ROOT / ".ci" / "run"


def _run_ci(tmp_path: Path, record: str, env: dict[str, str]) -> str:
    """Run .ci/run with ``env`` and a stand-in `make` first on PATH that runs ``record`` (a shell command writing to
    "$RECORD"); returns what it wrote."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "make"
    fake.write_text(f"#!/usr/bin/env bash\n{record}\n")
    fake.chmod(0o755)
    out = tmp_path / "record"
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "RECORD": str(out)}
    subprocess.run(["bash", str(CI_SCRIPT)], env=env, check=True, capture_output=True, timeout=60)
    return out.read_text()


def _ci_make_args(tmp_path: Path, pytest_args: str | None) -> list[str]:
    """The arguments .ci/run gives `make`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ARGS"}
    if pytest_args is not None:
        env["PYTEST_ARGS"] = pytest_args
    return _run_ci(tmp_path, 'printf "%s\\n" "$@" > "$RECORD"', env).splitlines()


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, "--runslow"), ("", "--runslow"), ("-k metrics -x", "--runslow -k metrics -x")],
)
def test_ci_always_runs_slow_tests(tmp_path: Path, given: str | None, expected: str) -> None:
    assert _ci_make_args(tmp_path, given) == ["test", "EXTRAS=ci", f"PYTEST_ARGS={expected}"]


def test_make_test_passes_pytest_args_to_pytest() -> None:
    require(shutil.which("make") is not None, "make is not installed (the README's test command needs it)")
    dry = subprocess.run(["make", "-n", "test", "PYTEST_ARGS=--runslow -k metrics"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    assert "-m pytest --durations=25 --runslow -k metrics" in dry.stdout


@pytest.mark.parametrize(("given", "expected"), [(None, "true"), ("1", "1")])
def test_ci_script_exports_ci(tmp_path: Path, given: str | None, expected: str) -> None:
    """.ci/run exports CI (true unless set), so that require() fails instead of skipping in the tests it starts."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if given is not None:
        env["CI"] = given
    assert _run_ci(tmp_path, 'printf "%s" "${CI-unset}" > "$RECORD"', env) == expected


def test_require_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import conftest

    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true and the thing is missing"):
        conftest.require(False, "the thing is missing")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="the thing is missing"):
        conftest.require(False, "the thing is missing")
    conftest.require(True, "never said")


def test_every_skip_goes_through_require() -> None:
    """No test skips for missing data or an extra by ``pytest.skip``/``pytest.importorskip``/``skipif`` directly: those
    would skip under CI=true too. The slow-test switch (conftest) is the one other skip."""
    pattern = re.compile(r"pytest\.(skip|importorskip)\(|mark\.skipif")
    offenders = [f"{path.name}:{n}" for path in sorted((REPO_ROOT / "tests").glob("test_*.py"))
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_justified_survivor_list_parses_with_three_fields_a_row():
    """Every row of docs/mutants_justified.csv is mutant,reason,note with a known reason; one name per row."""
    mutants = load_script("mutants")
    rows = (REPO_ROOT / "docs" / "mutants_justified.csv").read_text(encoding="utf-8").splitlines()
    justified = mutants.read_justified()
    assert len(justified) == len(rows) - 1  # header; no name listed twice
    assert {reason for reason, _ in justified.values()} <= set(mutants.REASONS)


def test_justified_survivor_list_refuses_an_unquoted_comma(tmp_path):
    mutants = load_script("mutants")
    bad = tmp_path / "justified.csv"
    bad.write_text("mutant,reason,note\na__mutmut_1,equivalent,same value, slower\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="line 2: expected 3 fields"):
        mutants.read_justified(bad)
