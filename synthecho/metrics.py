"""Small, exact overlap metrics shared by the segmenter, the filter and the downstream evaluation.

Label maps follow CAMUS (synthecho.labels): 0 background, 1 LV cavity, 2 LV myocardium, 3 left atrium.
"Epicardium" is the whole LV, cavity plus wall (1 ∪ 2), as the CAMUS paper and Echo from noise report it.

Convention for empty structures: when neither the prediction nor the reference contains a structure,
its Dice is 1.0 (the two agree perfectly that it is absent). This is the usual medical-imaging choice and
keeps a per-image mean defined; 0/0 would otherwise be NaN and silently drop the image from averages.
"""

from __future__ import annotations

import numpy as np

from synthecho.labels import LA, LV, MYO, STRUCTURES


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice = 2|P ∩ T| / (|P| + |T|) of two boolean masks of the same shape; 1.0 when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"dice: prediction shape {pred.shape} != target shape {target.shape}")
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def epicardium(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the whole left ventricle (LV cavity ∪ myocardium, labels 1 and 2)."""
    labels = np.asarray(labels)
    return (labels == LV) | (labels == MYO)


def dice_per_structure(pred_labels: np.ndarray, target_labels: np.ndarray) -> dict[str, float]:
    """Dice of one label map against another for each structure: {"lv", "myo", "la"} (labels 1, 2, 3).

    Both arrays are integer label maps of the same shape (one image, or a stack treated as one volume;
    use `dice_per_image` for a per-image breakdown).
    """
    pred_labels = np.asarray(pred_labels)
    target_labels = np.asarray(target_labels)
    return {name: dice(pred_labels == value, target_labels == value) for name, value in STRUCTURES.items()}


def dice_per_image(pred_labels: np.ndarray, target_labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image Dice for stacks (N, H, W): {"lv", "myo", "la", "epi"} -> float64 arrays of length N.

    Per-image values are what paired tests (Wilcoxon) and per-row filtering need; averaging them gives
    the mean Dice over images that the seed papers report.
    """
    pred_labels = np.asarray(pred_labels)
    target_labels = np.asarray(target_labels)
    if pred_labels.shape != target_labels.shape or pred_labels.ndim != 3:
        raise ValueError(
            f"dice_per_image expects two (N, H, W) stacks of the same shape, got {pred_labels.shape} "
            f"and {target_labels.shape}"
        )
    result: dict[str, np.ndarray] = {}
    masks = {"lv": lambda a: a == LV, "myo": lambda a: a == MYO, "la": lambda a: a == LA, "epi": epicardium}
    for name, select in masks.items():
        pred, target = select(pred_labels), select(target_labels)
        # Vectorised form of `dice` over the image axis, same empty-is-1.0 convention.
        overlap = np.logical_and(pred, target).sum(axis=(1, 2)).astype(np.float64)
        total = (pred.sum(axis=(1, 2)) + target.sum(axis=(1, 2))).astype(np.float64)
        values = np.ones(len(pred_labels), dtype=np.float64)
        nonempty = total > 0
        values[nonempty] = 2.0 * overlap[nonempty] / total[nonempty]
        result[name] = values
    return result
