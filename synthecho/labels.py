"""Label conventions shared by every stage.

CAMUS masks (and the published `mask` column): 0 background, 1 LV cavity, 2 LV myocardium, 3 left atrium.
Generators are conditioned on a 5-class map that also separates the outside of the ultrasound sector
from background inside it (as Echo from noise did), so a model cannot paint speckle outside the fan.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, LV, MYO, LA = 0, 1, 2, 3
STRUCTURES = {"lv": LV, "myo": MYO, "la": LA}
NUM_MASK_CLASSES = 4

# Conditioning classes: 0 outside sector, 1 background inside sector, 2 LV, 3 MYO, 4 LA.
OUTSIDE_SECTOR, SECTOR_BACKGROUND = 0, 1
NUM_CONDITION_CLASSES = 5


def to_condition_labels(mask: np.ndarray, sector: np.ndarray) -> np.ndarray:
    """CAMUS mask (0..3) + boolean sector -> 5-class conditioning map (uint8, same shape)."""
    if mask.shape != sector.shape:
        raise ValueError(f"mask shape {mask.shape} != sector shape {sector.shape}")
    labels = np.where(sector, SECTOR_BACKGROUND, OUTSIDE_SECTOR).astype(np.uint8)
    structure = mask > 0
    labels[structure] = mask[structure] + 1
    return labels


def condition_to_mask(labels: np.ndarray) -> np.ndarray:
    """5-class conditioning map -> CAMUS mask (0..3) and the sector it implies."""
    mask = np.where(labels >= 2, labels - 1, 0).astype(np.uint8)
    return mask


def condition_to_sector(labels: np.ndarray) -> np.ndarray:
    return labels != OUTSIDE_SECTOR


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(..., H, W) integer labels -> (..., C, H, W) float32 one-hot."""
    eye = np.eye(num_classes, dtype=np.float32)
    return np.moveaxis(eye[labels], -1, -3)


def sector_from_image(image: np.ndarray, threshold: int = 0) -> np.ndarray:
    """The ultrasound field of view: the filled convex hull of non-zero pixels.

    CAMUS does not store the fan; real frames are exactly zero outside it, and dark blood pools inside
    it can also be near zero, so the hull (not the raw non-zero set) is the sector.
    """
    from scipy.spatial import ConvexHull, QhullError

    nonzero = np.argwhere(image > threshold)
    sector = np.zeros(image.shape, dtype=bool)
    if len(nonzero) < 3:
        return sector
    try:
        hull = ConvexHull(nonzero)
    except QhullError:
        sector[tuple(nonzero.T)] = True
        return sector
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    points = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    # Inside the hull <=> every facet equation  normal . x + offset <= 0.
    inside = np.all(points @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, axis=1)
    return inside.reshape(image.shape)
