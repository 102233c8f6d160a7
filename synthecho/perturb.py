"""Perturbed copies of real masks, used as conditioning label maps (as Echo from noise did).

Echo from noise (`data_preparation/augment_camus_labels.py`) made 5 variants of every real label map with

    torchvision RandomAffine(degrees=(-5, 5), translate=(0, 0.05), scale=(0.8, 1.05), shear=5)
    torchio RandomElasticDeformation(num_control_points=(10, 10, 4), locked_borders=1,
                                     max_displacement=(0, 30, 30), image_interpolation="nearest")

on 256 x 256 maps, then clipped the labels to the ultrasound sector of the real image. This module does
the same with numpy + scipy only, resolution-independently (translations and displacements are fractions
of the image size), and splits it in two so each variant is reproducible from a few stored scalars:
`sample_transform` draws the parameters from a seed, `apply_transform` applies them.

What maps to what:
- torchvision's translate=(0, 0.05) means "horizontal up to 0 x width, vertical up to 0.05 x height",
  so `translate` bounds the row (vertical) shift and `translate_col` (default 0) the column shift.
  shear=5 is an x-shear in [-5, 5] degrees, y-shear 0, as torchvision draws it for a single number.
- torchio's elastic field is a cubic B-spline whose coefficients are uniform in [-max, max] on a coarse
  grid, with the outermost ring of coefficients locked to 0; we evaluate the same B-spline with
  `map_coordinates(order=3, prefilter=False)`. Their 2-D maps were (1, 1, H, W) tensors, so torchio's
  three axes were (channel-like 1, rows, columns): 30 px displacement on rows and columns and, strictly,
  10 control points along rows but 4 along columns. We use one `elastic_control_points` for both axes
  (10 x 10), which is what the (10, 10, ...) setting was evidently meant to give.
- Both transforms are composed into one coordinate map and sampled once with nearest-neighbour
  (order=0), so labels stay in {0, 1, 2, 3} and are not rounded twice.
The sector itself is never perturbed: it comes from the real image the generated one replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.labels import NUM_MASK_CLASSES

PARAM_KEYS = (
    "angle",
    "translate_row",
    "translate_col",
    "scale",
    "shear",
    "elastic_seed",
    "elastic_max_displacement",
    "elastic_control_points",
    "identity",
)


class PerturbError(SynthechoError, ValueError):
    """Bad perturbation input (a ValueError, printed cleanly by the CLI)."""


@dataclass(frozen=True)
class PerturbConfig:
    """Ranges of the random perturbation; defaults reproduce Echo from noise at any resolution.

    degrees: rotation drawn from [-degrees, degrees].
    translate: row (vertical) shift drawn from [-translate, translate] x image height.
    translate_col: column (horizontal) shift bound as a fraction of the width (0, as in the original).
    scale: isotropic zoom drawn from [scale[0], scale[1]].
    shear: x-shear angle drawn from [-shear, shear] degrees.
    elastic_control_points: coarse B-spline grid size per axis, border ring locked to zero.
    elastic_max_displacement: B-spline coefficient bound as a fraction of the image size (30 px at 256).
    """

    degrees: float = 5.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.8, 1.05)
    shear: float = 5.0
    elastic_control_points: int = 10
    elastic_max_displacement: float = 30 / 256
    translate_col: float = 0.0

    def __post_init__(self) -> None:
        for name in ("degrees", "translate", "translate_col", "shear", "elastic_max_displacement"):
            if getattr(self, name) < 0:
                raise PerturbError(f"PerturbConfig.{name} = {getattr(self, name)} must be >= 0")
        low, high = self.scale
        if not 0 < low <= high:
            raise PerturbError(f"PerturbConfig.scale = {self.scale} must be (low, high) with 0 < low <= high")
        if self.shear >= 90:
            raise PerturbError(f"PerturbConfig.shear = {self.shear} must be below 90 degrees")
        if self.elastic_control_points < 4:
            # A cubic B-spline needs 4 coefficients per axis; the locked ring takes 2 of them.
            raise PerturbError(
                f"PerturbConfig.elastic_control_points = {self.elastic_control_points} must be >= 4"
            )


def identity_transform(config: PerturbConfig | None = None) -> dict:
    """Parameters that leave a mask unchanged (apart from clipping it to the sector)."""
    config = config or PerturbConfig()
    return {
        "angle": 0.0,
        "translate_row": 0.0,
        "translate_col": 0.0,
        "scale": 1.0,
        "shear": 0.0,
        "elastic_seed": 0,
        "elastic_max_displacement": 0.0,
        "elastic_control_points": int(config.elastic_control_points),
        "identity": True,
    }


def sample_transform(seed: int, config: PerturbConfig) -> dict:
    """Draw one perturbation from `seed` (numpy Generator): plain Python floats/ints/bools only.

    Keys: angle (degrees), translate_row / translate_col (fractions of height / width), scale,
    shear (x-shear, degrees), elastic_seed (seeds the coarse displacement grid), elastic_max_displacement
    (fraction of the image size), elastic_control_points, identity (always False here).
    """
    rng = np.random.default_rng(seed)
    # Fixed draw order: changing it would silently change every published variant.
    angle = rng.uniform(-config.degrees, config.degrees)
    translate_row = rng.uniform(-config.translate, config.translate)
    translate_col = rng.uniform(-config.translate_col, config.translate_col)
    scale = rng.uniform(config.scale[0], config.scale[1])
    shear = rng.uniform(-config.shear, config.shear)
    elastic_seed = rng.integers(0, 2**31 - 1)
    return {
        "angle": float(angle),
        "translate_row": float(translate_row),
        "translate_col": float(translate_col),
        "scale": float(scale),
        "shear": float(shear),
        "elastic_seed": int(elastic_seed),
        "elastic_max_displacement": float(config.elastic_max_displacement),
        "elastic_control_points": int(config.elastic_control_points),
        "identity": False,
    }


def _elastic_displacement(shape: tuple[int, int], params: dict) -> np.ndarray:
    """(2, H, W) displacement in pixels (rows, cols): a cubic B-spline over a coarse random grid."""
    from scipy.ndimage import map_coordinates

    height, width = shape
    n = params["elastic_control_points"]
    bound = params["elastic_max_displacement"] * np.array([height, width], dtype=np.float64)
    coarse = np.random.default_rng(params["elastic_seed"]).uniform(-1.0, 1.0, size=(2, n, n))
    coarse *= bound[:, None, None]
    coarse[:, [0, -1], :] = 0.0  # locked_borders=1: the outer ring of coefficients does not move
    coarse[:, :, [0, -1]] = 0.0
    # A cubic B-spline grid of n coefficients covers n - 3 cells; the image spans them, i.e. coefficient
    # coordinates 1 .. n - 2 (as SimpleITK's BSplineTransform, which torchio uses, lays them out).
    rows = np.linspace(1.0, n - 2.0, height)
    cols = np.linspace(1.0, n - 2.0, width)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    # prefilter=False: the coarse values are B-spline coefficients, not samples to interpolate through.
    return np.stack([map_coordinates(c, grid, order=3, prefilter=False, mode="nearest") for c in coarse])


def _source_coordinates(shape: tuple[int, int], params: dict) -> np.ndarray:
    """(2, H, W) input (row, col) coordinates for every output pixel: affine first, then elastic."""
    height, width = shape
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    out = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij")).astype(np.float64)

    # 1. Elastic (applied last, so undone first): out(p) = affined(p + d(p)).
    points = out + _elastic_displacement(shape, params)

    # 2. Affine about the image centre, torchvision's R(angle) * scale * x-shear, in (x=col, y=row).
    angle, shear = np.deg2rad(params["angle"]), np.deg2rad(params["shear"])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward_xy = params["scale"] * rotation @ np.array([[1.0, -np.tan(shear)], [0.0, 1.0]])
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) <-> (row, col)
    inverse_rc = swap @ np.linalg.inv(forward_xy) @ swap
    shift = np.array([params["translate_row"] * height, params["translate_col"] * width])
    relative = points - (centre + shift)[:, None, None]
    return np.einsum("ij,jhw->ihw", inverse_rc, relative) + centre[:, None, None]


def _check_inputs(mask: np.ndarray, sector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask)
    sector = np.asarray(sector, dtype=bool)
    if mask.ndim != 2:
        raise PerturbError(f"mask must be a 2-D label map, got shape {mask.shape}")
    if mask.shape != sector.shape:
        raise PerturbError(f"mask shape {mask.shape} != sector shape {sector.shape}")
    if mask.size and (mask.min() < 0 or mask.max() >= NUM_MASK_CLASSES):
        raise PerturbError(
            f"mask labels must be in 0..{NUM_MASK_CLASSES - 1}, got {np.unique(mask).tolist()}"
        )
    return mask.astype(np.uint8), sector


def apply_transform(mask: np.ndarray, sector: np.ndarray, params: dict) -> np.ndarray:
    """Perturb a CAMUS mask (0..3) with `params` from `sample_transform`; clip the result to `sector`.

    Returns uint8 labels in {0..3}, zero wherever `sector` is False; pixels mapped from outside the image
    become background. `identity=True` returns the mask itself, clipped to the sector.
    """
    from scipy.ndimage import map_coordinates

    mask, sector = _check_inputs(mask, sector)
    missing = [key for key in PARAM_KEYS if key not in params]
    if missing:
        raise PerturbError(f"perturbation params lack {missing}; make them with sample_transform()")
    if params["identity"]:
        perturbed = mask.copy()
    else:
        coordinates = _source_coordinates(mask.shape, params)
        perturbed = map_coordinates(mask, coordinates, order=0, mode="constant", cval=0).astype(np.uint8)
    perturbed[~sector] = 0
    return perturbed


def perturb_mask(
    mask: np.ndarray, sector: np.ndarray, seed: int, config: PerturbConfig | None = None
) -> tuple[np.ndarray, dict]:
    """Sample a perturbation from `seed` and apply it: (perturbed mask, params to store with the row)."""
    params = sample_transform(seed, config or PerturbConfig())
    return apply_transform(mask, sector, params), params
