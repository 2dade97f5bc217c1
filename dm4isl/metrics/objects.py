"""3-D objects of a ``(Z, Y, X)`` mask linked slice to slice, and the reference's object-volume error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from dm4isl.metrics.overlap import DEFAULT_VOXEL_SIZE_UM
from dm4isl.metrics.volume import VolumeFeatures, as_pair

#: Components of a slice smaller than this many pixels are dropped before linking (the reference's rule).
MIN_SLICE_COMPONENT_PX = 36
#: In-plane connectivity of slice components: 8-connected, as OpenCV's ``connectedComponents`` default.
SLICE_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def link_objects(mask: np.ndarray) -> np.ndarray:
    """Label the 3-D objects of a boolean ``(Z, Y, X)`` mask by linking per-slice components along Z.

    Per Z slice, 8-connected components smaller than :data:`MIN_SLICE_COMPONENT_PX` pixels are dropped. Every
    component of a slice that overlaps objects of the previous slice joins the one it overlaps most (ties: the
    lower label); any other component starts a new object. This is the linking of the reference's
    ``watershed_on_seg3D`` (``do_slice_markers`` + ``make_same_marker3D`` in ``src/ProcessingFunctions.py``) as it
    is meant to work: its code starts a new object when a component lies entirely inside one object of the slice
    below (it expects the background label among the overlapped ones), picks among several overlapped objects by
    a count of an unrelated label, and its second size rule (32 px for a new object) never applies after the
    36 px rule. Returns int32 labels ``(Z, Y, X)``, 1..n, 0 = background.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) mask, got shape {mask.shape}")
    labels = np.zeros(mask.shape, dtype=np.int32)
    n_objects = 0
    for z in range(mask.shape[0]):
        components, n = ndi.label(mask[z], structure=SLICE_CONNECTIVITY)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        below = labels[z - 1] if z > 0 else np.zeros_like(labels[0])
        for c in range(1, n + 1):
            if sizes[c] < MIN_SLICE_COMPONENT_PX:
                continue
            here = components == c
            overlap = np.bincount(below[here], minlength=n_objects + 1)[1:]
            if overlap.size and overlap.max() > 0:
                labels[z][here] = int(np.argmax(overlap)) + 1
            else:
                n_objects += 1
                labels[z][here] = n_objects
    return labels


def object_volumes(mask: np.ndarray) -> np.ndarray:
    """Voxel counts ``(n,)`` of the linked 3-D objects of a boolean ``(Z, Y, X)`` mask (:func:`link_objects`)."""
    labels = link_objects(mask)
    counts = np.bincount(labels.ravel())[1:]
    return counts[counts > 0]


def volume_error(
    gt: np.ndarray | VolumeFeatures,
    pred: np.ndarray | VolumeFeatures,
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
) -> float:
    """``|mean object volume of the ground truth − mean object volume of the prediction|`` in µm³.

    Objects: :func:`link_objects` on the foreground masks of the two ``(Z, Y, X)`` volumes; a voxel is
    ``vz · vy · vx`` µm³ (``voxel_size`` (Z, Y, X) µm). The reference reports the same difference in voxels
    (``segmentation_downstream_measurements``, ``volume_diff``): divide by the voxel volume to compare. Lower is
    better; 0 when both masks have no object; NaN (documented) when exactly one has none (a mean over no objects).
    """
    g, p = as_pair(gt, pred)
    v_gt, v_pred = object_volumes(g.segmentation.mask), object_volumes(p.segmentation.mask)
    if v_gt.size == 0 and v_pred.size == 0:
        return 0.0
    if v_gt.size == 0 or v_pred.size == 0:
        return float("nan")
    voxel_um3 = float(np.prod(np.asarray(voxel_size, dtype=np.float64)))
    return abs(float(v_gt.mean()) - float(v_pred.mean())) * voxel_um3
