"""LightningDataModules: FOV-level splits, filtered random crops for training, fixed cached validation/test sets."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dm4isl.data.allen import (
    MANIFEST_STYLES,
    FovRecord,
    ResampleSettings,
    prepare_fov,
    read_manifest,
)
from dm4isl.data.normalize import (
    INTENSITY_MODES,
    percentile_window,
    select_window,
    to_unit,
    unit_std_threshold,
    window_normalize,
)
from dm4isl.data.patches import (
    SALT_TEST,
    SALT_TRAIN,
    SALT_VAL,
    PatchSet,
    Volume,
    apply_augment,
    augment_params,
    crop_slices,
    fixed_patch_set,
    sample_crop,
)
from dm4isl.data.readers import read_patch_folder
from dm4isl.data.splits import load_or_make_split
from dm4isl.errors import DataError
from dm4isl.io.atomic import atomic_path

log = logging.getLogger(__name__)

#: Bump when the layout of cached evaluation sets changes.
EVAL_CACHE_VERSION = 1
#: How a manifest datamodule groups FOVs when splitting: each FOV alone, or all FOVs of a well together.
SPLIT_BY = ("fov", "well")


def _plain(value: Any) -> Any:
    """Hydra/OmegaConf containers → plain Python containers (checkpoints stay loadable with weights_only=True)."""
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _sample(bf: np.ndarray, fl: np.ndarray, mask: np.ndarray, index: int, name: str) -> dict[str, Any]:
    """One dataset item: ``(Z, Y, X)`` arrays → tensors ``(1, Z, Y, X)``."""
    return {
        "bf": torch.from_numpy(np.ascontiguousarray(bf, dtype=np.float32))[None],
        "fl": torch.from_numpy(np.ascontiguousarray(fl, dtype=np.float32))[None],
        "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
        "index": torch.tensor(index, dtype=torch.int64),
        "name": name,
    }


class RandomCropDataset(Dataset):
    """Training crops; item ``i`` of epoch ``e`` is fully determined by ``(seed, e, i)`` (reproducible, resumable).

    ``offset`` shifts every index (item ``i`` is crop ``i + offset``): a run resumed mid-epoch starts where it stopped
    while the loader keeps its full length (Lightning counts the batches already seen).
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        patch_size: Sequence[int],
        length: int,
        threshold: float,
        max_tries: int,
        augment: Mapping[str, float],
        seed: int,
        epoch: int = 0,
        offset: int = 0,
    ) -> None:
        if not volumes:
            raise DataError("the training split holds no volumes")
        self.volumes = list(volumes)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.length = int(length)
        self.threshold = float(threshold)
        self.max_tries = int(max_tries)
        self.augment = dict(augment)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.offset = int(offset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i) + self.offset
        rng = np.random.default_rng([self.seed, SALT_TRAIN, self.epoch, i])
        vi, corner, _ = sample_crop(rng, self.volumes, self.patch_size, self.threshold, self.max_tries)
        vol = self.volumes[vi]
        sl = crop_slices(corner, self.patch_size)
        mask = vol.mask[sl] if vol.mask is not None else np.zeros(self.patch_size, np.uint8)
        params = augment_params(rng, self.augment, square=self.patch_size[1] == self.patch_size[2])
        bf, fl, mask = (apply_augment(a, *params) for a in (vol.bf[sl], vol.fl[sl], mask))
        return _sample(bf, fl, mask, self.epoch * self.length + i, f"train_e{self.epoch}_{i}")


class PatchSetDataset(Dataset):
    """A fixed :class:`PatchSet` (validation or test); item ``i`` has stable patch id ``i``."""

    def __init__(self, patches: PatchSet) -> None:
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.patches
        return _sample(p.bf[i], p.fl[i], p.mask[i], int(i), p.names[i])


def save_patch_set(path: Path, patches: PatchSet) -> None:
    """Write a patch set as an uncompressed ``.npz`` atomically (arrays ``(N, Z, Y, X)``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                bf=patches.bf,
                fl=patches.fl,
                mask=patches.mask,
                names=np.asarray(patches.names),
                sources=np.asarray(patches.sources),
                corners=patches.corners,
            )


def load_patch_set(path: Path) -> PatchSet:
    """Read a patch set written by :func:`save_patch_set`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return PatchSet(
                bf=z["bf"],
                fl=z["fl"],
                mask=z["mask"],
                names=[str(s) for s in z["names"]],
                sources=[str(s) for s in z["sources"]],
                corners=z["corners"],
            )
    except (OSError, KeyError, ValueError) as err:
        raise DataError(f"{path}: corrupt cached patch set ({err}); delete it to rebuild") from err


class TrainingPosition:
    """Exact mid-epoch resume for a LightningDataModule: its training position travels in the checkpoint.

    The host class sets ``self._resume = None`` and ``self.batch_size``; its training loader skips
    :meth:`_resume_offset` crops of the resumed epoch.
    """

    _resume: dict[str, int] | None
    batch_size: int

    def state_dict(self) -> dict[str, int]:
        """Training position (saved in checkpoints): epoch and batches of it already trained on."""
        if self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(self.trainer.current_epoch), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Remember the checkpoint's position: the next training loader of that epoch skips the batches done."""
        self._resume = dict(state_dict) or None

    def _resume_offset(self, epoch: int) -> int:
        """Crops to skip in ``epoch`` after a mid-epoch resume (all ranks together), then forget the position."""
        resume, self._resume = self._resume, None
        if not resume or int(resume["epoch"]) != epoch:
            return 0
        world = int(self.trainer.world_size) if self.trainer is not None else 1
        return int(resume["batches_done"]) * self.batch_size * world


class ZStackDataModule(TrainingPosition, L.LightningDataModule):
    """Shared logic: load volumes, split them by FOV, serve training crops and fixed, cached evaluation sets.

    Subclasses implement :meth:`load_volumes`. Batches are dicts with ``bf``, ``fl``, ``mask`` of shape
    ``(B, 1, Z, Y, X)`` (float32, [0, 1]), ``index`` ``(B,)`` stable patch ids and ``name`` (list of str).
    """

    def __init__(
        self,
        organelle: Mapping[str, Any],
        patch_size: Sequence[int] = (16, 64, 64),
        samples_per_epoch: int = 256,
        n_val_patches: int = 16,
        n_test_patches: int = 128,
        eval_patch_size: Sequence[int] | None = None,
        val_patch_size: Sequence[int] | None = None,
        filter_max_tries: int = 50,
        augment: Mapping[str, float] | None = None,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        split_fractions: Mapping[str, float] | None = None,
        split_seed: int = 0,
        split_file: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.organelle = dict(_plain(organelle))
        self.patch_size = [int(s) for s in _plain(patch_size)]
        self.eval_patch_size = [int(s) for s in _plain(eval_patch_size or patch_size)]
        #: Validation crops (default: ``eval_patch_size``); smaller ones make each validation cheaper.
        self.val_patch_size = [int(s) for s in _plain(val_patch_size or self.eval_patch_size)]
        self.samples_per_epoch = int(samples_per_epoch)
        self.n_val_patches = int(n_val_patches)
        self.n_test_patches = int(n_test_patches)
        self.filter_max_tries = int(filter_max_tries)
        self.augment = dict(_plain(augment) or {})
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.split_fractions = dict(_plain(split_fractions) or {"val": 0.1, "test": 0.1})
        self.split_seed = int(split_seed)
        self.split_file = Path(split_file) if split_file else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        #: Empty-patch threshold in [0, 1] units; None until the FL window is known (percentile windows: setup).
        self.threshold: float | None = (
            unit_std_threshold(self.organelle["std_th"], self.organelle["fl_window"])
            if self.organelle.get("fl_window") is not None
            else None
        )
        self.volumes: dict[str, list[Volume]] = {}
        self.val_set: PatchSet | None = None
        self.test_set: PatchSet | None = None
        self._resume: dict[str, int] | None = None

    # -- to implement -------------------------------------------------------------------------------------------
    def load_volumes(self) -> list[Volume]:
        """All volumes of the dataset, each with a unique ``name`` (its FOV id)."""
        raise NotImplementedError

    def cache_key(self) -> dict[str, Any]:
        """What identifies the dataset content for the evaluation-set cache (subclasses add their parameters)."""
        return {"organelle": self.organelle["name"], "fl_window": list(self.organelle["fl_window"])}

    def make_split(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Train/val/test FOV names: the saved ``split_file`` if there is one, else a new split saved there."""
        return load_or_make_split(list(names), self.split_fractions, self.split_seed, self.split_file)

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.volumes:
            return
        volumes = self.load_volumes()
        by_name = {v.name: v for v in volumes}
        if len(by_name) != len(volumes):
            raise DataError("volume names (FOV ids) must be unique")
        split = self.make_split(list(by_name))
        self.split = split
        self.volumes = {k: [by_name[n] for n in split[k]] for k in ("train", "val", "test")}
        self.val_set = self._eval_set("val", self.n_val_patches, SALT_VAL) if self.volumes["val"] else None
        self.test_set = self._eval_set("test", self.n_test_patches, SALT_TEST) if self.volumes["test"] else None
        log.info(
            "split: %d train / %d val / %d test FOVs; %s val and %s test patches",
            *(len(self.volumes[k]) for k in ("train", "val", "test")),
            len(self.val_set) if self.val_set else 0,
            len(self.test_set) if self.test_set else 0,
        )

    def _eval_set(self, which: str, n: int, salt: int) -> PatchSet:
        vols = self.volumes[which]
        size = self.val_patch_size if which == "val" else self.eval_patch_size

        def build() -> PatchSet:
            return fixed_patch_set(vols, n, size, self.threshold, self.seed, salt, self.filter_max_tries, which)

        if self.cache_dir is None:
            return build()
        digest = hashlib.sha256()
        for v in vols:
            digest.update(v.name.encode())
            digest.update(np.ascontiguousarray(v.fl).tobytes())
            digest.update(np.ascontiguousarray(v.bf).tobytes())
        key = {
            **self.cache_key(),
            "which": which,
            "n": n,
            "size": size,
            "seed": self.seed,
            "salt": salt,
            "tries": self.filter_max_tries,
            "threshold": self.threshold,
            "content": digest.hexdigest(),
            "version": EVAL_CACHE_VERSION,
        }
        tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / "eval_sets" / f"{self.organelle['name']}-{which}-{tag}.npz"
        if path.is_file():
            return load_patch_set(path)
        patches = build()
        save_patch_set(path, patches)
        return patches

    def train_dataloader(self) -> DataLoader:
        epoch = int(self.trainer.current_epoch) if self.trainer is not None else 0
        ds = RandomCropDataset(
            self.volumes["train"],
            self.patch_size,
            self.samples_per_epoch,
            self.threshold,
            self.filter_max_tries,
            self.augment,
            self.seed,
            epoch,
            self._resume_offset(epoch),
        )
        return self._loader(ds, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            raise DataError("no validation split: set data.split_fractions.val > 0")
        return self._loader(PatchSetDataset(self.val_set), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise DataError("no test split: set data.split_fractions.test > 0")
        return self._loader(PatchSetDataset(self.test_set), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, ds: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=False,
            pin_memory=False,
        )


class SyntheticDataModule(ZStackDataModule):
    """The embedded synthetic z-stacks (:mod:`dm4isl.data.synthetic`), generated once and cached on disk."""

    def __init__(
        self,
        organelle: Mapping[str, Any],
        n_fovs: int = 16,
        fov_shape: Sequence[int] = (32, 128, 128),
        ambiguous_fraction: float = 0.15,
        fl_gain_range: Sequence[float] | None = None,
        fl_background_range: Sequence[float] | None = None,
        generator: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(organelle, **kwargs)
        from dm4isl.data.synthetic import FL_BACKGROUND_RANGE, FL_GAIN_RANGE, GeneratorSettings

        self.n_fovs = int(n_fovs)
        self.fov_shape = [int(s) for s in _plain(fov_shape)]
        self.ambiguous_fraction = float(ambiguous_fraction)
        #: FOV-to-FOV variation of the fluorescence (:func:`dm4isl.data.synthetic.generate_fov`); None: none.
        self.fl_gain_range = [float(v) for v in _plain(fl_gain_range or FL_GAIN_RANGE)]
        self.fl_background_range = [float(v) for v in _plain(fl_background_range or FL_BACKGROUND_RANGE)]
        #: The imaging model (:class:`dm4isl.data.synthetic.GeneratorSettings`): ``data.generator`` in the config.
        self.generator = GeneratorSettings.from_config(_plain(generator))

    def cache_key(self) -> dict[str, Any]:
        return {**super().cache_key(), "kind": "synthetic", "n_fovs": self.n_fovs, "fov_shape": self.fov_shape,
                "generator": self.generator.as_dict()}

    def load_volumes(self) -> list[Volume]:
        from dm4isl.data.synthetic import load_fov, synthetic_dataset

        org = self.organelle
        cache = self.cache_dir if self.cache_dir is not None else Path(".cache") / "dm4isl"
        paths = synthetic_dataset(
            org["name"],
            self.n_fovs,
            self.fov_shape,
            self.seed,
            bf_window=tuple(org["bf_window"]),
            fl_window=tuple(org["fl_window"]),
            ambiguous_fraction=self.ambiguous_fraction,
            cache_dir=cache / "synthetic",
            fl_gain_range=self.fl_gain_range,
            fl_background_range=self.fl_background_range,
            settings=self.generator,
        )
        volumes = []
        for k, path in enumerate(paths):
            fov = load_fov(path)
            volumes.append(
                Volume(
                    name=f"synthetic_{org['name']}_{k:03d}",
                    bf=to_unit(fov.bf, path, org["bf_window"]),
                    fl=to_unit(fov.fl, path, org["fl_window"]),
                    mask=fov.ambiguous.astype(np.uint8),
                )
            )
        return volumes


class PatchFolderDataModule(ZStackDataModule):
    """Patch folders in the reference layout ``root/BF/<i>.tiff`` + ``root/GT/<i>.tiff``; each file is its own FOV.

    ``intensity``: ``auto`` (uint8 → /255, float kept in [0, 1], other integers → organelle windows), ``unit``
    (never use windows) or ``window`` (always use the organelle's BF/FL windows).
    """

    def __init__(
        self,
        organelle: Mapping[str, Any],
        root: str | os.PathLike,
        bf_dir: str = "BF",
        gt_dir: str = "GT",
        intensity: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(organelle, **kwargs)
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be auto, unit or window, got {intensity!r}")
        self.root = Path(root)
        self.bf_dir, self.gt_dir, self.intensity = bf_dir, gt_dir, intensity

    def cache_key(self) -> dict[str, Any]:
        return {**super().cache_key(), "kind": "patch_folder", "root": str(self.root.resolve())}

    def load_volumes(self) -> list[Volume]:
        pairs = read_patch_folder(self.root, self.bf_dir, self.gt_dir)
        org = self.organelle
        volumes = []
        for pair in pairs:
            bf_raw, fl_raw = pair.read_raw()
            bf_win = select_window(bf_raw, org["bf_window"], self.intensity)
            fl_win = select_window(fl_raw, org["fl_window"], self.intensity)
            volumes.append(
                Volume(pair.name, to_unit(bf_raw, pair.bf_path, bf_win), to_unit(fl_raw, pair.gt_path, fl_win))
            )
        return volumes


class ManifestDataModule(ZStackDataModule):
    """Multi-channel FOVs listed in a manifest CSV: the Allen Cell ``metadata.csv`` or a plain CSV of own files.

    Each FOV's brightfield and organelle channel are read (:func:`dm4isl.data.allen.read_channels`), resampled in
    XY, cached in raw units under ``cache_dir/allen/fovs`` and normalised with the organelle's windows. A window
    given as null (``organelle=custom``) is computed once from the training FOVs at ``percentiles`` and kept in
    :attr:`fitted_windows` (the provenance callback stores it in every checkpoint). ``split_by="well"`` keeps all
    FOVs of a well in one split.
    """

    def __init__(
        self,
        organelle: Mapping[str, Any],
        manifest: str | os.PathLike,
        data_root: str | os.PathLike | None = None,
        style: str = "allen",
        columns: Mapping[str, str] | None = None,
        channel_base: int = 0,
        axes: str | None = None,
        xy_size: Sequence[int] | None = None,
        xy_factor: float | Sequence[float] | None = None,
        xy_method: str = "nearest",
        split_by: str = "fov",
        percentiles: Sequence[float] = (0.1, 99.9),
        **kwargs: Any,
    ) -> None:
        super().__init__(organelle, **kwargs)
        if split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
        if style not in MANIFEST_STYLES:
            raise ValueError(f"style must be one of {MANIFEST_STYLES}, got {style!r}")
        self.manifest = Path(manifest)
        self.data_root = Path(data_root) if data_root else None
        self.style = style
        self.columns = dict(_plain(columns) or {})
        self.channel_base = int(channel_base)
        self.axes = axes
        self.resample = ResampleSettings.from_config(_plain(xy_size), _plain(xy_factor), xy_method)
        self.split_by = split_by
        self.percentiles = [float(p) for p in _plain(percentiles)]
        self.fitted_windows: dict[str, list[float]] = {}
        self._records: list[FovRecord] | None = None
        self._split: dict[str, list[str]] | None = None

    def cache_key(self) -> dict[str, Any]:
        return {
            **super().cache_key(),
            "kind": "manifest",
            "manifest": str(self.manifest.resolve()),
            "bf_window": list(self.organelle["bf_window"]),
            "resample": [self.resample.size, self.resample.factor, self.resample.method],
        }

    def records(self) -> list[FovRecord]:
        """The manifest's FOVs for this organelle (read once)."""
        if self._records is None:
            self._records = read_manifest(
                self.manifest, self.organelle, self.style, self.columns, self.data_root, self.channel_base
            )
        return self._records

    def make_split(self, names: Sequence[str]) -> dict[str, list[str]]:
        if self._split is not None:
            return self._split
        groups = None
        if self.split_by == "well":
            wells = {r.fov_id: r.well_id for r in self.records()}
            missing = [n for n in names if not wells.get(n)]
            if missing:
                raise DataError(f"{self.manifest}: split_by=well but FOVs {missing[:5]} have no well id")
            groups = [str(wells[n]) for n in names]
        self._split = load_or_make_split(list(names), self.split_fractions, self.split_seed, self.split_file, groups)
        return self._split

    def prepare_raw(self, progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Read (or load from the cache) every FOV's raw, XY-resampled ``(Z, Y, X)`` brightfield and fluorescence."""
        fov_cache = self.cache_dir / "allen" if self.cache_dir is not None else None
        records = self.records()
        return {
            r.fov_id: prepare_fov(r, self.resample, self.axes, fov_cache)
            for r in tqdm(records, desc=f"FOVs ({self.organelle['name']})", unit="fov", disable=not progress or None)
        }

    def load_volumes(self) -> list[Volume]:
        raw = self.prepare_raw()
        split = self.make_split(list(raw))
        for key, channel in (("bf_window", 0), ("fl_window", 1)):
            if self.organelle.get(key) is None:
                window = percentile_window([raw[n][channel] for n in split["train"]], self.percentiles)
                self.fitted_windows[key] = [float(w) for w in window]
                log.info("%s from the %d training FOVs at percentiles %s: %s", key, len(split["train"]),
                         self.percentiles, window)
        self.organelle.update(self.fitted_windows)
        self.threshold = unit_std_threshold(self.organelle["std_th"], self.organelle["fl_window"])
        bf_win, fl_win = self.organelle["bf_window"], self.organelle["fl_window"]
        volumes = []
        for name in list(raw):  # pop each raw FOV as it is normalised: raw and float32 copies never all coexist
            bf, fl = raw.pop(name)
            volumes.append(Volume(name, window_normalize(bf, bf_win), window_normalize(fl, fl_win)))
        return volumes
