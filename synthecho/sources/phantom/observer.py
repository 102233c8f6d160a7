"""Expert-like label noise: the written `_gt` masks are one observer's contours of the rendering truth.

CAMUS labels are manual contours, and experts disagree: the CAMUS paper (Leclerc et al. 2019) reports
inter-observer Dice per structure and phase. We use approximately these values from its inter-observer
table: LV endocardium ~0.92 at ED and ~0.87 at ES, LV epicardium (cavity + wall) ~0.91 at ED and ~0.89
at ES. That table has no left-atrium row; for the LA we assume ~0.89 at both phases.

Inter-observer Dice compares two observers; each deviates from the truth independently, so their
contour displacements add in quadrature and one observer's Dice to the truth is 1 - (1 - D) / sqrt(2)
(`target_dice`). An observer redraws each structure (LV cavity, epicardium, atrium) on its own: grown or
shrunk by a habit (one value per structure, shared by ED and ES of the view, as the CAMUS protocol asks
for consistency between the instants), then moved by a smooth random displacement field with a ~30 mm
correlation length (where to put the apex, the base, a wall), so corners and straight walls stay what
they are. `OBSERVER_SIGMA_MM` (RMS displacement) is tuned so that the measured label-vs-render Dice
meets the target; benchmarks/phantom_stats.py measures it, and two independent observers' Dice against
the paper's. Contours are then nested again (cavity inside epicardium, atrium outside) and clipped to
the fan.
"""

from __future__ import annotations

import math

import numpy as np

STRUCTURES = ("endo", "epi", "la")
INTER_OBSERVER_DICE = {
    ("endo", "ED"): 0.92,
    ("endo", "ES"): 0.87,
    ("epi", "ED"): 0.91,
    ("epi", "ES"): 0.89,
    ("la", "ED"): 0.89,  # assumed: no LA row in the paper's inter-observer table
    ("la", "ES"): 0.89,
}
OBSERVER_SIGMA_MM = {
    ("endo", "ED"): 1.8,
    ("endo", "ES"): 2.4,
    ("epi", "ED"): 2.9,
    ("epi", "ES"): 3.3,
    ("la", "ED"): 2.0,
    ("la", "ES"): 2.5,
}
HABIT_SHARE = 0.5  # share of the offset variance that is the observer's habit (same at ED and ES)
CORRELATION_MM = 30.0


def target_dice(structure: str, phase: str) -> float:
    """One observer's expected Dice to the truth, from the inter-observer Dice of two observers."""
    return 1.0 - (1.0 - INTER_OBSERVER_DICE[(structure, phase)]) / math.sqrt(2.0)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float]
) -> np.ndarray:
    """Unit-variance Gaussian random field on the pixel grid with a CORRELATION_MM correlation length."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    cell = CORRELATION_MM / 3.0
    coarse_shape = (int(shape[0] * spacing[0] / cell) + 4, int(shape[1] * spacing[1] / cell) + 4)
    coarse = gaussian_filter(rng.standard_normal(coarse_shape), 1.5, mode="wrap")
    coarse /= coarse.std() + 1e-12
    rows = np.arange(shape[0]) * spacing[0] / cell + 1.0
    cols = np.arange(shape[1]) * spacing[1] / cell + 1.0
    grid = np.meshgrid(rows, cols, indexing="ij")
    return map_coordinates(coarse, grid, order=1)


class Observer:
    """One observer of one view: draws its habits and contour fields once, then contours any frame."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float]):
        self.shape, self.spacing = shape, spacing
        self.habit = {name: float(rng.standard_normal()) for name in STRUCTURES}
        self.fields = {
            (name, phase, axis): smooth_field(rng, shape, spacing)
            for name in STRUCTURES
            for phase in "01"
            for axis in "yx"
        }
        self.grid = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)

    def sigma(self, structure: str, phase: float) -> float:
        ed, es = OBSERVER_SIGMA_MM[(structure, "ED")], OBSERVER_SIGMA_MM[(structure, "ES")]
        return (1.0 - phase) * ed + phase * es

    def displacement(self, structure: str, phase: float) -> np.ndarray:
        """(2, H, W) smooth local displacement in pixels (rows, cols) of `structure` at `phase`."""
        weight = math.hypot(1.0 - phase, phase)
        local = math.sqrt(1.0 - HABIT_SHARE) * self.sigma(structure, phase)
        return np.stack(
            [
                (
                    (1.0 - phase) * self.fields[(structure, "0", axis)]
                    + phase * self.fields[(structure, "1", axis)]
                )
                / weight
                * local
                / step
                for axis, step in zip("yx", self.spacing, strict=True)
            ]
        )

    def draw(self, region: np.ndarray, structure: str, phase: float) -> np.ndarray:
        """The observer's outline of one region: grown by its habit, locally displaced."""
        from scipy.ndimage import map_coordinates

        rows, cols = np.nonzero(region)
        centre = np.array([rows.mean(), cols.mean()])[:, None, None]
        radius_mm = math.sqrt(region.sum() * self.spacing[0] * self.spacing[1] / math.pi)
        # A contour moved outward by h mm everywhere is, for a convex outline, a scaling by 1 + h / r.
        grow = math.sqrt(HABIT_SHARE) * self.sigma(structure, phase) * self.habit[structure]
        scale = max(1.0 + grow / radius_mm, 0.5)
        source = centre + (self.grid - centre) / scale - self.displacement(structure, phase)
        return map_coordinates(region.astype(np.float32), source, order=1, mode="constant") >= 0.5

    def contour(self, truth: np.ndarray, phase: float, sector: np.ndarray) -> np.ndarray:
        """The observer's label map of one clean frame (uint8, CAMUS labels), clipped to `sector`."""
        regions = {"endo": truth == 1, "epi": (truth == 1) | (truth == 2), "la": truth == 3}
        drawn = {}
        for name, region in regions.items():
            outline = self.draw(region, name, phase) if region.any() else region
            # At tiny sizes a thin structure can vanish when redrawn: keep the truth rather than no label.
            drawn[name] = outline if outline.any() or not region.any() else region
        labels = np.zeros(self.shape, dtype=np.uint8)
        labels[drawn["la"]] = 3
        labels[drawn["epi"] | drawn["endo"]] = 2
        labels[drawn["endo"]] = 1
        return np.where(sector, labels, 0).astype(np.uint8)
