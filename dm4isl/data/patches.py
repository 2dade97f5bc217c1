"""Patch sampling from (Z, Y, X) volumes: random crops, the empty-patch filter, flips/rot90, fixed evaluation sets."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dm4isl.errors import DataError

log = logging.getLogger(__name__)

#: Salts that separate the random streams of the training crops, the validation set and the test set.
SALT_TRAIN, SALT_VAL, SALT_TEST = 11, 22, 33


@dataclass
class Volume:
    """One field of view (or patch file) held in memory; arrays are ``(Z, Y, X)`` float32 in [0, 1]."""

    name: str
    bf: np.ndarray
    fl: np.ndarray
    mask: np.ndarray | None = None  # (Z, Y, X) uint8 planted-ambiguity mask, None when unknown

    def __post_init__(self) -> None:
        if self.bf.shape != self.fl.shape:
            raise DataError(f"{self.name}: brightfield shape {self.bf.shape} differs from fluorescence {self.fl.shape}")
        if self.bf.ndim != 3:
            raise DataError(f"{self.name}: expected (Z, Y, X) volumes, got shape {self.bf.shape}")


def min_slice_std(fl: np.ndarray) -> float:
    """Minimum over Z of the per-slice standard deviation of a ``(Z, Y, X)`` crop."""
    return float(fl.reshape(fl.shape[0], -1).std(axis=1).min())


def passes_filter(fl: np.ndarray, threshold: float) -> bool:
    """Empty-patch rule (SPEC §1): keep a ``(Z, Y, X)`` crop iff min over Z of per-slice std exceeds ``threshold``."""
    return min_slice_std(fl) > threshold


def crop_slices(corner: Sequence[int], size: Sequence[int]) -> tuple[slice, slice, slice]:
    """Slices of a ``(Z, Y, X)`` crop with the given corner and size."""
    return tuple(slice(int(c), int(c) + int(s)) for c, s in zip(corner, size, strict=True))  # type: ignore[return-value]


def center_crop(arrays: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Centre crop a stack ``(N, Z, Y, X)`` to ``(N, *size)``; raises ValueError when ``size`` exceeds the patch."""
    shape = arrays.shape[1:]
    if any(s > h for s, h in zip(size, shape, strict=True)):
        raise ValueError(f"crop {list(size)} (Z, Y, X) is larger than the patches {list(shape)}")
    starts = [(h - s) // 2 for s, h in zip(size, shape, strict=True)]
    return arrays[(slice(None), *crop_slices(starts, size))]


def random_corner(
    rng: np.random.Generator, shape: Sequence[int], size: Sequence[int], name: str = ""
) -> tuple[int, ...]:
    """Uniform random corner of a ``size`` crop inside a volume of ``shape`` (both (Z, Y, X))."""
    if any(s > d for s, d in zip(size, shape, strict=True)):
        raise DataError(
            f"{name}: volume of shape {tuple(shape)} (Z, Y, X) is smaller than the patch size {tuple(size)}"
        )
    return tuple(int(rng.integers(0, d - s + 1)) for s, d in zip(size, shape, strict=True))


def sample_crop(
    rng: np.random.Generator,
    volumes: Sequence[Volume],
    size: Sequence[int],
    threshold: float,
    max_tries: int,
) -> tuple[int, tuple[int, ...], bool]:
    """Draw a random crop that passes the empty-patch filter.

    Returns ``(volume index, corner (z, y, x), passed)``. After ``max_tries`` failures the crop with the largest
    minimum slice std among the tries is returned with ``passed=False``, so a batch is never empty.
    """
    best: tuple[float, int, tuple[int, ...]] | None = None
    for _ in range(max(1, max_tries)):
        vi = int(rng.integers(len(volumes)))
        vol = volumes[vi]
        corner = random_corner(rng, vol.fl.shape, size, vol.name)
        score = min_slice_std(vol.fl[crop_slices(corner, size)])
        if score > threshold:
            return vi, corner, True
        if best is None or score > best[0]:
            best = (score, vi, corner)
    assert best is not None
    return best[1], best[2], False


def augment_params(rng: np.random.Generator, probs: Mapping[str, float], square: bool) -> tuple[bool, bool, int]:
    """Draw (flip X, flip Y, number of XY quarter turns) with the given probabilities.

    Odd quarter turns need square Y/X; on non-square crops only the half turn is drawn.
    """
    flip_x = bool(rng.random() < probs.get("flip_x", 0.0))
    flip_y = bool(rng.random() < probs.get("flip_y", 0.0))
    k = 0
    if rng.random() < probs.get("rot90", 0.0):
        k = int(rng.integers(1, 4)) if square else 2
    return flip_x, flip_y, k


def apply_augment(arr: np.ndarray, flip_x: bool, flip_y: bool, k: int) -> np.ndarray:
    """Apply flips and ``k`` quarter turns in the Y/X plane to a ``(Z, Y, X)`` array (contiguous copy)."""
    if flip_x:
        arr = arr[:, :, ::-1]
    if flip_y:
        arr = arr[:, ::-1, :]
    if k:
        arr = np.rot90(arr, k=k, axes=(1, 2))
    return np.ascontiguousarray(arr)


@dataclass
class PatchSet:
    """A fixed set of crops (validation or test); arrays are ``(N, Z, Y, X)``."""

    bf: np.ndarray
    fl: np.ndarray
    mask: np.ndarray
    names: list[str]
    sources: list[str]
    corners: np.ndarray  # (N, 3) int64 corner (z, y, x) of each crop in its source volume

    def __len__(self) -> int:
        return len(self.names)


def fixed_patch_set(
    volumes: Sequence[Volume],
    n: int,
    size: Sequence[int],
    threshold: float,
    seed: int,
    salt: int,
    max_tries: int,
    prefix: str,
) -> PatchSet:
    """The first ``n`` crops passing the filter, drawn with a fixed seed (the paper's 128-patch test sets).

    A volume exactly the size of the patch (a patch folder) is used whole and keeps its own name. Draws stop after
    ``n * max_tries`` attempts; fewer crops are then returned with a warning, none at all is an error.
    """
    if not volumes:
        raise DataError(f"no volumes to draw the {prefix} patches from (is the {prefix} split empty?)")
    size = tuple(int(s) for s in size)
    if all(v.fl.shape == size for v in volumes):
        chosen = [(i, (0, 0, 0)) for i in range(len(volumes))][:n]
        names = [volumes[i].name for i, _ in chosen]
    else:
        rng = np.random.default_rng([int(seed), int(salt)])
        chosen = []
        for _ in range(max(1, n * max_tries)):
            if len(chosen) == n:
                break
            vi = int(rng.integers(len(volumes)))
            corner = random_corner(rng, volumes[vi].fl.shape, size, volumes[vi].name)
            if passes_filter(volumes[vi].fl[crop_slices(corner, size)], threshold):
                chosen.append((vi, corner))
        names = [f"{prefix}_{i:04d}" for i in range(len(chosen))]
    if not chosen:
        raise DataError(f"none of {n * max_tries} random {prefix} crops of size {size} passed the empty-patch filter")
    if len(chosen) < n:
        log.warning("only %d of %d %s crops passed the empty-patch filter", len(chosen), n, prefix)

    def stack(get) -> np.ndarray:
        return np.stack([get(volumes[vi])[crop_slices(c, size)] for vi, c in chosen]).astype(np.float32)

    def mask_of(v: Volume) -> np.ndarray:
        return v.mask if v.mask is not None else np.zeros(v.fl.shape, np.uint8)

    return PatchSet(
        bf=stack(lambda v: v.bf),
        fl=stack(lambda v: v.fl),
        mask=stack(mask_of).astype(np.uint8),
        names=names,
        sources=[volumes[vi].name for vi, _ in chosen],
        corners=np.asarray([c for _, c in chosen], dtype=np.int64).reshape(-1, 3),
    )
