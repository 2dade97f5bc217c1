"""Prepare downloaded Allen Cell FOVs: per-FOV caches, FOV-level splits and the fixed validation/test patch sets.

For each organelle it composes the training config (``data=allen`` plus your overrides, so the cached sets are the
ones training will look up), reads every FOV of the manifest for that organelle once (brightfield + organelle
channel, XY-resampled, cached under ``<data_dir>/cache/allen/fovs``), draws the split by FOV (written to
``<data_dir>/allen/splits/<organelle>.csv``) and caches the first N filtered validation/test crops
(``<data_dir>/cache/eval_sets``). Resumable: finished FOVs and organelles are skipped, every file is written
atomically, so an interrupted run simply continues.

    python scripts/prepare_allen.py --manifest data/allen/metadata.csv --organelles all
    python scripts/prepare_allen.py --manifest data/allen/metadata.csv --organelles dna nucleoli data.xy_size=null
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from tqdm.auto import tqdm

from dm4isl.errors import DataError
from dm4isl.io.atomic import write_text
from dm4isl.utils.compose import compose_config

log = logging.getLogger("prepare_allen")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The six organelles of the paper (SPEC §1); ``--organelles all`` prepares each one present in the manifest.
ALL_ORGANELLES = ("dna", "mitochondria", "nuclear_envelope", "nucleoli", "actin", "microtubules")


def data_config(
    organelle: str, manifest: Path, data_dir: Path, data_root: Path | None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The resolved ``data=allen`` config of one organelle, as training composes it, with the prepare paths."""
    cfg = compose_config("train", [f"organelle={organelle}", "data=allen", *overrides], root_dir=Path.cwd(),
                         data_dir=data_dir, log_dir=data_dir / "outputs")
    with open_dict(cfg):
        cfg.paths.output_dir = str(data_dir / "allen")
        cfg.data.manifest = str(manifest)
        cfg.data.data_root = str(data_root) if data_root else cfg.data.data_root
        cfg.data.split_file = str(data_dir / "allen" / "splits" / f"{organelle}.csv")
    return OmegaConf.to_container(cfg.data, resolve=True)  # type: ignore[return-value]


def prepare_organelle(data_cfg: dict[str, Any], done_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Build (or find) one organelle's caches, split and patch sets; returns a summary, also saved in ``done_dir``.

    The summary file is keyed by the data config and the manifest's size and time stamp: a changed manifest or
    setting prepares again (finished FOVs still come from their cache).
    """
    stat = Path(data_cfg["manifest"]).stat() if Path(data_cfg["manifest"]).is_file() else None
    payload = {"data": data_cfg, "manifest": [stat.st_size, stat.st_mtime_ns] if stat else None}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = data_cfg["organelle"]["name"]
    marker = done_dir / f"{name}-{key}.json"
    if marker.is_file():
        return {**json.loads(marker.read_text()), "skipped": True}
    start = time.perf_counter()
    dm = instantiate(data_cfg, _convert_="all")
    dm.prepare_raw(progress=progress)
    dm.setup("fit")
    summary = {
        "organelle": name,
        "fovs": {k: len(v) for k, v in dm.split.items()},
        "val_patches": len(dm.val_set) if dm.val_set is not None else 0,
        "test_patches": len(dm.test_set) if dm.test_set is not None else 0,
        "bf_window": list(dm.organelle["bf_window"]),
        "fl_window": list(dm.organelle["fl_window"]),
        "split_file": str(dm.split_file),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_text(marker, json.dumps(summary, indent=2))
    return {**summary, "skipped": False}


def prepare_allen(
    manifest: Path,
    organelles: Sequence[str],
    data_dir: Path,
    data_root: Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Prepare each organelle; with ``all``, organelles absent from the manifest are skipped with a warning."""
    names = list(ALL_ORGANELLES) if list(organelles) == ["all"] else list(organelles)
    results = []
    for organelle in tqdm(names, desc="organelles", unit="organelle", disable=not progress or None):
        cfg = data_config(organelle, manifest, data_dir, data_root, overrides)
        try:
            results.append(prepare_organelle(cfg, data_dir / "allen" / "prepared", progress))
        except DataError as err:
            if list(organelles) != ["all"] or "no FOV" not in str(err):
                raise
            log.warning("skipping %s: %s", organelle, err)
            results.append({"organelle": organelle, "absent": True})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--manifest``, ``--organelles``, ``--data-dir``, ``--data-root`` and Hydra overrides."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True, help="the collection's metadata.csv (or a plain CSV)")
    parser.add_argument("--organelles", nargs="+", default=["all"], help="organelle config names, or all")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="holds cache/ and allen/ (default: data)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder that relative SourceReadPath values start from (default: the manifest's folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training config, e.g. data.xy_size=null")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        results = prepare_allen(args.manifest, args.organelles, args.data_dir, args.data_root, args.overrides,
                                not args.quiet)
    except DataError as err:
        log.error("%s", err)
        return 1
    for row in results:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
