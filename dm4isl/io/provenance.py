"""Provenance recorded with every written prediction: source revision and checkpoint fingerprint."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

#: Hex digits of the SHA-256 kept as a checkpoint's fingerprint.
FINGERPRINT_HEX = 16
#: Hash read size (whole file, streamed).
_CHUNK = 1 << 20
#: Seconds allowed for ``git describe``.
GIT_TIMEOUT_S = 10


def git_revision(path: str | os.PathLike | None = None) -> str:
    """The git commit of the source tree at ``path`` (default: this package), ``-dirty`` when modified, or
    ``"unknown"`` outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=where, capture_output=True, text=True,
            timeout=GIT_TIMEOUT_S, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev or "unknown"


def source_revision(version: str) -> str:
    """The revision recorded with predictions: the git commit, else ``dm4isl <version>`` (an installed copy)."""
    rev = git_revision()
    return rev if rev != "unknown" else f"dm4isl {version}"


def file_fingerprint(path: str | os.PathLike) -> str:
    """First :data:`FINGERPRINT_HEX` hex digits of the SHA-256 of a file (e.g. a checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()[:FINGERPRINT_HEX]
