"""Embedded synthetic hiPSC-colony z-stacks: brightfield + one fluorescent organelle in raw grey levels, cached."""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from dm4isl.errors import DataError
from dm4isl.io.atomic import atomic_path

ORGANELLES = ("dna", "mitochondria", "nuclear_envelope", "nucleoli", "actin", "microtubules")

#: Bump whenever the generated images change: it is part of the cache key.
GENERATOR_VERSION = 1
UINT16_MAX = 65535
#: Smallest volume the scene model supports, (Z, Y, X).
MIN_SHAPE_ZYX = (4, 16, 16)

# --- Scene geometry (pixels of ≈ 0.29 µm; the Allen FOVs after XY resampling, SPEC §1) -------------------------
#: Random displacement of cell centres from a hexagonal lattice, as a fraction of the spacing.
CELL_JITTER = 0.3
#: Fraction of the FOV area covered by the colony; the rest is empty coverslip.
COLONY_COVERAGE = 0.9
#: Smoothing of the random field whose upper quantile defines the colony outline.
COLONY_SMOOTH_PX = 24.0
#: Tallest cell layer (≈ 13 µm); thinner volumes are filled by the layer entirely.
CELL_HEIGHT_MAX_PX = 44.0
#: Each cell's height as a fraction of the layer height.
CELL_HEIGHT_RANGE = (0.88, 1.0)
#: Nucleus XY semi-axes as a fraction of the radius of the circle inscribed in the cell (no nucleus crosses a cell).
NUCLEUS_XY_FRACTION = (0.72, 0.9)
#: Nucleus Z semi-axis as a fraction of the cell's height.
NUCLEUS_Z_FRACTION = (0.36, 0.46)
#: Nucleus centre height as a fraction of the cell's height (hiPSC nuclei sit slightly below the middle).
NUCLEUS_Z_CENTRE = (0.44, 0.54)
#: Half-width (Gaussian sigma) of a cell membrane and of the nuclear envelope.
MEMBRANE_SIGMA_PX = 0.8
ENVELOPE_SIGMA_PX = 0.8
NUCLEOLI_PER_NUCLEUS = (2, 5)
NUCLEOLUS_RADIUS_PX = (2.2, 4.2)
#: Nucleoli lie within this normalised radius of their nucleus.
NUCLEOLUS_MAX_R = 0.55
#: Elongation of nucleoli along Z (the PSF is not involved: nucleoli are slightly taller than wide).
NUCLEOLUS_Z_STRETCH = 1.3
#: Nucleolus profile ``exp(-SHARPNESS · q · (1 + IRREGULARITY · texture))`` of the normalised radius² ``q``.
NUCLEOLUS_SHARPNESS = 1.5
NUCLEOLUS_IRREGULARITY = 0.3
#: Half-size of the box a nucleolus is drawn in, in nucleolus radii.
NUCLEOLUS_BOX_RADII = 2.5
#: Correlation length of the chromatin / cortex texture.
TEXTURE_SIGMA_PX = 1.3
#: Gaussian profiles are drawn out to this many sigmas.
GAUSS_TAIL_SIGMAS = 3.0

# --- Ambiguous (planted) structures ------------------------------------------------------------------------------
#: Kinds of planted structures: FL absent although BF shows it; FL present although BF does not show it.
AMBIGUOUS_KINDS = ("unlabelled", "hidden")

# --- Fluorescence ------------------------------------------------------------------------------------------------
#: Camera offset + autofluorescence, as a fraction of the FL window above its low end.
FL_BACKGROUND = 0.03
#: Cell-to-cell variation of the expression level (multiplicative range).
EXPRESSION_RANGE = (0.7, 1.15)
#: Default FOV-to-FOV variation of the fluorescence (none): gain on the organelle signal, drawn log-uniformly in this
#: range, and background level (FL-window units), drawn uniformly. Widening them (staining and illumination differ
#: between real FOVs) keeps the organelles from being told apart by a patch's mean and std alone.
FL_GAIN_RANGE = (1.0, 1.0)
FL_BACKGROUND_RANGE = (FL_BACKGROUND, FL_BACKGROUND)

# --- Brightfield -------------------------------------------------------------------------------------------------
#: Relative refractive-index contrasts of the scene's parts (cytoplasm = 1).
RI_CYTOPLASM = 1.0
RI_MEMBRANE = 0.9
RI_NUCLEUS = 0.3
RI_ENVELOPE = 0.8
RI_CHROMATIN = 0.15
RI_NUCLEOLUS = 1.2
#: Blur of the index map before imaging (Gaussian sigma (Z, Y, X)) and the wider blur seen far from focus.
BF_BLUR_ZYX = (1.2, 1.0, 1.0)
BF_DEFOCUS_BLUR_ZYX = (2.0, 2.6, 2.6)
#: Contrast of the defocus (Laplacian) terms.
BF_DEFOCUS_GAIN = 0.8
BF_FAR_DEFOCUS_GAIN = 2.0
#: Focal plane offset from the layer centre (fraction of the layer height, uniform ±).
BF_FOCUS_JITTER = 0.05


# --- Planted ambiguities (occluded brightfield) ------------------------------------------------------------------
#: Values of the planted-structure mask: a surprise (``unlabelled`` / ``hidden``: FL and BF disagree, but the BF looks
#: like any other cell's, so nothing in it says where) and an ambiguity (the BF over the structure is occluded: it
#: carries no information there, so the posterior over the FL is genuinely spread).
MASK_SURPRISE = 1
MASK_AMBIGUITY = 2


@dataclass(frozen=True)
class GeneratorSettings:
    """Knobs of the synthetic imaging model that were calibrated against real patches.

    The defaults are the calibrated generator (``scripts/synthetic_realism.py`` compares its patches with the real
    nuclear-envelope patches; docs/data.md gives the table); :meth:`legacy` gives the first generator byte for byte.
    Intensities are in units of the organelle's normalisation window; lengths in pixels, ``(Z, Y, X)`` where a triple.
    """

    #: Mean distance between neighbouring cell centres (≈ 15 µm: hiPSC nuclei of ≈ 12 µm fill most of a cell).
    cell_spacing_px: float = 54.0
    #: Range of a FOV's mean brightfield level in the BF window (uniform: exposure and lamp differ between FOVs).
    bf_level_range: tuple[float, float] = (0.12, 0.70)
    #: Peak-to-peak XY illumination gradient and corner vignetting of the brightfield (relative to the mean).
    bf_gradient: float = 0.02
    bf_vignetting: float = 0.01
    #: Gain on the phase (defocus and in-focus) contrast of the brightfield.
    bf_contrast: float = 1.0
    #: Contrast of the axial-derivative term (tops and bottoms of cells and nuclei).
    bf_axial_gain: float = 0.05
    #: Distance from focus (fraction of the layer height) over which the defocus contrast saturates.
    bf_defocus_scale: float = 1.0
    #: Contrast of the in-focus phase term (visible in every slice; the defocus terms vanish at focus).
    bf_infocus_gain: float = 0.06
    #: Granules of the cells (small phase objects; band-pass texture): contrast (relative std) and smoothing (Z, Y, X).
    bf_granule_gain: float = 0.068
    bf_granule_sigma_zyx: tuple[float, float, float] = (1.2, 1.7, 1.7)
    #: Granule contrast inside nuclei relative to the cytoplasm (nucleoplasm looks smoother).
    bf_nucleus_granules: float = 0.4
    #: Light a nucleus absorbs relative to the cytoplasm (nuclei look this much darker in every slice).
    bf_nucleus_absorption: float = 0.01
    #: Brightfield camera noise relative to the mean level: read noise (std) and shot noise (std at the level).
    bf_read_noise: float = 0.018
    bf_shot_noise: float = 0.004
    #: Gain on the organelle's fluorescence signal (1: the organelle's own gain).
    fl_contrast: float = 0.94
    #: Fluorescence level added inside cells (autofluorescence), on top of the FOV's background.
    fl_offset: float = 0.06
    #: Anisotropic point-spread function of the fluorescence (Gaussian sigma).
    fl_psf_sigma_zyx: tuple[float, float, float] = (2.0, 0.4, 0.4)
    #: Out-of-focus haze: this fraction of the signal is blurred further by ``fl_haze_sigma_zyx`` (total preserved).
    fl_haze: float = 0.2
    fl_haze_sigma_zyx: tuple[float, float, float] = (3.0, 3.0, 3.0)
    #: Patchiness of the labelled structure: signal × (1 + fl_texture · n), n smooth unit noise of
    #: ``fl_texture_sigma_zyx`` (clipped at 0).
    fl_texture: float = 0.6
    fl_texture_sigma_zyx: tuple[float, float, float] = (1.0, 0.7, 0.7)
    #: Fluorescence camera noise: read noise (std) and shot-noise variance per unit signal.
    fl_read_noise: float = 0.003
    fl_shot_noise: float = 0.0035
    #: Voxel-to-voxel fluctuation of the signal above the background (relative std; sub-resolution labelling density).
    fl_speckle: float = 0.1
    #: Margin around a planted nucleus / cell that its mask covers (the blur and haze of a change there reach this far).
    planted_margin_zyx: tuple[float, float, float] = (6.0, 5.0, 5.0)
    planted_cell_margin_zyx: tuple[int, int, int] = (3, 3, 3)
    #: Fraction of the cells whose brightfield is occluded by debris (planted ambiguities, mask value 2).
    occluded_fraction: float = 0.10
    #: Margin of an occluder around the planted nucleus / cell footprint and width of its soft edge.
    occluder_margin_px: float = 3.0
    occluder_edge_px: float = 2.0
    #: Debris seen through the occluder (band-pass texture): relative contrast and smoothing (Z, Y, X).
    debris_contrast: float = 0.08
    debris_sigma_zyx: tuple[float, float, float] = (3.0, 1.5, 1.5)
    #: Light the debris absorbs (the occluded region is this much darker).
    debris_absorption: float = 0.03

    @classmethod
    def legacy(cls) -> GeneratorSettings:
        """The first generator (before calibration): small cells, one brightfield level, no occluded cells."""
        return cls(
            cell_spacing_px=30.0,
            bf_level_range=(0.45, 0.45),
            bf_gradient=0.08,
            bf_vignetting=0.05,
            bf_axial_gain=0.15,
            bf_defocus_scale=0.3,
            bf_infocus_gain=0.015,
            bf_granule_gain=0.0,
            bf_nucleus_absorption=0.0,
            bf_read_noise=0.002,
            fl_contrast=1.0,
            fl_offset=0.0,
            fl_psf_sigma_zyx=(1.6, 0.8, 0.8),
            fl_haze=0.0,
            fl_texture=0.0,
            fl_read_noise=0.005,
            fl_shot_noise=0.002,
            fl_speckle=0.0,
            planted_margin_zyx=(4.0, 3.0, 3.0),
            planted_cell_margin_zyx=(3, 2, 2),
            occluded_fraction=0.0,
        )

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> GeneratorSettings:
        """Settings from a config mapping (lists become tuples); ``None`` or ``{}``: the defaults."""
        values = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in (config or {}).items()}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown synthetic generator settings {unknown}; expected some of "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists), as written into the FOV metadata and the cache key."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class _Style:
    """How one organelle looks: its compartment, brightness and its own visibility in brightfield."""

    compartment: str  # "nucleus" (planted structures = the nucleus) or "cell" (= the whole cell)
    gain: float  # FL-window units per unit of rendered signal (after the PSF)
    ri: float  # refractive contrast of the organelle's own structures in BF


_STYLES: dict[str, _Style] = {
    "dna": _Style("nucleus", gain=0.62, ri=0.0),
    "nuclear_envelope": _Style("nucleus", gain=1.1, ri=0.0),
    "nucleoli": _Style("nucleus", gain=1.0, ri=0.0),
    "mitochondria": _Style("cell", gain=1.2, ri=0.6),
    "actin": _Style("cell", gain=0.9, ri=0.15),
    "microtubules": _Style("cell", gain=0.9, ri=0.08),
}

# Organelle-specific rendering constants (relative signal units before the gain).
DNA_TEXTURE = 0.3
DNA_PERIPHERY = 0.25
DNA_NUCLEOLUS_EXCLUSION = 0.7
ENVELOPE_NUCLEOPLASM = 0.06
NUCLEOLI_NUCLEOPLASM = 0.15
MITO_DIFFUSE = 0.15
MITO_DENSITY = 0.03  # tubule starts per cytoplasm voxel
MITO_STEPS = (8, 26)
MITO_PERSISTENCE = 0.6
MITO_WEIGHT = 0.45
ACTIN_CORTEX = 0.55
ACTIN_CORTEX_TEXTURE = 0.35
ACTIN_BASAL_SHEET_PX = 1.5
ACTIN_DIFFUSE = 0.08
ACTIN_FIBRES_PER_CELL = (3, 7)
#: Height of stress fibres as a fraction of the basal sheet.
ACTIN_FIBRE_Z_RANGE = (0.2, 1.0)
ACTIN_FIBRE_STEPS = 60
ACTIN_FIBRE_PERSISTENCE = 0.97
ACTIN_FIBRE_WEIGHT = 1.2
MT_DIFFUSE = 0.3
MT_FILAMENTS_PER_CELL = (25, 45)
MT_STEPS = 90
MT_PERSISTENCE = 0.95
MT_WEIGHT = 1.5
#: Filament-to-filament brightness variation (multiplicative range).
MT_WEIGHT_RANGE = (0.6, 1.0)
MT_CENTROSOME = 1.5
MT_CENTROSOME_SIGMA_PX = 1.2
MT_CENTROSOME_GAP_PX = 2.0
MT_CENTROSOME_TRIES = 8
#: Filaments start this far (pixels) from the centrosome, pointing away from it.
MT_START_RADIUS_PX = (1.0, 3.0)
#: Step of rasterised random walks (pixels): below 1 so that filaments have no gaps.
WALK_STEP_PX = 0.7
#: Random start points are jittered by up to this much (pixels) around voxel centres.
SUBVOXEL_JITTER_PX = 0.4
_EPS = 1e-6


@dataclass
class SyntheticFOV:
    """One synthetic field of view: raw brightfield and fluorescence grey levels and the planted-ambiguity mask.

    ``bf`` and ``fl``: ``(Z, Y, X)`` uint16 raw grey levels (normalise with the organelle's windows);
    ``ambiguous``: ``(Z, Y, X)`` uint8, 1 where a planted structure is (FL and BF disagree); ``meta``: JSON-able dict.
    """

    bf: np.ndarray
    fl: np.ndarray
    ambiguous: np.ndarray
    meta: dict = field(default_factory=dict)


@dataclass
class _Cell:
    """One cell: its label, nucleus ellipsoid (centre and semi-axes (Z, Y, X), XY angle) and the top of the cell."""

    label: int
    centre_zyx: np.ndarray
    axes_zyx: np.ndarray
    angle: float
    z_top: float


@dataclass
class _Scene:
    """The organelle-independent scene, all arrays ``(Z, Y, X)``."""

    shape: tuple[int, int, int]
    cell_id: np.ndarray  # int32, 0 outside cells
    nucleus_id: np.ndarray  # int32, 0 outside nuclei
    envelope: np.ndarray  # float32 in [0, 1], Gaussian profile around each nuclear surface
    membrane: np.ndarray  # float32 in [0, 1]
    nucleoli: np.ndarray  # float32 in [0, 1]
    texture: np.ndarray  # float32, zero mean, unit std smooth noise
    cells: list[_Cell]
    layer_bottom: float
    layer_height: float

    @property
    def cytoplasm_id(self) -> np.ndarray:
        """Cell label where a voxel is cytoplasm (in a cell, outside its nucleus), else 0."""
        return np.where(self.nucleus_id > 0, 0, self.cell_id)


# ---------------------------------------------------------------------------------------------------------------
# Scene
# ---------------------------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise of ``shape`` rescaled to zero mean and unit std (float32)."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field_ - field_.mean()) / max(float(field_.std()), _EPS)


def _granular_noise(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-std granular texture ``(Z, Y, X)``: the in-plane Laplacian of smooth noise (band-pass in XY,
    as small phase objects appear in brightfield), float32."""
    field_ = _laplacian_xy(_smooth_noise(rng, shape, sigma))
    return (field_ - field_.mean()) / max(float(field_.std()), _EPS)


def _cell_centres(rng: np.random.Generator, ny: int, nx: int, spacing: float) -> np.ndarray:
    """Jittered hexagonal lattice of cell centres ``(N, 2)`` (y, x) covering the FOV plus one spacing of margin."""
    row_step = spacing * np.sqrt(3.0) / 2.0
    margin = spacing
    ys = np.arange(-margin, ny + margin, row_step)
    centres = []
    for i, y in enumerate(ys):
        offset = (spacing / 2.0) * (i % 2)
        xs = np.arange(-margin + offset, nx + margin, spacing)
        centres.append(np.stack([np.full_like(xs, y), xs], axis=1))
    pts = np.concatenate(centres) + rng.uniform(-0.5, 0.5, size=(sum(len(c) for c in centres), 2)) * (
        2.0 * CELL_JITTER * spacing
    )
    return pts


def _ellipsoid_geometry(cell: _Cell, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius ``r`` and approximate signed distance to the surface (pixels) of a nucleus in ``box``."""
    zz, yy, xx = np.ogrid[box]
    dz = zz - cell.centre_zyx[0]
    dy = yy - cell.centre_zyx[1]
    dx = xx - cell.centre_zyx[2]
    cos, sin = np.cos(cell.angle), np.sin(cell.angle)
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    r2 = (dz / cell.axes_zyx[0]) ** 2 + (v / cell.axes_zyx[1]) ** 2 + (u / cell.axes_zyx[2]) ** 2
    r = np.sqrt(r2).astype(np.float32)
    dist = np.sqrt(dz * dz + dy * dy + dx * dx).astype(np.float32)
    signed = dist * (1.0 - 1.0 / np.maximum(r, _EPS))
    return r, signed


def _box(centre: np.ndarray, half: np.ndarray, shape: Sequence[int]) -> tuple[slice, slice, slice] | None:
    """Slices of the box ``centre ± half`` clipped to ``shape``; None when it lies outside."""
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def _build_scene(
    rng: np.random.Generator, shape: tuple[int, int, int], colony_coverage: float, spacing: float
) -> _Scene:
    """Packed columnar cells (Voronoi in XY, centres ``spacing`` apart) with ellipsoidal nuclei, nucleoli, membranes."""
    nz, ny, nx = shape
    centres = _cell_centres(rng, ny, nx, spacing)
    tree = cKDTree(centres)
    gy, gx = np.mgrid[0:ny, 0:nx]
    dists, nearest = tree.query(np.stack([gy.ravel(), gx.ravel()], axis=1).astype(np.float64), k=2)
    owner = nearest[:, 0].reshape(ny, nx)
    boundary_gap = ((dists[:, 1] - dists[:, 0]) / 2.0).reshape(ny, nx)  # distance to the Voronoi edge
    membrane_2d = np.exp(-0.5 * (boundary_gap / MEMBRANE_SIGMA_PX) ** 2).astype(np.float32)

    colony_field = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), COLONY_SMOOTH_PX, mode="reflect")
    colony_2d = colony_field >= np.quantile(colony_field, 1.0 - colony_coverage) if colony_coverage > 0 else None
    seed_iy = np.clip(np.round(centres[:, 0]).astype(int), 0, ny - 1)
    seed_ix = np.clip(np.round(centres[:, 1]).astype(int), 0, nx - 1)
    # A cell belongs to the colony if its centre (clamped to the FOV) lies inside the colony outline.
    alive = np.zeros(len(centres), bool) if colony_2d is None else colony_2d[seed_iy, seed_ix]
    present = np.zeros(len(centres), bool)
    present[np.unique(owner)] = True
    alive &= present

    layer_height = min(float(nz), CELL_HEIGHT_MAX_PX)
    layer_bottom = (nz - layer_height) / 2.0
    nn_dist = tree.query(centres, k=2)[0][:, 1]

    labels_of = np.zeros(len(centres), np.int32)
    cells: list[_Cell] = []
    n_all = len(centres)
    heights = rng.uniform(*CELL_HEIGHT_RANGE, size=n_all) * layer_height
    xy_frac = rng.uniform(*NUCLEUS_XY_FRACTION, size=(n_all, 2))
    z_frac = rng.uniform(*NUCLEUS_Z_FRACTION, size=n_all)
    zc_frac = rng.uniform(*NUCLEUS_Z_CENTRE, size=n_all)
    angles = rng.uniform(0.0, np.pi, size=n_all)
    for i in np.flatnonzero(alive):
        label = len(cells) + 1
        labels_of[i] = label
        inscribed = nn_dist[i] / 2.0
        axes = np.array([z_frac[i] * heights[i], *(xy_frac[i] * inscribed)])
        zc = layer_bottom + zc_frac[i] * heights[i]
        axes[0] = min(axes[0], zc - layer_bottom, layer_bottom + heights[i] - zc)
        cells.append(
            _Cell(
                label=label,
                centre_zyx=np.array([zc, centres[i, 0], centres[i, 1]]),
                axes_zyx=axes,
                angle=float(angles[i]),
                z_top=layer_bottom + float(heights[i]),
            )
        )
    label_2d = labels_of[owner]
    top_2d = np.zeros((ny, nx), np.float32)
    for cell in cells:
        top_2d[label_2d == cell.label] = cell.z_top
    zcoord = np.arange(nz, dtype=np.float32)[:, None, None] + 0.5
    in_layer = (zcoord >= layer_bottom) & (zcoord <= top_2d[None])
    cell_id = np.where(in_layer & (label_2d[None] > 0), label_2d[None], 0).astype(np.int32)
    membrane = np.where(cell_id > 0, membrane_2d[None], 0.0).astype(np.float32)

    nucleus_id = np.zeros(shape, np.int32)
    envelope = np.zeros(shape, np.float32)
    nucleoli = np.zeros(shape, np.float32)
    texture = _smooth_noise(rng, shape, TEXTURE_SIGMA_PX)
    for cell in cells:
        box = _box(cell.centre_zyx, cell.axes_zyx + GAUSS_TAIL_SIGMAS * ENVELOPE_SIGMA_PX + 1.0, shape)
        if box is None:
            continue
        _, signed = _ellipsoid_geometry(cell, box)
        own = cell_id[box] == cell.label
        nucleus_id[box][own & (signed < 0)] = cell.label
        shell = np.exp(-0.5 * (signed / ENVELOPE_SIGMA_PX) ** 2) * own
        envelope[box] = np.maximum(envelope[box], shell)
        _add_nucleoli(rng, cell, nucleoli, texture, nucleus_id)
    return _Scene(
        shape=shape,
        cell_id=cell_id,
        nucleus_id=nucleus_id,
        envelope=envelope,
        membrane=membrane,
        nucleoli=nucleoli,
        texture=texture,
        cells=cells,
        layer_bottom=layer_bottom,
        layer_height=layer_height,
    )


def _add_nucleoli(
    rng: np.random.Generator, cell: _Cell, nucleoli: np.ndarray, texture: np.ndarray, nucleus_id: np.ndarray
) -> None:
    """Draw a few irregular nucleoli inside the nucleus of ``cell`` into ``nucleoli`` (in place)."""
    count = int(rng.integers(*NUCLEOLI_PER_NUCLEUS))
    direction = rng.standard_normal((count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radial = NUCLEOLUS_MAX_R * np.cbrt(rng.uniform(0.0, 1.0, size=count))
    radii = rng.uniform(*NUCLEOLUS_RADIUS_PX, size=count)
    for k in range(count):
        offset = direction[k] * radial[k] * cell.axes_zyx
        centre = cell.centre_zyx + offset
        axes = np.array([radii[k] * NUCLEOLUS_Z_STRETCH, radii[k], radii[k]])
        box = _box(centre, NUCLEOLUS_BOX_RADII * axes, nucleoli.shape)
        if box is None:
            continue
        zz, yy, xx = np.ogrid[box]
        q = ((zz - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2 + ((xx - centre[2]) / axes[2]) ** 2
        blob = np.exp(-NUCLEOLUS_SHARPNESS * q * (1.0 + NUCLEOLUS_IRREGULARITY * texture[box])).astype(np.float32)
        blob *= nucleus_id[box] == cell.label
        nucleoli[box] = np.maximum(nucleoli[box], blob)


# ---------------------------------------------------------------------------------------------------------------
# Filaments and tubules
# ---------------------------------------------------------------------------------------------------------------


def _random_walks(
    rng: np.random.Generator,
    starts: np.ndarray,
    n_steps: int | np.ndarray,
    persistence: float,
    region_id: np.ndarray,
    owner: np.ndarray,
    weights: np.ndarray,
    initial_dirs: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterise persistent random walks into a ``(Z, Y, X)`` float32 volume.

    ``starts``: ``(N, 3)`` (z, y, x) start points; walk ``k`` stops for good the first time it leaves the voxels
    where ``region_id == owner[k]`` or after ``n_steps[k]`` steps. ``weights``: ``(N,)`` intensity per visited point.
    """
    shape = region_id.shape
    n = len(starts)
    out = np.zeros(region_id.size, np.float32)
    if n == 0:
        return out.reshape(shape)
    steps = np.broadcast_to(np.asarray(n_steps), (n,))
    t_max = int(steps.max())
    direction = rng.standard_normal((n, 3)) if initial_dirs is None else np.array(initial_dirs, dtype=np.float64)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    pos = starts.astype(np.float64).copy()
    alive = np.ones(n, bool)
    upper = np.asarray(shape) - 1
    flat_all, weight_all = [], []
    kicks = rng.standard_normal((t_max, n, 3))
    for t in range(t_max):
        idx = np.round(pos).astype(int)
        inside = np.all((idx >= 0) & (idx <= upper), axis=1)
        idx = np.clip(idx, 0, upper)
        flat = np.ravel_multi_index(idx.T, shape)
        alive &= inside & (region_id.ravel()[flat] == owner) & (t < steps)
        if not alive.any():
            break
        flat_all.append(flat[alive])
        weight_all.append(weights[alive])
        direction = persistence * direction + (1.0 - persistence) * kicks[t]
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        pos += WALK_STEP_PX * direction
    if flat_all:
        out += np.bincount(
            np.concatenate(flat_all), weights=np.concatenate(weight_all), minlength=region_id.size
        ).astype(np.float32)
    return out.reshape(shape)


def _random_voxels(rng: np.random.Generator, region: np.ndarray, count: int) -> np.ndarray:
    """``count`` voxel coordinates ``(count, 3)`` drawn uniformly (with jitter) from the True voxels of ``region``."""
    flat = np.flatnonzero(region)
    if flat.size == 0 or count == 0:
        return np.zeros((0, 3))
    pick = flat[rng.integers(flat.size, size=count)]
    jitter = rng.uniform(-SUBVOXEL_JITTER_PX, SUBVOXEL_JITTER_PX, size=(count, 3))
    return np.stack(np.unravel_index(pick, region.shape), axis=1) + jitter


# ---------------------------------------------------------------------------------------------------------------
# Per-organelle fluorescence (relative signal before PSF and gain)
# ---------------------------------------------------------------------------------------------------------------


def _fl_dna(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """DNA dye ``(Z, Y, X)``: filled nuclei with chromatin texture, a brighter periphery and nucleolar holes."""
    inside = scene.nucleus_id > 0
    chromatin = np.clip(1.0 + DNA_TEXTURE * scene.texture, 0.0, None)
    signal = inside * chromatin * (1.0 - DNA_NUCLEOLUS_EXCLUSION * scene.nucleoli)
    return (signal + DNA_PERIPHERY * scene.envelope * inside).astype(np.float32)


def _fl_nuclear_envelope(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Lamin B1 ``(Z, Y, X)``: a thin shell on each nuclear surface over a faint nucleoplasm."""
    return (scene.envelope + ENVELOPE_NUCLEOPLASM * (scene.nucleus_id > 0)).astype(np.float32)


def _fl_nucleoli(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Fibrillarin ``(Z, Y, X)``: bright nucleoli over a dim nucleoplasm."""
    return (scene.nucleoli + NUCLEOLI_NUCLEOPLASM * (scene.nucleus_id > 0)).astype(np.float32)


def _fl_mitochondria(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """TOM20 ``(Z, Y, X)``: many short tortuous tubules filling the cytoplasm, over a diffuse cytoplasmic level."""
    cyto = scene.cytoplasm_id
    count = int(MITO_DENSITY * np.count_nonzero(cyto))
    starts = _random_voxels(rng, cyto > 0, count)
    owner = cyto[tuple(np.round(starts).astype(int).T)] if count else np.zeros(0, np.int32)
    steps = rng.integers(*MITO_STEPS, size=len(starts))
    tubules = _random_walks(rng, starts, steps, MITO_PERSISTENCE, cyto, owner, np.full(len(starts), MITO_WEIGHT))
    return (tubules + MITO_DIFFUSE * (cyto > 0)).astype(np.float32)


def _fl_actin(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Beta-actin ``(Z, Y, X)``: patchy cortex at cell junctions and the basal sheet, basal stress fibres, diffuse."""
    in_cell = scene.cell_id > 0
    cortex = scene.membrane * np.clip(1.0 + ACTIN_CORTEX_TEXTURE * scene.texture, 0.0, None)
    zcoord = np.arange(scene.shape[0], dtype=np.float32)[:, None, None] + 0.5
    basal = in_cell & (zcoord < scene.layer_bottom + ACTIN_BASAL_SHEET_PX)
    starts, owner, dirs = [], [], []
    for cell in scene.cells:
        count = int(rng.integers(*ACTIN_FIBRES_PER_CELL))
        z = scene.layer_bottom + ACTIN_BASAL_SHEET_PX * rng.uniform(*ACTIN_FIBRE_Z_RANGE, size=count)
        yx = cell.centre_zyx[1:] + rng.uniform(-1.0, 1.0, size=(count, 2)) * cell.axes_zyx[1:]
        starts.append(np.column_stack([z, yx]))
        owner.append(np.full(count, cell.label))
        angle = rng.uniform(0.0, 2.0 * np.pi, size=count)
        dirs.append(np.column_stack([np.zeros(count), np.sin(angle), np.cos(angle)]))
    fibres = _random_walks(
        rng,
        np.concatenate(starts) if starts else np.zeros((0, 3)),
        ACTIN_FIBRE_STEPS,
        ACTIN_FIBRE_PERSISTENCE,
        scene.cell_id,
        np.concatenate(owner) if owner else np.zeros(0, np.int32),
        np.full(sum(len(s) for s in starts), ACTIN_FIBRE_WEIGHT),
        initial_dirs=np.concatenate(dirs) if dirs else None,
    )
    return (ACTIN_CORTEX * (cortex + basal) + fibres + ACTIN_DIFFUSE * in_cell).astype(np.float32)


def _fl_microtubules(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Alpha-tubulin ``(Z, Y, X)``: filaments radiating from a centrosome beside the nucleus, free tubulin."""
    cyto = scene.cytoplasm_id
    starts, owner, dirs = [], [], []
    centrosomes = np.zeros(scene.shape, np.float32)
    for cell in scene.cells:
        # Centrosome: just outside the nucleus on a random side; the first of a few candidates in the cytoplasm.
        direction = rng.standard_normal((MT_CENTROSOME_TRIES, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        points = np.clip(
            cell.centre_zyx + direction * (cell.axes_zyx + MT_CENTROSOME_GAP_PX), 0, np.asarray(scene.shape) - 1
        )
        valid = np.flatnonzero(cyto[tuple(np.round(points).astype(int).T)] == cell.label)
        if valid.size == 0:
            continue
        point = points[valid[0]]
        count = int(rng.integers(*MT_FILAMENTS_PER_CELL))
        outward = rng.standard_normal((count, 3))
        outward /= np.linalg.norm(outward, axis=1, keepdims=True)
        starts.append(point + outward * rng.uniform(*MT_START_RADIUS_PX, size=(count, 1)))
        dirs.append(outward)
        owner.append(np.full(count, cell.label))
        centrosomes[tuple(np.round(point).astype(int))] = MT_CENTROSOME
    n = sum(len(s) for s in starts)
    filaments = _random_walks(
        rng,
        np.concatenate(starts) if starts else np.zeros((0, 3)),
        MT_STEPS,
        MT_PERSISTENCE,
        cyto,
        np.concatenate(owner) if owner else np.zeros(0, np.int32),
        rng.uniform(*MT_WEIGHT_RANGE, size=n) * MT_WEIGHT,
        initial_dirs=np.concatenate(dirs) if dirs else None,
    )
    centrosomes = (
        ndimage.gaussian_filter(centrosomes, MT_CENTROSOME_SIGMA_PX) * (2.0 * np.pi * MT_CENTROSOME_SIGMA_PX**2) ** 1.5
    )
    return (filaments + centrosomes + MT_DIFFUSE * (cyto > 0)).astype(np.float32)


_RENDERERS: dict[str, Callable[[_Scene, np.random.Generator], np.ndarray]] = {
    "dna": _fl_dna,
    "nuclear_envelope": _fl_nuclear_envelope,
    "nucleoli": _fl_nucleoli,
    "mitochondria": _fl_mitochondria,
    "actin": _fl_actin,
    "microtubules": _fl_microtubules,
}


# ---------------------------------------------------------------------------------------------------------------
# Planted ambiguities, imaging, public API
# ---------------------------------------------------------------------------------------------------------------


def _choose_cells(
    rng: np.random.Generator, scene: _Scene, fraction: float, exclude: Sequence[int] = ()
) -> list[_Cell]:
    """``≈ fraction`` of the cells, drawn among those whose nucleus centre lies inside the FOV (not in ``exclude``)."""
    shape = np.asarray(scene.shape)
    candidates = [
        c for c in scene.cells if np.all((c.centre_zyx >= 0) & (c.centre_zyx < shape)) and c.label not in exclude
    ]
    n = min(int(round(fraction * len(scene.cells))), len(candidates))
    if n == 0:
        return []
    return [candidates[int(i)] for i in rng.choice(len(candidates), size=n, replace=False)]


def _planted_region(scene: _Scene, style: _Style, cells: Sequence[_Cell], settings: GeneratorSettings) -> np.ndarray:
    """Bool ``(Z, Y, X)`` region of planted ``cells``: the nucleus (nuclear organelles) or the whole cell (cytoplasmic
    organelles), grown by the settings' margin so that it covers the blur of a change there."""
    mask = np.zeros(scene.shape, bool)
    if style.compartment == "nucleus":
        margin = np.asarray(settings.planted_margin_zyx, dtype=np.float64)
        for cell in cells:
            grown = replace(cell, axes_zyx=cell.axes_zyx + margin)
            box = _box(cell.centre_zyx, grown.axes_zyx + 1.0, scene.shape)
            if box is not None:
                r, _ = _ellipsoid_geometry(grown, box)
                mask[box] |= r < 1.0
        return mask
    whole_cells = np.zeros(len(scene.cells) + 1, bool)
    whole_cells[[c.label for c in cells]] = True
    if whole_cells.any():
        size = tuple(2 * int(m) + 1 for m in settings.planted_cell_margin_zyx)
        mask |= ndimage.maximum_filter(whole_cells[scene.cell_id], size=size, mode="constant")
    return mask


def _plant_surprises(
    rng: np.random.Generator, scene: _Scene, style: _Style, fraction: float, settings: GeneratorSettings
) -> tuple[dict[int, str], np.ndarray]:
    """Choose ``≈ fraction`` of the cells and a surprise kind for each (alternating ``unlabelled`` / ``hidden``).

    Returns ``({cell label: kind}, mask (Z, Y, X) bool)`` (:func:`_planted_region` of the chosen cells).
    """
    cells = _choose_cells(rng, scene, fraction)
    if not cells:
        return {}, np.zeros(scene.shape, bool)
    first_kind = int(rng.integers(len(AMBIGUOUS_KINDS)))
    planted = {c.label: AMBIGUOUS_KINDS[(first_kind + j) % len(AMBIGUOUS_KINDS)] for j, c in enumerate(cells)}
    return planted, _planted_region(scene, style, cells, settings)


def _plant_occluders(
    rng: np.random.Generator, scene: _Scene, style: _Style, settings: GeneratorSettings, exclude: Sequence[int]
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Choose ``≈ occluded_fraction`` of the cells (not in ``exclude``) and cover each with debris in the brightfield.

    Returns ``(labels, region (Z, Y, X) bool, alpha (Y, X) float32)``: ``region`` is :func:`_planted_region` of the
    chosen cells; ``alpha`` is the occluder's opacity, 1 over the region's XY footprint grown by
    ``occluder_margin_px`` (through every slice: the brightfield there shows only debris) and falling to 0 over
    ``occluder_edge_px`` beyond it.
    """
    cells = _choose_cells(rng, scene, settings.occluded_fraction, exclude)
    alpha = np.zeros(scene.shape[1:], np.float32)
    if not cells:
        return [], np.zeros(scene.shape, bool), alpha
    region = _planted_region(scene, style, cells, settings)
    outside = ndimage.distance_transform_edt(~region.any(axis=0))
    alpha = np.clip(1.0 - (outside - settings.occluder_margin_px) / settings.occluder_edge_px, 0.0, 1.0)
    return [c.label for c in cells], region, alpha.astype(np.float32)


def _laplacian_xy(volume: np.ndarray) -> np.ndarray:
    """In-plane (Y, X) Laplacian of a ``(Z, Y, X)`` volume (reflecting borders)."""
    kernel = np.array([1.0, -2.0, 1.0], np.float32)
    return ndimage.correlate1d(volume, kernel, axis=1, mode="reflect") + ndimage.correlate1d(
        volume, kernel, axis=2, mode="reflect"
    )


@dataclass
class _Brightfield:
    """What the brightfield of one FOV is made of besides the scene: level, random fields and the occluders."""

    level: float  # mean level, fraction into the BF window
    noise: np.ndarray  # (Z, Y, X) standard normal camera noise
    granules: np.ndarray | None  # (Z, Y, X) granule texture times its visibility (cells, fainter in nuclei); None: none
    nuclei: np.ndarray | None  # (Z, Y, X) visible nuclei, blurred like the index map; None: no nuclear absorption
    debris: np.ndarray | None  # (Z, Y, X) unit-std texture seen through occluders; None: no occluder
    alpha: np.ndarray  # (Y, X) occluder opacity in [0, 1]


def _render_brightfield(
    rng: np.random.Generator,
    scene: _Scene,
    refractive: np.ndarray,
    bf_window: tuple[float, float],
    parts: _Brightfield,
    settings: GeneratorSettings,
) -> tuple[np.ndarray, float]:
    """Brightfield z-stack of a weak phase object: defocus contrast that inverts through focus, absorbing granules,
    occluding debris, illumination, noise.

    ``refractive``: ``(Z, Y, X)`` relative index map. Where an occluder is opaque (``alpha`` = 1) the contrast is the
    debris texture alone, so the stack there does not depend on the scene. Returns the uint16 ``(Z, Y, X)`` stack and
    the focal plane (z, fractional slices).
    """
    nz, ny, nx = scene.shape
    near = ndimage.gaussian_filter(refractive, BF_BLUR_ZYX, mode="nearest")
    far = ndimage.gaussian_filter(refractive, BF_DEFOCUS_BLUR_ZYX, mode="nearest")
    focus = scene.layer_bottom + scene.layer_height * (0.5 + rng.uniform(-BF_FOCUS_JITTER, BF_FOCUS_JITTER))
    z = np.arange(nz, dtype=np.float32)[:, None, None] + 0.5
    defocus = np.tanh((z - focus) / (settings.bf_defocus_scale * scene.layer_height)).astype(np.float32)
    contrast = settings.bf_contrast * (
        -BF_DEFOCUS_GAIN * defocus * _laplacian_xy(near)
        - BF_FAR_DEFOCUS_GAIN * defocus * np.abs(defocus) * _laplacian_xy(far)
        + settings.bf_axial_gain * np.gradient(near, axis=0)
        + settings.bf_infocus_gain * (near - far)
    )
    if parts.granules is not None:
        contrast = contrast - settings.bf_granule_gain * parts.granules
    if parts.nuclei is not None:
        contrast = contrast - settings.bf_nucleus_absorption * parts.nuclei
    if parts.debris is not None:
        alpha = parts.alpha[None]
        contrast = (1.0 - alpha) * contrast + alpha * (settings.debris_contrast * parts.debris)
    gy = np.linspace(-0.5, 0.5, ny, dtype=np.float32)[:, None]
    gx = np.linspace(-0.5, 0.5, nx, dtype=np.float32)[None, :]
    tilt = rng.uniform(-1.0, 1.0, size=2)
    tilt *= settings.bf_gradient / max(float(np.abs(tilt).sum()), 1e-6)
    illumination = (1.0 + tilt[0] * gy + tilt[1] * gx) * (1.0 - settings.bf_vignetting * 2.0 * (gy * gy + gx * gx))
    lo, hi = bf_window
    level = lo + parts.level * (hi - lo)
    relative = illumination[None] * (1.0 + contrast)
    if parts.debris is not None:
        relative = relative * (1.0 - settings.debris_absorption * parts.alpha[None])
    std = np.sqrt(settings.bf_read_noise**2 + settings.bf_shot_noise**2 * np.clip(relative, 0.0, None))
    raw = level * (relative + std * parts.noise)
    return np.clip(np.round(raw), 0, UINT16_MAX).astype(np.uint16), float(focus)


def _varies(fl_gain_range: Sequence[float], fl_background_range: Sequence[float]) -> bool:
    """True unless both FOV intensity ranges are the defaults (no FOV-to-FOV variation)."""
    return (tuple(float(v) for v in fl_gain_range) != FL_GAIN_RANGE
            or tuple(float(v) for v in fl_background_range) != FL_BACKGROUND_RANGE)


def _fov_intensity(
    rng: np.random.Generator, gain_range: Sequence[float], background_range: Sequence[float]
) -> tuple[float, float]:
    """This FOV's (gain, background): log-uniform gain and uniform background in their ranges (exact when fixed)."""
    (g_lo, g_hi), (b_lo, b_hi) = (tuple(float(v) for v in r) for r in (gain_range, background_range))
    if not (0 < g_lo <= g_hi and 0 <= b_lo <= b_hi < 1):
        raise ValueError(
            f"fl_gain_range {tuple(gain_range)} and fl_background_range {tuple(background_range)}; expected "
            "0 < gain lo <= hi and 0 <= background lo <= hi < 1"
        )
    gain = g_lo if g_lo == g_hi else float(np.exp(rng.uniform(np.log(g_lo), np.log(g_hi))))
    background = b_lo if b_lo == b_hi else float(rng.uniform(b_lo, b_hi))
    return gain, background


def _to_raw(level: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Window-unit intensities → uint16 raw grey levels (``lo + level · (hi − lo)``, rounded and clipped)."""
    lo, hi = window
    return np.clip(np.round(lo + level * (hi - lo)), 0, UINT16_MAX).astype(np.uint16)


def _check_args(
    organelle: str,
    shape_zyx: Sequence[int],
    bf_window: Sequence[float],
    fl_window: Sequence[float],
    fraction: float,
    settings: GeneratorSettings,
) -> tuple[int, int, int]:
    if organelle not in ORGANELLES:
        raise ValueError(f"unknown organelle {organelle!r}; expected one of {ORGANELLES}")
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or any(s < m for s, m in zip(shape, MIN_SHAPE_ZYX, strict=True)):
        raise ValueError(f"shape_zyx must be 3 sizes (Z, Y, X) of at least {MIN_SHAPE_ZYX}, got {tuple(shape_zyx)}")
    for name, window in (("bf_window", bf_window), ("fl_window", fl_window)):
        lo, hi = (float(w) for w in window)
        if not 0 <= lo < hi <= UINT16_MAX:
            raise ValueError(f"{name} must be (lo, hi) with 0 <= lo < hi <= {UINT16_MAX}, got {tuple(window)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"ambiguous_fraction must lie in [0, 1], got {fraction}")
    if not 0.0 <= settings.occluded_fraction <= 1.0 or fraction + settings.occluded_fraction > 1.0:
        raise ValueError(
            f"occluded_fraction must lie in [0, 1 - ambiguous_fraction], got {settings.occluded_fraction} "
            f"with ambiguous_fraction {fraction}"
        )
    lo, hi = settings.bf_level_range
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"bf_level_range must be (lo, hi) with 0 < lo <= hi < 1, got {settings.bf_level_range}")
    if settings.cell_spacing_px < 8.0:
        raise ValueError(f"cell_spacing_px must be at least 8 pixels, got {settings.cell_spacing_px}")
    return shape  # type: ignore[return-value]


def generate_fov(
    organelle: str,
    shape_zyx: Sequence[int] = (32, 128, 128),
    seed: int = 0,
    *,
    bf_window: tuple[float, float],
    fl_window: tuple[float, float],
    ambiguous_fraction: float = 0.15,
    colony_coverage: float = COLONY_COVERAGE,
    fl_gain_range: Sequence[float] = FL_GAIN_RANGE,
    fl_background_range: Sequence[float] = FL_BACKGROUND_RANGE,
    settings: GeneratorSettings | None = None,
) -> SyntheticFOV:
    """Generate one synthetic FOV of a hiPSC colony: brightfield, one organelle's fluorescence, planted structures.

    The scene (cells, nuclei, nucleoli, membranes) depends only on ``seed``, ``shape_zyx`` and the cell spacing, so
    different organelles with the same seed show the same cells; the planted structures, the expression levels, the
    brightfield level and the camera noise come from their own random streams, so ``ambiguous_fraction`` and
    ``occluded_fraction`` change nothing outside their masks.

    Args:
        organelle: one of :data:`ORGANELLES`.
        shape_zyx: ``(Z, Y, X)`` size, from one patch (16, 64, 64) to FOV-sized volumes.
        seed: any non-negative integer; the same seed gives byte-identical arrays.
        bf_window, fl_window: the organelle's normalisation windows (raw grey levels, SPEC §1); BF lies mostly
            inside ``bf_window``, the FL background sits just above the low end of ``fl_window``.
        ambiguous_fraction: fraction of the cells made surprises (half unlabelled in FL, half invisible in BF).
        colony_coverage: fraction of the FOV area covered by cells (0: an empty coverslip).
        fl_gain_range: (lo, hi) of this FOV's gain on the organelle signal, drawn log-uniformly (default: 1).
        fl_background_range: (lo, hi) of this FOV's FL background level in window units, drawn uniformly
            (default: the fixed ``FL_BACKGROUND``). Both come from their own random stream: with the default
            ranges the arrays are those of earlier versions, and nothing but the FL intensities changes otherwise.
        settings: the imaging model (:class:`GeneratorSettings`; default: the calibrated one;
            ``GeneratorSettings.legacy()`` reproduces the first generator).

    Returns:
        :class:`SyntheticFOV` with ``(Z, Y, X)`` uint16 ``bf`` and ``fl`` and uint8 ``ambiguous``: 0, or
        :data:`MASK_SURPRISE` / :data:`MASK_AMBIGUITY` where a planted structure is.
    """
    return _generate(
        organelle, shape_zyx, seed, bf_window, fl_window, ambiguous_fraction, colony_coverage, fl_gain_range,
        fl_background_range, settings if settings is not None else GeneratorSettings(),
    )[0]


def _generate(
    organelle: str,
    shape_zyx: Sequence[int],
    seed: int,
    bf_window: tuple[float, float],
    fl_window: tuple[float, float],
    ambiguous_fraction: float,
    colony_coverage: float,
    fl_gain_range: Sequence[float],
    fl_background_range: Sequence[float],
    settings: GeneratorSettings,
    unseen: Sequence[int] = (),
) -> tuple[SyntheticFOV, _Scene]:
    """:func:`generate_fov`, and its scene; the nuclear (or, cytoplasmic organelles, whole-cell) structure of the
    cells labelled ``unseen`` is left out of the brightfield (the ideal-observer check renders with and without)."""
    shape = _check_args(organelle, shape_zyx, bf_window, fl_window, ambiguous_fraction, settings)
    if not 0.0 <= colony_coverage <= 1.0:
        raise ValueError(f"colony_coverage must lie in [0, 1], got {colony_coverage}")
    style = _STYLES[organelle]
    streams = np.random.SeedSequence(int(seed)).spawn(13)
    rng_scene, rng_structure, rng_expression, rng_ambiguity, rng_optics, rng_fl_noise, rng_bf_noise = (
        np.random.default_rng(s) for s in streams[:7]
    )
    rng_bf_level, rng_occluders, rng_granules, rng_debris, rng_fl_texture = (
        np.random.default_rng(s) for s in streams[8:13]
    )
    fl_gain, fl_background = _fov_intensity(np.random.default_rng(streams[7]), fl_gain_range, fl_background_range)
    lo, hi = settings.bf_level_range
    bf_level = lo if lo == hi else float(rng_bf_level.uniform(lo, hi))
    scene = _build_scene(rng_scene, shape, float(colony_coverage), settings.cell_spacing_px)
    structure = _RENDERERS[organelle](scene, rng_structure)
    n_labels = len(scene.cells) + 1
    expression = np.concatenate([[0.0], rng_expression.uniform(*EXPRESSION_RANGE, size=n_labels - 1)])
    planted, surprise_mask = _plant_surprises(rng_ambiguity, scene, style, float(ambiguous_fraction), settings)
    occluded, occluded_mask, alpha = _plant_occluders(rng_occluders, scene, style, settings, list(planted))

    nucleus_visible = np.ones(n_labels, np.float32)
    cell_visible = np.ones(n_labels, np.float32)
    hidden = [label for label, kind in planted.items() if kind == "hidden"] + list(unseen)
    for label, kind in planted.items():
        if kind == "unlabelled":
            expression[label] = 0.0
    for label in hidden:
        nucleus_visible[label] = 0.0
        if style.compartment != "nucleus":
            cell_visible[label] = 0.0
    in_nucleus = (scene.nucleus_id > 0).astype(np.float32)
    nuclear_ri = (
        RI_NUCLEUS * in_nucleus
        + RI_ENVELOPE * scene.envelope
        + RI_CHROMATIN * scene.texture * in_nucleus
        + RI_NUCLEOLUS * scene.nucleoli
    )
    cell_ri = RI_CYTOPLASM * (scene.cell_id > 0) + RI_MEMBRANE * scene.membrane + style.ri * structure
    refractive = (cell_visible[scene.cell_id] * cell_ri + nucleus_visible[scene.cell_id] * nuclear_ri).astype(
        np.float32
    )
    granules, nuclei = None, None
    in_visible_nucleus = (scene.nucleus_id > 0) & (nucleus_visible[scene.cell_id] > 0)
    if settings.bf_nucleus_absorption > 0:
        nuclei = ndimage.gaussian_filter(in_visible_nucleus.astype(np.float32), BF_BLUR_ZYX, mode="nearest")
    if settings.bf_granule_gain > 0:  # granules of the visible cells, fainter in their visible nuclei
        visibility = cell_visible[scene.cell_id] * (scene.cell_id > 0)
        visibility = visibility * np.where(in_visible_nucleus, settings.bf_nucleus_granules, 1.0)
        granules = _granular_noise(rng_granules, shape, settings.bf_granule_sigma_zyx) * visibility.astype(np.float32)
    parts = _Brightfield(
        level=bf_level,
        noise=rng_bf_noise.standard_normal(shape, dtype=np.float32),
        granules=granules,
        nuclei=nuclei,
        debris=_granular_noise(rng_debris, shape, settings.debris_sigma_zyx) if occluded else None,
        alpha=alpha,
    )
    bf, focus = _render_brightfield(rng_optics, scene, refractive, bf_window, parts, settings)

    emitted = structure * expression.astype(np.float32)[scene.cell_id]
    if settings.fl_texture > 0:
        patches = _smooth_noise(rng_fl_texture, shape, settings.fl_texture_sigma_zyx)
        emitted = emitted * np.clip(1.0 + settings.fl_texture * patches, 0.0, None)
    signal = ndimage.gaussian_filter(emitted, settings.fl_psf_sigma_zyx, mode="constant")
    if settings.fl_haze > 0:
        haze = ndimage.gaussian_filter(emitted, settings.fl_haze_sigma_zyx, mode="constant")
        signal = (1.0 - settings.fl_haze) * signal + settings.fl_haze * haze
    level = fl_background + fl_gain * style.gain * settings.fl_contrast * signal
    if settings.fl_offset > 0:
        level = level + settings.fl_offset * (scene.cell_id > 0)
    variance = settings.fl_read_noise**2 + settings.fl_shot_noise * np.clip(level, 0.0, None)
    if settings.fl_speckle > 0:
        variance = variance + (settings.fl_speckle * (level - fl_background)) ** 2
    std = np.sqrt(variance)
    fl = _to_raw(level + std * rng_fl_noise.standard_normal(shape, dtype=np.float32), fl_window)

    mask = np.where(occluded_mask, MASK_AMBIGUITY, np.where(surprise_mask, MASK_SURPRISE, 0)).astype(np.uint8)
    kinds = list(planted.values())
    meta: dict[str, Any] = {
        "organelle": organelle,
        "seed": int(seed),
        "shape_zyx": list(shape),
        "bf_window": [float(w) for w in bf_window],
        "fl_window": [float(w) for w in fl_window],
        "ambiguous_fraction": float(ambiguous_fraction),
        "colony_coverage": float(colony_coverage),
        "n_cells": len(scene.cells),
        "n_ambiguous": len(planted),
        "n_unlabelled": kinds.count("unlabelled"),
        "n_hidden": kinds.count("hidden"),
        "ambiguous_cells": {str(k): v for k, v in planted.items()},
        "focal_plane_z": focus,
        "generator_version": GENERATOR_VERSION,
    }
    if _varies(fl_gain_range, fl_background_range):
        meta.update({"fl_gain": fl_gain, "fl_background": fl_background,
                     "fl_gain_range": [float(v) for v in fl_gain_range],
                     "fl_background_range": [float(v) for v in fl_background_range]})
    if settings != GeneratorSettings.legacy():
        meta.update({"generator": settings.as_dict(), "bf_level": bf_level, "n_occluded": len(occluded),
                     "occluded_cells": [int(label) for label in occluded]})
    return SyntheticFOV(bf=bf, fl=fl, ambiguous=mask, meta=meta), scene


@dataclass(frozen=True)
class IdealObserverCheck:
    """How well an ideal observer tells from a FOV's brightfield whether a cell's structure is there.

    The FOV is rendered with and without the structure (nucleus, or the whole cell for cytoplasmic organelles) of
    some cells; ΔBF is the difference of the two brightfields (window units). For a known signal in Gaussian noise the
    ideal observer's detectability is ``d' = sqrt(Σ ΔBF²) / σ`` over the cell's region (σ: the BF noise std).

    ``inside_max_delta`` and ``inside_dprime`` (the largest over the occluded cells, inside their planted-ambiguity
    region): 0 means the brightfield there is the same with and without the structure. ``outside_dprime``: the
    smallest d' over ordinary cells (their region outside every planted one): what the observer sees elsewhere.
    """

    n_occluded: int
    n_control: int
    noise_std: float
    inside_max_delta: float
    inside_dprime: float
    outside_dprime: float


def ideal_observer_check(
    organelle: str,
    shape_zyx: Sequence[int] = (32, 128, 128),
    seed: int = 0,
    *,
    bf_window: tuple[float, float],
    fl_window: tuple[float, float],
    ambiguous_fraction: float = 0.15,
    settings: GeneratorSettings | None = None,
) -> IdealObserverCheck:
    """Compare a FOV's brightfield with the brightfield rendered without the structure of its occluded cells and of
    every ordinary cell (same seed, same random streams: only the brightfield's index map differs)."""
    settings = settings if settings is not None else GeneratorSettings()
    args = (organelle, shape_zyx, seed, bf_window, fl_window, ambiguous_fraction, COLONY_COVERAGE, FL_GAIN_RANGE,
            FL_BACKGROUND_RANGE, settings)
    fov, scene = _generate(*args)
    occluded = [int(c) for c in fov.meta.get("occluded_cells", [])]
    planted = set(occluded) | {int(c) for c in fov.meta["ambiguous_cells"]}
    shape = np.asarray(scene.shape)
    controls = [
        c for c in scene.cells if c.label not in planted and np.all((c.centre_zyx >= 0) & (c.centre_zyx < shape))
    ]
    without, _ = _generate(*args, unseen=occluded + [c.label for c in controls])
    lo, hi = bf_window
    delta = (fov.bf.astype(np.float64) - without.bf.astype(np.float64)) / (hi - lo)
    level = lo / (hi - lo) + float(fov.meta.get("bf_level", settings.bf_level_range[0]))
    noise = level * float(np.hypot(settings.bf_read_noise, settings.bf_shot_noise))
    style = _STYLES[organelle]

    def dprime(cells: Sequence[_Cell], where: np.ndarray) -> list[float]:
        regions = [_planted_region(scene, style, [c], settings) for c in cells]
        return [float(np.sqrt(np.sum(delta[region & where] ** 2)) / noise) for region in regions]

    inside = fov.ambiguous == MASK_AMBIGUITY
    occluded_cells = [c for c in scene.cells if c.label in occluded]
    return IdealObserverCheck(
        n_occluded=len(occluded_cells),
        n_control=len(controls),
        noise_std=noise,
        inside_max_delta=float(np.abs(delta[inside]).max()) if inside.any() else math.nan,
        inside_dprime=max(dprime(occluded_cells, inside), default=math.nan),
        outside_dprime=min(dprime(controls, fov.ambiguous == 0), default=math.nan),
    )


def dataset_key(
    organelle: str,
    shape_zyx: Sequence[int],
    seed: int,
    bf_window: Sequence[float],
    fl_window: Sequence[float],
    ambiguous_fraction: float,
    fl_gain_range: Sequence[float] = FL_GAIN_RANGE,
    fl_background_range: Sequence[float] = FL_BACKGROUND_RANGE,
    settings: GeneratorSettings | None = None,
) -> str:
    """Cache folder name ``<organelle>-<hash>`` of a synthetic dataset's parameters and the generator version.

    ``settings`` (default: the calibrated :class:`GeneratorSettings`) enter the key unless they are the legacy ones,
    so the first generator's caches keep their names.

    The number of FOVs is not part of the key: FOV ``k`` depends only on ``(seed, k)``, so a larger request reuses
    the FOVs already generated.
    """
    params = {
        "organelle": organelle,
        "shape_zyx": [int(s) for s in shape_zyx],
        "seed": int(seed),
        "bf_window": [float(w) for w in bf_window],
        "fl_window": [float(w) for w in fl_window],
        "ambiguous_fraction": float(ambiguous_fraction),
        "generator_version": GENERATOR_VERSION,
    }
    if _varies(fl_gain_range, fl_background_range):  # the default ranges keep the keys of earlier caches
        params["fl_gain_range"] = [float(v) for v in fl_gain_range]
        params["fl_background_range"] = [float(v) for v in fl_background_range]
    settings = settings if settings is not None else GeneratorSettings()
    if settings != GeneratorSettings.legacy():
        params["generator"] = settings.as_dict()
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return f"{organelle}-{digest}"


def fov_seed(seed: int, k: int) -> int:
    """Seed of FOV ``k`` of a dataset with ``seed``: 32 bits drawn from ``SeedSequence([seed, k])``."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


def save_fov(path: str | os.PathLike, fov: SyntheticFOV) -> Path:
    """Write ``fov`` atomically as an ``.npz`` with arrays ``bf``, ``fl``, ``ambiguous`` and JSON ``meta``.

    Uncompressed: camera noise barely compresses and zlib would take longer than generating the FOV.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, bf=fov.bf, fl=fov.fl, ambiguous=fov.ambiguous, meta=np.array(json.dumps(fov.meta, sort_keys=True)))
    return Path(path)


def synthetic_dataset(
    organelle: str,
    n_fovs: int,
    shape_zyx: Sequence[int],
    seed: int,
    *,
    bf_window: tuple[float, float],
    fl_window: tuple[float, float],
    ambiguous_fraction: float,
    cache_dir: str | os.PathLike,
    fl_gain_range: Sequence[float] = FL_GAIN_RANGE,
    fl_background_range: Sequence[float] = FL_BACKGROUND_RANGE,
    settings: GeneratorSettings | None = None,
) -> list[Path]:
    """Generate (or reuse from the cache) ``n_fovs`` FOVs and return their ``.npz`` paths in order.

    FOV ``k`` is ``cache_dir/<organelle>-<hash>/fov_<k>.npz`` (see :func:`dataset_key`), generated with seed
    :func:`fov_seed` ``(seed, k)`` and written atomically, so an interrupted run leaves no partial file and
    concurrent processes can share the cache. Existing files are reused without regeneration.
    """
    settings = settings if settings is not None else GeneratorSettings()
    _check_args(organelle, shape_zyx, bf_window, fl_window, ambiguous_fraction, settings)
    if int(n_fovs) < 1:
        raise ValueError(f"n_fovs must be at least 1, got {n_fovs}")
    folder = Path(cache_dir) / dataset_key(
        organelle, shape_zyx, seed, bf_window, fl_window, ambiguous_fraction, fl_gain_range, fl_background_range,
        settings,
    )
    paths = []
    for k in range(int(n_fovs)):
        path = folder / f"fov_{k}.npz"
        if not path.is_file():
            fov = generate_fov(
                organelle,
                shape_zyx,
                fov_seed(seed, k),
                bf_window=bf_window,
                fl_window=fl_window,
                ambiguous_fraction=ambiguous_fraction,
                fl_gain_range=fl_gain_range,
                fl_background_range=fl_background_range,
                settings=settings,
            )
            save_fov(path, fov)
        paths.append(path)
    return paths


def load_fov(path: str | os.PathLike) -> SyntheticFOV:
    """Read a FOV written by :func:`save_fov`; :class:`DataError` naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: synthetic FOV file not found (expected an .npz written by synthetic_dataset)")
    expected = {"bf": np.uint16, "fl": np.uint16, "ambiguous": np.uint8}
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted((set(expected) | {"meta"}) - set(data.files))
            if missing:
                raise DataError(f"{path}: synthetic FOV lacks arrays {missing}; found {sorted(data.files)}")
            arrays = {name: data[name] for name in expected}
            meta = json.loads(str(data["meta"]))
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable or truncated synthetic FOV ({type(err).__name__}: {err})") from err
    shapes = {name: a.shape for name, a in arrays.items()}
    for name, dtype in expected.items():
        a = arrays[name]
        if a.ndim != 3 or a.shape != arrays["bf"].shape:
            raise DataError(f"{path}: expected three (Z, Y, X) arrays of one shape, found shapes {shapes}")
        if a.dtype != dtype:
            raise DataError(f"{path}: array {name!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    return SyntheticFOV(bf=arrays["bf"], fl=arrays["fl"], ambiguous=arrays["ambiguous"], meta=meta)
