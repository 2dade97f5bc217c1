"""Console scripts: expected errors become one line on stderr and exit status 2; ``--debug`` shows the traceback.

Expected errors are the user's to fix — bad input data, a missing or mismatched checkpoint, an invalid setting or
command-line override, a missing file, a full disk. Anything else is a defect and keeps its traceback (exit 1).
``--debug`` (or ``HYDRA_FULL_ERROR=1``) shows the full traceback of every error.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

from dm4isl.errors import CheckpointError, ConfigError, DataError

#: Exit status of a run stopped by an expected error (as argparse uses for usage errors).
EXIT_EXPECTED = 2
#: Command-line flag that shows tracebacks (removed before Hydra parses the overrides).
DEBUG_FLAG = "--debug"
#: Hydra's own switch for full tracebacks.
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
#: Exception types that are the user's to fix.
EXPECTED_TYPES: tuple[type[BaseException], ...] = (
    DataError, CheckpointError, ConfigError, MissingMandatoryValue,
    FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
)
#: OSError numbers that are the machine's state, not a defect (full disk, quota, read-only file system).
EXPECTED_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

#: Third-party loggers quietened in console scripts (unless debugging): tifffile's parse errors (our error message
#: names the file and the problem) and the INFO lines of alembic, imported by Hydra's Optuna sweeper plugin.
QUIET_LOGGERS = {"tifffile": logging.CRITICAL, "alembic": logging.WARNING}

F = TypeVar("F", bound=Callable[..., Any])
_task_started = False


def expected_error(err: BaseException) -> BaseException | None:
    """The expected error behind ``err`` (itself, or the cause of a Hydra instantiation error), else None."""
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        return expected_error(err.__cause__)
    if isinstance(err, EXPECTED_TYPES):
        return err
    if isinstance(err, OSError) and err.errno in EXPECTED_ERRNOS:
        return err
    return None


def debugging() -> bool:
    """True when full tracebacks were asked for (``--debug`` or ``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get(FULL_ERROR_ENV, "") == "1"


def program() -> str:
    """The console script's name, for messages."""
    return os.path.basename(sys.argv[0]) or "dm4isl"


def report_expected_errors(task: F) -> F:
    """Wrap a Hydra task function: an expected error prints ``<program>: error: <message>`` and exits with 2."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _task_started
        _task_started = True
        try:
            return task(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised unless expected
            expected = expected_error(err)
            if expected is None or debugging():
                raise
            print(f"{program()}: error: {expected}", file=sys.stderr)
            raise SystemExit(EXIT_EXPECTED) from None

    return wrapper  # type: ignore[return-value]


def expand_shorthand(args: list[str], key: str, field: str) -> list[str]:
    """``key=<v>`` becomes ``key.<field>=<v>`` when another ``key.<x>=`` override is also given.

    ``input=<file> input.channel=Brightfield`` is what a person types first; Hydra refuses it, because ``input=<file>``
    has replaced the ``input`` mapping by a string before ``input.channel`` is set. Alone, ``key=<v>`` stays as it is.
    """
    if not any(arg.startswith(f"{key}.") for arg in args):
        return list(args)
    return [f"{key}.{field}={arg[len(key) + 1:]}" if arg.startswith(f"{key}=") else arg for arg in args]


def console_script(hydra_main: Callable[[], Any], shorthands: dict[str, str] | None = None) -> Callable[[], Any]:
    """Entry point around a ``@hydra.main`` function: ``--debug``, and exit 2 for configuration errors.

    Hydra reports an invalid override or a missing config itself (one message, exit 1) before the task starts;
    such an exit becomes status 2 like every other expected error. ``shorthands`` maps a config mapping to the field
    that ``<mapping>=<value>`` sets when other fields of it are also given (:func:`expand_shorthand`).
    """

    @functools.wraps(hydra_main)
    def entry() -> Any:
        global _task_started
        if DEBUG_FLAG in sys.argv[1:]:
            sys.argv.remove(DEBUG_FLAG)
            os.environ[FULL_ERROR_ENV] = "1"
        for key, field in (shorthands or {}).items():
            sys.argv[1:] = expand_shorthand(sys.argv[1:], key, field)
        if not debugging():
            for name, level in QUIET_LOGGERS.items():
                logging.getLogger(name).setLevel(level)
        _task_started = False
        try:
            return hydra_main()
        except SystemExit as exc:
            if exc.code == 1 and not _task_started:
                raise SystemExit(EXIT_EXPECTED) from None
            raise

    return entry
