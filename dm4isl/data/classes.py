"""Fluorescence patches of several organelles with class labels: one FOV datamodule per organelle, interleaved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from dm4isl.data.datamodule import PatchSetDataset, TrainingPosition, ZStackDataModule
from dm4isl.errors import DataError

#: Fewest classes a classifier can be trained on.
MIN_CLASSES = 2


def _plain(value: Any) -> Any:
    """OmegaConf containers → plain Python containers (resolved); other values unchanged."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) or OmegaConf.is_config(
        value
    ) else value


class LabelledDataset(Dataset):
    """Items of several datasets, one per class, each with its class index as ``label``.

    ``interleave`` (training): item ``i`` is item ``i // K`` of dataset ``i % K``, so every batch mixes the classes
    (the loaders do not shuffle: crops are already random and reproducible), and each dataset contributes as many
    items as the shortest one. Otherwise (validation, test) the datasets follow one another, all items kept.
    Every item gains ``label`` (int64 tensor) and ``index`` = its dataset's patch id · K + class index (unique: the
    training crops' ids are unique over the whole run); its ``name`` is prefixed with the class name.
    ``offset`` shifts every index (a run resumed mid-epoch starts where it stopped).
    """

    def __init__(
        self, datasets: Sequence[Dataset], class_names: Sequence[str], interleave: bool = False, offset: int = 0
    ) -> None:
        if len(datasets) != len(class_names) or not datasets:
            raise ValueError(f"{len(datasets)} datasets for {len(class_names)} classes; expected one per class")
        self.datasets = list(datasets)
        self.class_names = list(class_names)
        self.interleave = bool(interleave)
        self.offset = int(offset)
        self._starts = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        total = min(len(d) for d in self.datasets) * len(self.datasets) if self.interleave else int(self._starts[-1])
        return max(total - self.offset, 0)

    def locate(self, j: int) -> tuple[int, int]:
        """``(class index, item of that class's dataset)`` of overall item ``j`` (offset included)."""
        if self.interleave:
            return j % len(self.datasets), j // len(self.datasets)
        k = int(np.searchsorted(self._starts, j, side="right")) - 1
        return k, j - int(self._starts[k])

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(i) + self.offset
        k, item_index = self.locate(j)
        item = dict(self.datasets[k][item_index])
        item["label"] = torch.tensor(k, dtype=torch.int64)
        # unique over classes and, for training crops (whose ids count on over epochs), over the whole run
        item["index"] = torch.tensor(int(item.get("index", item_index)) * len(self.datasets) + k, dtype=torch.int64)
        item["name"] = f"{self.class_names[k]}/{item['name']}"
        return item


def labelled_arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """All items of a labelled dataset as fluorescence ``(N, Z, Y, X)`` float32 and class indices ``(N,)`` int64."""
    items = [dataset[i] for i in range(len(dataset))]
    fl = np.stack([item["fl"][0].numpy() for item in items]) if items else np.zeros((0, 0, 0, 0), np.float32)
    return fl, np.array([int(item["label"]) for item in items], dtype=np.int64)


class OrganelleClassesDataModule(TrainingPosition, L.LightningDataModule):
    """Fluorescence patches of every organelle in ``organelles`` with their class index, for a classifier.

    Each organelle gets its own FOV datamodule built from the ``datamodule`` config (any ``ZStackDataModule``:
    synthetic, manifest, patch folders) with that organelle's config, so windows, empty-patch filter, FOV split
    (saved per organelle beside ``split_file``: ``split_<organelle>.csv``), cached validation/test sets and
    augmentation are exactly those the generative models use. Classes are numbered in the order of
    ``organelles``. Batches are the FOV datamodules' dicts plus ``label`` ``(B,)`` int64; ``fl`` is
    ``(B, 1, Z, Y, X)`` in [0, 1]. A training epoch holds ``samples_per_epoch`` crops of every organelle,
    interleaved; validation and test hold every organelle's fixed patch set.

    ``patch_size`` ``(Z, Y, X)``, when given, is used for training and evaluation crops of every organelle (a
    classifier is applied to patches of one size).
    """

    def __init__(
        self,
        datamodule: Mapping[str, Any],
        organelles: Mapping[str, Mapping[str, Any]],
        patch_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.base = dict(_plain(datamodule))
        self.organelle_configs = {str(k): dict(_plain(v)) for k, v in _plain(organelles).items()}
        if len(self.organelle_configs) < MIN_CLASSES:
            raise ValueError(f"organelles {list(self.organelle_configs)}; a classifier needs at least {MIN_CLASSES}")
        self.class_names = list(self.organelle_configs)
        self.patch_size = [int(s) for s in _plain(patch_size)] if patch_size is not None else None
        self.modules: dict[str, ZStackDataModule] = {name: self._build(name) for name in self.class_names}
        first = self.modules[self.class_names[0]]
        self.batch_size, self.eval_batch_size = first.batch_size, first.eval_batch_size
        self._resume: dict[str, int] | None = None

    def _build(self, name: str) -> ZStackDataModule:
        """The FOV datamodule of organelle ``name``."""
        overrides: dict[str, Any] = {"organelle": self.organelle_configs[name]}
        split_file = self.base.get("split_file")
        if split_file:
            path = Path(split_file)
            overrides["split_file"] = str(path.with_name(f"{path.stem}_{name}{path.suffix}"))
        if self.patch_size is not None:
            overrides["patch_size"] = overrides["eval_patch_size"] = self.patch_size
        module = instantiate(self.base, **overrides, _convert_="all")
        if not isinstance(module, ZStackDataModule):
            raise DataError(f"datamodule config builds {type(module).__name__}; expected a ZStackDataModule")
        return module

    def setup(self, stage: str | None = None) -> None:
        for module in self.modules.values():
            module.setup(stage)

    def labelled(self, which: str) -> LabelledDataset:
        """The fixed validation (``val``) or test (``test``) patches of every organelle, labelled (after setup)."""
        sets = []
        for name, module in self.modules.items():
            patches = module.val_set if which == "val" else module.test_set
            if patches is None:
                raise DataError(f"{name}: no {which} split: set split_fractions.{which} > 0")
            sets.append(PatchSetDataset(patches))
        return LabelledDataset(sets, self.class_names)

    def train_dataloader(self) -> DataLoader:
        epoch = int(self.trainer.current_epoch) if self.trainer is not None else 0
        datasets = []
        for module in self.modules.values():
            module.trainer = self.trainer  # the epoch number of each organelle's crops
            datasets.append(module.train_dataloader().dataset)
        labelled = LabelledDataset(datasets, self.class_names, interleave=True, offset=self._resume_offset(epoch))
        return self._loader(labelled, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.labelled("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.labelled("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, ds: Dataset, batch_size: int) -> DataLoader:
        return self.modules[self.class_names[0]]._loader(ds, batch_size)

    @property
    def n_classes(self) -> int:
        """Number of classes (organelles)."""
        return len(self.class_names)
