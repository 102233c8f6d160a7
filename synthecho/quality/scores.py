"""Per-row quality checks of generated triplets.

Each check is a pure numpy function over stacks of frames, so the filter stage, the tests and anyone
re-scoring a published corpus compute the same numbers:

- degenerate output: NaN/inf, a constant frame, an empty sector, saturated near-binary grey levels
  (`degenerate_reason`, `is_degenerate`);
- mask consistency: Dice per structure between the segmenter's prediction and the row's mask, against
  the recipe thresholds (`mask_dice`, `mask_consistent`);
- anatomical plausibility, for masks drawn by the segmenter itself (its own Dice would be 1 by
  construction): all three structures present, left atrium below the left ventricle, each structure's
  area within the range seen on real training masks (`AnatomyLimits`, `implausibility`);
- memorisation: the speckle similarity to the row's own source frame warped by its perturbation, to its
  record's other phase and to every real train frame, against a threshold calibrated on a null of
  legitimate same-anatomy pairs (`quality.copies`);
- attributes: the filter classifier's probability of the claimed view and phase against the recipe's
  thresholds (`quality.attributes`).

Reject reasons are checked in this order and the first failing one is recorded (`REJECT_REASONS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthecho.labels import LA, LV, STRUCTURES
from synthecho.metrics import dice_per_image

REJECT_REASONS = ("degenerate", "mask_inconsistent", "implausible_anatomy", "near_copy", "attribute_mismatch")

# A frame whose grey levels vary by less than this (standard deviation, 0..255 scale) shows nothing.
CONSTANT_STD = 1.0
# A pixel is "lit" above this grey level; a frame with fewer lit pixels than MIN_LIT_FRACTION of its area
# has an empty sector (real apical frames light roughly half of the square).
LIT_LEVEL = 8
MIN_LIT_FRACTION = 0.05
# Saturated output (a sampler that diverged, an overflow in the uint8 conversion) is near-binary: real
# frames show >100 distinct grey levels and well under 1% of their lit pixels at the top of the range.
MIN_GREY_LEVELS = 16
SATURATED_LEVEL = 250
MAX_SATURATED_FRACTION = 0.5


# --- degenerate output ------------------------------------------------------------------------------


def degenerate_reason(image: np.ndarray) -> str | None:
    """Why a frame is unusable ("non-finite values", "constant image", "empty sector", "saturated: ..."),
    or None.

    Accepts uint8 frames or float frames; floats with a maximum <= 1 are read as [0, 1] intensities and
    scaled to 0..255 so the same thresholds apply to a generator's raw output and to decoded PNGs.
    """
    values = np.asarray(image)
    if values.size == 0:
        return "empty sector"
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            return "non-finite values"
        values = values.astype(np.float64)
        if values.max() <= 1.0:
            values = values * 255.0
    else:
        values = values.astype(np.float64)
    if values.std() < CONSTANT_STD:
        return "constant image"
    lit = values > LIT_LEVEL
    if np.mean(lit) < MIN_LIT_FRACTION:
        return "empty sector"
    levels = len(np.unique(np.round(values)))
    if levels < MIN_GREY_LEVELS:
        return f"saturated: only {levels} grey levels"
    saturated = float(np.mean(values[lit] >= SATURATED_LEVEL))
    if saturated > MAX_SATURATED_FRACTION:
        return f"saturated: {saturated:.0%} of the sector at >= {SATURATED_LEVEL}"
    return None


def is_degenerate(image: np.ndarray) -> bool:
    """True for a frame with NaN/inf values, a constant frame, an (almost) empty sector or saturated
    (near-binary) grey levels."""
    return degenerate_reason(image) is not None


# --- mask consistency -------------------------------------------------------------------------------


def mask_dice(predicted: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row Dice of the segmenter's label maps vs the rows' masks: {"lv", "myo", "la"} -> (N,) arrays."""
    per_image = dice_per_image(predicted, masks)
    return {name: per_image[name] for name in STRUCTURES}


def mask_consistent(dice: dict[str, np.ndarray], thresholds: dict[str, float]) -> np.ndarray:
    """(N,) bool: every structure's Dice reaches its threshold (a structure missing from `thresholds`
    is not judged)."""
    unknown = set(thresholds) - set(STRUCTURES)
    if unknown:
        raise ValueError(f"dice thresholds for unknown structures {sorted(unknown)}; use {list(STRUCTURES)}")
    count = len(next(iter(dice.values())))
    ok = np.ones(count, dtype=bool)
    for name, threshold in thresholds.items():
        ok &= dice[name] >= threshold
    return ok


# --- anatomical plausibility ------------------------------------------------------------------------


@dataclass
class AnatomyLimits:
    """Allowed area fraction (structure pixels / frame pixels) per structure, from real masks."""

    area_min: dict[str, float]
    area_max: dict[str, float]

    @classmethod
    def from_masks(cls, masks: np.ndarray, margin: float = 1.5) -> AnatomyLimits:
        """Range of each structure's area fraction over real (N, H, W) masks, widened by `margin`
        (divide the minimum, multiply the maximum): generated hearts may be somewhat smaller or larger
        than any real training heart, but not several times so."""
        if len(masks) == 0:
            raise ValueError("anatomy limits need at least one real mask")
        fractions = {name: (masks == value).mean(axis=(1, 2)) for name, value in STRUCTURES.items()}
        return cls(
            area_min={name: float(f.min() / margin) for name, f in fractions.items()},
            area_max={name: float(min(1.0, f.max() * margin)) for name, f in fractions.items()},
        )

    def to_dict(self) -> dict:
        return {"area_min": self.area_min, "area_max": self.area_max}


def implausibility(mask: np.ndarray, limits: AnatomyLimits) -> str | None:
    """Why one (H, W) label map is not a plausible apical view, or None.

    Apical views are acquired with the probe at the top of the frame: the apex is up and the left atrium
    lies below the left ventricle (larger row index), in both 2CH and 4CH.
    """
    area = mask.size
    for name, value in STRUCTURES.items():
        pixels = int(np.count_nonzero(mask == value))
        if pixels == 0:
            return f"{name} missing"
        fraction = pixels / area
        if not limits.area_min[name] <= fraction <= limits.area_max[name]:
            return (
                f"{name} area {fraction:.3f} outside the real range "
                f"[{limits.area_min[name]:.3f}, {limits.area_max[name]:.3f}]"
            )
    lv_row = np.argwhere(mask == LV)[:, 0].mean()
    la_row = np.argwhere(mask == LA)[:, 0].mean()
    if la_row <= lv_row:
        return "la not below lv"
    return None
