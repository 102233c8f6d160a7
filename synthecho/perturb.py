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
  10 control points along rows but 4 along columns. The default grid is 10 x 10 (what the (10, 10, ...)
  setting was evidently meant to give, and what the committed corpora used); `elastic_control_points_col`
  = 4 gives the grid their code actually ran. A row's `mask_transform` column records only
  `elastic_control_points`: the column count, when it differs, is in the plan's parameters and the
  recipe the manifest holds (the published schema stays as it is for every existing row).
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
    elastic_control_points: coarse B-spline grid size along rows (and columns), border ring locked to zero.
    elastic_control_points_col: grid size along columns; None = elastic_control_points.
    elastic_max_displacement: B-spline coefficient bound as a fraction of the image size (30 px at 256).
    """

    degrees: float = 5.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.8, 1.05)
    shear: float = 5.0
    elastic_control_points: int = 10
    elastic_max_displacement: float = 30 / 256
    translate_col: float = 0.0
    elastic_control_points_col: int | None = None

    def __post_init__(self) -> None:
        for name in ("degrees", "translate", "translate_col", "shear", "elastic_max_displacement"):
            if getattr(self, name) < 0:
                raise PerturbError(f"PerturbConfig.{name} = {getattr(self, name)} must be >= 0")
        low, high = self.scale
        if not 0 < low <= high:
            raise PerturbError(f"PerturbConfig.scale = {self.scale} must be (low, high) with 0 < low <= high")
        if self.shear >= 90:
            raise PerturbError(f"PerturbConfig.shear = {self.shear} must be below 90 degrees")
        for name in ("elastic_control_points", "elastic_control_points_col"):
            value = getattr(self, name)
            if value is not None and value < 4:
                # A cubic B-spline needs 4 coefficients per axis; the locked ring takes 2 of them.
                raise PerturbError(f"PerturbConfig.{name} = {value} must be >= 4")

    def grid_keys(self) -> dict:
        """The control-point counts a parameter dict carries: the column count only when it differs, so
        the default (square) grid leaves every stored parameter set exactly as it was."""
        keys = {"elastic_control_points": int(self.elastic_control_points)}
        cols = self.elastic_control_points_col
        if cols is not None and cols != self.elastic_control_points:
            keys["elastic_control_points_col"] = int(cols)
        return keys


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
        **config.grid_keys(),
        "identity": True,
    }


def sample_transform(seed: int, config: PerturbConfig) -> dict:
    """Draw one perturbation from `seed` (numpy Generator): plain Python floats/ints/bools only.

    Keys: angle (degrees), translate_row / translate_col (fractions of height / width), scale,
    shear (x-shear, degrees), elastic_seed (seeds the coarse displacement grid), elastic_max_displacement
    (fraction of the image size), elastic_control_points (+ elastic_control_points_col when the grid is
    not square), identity (always False here).
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
        **config.grid_keys(),
        "identity": False,
    }


def _elastic_displacement(shape: tuple[int, int], params: dict) -> np.ndarray:
    """(2, H, W) displacement in pixels (rows, cols): a cubic B-spline over a coarse random grid."""
    from scipy.ndimage import map_coordinates

    height, width = shape
    n_rows = params["elastic_control_points"]
    n_cols = params.get("elastic_control_points_col", n_rows)
    bound = params["elastic_max_displacement"] * np.array([height, width], dtype=np.float64)
    coarse = np.random.default_rng(params["elastic_seed"]).uniform(-1.0, 1.0, size=(2, n_rows, n_cols))
    coarse *= bound[:, None, None]
    coarse[:, [0, -1], :] = 0.0  # locked_borders=1: the outer ring of coefficients does not move
    coarse[:, :, [0, -1]] = 0.0
    # A cubic B-spline grid of n coefficients covers n - 3 cells; the image spans them, i.e. coefficient
    # coordinates 1 .. n - 2 (as SimpleITK's BSplineTransform, which torchio uses, lays them out).
    rows = np.linspace(1.0, n_rows - 2.0, height)
    cols = np.linspace(1.0, n_cols - 2.0, width)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    # prefilter=False: the coarse values are B-spline coefficients, not samples to interpolate through.
    return np.stack([map_coordinates(c, grid, order=3, prefilter=False, mode="nearest") for c in coarse])


def _source_coordinates(shape: tuple[int, int], params: dict) -> np.ndarray:
    """(2, H, W) input (row, col) coordinates for every output pixel: affine first, then elastic."""
    height, width = shape
    out = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij")).astype(np.float64)

    # 1. Elastic (applied last, so undone first): out(p) = affined(p + d(p)).
    points = out + _elastic_displacement(shape, params)
    return _affine_source(points, shape, params)


def _affine_source(points: np.ndarray, shape: tuple[int, int], params: dict) -> np.ndarray:
    """Input (row, col) coordinates of output `points` (2, H, W) under the affine part of `params`."""
    height, width = shape
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    # Affine about the image centre, torchvision's R(angle) * scale * x-shear, in (x=col, y=row).
    angle, shear = np.deg2rad(params["angle"]), np.deg2rad(params["shear"])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward_xy = params["scale"] * rotation @ np.array([[1.0, -np.tan(shear)], [0.0, 1.0]])
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) <-> (row, col)
    inverse_rc = swap @ np.linalg.inv(forward_xy) @ swap
    shift = np.array([params["translate_row"] * height, params["translate_col"] * width])
    relative = points - (centre + shift)[:, None, None]
    return np.einsum("ij,jhw->ihw", inverse_rc, relative) + centre[:, None, None]


def affine_warp(array: np.ndarray, params: dict, order: int) -> np.ndarray:
    """Warp a 2-D array by the affine part of `params` (angle, translate_row/col, scale, shear) about its
    centre: `order` 0 for label maps, 1 for images; what maps from outside the array becomes 0."""
    from scipy.ndimage import map_coordinates

    shape = array.shape
    out = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")).astype(np.float64)
    coordinates = _affine_source(out, shape, params)
    return map_coordinates(array, coordinates, order=order, mode="constant", cval=0).astype(array.dtype)


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


# --- a real frame moved with its mask (references of the copy check and of the attribute ceiling) -----


def warp_frame(
    image: np.ndarray, mask: np.ndarray, sector: np.ndarray, params: dict
) -> tuple[np.ndarray, np.ndarray]:
    """A real frame and its mask moved by a row's perturbation `params` (its `mask_transform`).

    One coordinate map serves both: the image is sampled bilinearly (order 1), the mask with nearest
    neighbour (order 0), so the mask is exactly `apply_transform(mask, sector, params)`. Both are zero
    outside `sector`, as a generated frame and its conditioning mask are. The image keeps its dtype
    (integer frames are rounded). This is what a generator that copied its source frame would emit for
    the row: the reference of the copy check and the warped-real counterpart of the attribute audit.
    """
    from scipy.ndimage import map_coordinates

    mask, sector = _check_inputs(mask, sector)
    image = np.asarray(image)
    if image.shape != mask.shape:
        raise PerturbError(f"image shape {image.shape} != mask shape {mask.shape}")
    if params["identity"]:
        warped_image, warped_mask = image.copy(), apply_transform(mask, sector, params)
    else:
        coordinates = _source_coordinates(mask.shape, params)
        warped_mask = map_coordinates(mask, coordinates, order=0, mode="constant", cval=0).astype(np.uint8)
        values = map_coordinates(image.astype(np.float64), coordinates, order=1, mode="constant", cval=0)
        if image.dtype.kind in "ui":
            info = np.iinfo(image.dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        warped_image = values.astype(image.dtype)
    warped_image[~sector] = 0
    warped_mask[~sector] = 0
    return warped_image, warped_mask


def restrict_scale(params: dict, config: PerturbConfig, low: float, high: float) -> dict:
    """`params` with its scale drawn in [low, high] ∩ config.scale instead of config.scale.

    The same uniform draw is reused: its relative position in the seed's range becomes its position in
    the narrowed range, so every other parameter (and the row's seed) stays as it was and the two plans
    differ in the scale alone. An empty intersection takes the end of config.scale nearest [low, high].
    """
    first, last = config.scale
    lo, hi = max(first, low), min(last, high)
    if lo > hi:  # [low, high] lies wholly outside the seed's range
        lo = hi = first if high < first else last
    position = 0.0 if last == first else (params["scale"] - first) / (last - first)
    return {**params, "scale": float(lo + position * (hi - lo))}
