"""Output layout of predictions: product names, OME-TIFF file names, product folders, seed-ensemble folders, channel
names, and the one writer of a prediction folder's images (used by ``dm4isl-predict`` and the training-time test
writer alike).

A prediction folder holds one sub-folder per product with one ``<name>.ome.tiff`` per input, arrays ``(Z, Y, X)``::

    BF/ GT/                       the input and its ground truth (when known)
    DDPM/ DDPMavg/                diffusion: final sample, mean of x̂0 over the window
    std_intra/ std_inter/         uncertainty maps (intra-process std; inter-process std with several seeds)
    error_mask/                   the thresholded, segmented std map (uint8)
    Unet/ GAN/ linear/            baselines
    DDPM_seeds/seed<k>/ DDPMavg_seeds/seed<k>/   each seed's products of an ensemble

The authors' benchmark (BioImage Archive) has its own layout, read as it is: ``<root>/<Organelle>/<Method>/<i>.tiff``
(uint8, value / 255; i = 0..127) with organelle folders :data:`BENCHMARK_ORGANELLES` and method folders ``BF``,
``GT``, ``Unet``, ``GAN``, ``DDPM``, ``DDPMavg`` and ``DDPMstd`` (the intra-process std map).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dm4isl.io.atomic import write_tiff

log = logging.getLogger(__name__)

#: Product names (folder names and OME channel names).
BF, GT = "BF", "GT"
DDPM, DDPMAVG = "DDPM", "DDPMavg"
STD_INTRA, STD_INTER = "std_intra", "std_inter"
ERROR_MASK = "error_mask"
UNET, GAN, LINEAR = "Unet", "GAN", "linear"
#: Folders that are inputs, not predictions.
INPUT_PRODUCTS = (BF, GT)
#: Folder-name prefix of uncertainty maps (written, shown, but not scored against GT).
UNCERTAINTY_PREFIX = "std_"

#: Suffix of every OME-TIFF the project writes (readers also accept .tif/.tiff/.ome.tif).
OME_TIFF_SUFFIX = ".ome.tiff"
#: Per-seed products of an ensemble live in ``<product>_seeds/seed<k>/`` beside the ensemble's ``<product>/``.
SEEDS_SUFFIX = "_seeds"
SEED_DIR_PREFIX = "seed"
#: Products that show the brightfield input rather than the organelle (channel name without the organelle).
BRIGHTFIELD_PRODUCTS = (BF,)

#: The benchmark layout: organelle folder → organelle config name (``conf/organelle``), the std-map folder, and the
#: method folders with the names the paper's table gives them (U-Net, GAN, DM = final sample, DM4ISL = DDPMavg).
BENCHMARK_ORGANELLES = {
    "Nuclear_envelope": "nuclear_envelope", "Nucleoli": "nucleoli", "DNA": "dna", "Actin_filaments": "actin",
    "Mitochondria": "mitochondria", "Microtubules": "microtubules",
}
BENCHMARK_STD = "DDPMstd"
BENCHMARK_METHODS = {UNET: "U-Net", GAN: "GAN", DDPM: "DM", DDPMAVG: "DM4ISL"}


def benchmark_organelle(folder: str | os.PathLike) -> str | None:
    """The organelle config name of a benchmark organelle folder (``<root>/DNA`` → ``dna``): a folder named as one of
    :data:`BENCHMARK_ORGANELLES` that holds a ``GT/`` folder; None for any other folder."""
    folder = Path(folder)
    name = BENCHMARK_ORGANELLES.get(folder.name)
    return name if name is not None and (folder / GT).is_dir() else None


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


def std_product(source: str) -> str:
    """Product name of an uncertainty map: ``intra`` → ``std_intra``, ``inter`` → ``std_inter``."""
    return f"{UNCERTAINTY_PREFIX}{source}"


def compared(products: Sequence[str]) -> list[str]:
    """Products scored against GT: every product except the inputs, the uncertainty maps and error masks."""
    return [p for p in products
            if p not in INPUT_PRODUCTS and not p.startswith(UNCERTAINTY_PREFIX) and p != ERROR_MASK]


def remove_stale_products(output_dir: str | os.PathLike, name: str, products: set[str]) -> list[Path]:
    """Delete the OME-TIFFs of input ``name`` in ``output_dir`` that belong to no product of ``products``.

    A rerun into the same folder with other settings (fewer seeds, no uncertainty source, no per-seed products)
    would otherwise leave an earlier run's ``std_inter``, ``error_mask`` or seed files beside the new products.
    Looks at ``<product>/<name>.ome.tiff`` and ``<product>_seeds/seed<k>/<name>.ome.tiff``; returns what it removed.
    """
    out = Path(output_dir)
    target = product_file(out, "_", name).name
    removed = []
    for path in [*out.glob(f"*/{target}"), *out.glob(f"*{SEEDS_SUFFIX}/*/{target}")]:
        product = path.parent.relative_to(out).as_posix()
        if product not in products:
            path.unlink()
            removed.append(path)
    if removed:
        log.info("%s: removed %d products of an earlier run with other settings: %s", name, len(removed),
                 ", ".join(p.parent.relative_to(out).as_posix() for p in removed))
    return removed


def write_products(
    output_dir: str | os.PathLike,
    name: str,
    images: Mapping[str, np.ndarray],
    voxel_size: Sequence[float] | None,
    metadata: Mapping[str, Any],
    organelle: str | None,
    product_key: str | None = None,
) -> list[Path]:
    """Write every product of one input: ``images[product]`` ``(Z, Y, X)`` → ``<output_dir>/<product>/<name>.ome.tiff``.

    Each file is written atomically, with the voxel size ``(Z, Y, X)`` µm, the channel name of :func:`channel_name`
    and ``metadata`` (plus ``{product_key: product}`` when ``product_key`` is given). Files of this input left by an
    earlier run for products not in ``images`` are removed first (:func:`remove_stale_products`). Returns the
    written paths.
    """
    remove_stale_products(output_dir, name, set(images))
    paths = []
    for product, array in images.items():
        path = product_file(output_dir, product, name)
        meta = {**metadata, product_key: product} if product_key else dict(metadata)
        write_tiff(path, array, voxel_size, metadata=meta,
                   channel_name=channel_name(product, organelle))
        paths.append(path)
    return paths
