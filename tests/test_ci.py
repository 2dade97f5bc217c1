"""The CI entry point runs the README's test command (`make test`) and never drops the slow tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require

CI_SCRIPT = REPO_ROOT / ".ci" / "run"


def _ci_make_args(tmp_path: Path, pytest_args: str | None) -> list[str]:
    """Run .ci/run with a stand-in `make` first on PATH that records its arguments; return them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "make_args"
    fake = bin_dir / "make"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ARGS"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if pytest_args is not None:
        env["PYTEST_ARGS"] = pytest_args
    subprocess.run(["bash", str(CI_SCRIPT)], env=env, check=True, capture_output=True, timeout=60)
    return record.read_text().splitlines()


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
