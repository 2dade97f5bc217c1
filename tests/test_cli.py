"""Console scripts: expected errors are one line on stderr with exit status 2; configs reachable as ./conf."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from conftest import REPO_ROOT
from dm4isl.cli import console_script, expand_shorthand, expected_error, report_expected_errors
from dm4isl.errors import CheckpointError, DataError

SCRIPTS = Path(sys.executable).parent
#: The documented exit status of an expected error (README, docs/prediction.md), written out: a test that imported
#: the constant from the code under test would follow it wherever it changed.
EXIT_2 = 2


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run an installed console script; returns its completed process (text output)."""
    return subprocess.run([str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_conf_is_reachable_from_the_repository_root() -> None:
    """The README names conf/experiment/demo.yaml: it must open from a clone's root."""
    demo = REPO_ROOT / "conf" / "experiment" / "demo.yaml"
    assert demo.is_file(), f"{demo} not reachable"
    assert demo.read_text(encoding="utf-8") == (REPO_ROOT / "dm4isl/conf/experiment/demo.yaml").read_text("utf-8")


def test_missing_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ckpt"
    proc = run_script("dm4isl-predict", f"ckpt_path={missing}", f"input={tmp_path}", f"output_dir={tmp_path / 'o'}")
    assert proc.returncode == EXIT_2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"dm4isl-predict: error: {missing}: checkpoint not found "
                     "(expected a .ckpt file written by dm4isl-train)"]
    assert not (tmp_path / "o").exists()


def _stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_bad_override_exit_2_without_traceback(tmp_path: Path) -> None:
    proc = run_script("dm4isl-evaluate", f"input_dir={tmp_path}", "no_such_key=1")
    assert proc.returncode == EXIT_2
    assert "Traceback" not in proc.stderr
    lines = _stderr_lines(proc)
    assert any("no_such_key" in line for line in lines)


def test_input_shorthand_with_input_fields() -> None:
    assert expand_shorthand(["input=a.tif", "input.channel=Brightfield", "n_seeds=2"], "input", "path") == [
        "input.path=a.tif", "input.channel=Brightfield", "n_seeds=2"]
    assert expand_shorthand(["input=a.tif", "n_seeds=2"], "input", "path") == ["input=a.tif", "n_seeds=2"]
    assert expand_shorthand(["input.path=a.tif", "input.scene=all"], "input", "path") == [
        "input.path=a.tif", "input.scene=all"]
    assert expand_shorthand(["input_dir=x", "input.channel=0"], "input", "path") == ["input_dir=x", "input.channel=0"]


def test_missing_zarr_writer_is_one_line_before_any_work(tmp_path: Path) -> None:
    """``output_format=both`` without the formats extra: exit 2 and one line before the checkpoint is even read, and
    ``input=<file> input.channel=<name>`` (the form typed first) is accepted."""
    image = tmp_path / "fov.ome.tiff"
    image.write_bytes(b"")
    out = tmp_path / "o"
    hide = "import sys; sys.modules.update(bioio_ome_zarr=None, dask=None); sys.argv[0] = 'dm4isl-predict'; "
    proc = subprocess.run(
        [sys.executable, "-c", hide + "from dm4isl.predict import cli; cli()", f"ckpt_path={tmp_path / 'x.ckpt'}",
         f"input={image}", "input.channel=Brightfield", "output_format=both", f"output_dir={out}",
         f"hydra.run.dir={tmp_path / 'h'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == EXIT_2, proc.stderr
    assert _stderr_lines(proc) == ['dm4isl-predict: error: output_format=both needs bioio-ome-zarr, dask, not '
                                   'installed here: pip install -e ".[formats]", or output_format=tiff'], proc.stderr
    assert not out.exists()


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    proc = run_script("dm4isl-predict", f"ckpt_path={tmp_path / 'x.ckpt'}", f"input={tmp_path}", "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_expected_errors_are_recognised() -> None:
    err = DataError("bad.tif: truncated")
    assert expected_error(err) is err
    wrapped = InstantiationException("Error in call to target")
    wrapped.__cause__ = err
    assert expected_error(wrapped) is err
    assert expected_error(RuntimeError("a defect")) is None
    assert expected_error(OSError(28, "No space left on device")) is not None
    assert expected_error(OSError(5, "I/O error")) is None


def test_task_wrapper_exit_2_for_expected_and_raises_the_rest(capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @report_expected_errors
    def fails(kind: type[Exception]) -> None:
        raise kind("model.ckpt: foreign checkpoint")

    with pytest.raises(SystemExit) as exit_info:
        fails(CheckpointError)
    assert exit_info.value.code == EXIT_2
    assert capsys.readouterr().err.strip().endswith("error: model.ckpt: foreign checkpoint")
    with pytest.raises(RuntimeError):
        fails(RuntimeError)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(CheckpointError):
        fails(CheckpointError)


def test_hydra_exit_1_before_the_task_becomes_2() -> None:
    def hydra_main() -> None:
        raise SystemExit(1)  # what Hydra does after printing a composition error

    with pytest.raises(SystemExit) as exit_info:
        console_script(hydra_main)()
    assert exit_info.value.code == EXIT_2
