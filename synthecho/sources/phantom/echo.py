"""Image formation: one view's half sequence rendered as echo on a polar beam grid, then scan-converted.

1. Tissue amplitude per class (sparse, weak scatterers in blood; textured myocardium; bright, patchy
   pericardium), softened at boundaries (partial volume across the elevation slice).
2. Scatterers that belong to the tissue: each frame samples two fixed complex Gaussian fields at the ED
   position of its tissue (`anatomy.material_points`), so speckle moves with the wall, and mixes the
   second field in as the tissue moves (out-of-plane motion goes with in-plane motion) and as the cycle
   advances, so ED and ES texture are no longer copies of each other.
3. A point-spread function short axially and wide laterally (constant in angle, so wider with depth),
   plus a weak, wider side-lobe term that smears bright walls into the cavities.
4. Acquisition: depth attenuation after partial time-gain compensation, weaker beams at the fan edges,
   near-field haze with reverberation bands, apical clutter over the apex, dropout of the wall that
   runs parallel to the beams, rib shadows and lung (pleural line, A-line reverberations, shadow) at
   the sector edges, electronic noise. Artefacts are fixed to the probe: they do not move with the heart.
5. Log compression to uint8 and scan conversion; exactly 0 outside the fan, >= 1 inside.
Image quality (Good / Medium / Poor, per view) scales noise, haze, clutter, side lobes, dropout,
attenuation, myocardial brightness and how often ribs and lung get in the way.
"""

from __future__ import annotations

import math

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.sources.phantom.anatomy import (
    BACKGROUND,
    BLOOD_CLASSES,
    MYOCARDIUM,
    PAPILLARY,
    PERICARDIUM,
    THIN_WALL,
    Layout,
    ViewGeometry,
    labels_of,
    lerp_shape,
    material_points,
    tissue_classes,
)

# Scatterer RMS amplitude per tissue class, relative to myocardium (0 dB). Blood is ~ -35 dB and sparse.
CLASS_AMPLITUDE = np.array([0.2, 0.018, 1.0, 0.018, 0.018, 0.018, 0.9, 3.0, 1.3, 0.7], dtype=np.float64)
BLOOD_SCATTERER_FRACTION = 0.08  # "very few weak scatterers" in the blood pools

# How image quality degrades the acquisition. Amplitudes are relative to myocardium.
#   noise: electronic noise; haze, haze_depth (mm): near-field haze; clutter: diffuse clutter everywhere;
#   dropout: lateral-wall dropout depth; myo_gain: myocardial brightness; atten: dB per mm of range left
#   after TGC; sidelobe: side-lobe level; apical: apical clutter; rib, lung: probability of a rib shadow /
#   lung at the sector edge.
QUALITY_PARAMETERS = {
    "Good": dict(noise=0.006, haze=0.35, haze_depth=12.0, clutter=0.010, dropout=0.25, myo_gain=1.0,
                 atten=0.05, sidelobe=0.10, apical=0.05, rib=0.25, lung=0.15),
    "Medium": dict(noise=0.012, haze=0.5, haze_depth=20.0, clutter=0.030, dropout=0.55, myo_gain=0.85,
                   atten=0.065, sidelobe=0.18, apical=0.12, rib=0.5, lung=0.3),
    "Poor": dict(noise=0.025, haze=0.7, haze_depth=35.0, clutter=0.075, dropout=0.85, myo_gain=0.65,
                 atten=0.09, sidelobe=0.28, apical=0.22, rib=0.75, lung=0.5),
}  # fmt: skip

DYNAMIC_RANGE_DB = 50.0  # log compression: 50 dB of echo amplitude -> [0, 255]
DISPLAY_GAIN_DB = -18.0  # puts average myocardium (0 dB) at mid-grey (~150) and pericardium near white
SPECKLE_DECORRELATION_MM = 5.0  # tissue displacement over which its speckle decorrelates
CYCLE_DECORRELATION = 0.35  # decorrelation rate over ED -> ES even where nothing moves in plane
SIDELOBE_WIDTH = 4.0  # side-lobe spread, in main-lobe widths (lateral)


def smooth_lognormal(rng: np.random.Generator, shape, sigma_px, log_std: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    field /= field.std() + 1e-12
    return np.exp(log_std * field - 0.5 * log_std**2)


class BeamGrid:
    """The polar (range x angle) grid that resolves the PSF, and where each output pixel falls on it."""

    def __init__(self, g: ViewGeometry):
        # Never finer than ~1 output pixel, so tiny test images still show speckle, not a smooth average.
        self.sigma_axial = max(0.45, 0.9 * g.spacing_depth)
        self.sigma_angle = max(1.6, 1.25 * g.spacing_lateral) / (0.5 * g.max_range)
        self.d_range, self.d_angle = self.sigma_axial / 1.2, self.sigma_angle / 1.2
        ranges = np.arange(0.0, g.max_range + 3 * self.d_range, self.d_range)
        self.angle_edge = g.half_angle + 3 * self.d_angle
        angles = np.arange(-self.angle_edge, self.angle_edge + self.d_angle / 2, self.d_angle)
        self.r, self.a = np.meshgrid(ranges, angles, indexing="ij")
        self.x = self.r * np.sin(self.a)
        self.y = self.r * np.cos(self.a) - g.apex_offset
        self.shape = self.r.shape
        self.psf_px = (self.sigma_axial / self.d_range, self.sigma_angle / self.d_angle)
        self.psf_gain = math.sqrt(4 * math.pi * self.psf_px[0] * self.psf_px[1])  # unit-RMS stays unit RMS
        self.apex_offset = g.apex_offset
        rows, cols = np.mgrid[0 : g.height, 0 : g.width].astype(np.float64)
        self.pixel_x = (cols - (g.width - 1) / 2.0) * g.spacing_lateral
        self.pixel_y = rows * g.spacing_depth
        pixel_r = np.hypot(self.pixel_x, self.pixel_y + g.apex_offset)
        pixel_a = np.arctan2(self.pixel_x, self.pixel_y + g.apex_offset)
        self.sector = (pixel_r <= g.max_range) & (np.abs(pixel_a) <= g.half_angle)
        self.scan_coords = self.coords(pixel_r, pixel_a)

    def coords(self, r: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.stack([r / self.d_range, (a + self.angle_edge) / self.d_angle])

    def mm_sigma(self, mm: float) -> tuple[float, float]:
        """A blur of `mm` millimetres in grid cells (lateral cells measured at mid-depth)."""
        return mm / self.d_range, mm / (0.5 * self.r.max() * self.d_angle)


def probe_artefacts(
    g: ViewGeometry, grid: BeamGrid, params: dict, rng, texture
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed to the probe: (multiplicative shadow, additive clutter amplitude) on the beam grid.

    Ribs: an acoustic shadow behind a rib near a sector edge (bright rib surface, then -10..-20 dB).
    Lung: at one edge, from the pleura on, a bright pleural line, fading A-line reverberations at
    multiples of its depth and nothing of the heart behind. Apical clutter: a stationary haze over the
    apex that greys the apical cavity.
    """
    r, a = grid.r, grid.a
    shadow = np.ones(grid.shape)
    clutter = np.zeros(grid.shape)
    for _ in range(int(rng.random() < params["rib"]) + int(rng.random() < 0.3 * params["rib"])):
        side = 1.0 if rng.random() < 0.5 else -1.0
        centre = side * g.half_angle * rng.uniform(0.6, 0.95)
        half_width = math.radians(rng.uniform(3.0, 7.0))
        depth, loss = rng.uniform(8.0, 25.0), rng.uniform(0.1, 0.3)
        across = np.exp(-(((a - centre) / half_width) ** 6))
        beyond = 1.0 / (1.0 + np.exp(-(r - depth) / 1.5))
        shadow *= 1.0 - (1.0 - loss) * across * beyond
        clutter += 1.5 * across * np.exp(-(((r - depth) / 1.5) ** 2))
    if rng.random() < params["lung"]:
        side = 1.0 if rng.random() < 0.6 else -1.0  # the lateral side (image right) more often
        start = g.half_angle * rng.uniform(0.55, 0.85)
        band = 1.0 / (1.0 + np.exp(-(side * a - start) / math.radians(1.5)))
        pleura = rng.uniform(35.0, 80.0)
        behind = 1.0 / (1.0 + np.exp(-(r - pleura) / 2.0))
        shadow *= 1.0 - 0.92 * band * behind
        lines = sum(0.9**k * np.exp(-(((r - k * pleura) / 2.0) ** 2)) for k in (1, 2, 3))
        clutter += band * (1.2 * lines + 0.08 * behind) * texture
    # The apex sits in the near field, where reverberations from the chest wall pile up.
    apex_range = math.hypot(g.ed.apex_x, g.ed.apex_y + g.apex_offset) + 6.0
    apex_angle = math.atan2(g.ed.apex_x, g.ed.apex_y + g.apex_offset)
    if rng.random() < 0.6 + 0.4 * (params["apical"] > 0.1):
        amplitude = params["apical"] * rng.uniform(0.4, 1.6)
        blob = np.exp(-(((r - apex_range) / 12.0) ** 2) - ((a - apex_angle) / 0.22) ** 2)
        clutter += amplitude * blob * (1.0 + 0.5 * np.cos(2 * np.pi * r / rng.uniform(4.0, 7.0))) * texture
    return shadow, clutter


def lateral_dropout(g: ViewGeometry, grid: BeamGrid, params: dict, rng) -> np.ndarray:
    """The wall on the image right runs parallel to the beams and echoes weakly: a dark band along it."""
    shape = g.ed
    along = 0.55 * shape.length
    across = shape.half_width_lateral + 0.5 * shape.wall
    sin_a, cos_a = math.sin(shape.angle), math.cos(shape.angle)
    x = shape.apex_x + along * sin_a + across * cos_a
    y = shape.apex_y + along * cos_a - across * sin_a
    drop_angle = math.atan2(x, y + g.apex_offset) + rng.normal(0.0, 0.04)
    drop_center = math.hypot(x, y + g.apex_offset)
    drop = params["dropout"] * rng.uniform(0.6, 1.0)
    return 1.0 - drop * np.exp(-(((grid.a - drop_angle) / 0.12) ** 2) - ((grid.r - drop_center) / 30.0) ** 4)


def render_view(
    g: ViewGeometry, quality: str, phases: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) uint8 images and clean masks (the rendering truth) of one view at the given phases."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    params = QUALITY_PARAMETERS[quality]
    grid = BeamGrid(g)

    # 1. Fields fixed for the whole sequence: scatterers, sparse blood, tissue texture, acquisition.
    def complex_noise() -> np.ndarray:
        return (rng.standard_normal(grid.shape) + 1j * rng.standard_normal(grid.shape)) / math.sqrt(2)

    scatterer_fields = (complex_noise(), complex_noise())
    blood_sparse = (rng.random(grid.shape) < BLOOD_SCATTERER_FRACTION) / math.sqrt(BLOOD_SCATTERER_FRACTION)
    myo_texture = smooth_lognormal(rng, grid.shape, grid.mm_sigma(3.0), 0.4)
    tissue_texture = smooth_lognormal(rng, grid.shape, grid.mm_sigma(12.0), 0.8)
    patch_texture = smooth_lognormal(
        rng, grid.shape, grid.mm_sigma(8.0), 0.8
    )  # pericardium: bright in patches
    reverb_period = rng.uniform(5.0, 8.0)
    haze = params["haze"] * rng.uniform(0.8, 1.2) * np.exp(-grid.r / params["haze_depth"])
    haze = (
        haze * (1.0 + 0.6 * np.cos(2 * np.pi * grid.r / reverb_period)) + params["clutter"] * tissue_texture
    )
    dropout = lateral_dropout(g, grid, params, rng)
    shadow, artefacts = probe_artefacts(g, grid, params, rng, tissue_texture)
    haze = np.hypot(haze * shadow, artefacts)
    gain_db = DISPLAY_GAIN_DB + rng.normal(0.0, 1.5)
    atten_db = -params["atten"] * rng.uniform(0.8, 1.2) * grid.r
    edge_db = -6.0 * (np.abs(grid.a) / g.half_angle) ** 6
    amplitude_gain = 10.0 ** ((atten_db + edge_db) / 20.0)
    sidelobe_px = (grid.psf_px[0], SIDELOBE_WIDTH * grid.psf_px[1])
    sidelobe = params["sidelobe"] * rng.uniform(0.7, 1.3)

    images = np.zeros((len(phases), g.height, g.width), dtype=np.uint8)
    masks = np.zeros((len(phases), g.height, g.width), dtype=np.uint8)
    for t, phase in enumerate(phases):
        shape = lerp_shape(g.ed, g.es, float(phase))
        # 2. Tissue amplitude on the beam grid, with its texture where that tissue was at ED.
        layout = Layout(shape, g, grid.x, grid.y)
        classes = tissue_classes(layout)
        x_ed, y_ed = material_points(layout, g.ed)
        coords = grid.coords(np.hypot(x_ed, y_ed + g.apex_offset), np.arctan2(x_ed, y_ed + g.apex_offset))
        moved = np.hypot(x_ed - grid.x, y_ed - grid.y)
        texture = map_coordinates(myo_texture, coords, order=1, mode="nearest")
        amplitude = CLASS_AMPLITUDE[classes]
        is_blood = np.isin(classes, BLOOD_CLASSES)
        is_muscle = (classes == MYOCARDIUM) | (classes == THIN_WALL) | (classes == PAPILLARY)
        amplitude = np.where(is_muscle, amplitude * texture * params["myo_gain"], amplitude)
        amplitude = np.where(classes == BACKGROUND, amplitude * tissue_texture, amplitude)
        amplitude = np.where(classes == PERICARDIUM, amplitude * patch_texture, amplitude)
        amplitude = gaussian_filter(amplitude, grid.mm_sigma(0.8))  # partial volume at boundaries
        amplitude = np.where(is_blood, amplitude * blood_sparse, amplitude)
        amplitude = np.hypot(amplitude * dropout * shadow, haze)
        # 3. Scatterers carried by the tissue, decorrelating with its motion and over the cycle.
        carried = [
            map_coordinates(f.real, coords, order=0, mode="nearest")
            + 1j * map_coordinates(f.imag, coords, order=0, mode="nearest")
            for f in scatterer_fields
        ]
        rho = np.exp(-moved / SPECKLE_DECORRELATION_MM - CYCLE_DECORRELATION * float(phase))
        scatterers = rho * carried[0] + np.sqrt(1.0 - rho**2) * carried[1]
        weighted = amplitude * scatterers
        field = gaussian_filter(weighted.real, grid.psf_px) + 1j * gaussian_filter(weighted.imag, grid.psf_px)
        spread = gaussian_filter(weighted.real, sidelobe_px) + 1j * gaussian_filter(
            weighted.imag, sidelobe_px
        )
        field = (field + sidelobe * spread) * grid.psf_gain * amplitude_gain + params[
            "noise"
        ] * complex_noise()
        # 4. Envelope, log compression, scan conversion; exactly 0 outside the fan, >= 1 inside.
        decibels = 20.0 * np.log10(np.abs(field) + 1e-9) + gain_db
        polar_image = np.clip((decibels + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB * 255.0, 0.0, 255.0)
        image = map_coordinates(polar_image, grid.scan_coords, order=1, mode="constant", cval=0.0)
        images[t] = np.where(grid.sector, np.clip(np.rint(image), 1, 255), 0).astype(np.uint8)
        # 5. The rendering truth: labels at pixel centres, clipped to the fan (as CAMUS contours are).
        labels = labels_of(Layout(shape, g, grid.pixel_x, grid.pixel_y))
        masks[t] = np.where(grid.sector, labels, 0)
        missing = {1, 2, 3} - set(np.unique(masks[t]).tolist())
        if missing:
            raise SynthechoError(
                f"phantom {g.view} frame {t}: labels {sorted(missing)} vanished at size "
                f"{g.height}x{g.width}; use a larger --size (at least 32x32)"
            )
    return images, masks
