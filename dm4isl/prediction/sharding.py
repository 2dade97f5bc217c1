"""Prediction shards: which inputs a process or cluster job owns, its own CSV, and the merged ``predictions.csv``."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dm4isl.io.atomic import write_csv

T = TypeVar("T")

CSV_NAME = "predictions.csv"
#: Folder (inside the output folder) of the per-shard CSVs of a sharded run.
SHARD_DIR = "shards"
_SHARD_CSV = re.compile(r"^predictions\.(\d+)-of-(\d+)\.csv$")


def _natural(name: str) -> tuple:
    """Sort key that orders ``fov2`` before ``fov10``."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name))


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: every ``count``-th input of the name-sorted list, starting at ``index``.

    The assignment depends only on the input names, so every process (and every cluster job, started at any time)
    agrees on it, each input belongs to exactly one shard, and a rerun gives each shard the same inputs (resume).
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of num_shards={self.count}: expected 0 <= shard < num_shards")

    @property
    def single(self) -> bool:
        """True when one shard holds everything (no sharding)."""
        return self.count == 1

    def split(self, rank: int, world: int) -> Shard:
        """The share of process ``rank`` of ``world`` within this shard (job shards × processes per job)."""
        return Shard(self.index * world + rank, self.count * world)

    def select(self, items: Sequence[T], names: Sequence[str] | None = None) -> list[T]:
        """The items of this shard, in their given order; ``names`` (default ``item.name``) decide the assignment."""
        names = [getattr(it, "name") for it in items] if names is None else list(names)  # noqa: B009
        order = sorted(range(len(items)), key=lambda i: _natural(names[i]))
        mine = {i for pos, i in enumerate(order) if pos % self.count == self.index}
        return [it for i, it in enumerate(items) if i in mine]

    def csv_path(self, output_dir: str | Path) -> Path:
        """This shard's CSV: ``predictions.csv`` without sharding, else ``shards/predictions.<i>-of-<n>.csv``."""
        out = Path(output_dir)
        if self.single:
            return out / CSV_NAME
        width = len(str(self.count - 1))
        return out / SHARD_DIR / f"predictions.{self.index:0{width}d}-of-{self.count}.csv"


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of an existing predictions CSV (empty when there is none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def shard_csvs(output_dir: str | Path) -> list[Path]:
    """The per-shard CSVs of earlier or concurrent sharded runs into ``output_dir``, oldest first."""
    folder = Path(output_dir) / SHARD_DIR
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if _SHARD_CSV.match(p.name)]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def all_rows(output_dir: str | Path) -> dict[str, dict[str, str]]:
    """Every known row by input name from ``predictions.csv`` and the shard CSVs; the newest file's row wins."""
    rows: dict[str, dict[str, str]] = {}
    files = [p for p in [Path(output_dir) / CSV_NAME, *shard_csvs(output_dir)] if p.is_file()]
    for path in sorted(files, key=lambda p: p.stat().st_mtime_ns):
        for row in read_rows(path):
            rows[row["name"]] = row
    return rows


def merge_csvs(output_dir: str | Path, fieldnames: Sequence[str]) -> list[dict[str, Any]]:
    """Rewrite ``predictions.csv`` (atomically) with the rows of every shard, sorted by name; returns them.

    Idempotent: run by the last process of a multi-process run and by every finishing cluster job. A shard CSV that
    changed while merging (another job finishing at the same time) makes it merge again, so the last merge to
    finish holds every row; the shard CSVs stay (they are what a resumed shard reads).
    """
    while True:
        before = _stamps(output_dir)
        rows = sorted(all_rows(output_dir).values(), key=lambda r: _natural(r["name"]))
        write_csv(Path(output_dir) / CSV_NAME, rows, fieldnames)
        if _stamps(output_dir) == before:
            return rows


def _stamps(output_dir: str | Path) -> dict[str, int]:
    """Modification times of the shard CSVs, by name."""
    return {p.name: p.stat().st_mtime_ns for p in shard_csvs(output_dir)}
