"""The places the paper's data are published, each read from small synthetic files in its layout (docs/data.md):
the hiPSC single-cell image dataset's metadata.csv and the label-free imaging collection's structure folders.
(``aics/pipeline_integrated_cell`` is tests/test_allen.py's layout; the BioImage Archive benchmark is
tests/test_benchmark_layout.py's.)"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from test_allen import CH_BF, CH_DNA, CH_MEMBRANE, CH_STRUCT, fov_channels, organelle, write_fov

from dm4isl.data.allen import (
    COLLECTION_CHANNELS,
    collection_manifest,
    read_channels,
    read_manifest,
    write_collection_manifest,
)
from dm4isl.errors import DataError

#: (Z, Y, X) of the small synthetic FOVs.
FOV_SHAPE = (18, 48, 72)


def test_hipsc_single_cell_dataset_metadata(tmp_path: Path, compose_cfg) -> None:
    """aics/hipsc_single_cell_image_dataset: one row per cell, the FOV in ``fov_path``, the gene in
    ``structure_name``; ``data=hipsc`` reads it with the ``data=allen`` reader."""
    root = tmp_path / "hipsc"
    rows = []
    for fov_id, gene in ((501, "LMNB1"), (502, "LMNB1"), (503, "TOMM20")):
        rel = f"fov_path/{fov_id:032x}.ome.tiff"
        write_fov(root / rel, fov_channels(fov_id), "CZYX")
        for cell in range(3):
            rows.append({"CellId": fov_id * 10 + cell, "structure_name": gene, "FOVId": fov_id, "WellId": 7,
                         "fov_path": rel, "ChannelNumberBrightfield": CH_BF, "ChannelNumberStruct": CH_STRUCT,
                         "ChannelNumber405": CH_DNA, "ChannelNumber638": CH_MEMBRANE, "scale_micron": "[0.108]"})
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = compose_cfg("train", ["data=hipsc", f"data.manifest={root / 'metadata.csv'}"])
    assert dict(cfg.data.columns) == {"path": "fov_path", "gene": "structure_name"} and cfg.data.style == "allen"
    for name, ids, fl in (("nuclear_envelope", ["501", "502"], CH_STRUCT), ("dna", ["503"], CH_DNA)):
        records = read_manifest(cfg.data.manifest, organelle(name), cfg.data.style, dict(cfg.data.columns))
        assert [r.fov_id for r in records] == ids and records[0].fl_channel == fl and records[0].bf_channel == CH_BF
        bf, fluo = read_channels(records[0].path, [records[0].bf_channel, records[0].fl_channel])
        np.testing.assert_array_equal(bf, fov_channels(int(ids[0]))[CH_BF])
        np.testing.assert_array_equal(fluo, fov_channels(int(ids[0]))[fl])


def test_label_free_imaging_collection_folders(tmp_path: Path) -> None:
    """aics/label-free-imaging-collection: per structure a folder of (C, Z, Y, X) FOVs, brightfield in channel 0,
    DNA in 1, the structure in 3 (as the authors' loader reads them); a plain manifest is written from the folder."""
    root = tmp_path / "collection"

    def stack(seed: int) -> np.ndarray:  # (C, Z, Y, X): brightfield, DNA, membrane, structure
        c = fov_channels(seed)
        return c[[CH_BF, CH_DNA, CH_MEMBRANE, CH_STRUCT]]

    for name, seeds in (("Nuclear-envelope", (1, 2, 10)), ("Mitochondria", (3,))):
        for seed in seeds:
            write_fov(root / name / f"fov{seed}.tif", stack(seed), "CZYX")
    assert COLLECTION_CHANNELS == {"bf": 0, "dna": 1, "structure": 3}
    csv_path = write_collection_manifest(root, organelle("nuclear_envelope"))
    records = read_manifest(csv_path, organelle("nuclear_envelope"), style="plain")
    assert [r.fov_id for r in records] == ["fov1", "fov10", "fov2"]  # sorted by FOV id
    assert (records[0].bf_channel, records[0].fl_channel) == (0, 3)
    bf, fluo = read_channels(records[0].path, [records[0].bf_channel, records[0].fl_channel])
    np.testing.assert_array_equal(bf, fov_channels(1)[CH_BF])
    np.testing.assert_array_equal(fluo, fov_channels(1)[CH_STRUCT])
    dna = collection_manifest(root, organelle("dna"))
    assert dna == [{"path": "Mitochondria/fov3.tif", "bf_channel": 0, "fl_channel": 1, "fov_id": "fov3"}]
    with pytest.raises(DataError, match="Actin-filaments: no FOV images"):
        collection_manifest(root, organelle("actin"))
    with pytest.raises(DataError, match="no folder in the label-free imaging collection"):
        collection_manifest(root, {"name": "custom"})
