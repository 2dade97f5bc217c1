"""Output layout of predictions: OME-TIFF file names, product folders, seed-ensemble folders and channel names."""

from __future__ import annotations

import os
from pathlib import Path

#: Suffix of every OME-TIFF the project writes (readers also accept .tif/.tiff/.ome.tif).
OME_TIFF_SUFFIX = ".ome.tiff"
#: Per-seed products of an ensemble live in ``<product>_seeds/seed<k>/`` beside the ensemble's ``<product>/``.
SEEDS_SUFFIX = "_seeds"
SEED_DIR_PREFIX = "seed"
#: Products that show the brightfield input rather than the organelle (channel name without the organelle).
BRIGHTFIELD_PRODUCTS = ("BF",)


def product_file(output_dir: str | os.PathLike, product: str, name: str) -> Path:
    """``<output_dir>/<product>/<name>.ome.tiff``: where the product ``product`` of input ``name`` is written."""
    return Path(output_dir) / product / f"{name}{OME_TIFF_SUFFIX}"


def seed_product(product: str, seed: int) -> str:
    """Folder (relative to an output folder) of one seed's ``product``: ``<product>_seeds/seed<seed>``."""
    return f"{product}{SEEDS_SUFFIX}/{SEED_DIR_PREFIX}{int(seed)}"


def seeds_folder(product: str) -> str:
    """Folder holding the per-seed folders of ``product`` (``<product>_seeds``)."""
    return f"{product}{SEEDS_SUFFIX}"


def organelle_label(organelle: str | None) -> str:
    """Human name of an organelle config name: ``nuclear_envelope`` → ``nuclear envelope``."""
    return str(organelle).replace("_", " ") if organelle else ""


def channel_name(product: str, organelle: str | None) -> str:
    """OME channel name of a product: ``DDPMavg (nuclear envelope)``; ``DDPMavg seed 3 (nuclear envelope)`` for a
    per-seed product; ``BF (brightfield)`` for the input; the bare product when the organelle is unknown."""
    base, _, seed = product.partition(f"{SEEDS_SUFFIX}/{SEED_DIR_PREFIX}")
    label = f"{base} seed {seed}" if seed else product
    if product in BRIGHTFIELD_PRODUCTS:
        return f"{label} (brightfield)"
    what = organelle_label(organelle)
    return f"{label} ({what})" if what else label
