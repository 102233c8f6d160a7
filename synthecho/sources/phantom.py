"""Built-in CAMUS-format phantom: simulated apical 2CH/4CH echo with masks, written as a CAMUS tree.

The phantom lets the whole toolkit (readers, prepare, training, filters, tests, CI, the demo) run with no
CAMUS download. It writes the same files, names, cfg keys, label values and split files as the real
releases, so the real CAMUS reader is the one that loads it.

What an image is made of:
  1. Anatomy: analytic shapes in millimetres (x lateral, y depth; apex of the fan at the top). The LV
     cavity is a bullet hanging from the apex (rounded tip, widest at 60% of its length, narrower at the
     mitral annulus), the myocardium a ring around it that is open at the mitral plane, the LA a truncated
     ellipse below the mitral plane. Hearts too big for the fan are shrunk until everything fits. 4CH adds the right
     heart (RV left of the septum, RA bottom-left), which is visible but unlabelled, as in CAMUS.
  2. Motion: ED -> ES is driven by the patient's EF: the base moves toward the (fixed) apex and the cavity
     narrows so that the area-length volume ratio matches 1 - EF; walls thicken; the LA fills.
  3. Echo formation on a polar (range x angle) beam grid: tissue-dependent scatterers (complex Gaussian;
     sparse and weak in blood) blurred by a Gaussian point-spread function that is short axially and
     wide laterally (constant in angle, so it widens with depth), envelope, depth attenuation with only
     partial time-gain compensation, near-field haze with reverberation bands, electronic noise, lateral
     wall dropout, then log compression to uint8 and scan conversion to the (depth, lateral) pixel grid.
     Everything outside the fan is exactly 0; inside the fan pixels are >= 1.
  4. Image quality (Good/Medium/Poor) scales noise, haze, clutter in the cavities, dropout, attenuation
     and myocardial brightness, so Poor images have lower blood/myocardium contrast.

Determinism: every random draw comes from a numpy Generator seeded from (seed, patient[, view, stream]),
and the writers embed no timestamps (SimpleITK writes gzip headers with mtime 0), so the same seed gives
byte-identical files.

Layouts and how they map (the same seed gives the same patients in both):
  * "2023": ``CAMUS_public/database_nifti/patientNNNN`` (ids 0001..N) and
    ``CAMUS_public/database_split/subgroup_{training,validation,testing}.txt`` (shuffled with the seed,
    ~70/15/15, at least one patient each). Returns ``out_dir/CAMUS_public``.
  * "2019": 2023 training+validation patients become ``training/patient0001..`` in 2023 id order, 2023
    testing patients become ``testing/patient0001..`` (ids restart, as in the real release). Images are
    MetaImage; ED/ES are 3-D with a singleton axis; testing has no ``_gt``. Returns ``out_dir``.
    ``phantom_id_map(patients, seed)`` gives the mapping ``"training/patient0003" -> "patient0004"``.
  The 2019 cfg carries LVedv/LVesv/LVef instead of EF/FrameRate: LVedv is the biplane area-length
  volume of the ED LV masks, LVef the patient's EF (the same value as the 2023 EF, like a clinical
  reference), LVesv = LVedv * (1 - EF/100).
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.io import write_bytes_atomic, write_text_atomic

VIEWS = ("2CH", "4CH")
QUALITIES = ("Good", "Medium", "Poor")
# CAMUS-like quality frequencies (all 500 patients, both views pooled: ~50% / 38% / 12%).
QUALITY_PROBABILITIES = (0.50, 0.38, 0.12)

# Tissue classes used for rendering only (the masks use CAMUS labels 0..3).
BACKGROUND, LV_BLOOD, MYOCARDIUM, LA_BLOOD, RV_BLOOD, RA_BLOOD, THIN_WALL, PERICARDIUM, VALVE, PAPILLARY = (
    range(10)
)
BLOOD_CLASSES = (LV_BLOOD, LA_BLOOD, RV_BLOOD, RA_BLOOD)
# Scatterer RMS amplitude per class, relative to myocardium (0 dB). Blood is ~ -35 dB and sparse.
CLASS_AMPLITUDE = np.array([0.2, 0.018, 1.0, 0.018, 0.018, 0.018, 0.9, 3.0, 1.3, 0.7], dtype=np.float64)
BLOOD_SCATTERER_FRACTION = 0.08  # "very few weak scatterers" in the blood pools

# How image quality degrades the acquisition. Amplitudes are relative to myocardium.
QUALITY_PARAMETERS = {
    #            electronic noise, near-field haze (amplitude, e-folding depth mm), clutter everywhere,
    #            lateral dropout depth, myocardial gain, residual attenuation after TGC (dB per mm of range)
    "Good": dict(
        noise=0.006, haze=0.35, haze_depth=12.0, clutter=0.010, dropout=0.25, myo_gain=1.0, atten=0.05
    ),
    "Medium": dict(
        noise=0.012, haze=0.5, haze_depth=20.0, clutter=0.030, dropout=0.55, myo_gain=0.85, atten=0.065
    ),
    "Poor": dict(
        noise=0.025, haze=0.7, haze_depth=35.0, clutter=0.075, dropout=0.85, myo_gain=0.65, atten=0.09
    ),
}

DYNAMIC_RANGE_DB = 50.0  # log compression: 50 dB of echo amplitude -> [0, 255]
DISPLAY_GAIN_DB = -18.0  # puts average myocardium (0 dB) at mid-grey (~150) and pericardium near white
FRAME_DECORRELATION = 0.2  # fraction of speckle power renewed between consecutive frames


# --------------------------------------------------------------------------------------------------
# Patients, cohort and splits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientAttributes:
    """What the cfg files say about a patient (shared by both views)."""

    sex: str  # "M" / "F"
    age: int  # years, 18..88
    image_quality: str  # "Good" / "Medium" / "Poor"
    ef: int  # ejection fraction, percent, 20..75


def sample_patient(seed: int, patient_number: int) -> PatientAttributes:
    """Attributes of 2023 patient `patient_number` (1-based); independent of the cohort size."""
    rng = np.random.default_rng([seed, patient_number, 0])
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(np.clip(round(rng.normal(62.0, 15.0)), 18, 88))
    quality = QUALITIES[int(rng.choice(3, p=QUALITY_PROBABILITIES))]
    # Mixed EF: most patients normal (50-65), the rest reduced down to 20, a few hyperdynamic.
    if rng.random() < 0.62:
        ef = rng.normal(58.0, 5.0)
    else:
        ef = rng.uniform(20.0, 50.0)
    return PatientAttributes(sex=sex, age=age, image_quality=quality, ef=int(np.clip(round(ef), 20, 75)))


def patient_id(number: int) -> str:
    return f"patient{number:04d}"


def phantom_splits(patients: int, seed: int) -> dict[str, list[str]]:
    """The 2023 split of a phantom cohort: ~70/15/15, shuffled, each list sorted by id.

    Ids are shuffled with the seed so no split of two or more patients is a contiguous id range (real
    CAMUS split files are not contiguous either, and readers must not assume they are).
    """
    if patients < 3:
        raise SynthechoError(f"phantom needs at least 3 patients (one per split), got patients={patients}")
    n_val = max(1, round(0.15 * patients))
    n_test = max(1, round(0.15 * patients))
    rng = np.random.default_rng([seed, 1_000_003])
    for _ in range(1000):
        order = rng.permutation(np.arange(1, patients + 1))
        parts = {
            "training": sorted(order[n_val + n_test :].tolist()),
            "validation": sorted(order[:n_val].tolist()),
            "testing": sorted(order[n_val : n_val + n_test].tolist()),
        }
        if not any(len(ids) >= 2 and ids[-1] - ids[0] == len(ids) - 1 for ids in parts.values()):
            break
    return {name: [patient_id(i) for i in ids] for name, ids in parts.items()}


def phantom_id_map(patients: int, seed: int) -> dict[str, str]:
    """2019 id (``"training/patient0003"``, ``"testing/patient0001"``) -> the 2023 id of the same patient.

    2023 training+validation patients become 2019 ``training/`` in 2023 id order, renumbered from 0001;
    2023 testing patients become 2019 ``testing/``, renumbered from 0001.
    """
    splits = phantom_splits(patients, seed)
    training = sorted(splits["training"] + splits["validation"])
    mapping = {f"training/{patient_id(i + 1)}": pid for i, pid in enumerate(training)}
    mapping.update({f"testing/{patient_id(i + 1)}": pid for i, pid in enumerate(splits["testing"])})
    return mapping


def _reversed_patients(patients: int, seed: int) -> set[int]:
    """Patients whose 4CH half sequence runs ES -> ED (ED = NbFrame, ES = 1), as a few real ones do."""
    reversed_ids = {p for p in range(1, patients + 1) if np.random.default_rng([seed, p, 9]).random() < 0.02}
    if not reversed_ids:  # guarantee one, so every phantom exercises the readers' handling of the case
        reversed_ids = {int(np.random.default_rng([seed, 1_000_009]).integers(1, patients + 1))}
    return reversed_ids


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeartShape:
    """Chamber geometry at one instant, in mm (x lateral, 0 at the fan axis; y depth, 0 at row 0).

    LV frame: u runs from the endocardial apex along the long axis (u = length is the mitral plane),
    v across it (v > 0 is the lateral/anterior wall, on the image right).
    """

    apex_x: float
    apex_y: float
    angle: float  # LV long axis from vertical, radians, positive = base toward the image right
    length: float  # apex -> mitral plane
    half_width_septal: float  # cavity half-widths of the ellipse (its widest point is at 0.6 * length)
    half_width_lateral: float
    wall: float  # myocardial thickness (thinner toward the apex)
    la_length: float
    la_half_width: float
    la_angle: float
    rv_half_width: float
    ra_length: float
    ra_half_width: float


def _lerp_shape(ed: HeartShape, es: HeartShape, phase: float) -> HeartShape:
    values = {f.name: (1 - phase) * getattr(ed, f.name) + phase * getattr(es, f.name) for f in fields(ed)}
    return HeartShape(**values)


@dataclass(frozen=True)
class ViewGeometry:
    """Everything that is fixed for one view of one patient: the fan, the pixel grid and both phases."""

    view: str
    height: int
    width: int
    spacing_depth: float  # mm per row
    spacing_lateral: float  # mm per column
    half_angle: float  # radians
    apex_offset: float  # mm from the virtual fan apex (above the image) to row 0
    max_range: float  # mm from the virtual fan apex to the bottom arc
    ed: HeartShape
    es: HeartShape
    # Smooth irregularities along the long axis (fixed for the view, so they move with the wall):
    # (amplitude, phase) of 3 harmonics for the cavity width and for the wall thickness.
    width_harmonics: tuple[tuple[float, float], ...] = ()
    wall_harmonics: tuple[tuple[float, float], ...] = ()

    @property
    def right_heart(self) -> bool:
        return self.view == "4CH"


def _sample_view_geometry(
    seed: int, patient_number: int, view: str, attributes: PatientAttributes, size: tuple[int, int]
) -> ViewGeometry:
    height, width = size
    patient_rng = np.random.default_rng([seed, patient_number, 1])  # shared by both views: body size
    rng = np.random.default_rng([seed, patient_number, 2 if view == "2CH" else 4, 1])

    # 1. Fan: ~75-90 degree opening, ~15 cm deep; spacing follows from the pixel grid.
    half_angle = math.radians(rng.uniform(37.5, 45.0))
    depth = rng.uniform(140.0, 160.0)
    apex_offset = rng.uniform(3.0, 6.0)
    spacing_depth = depth / (height - 1)
    max_range = depth + apex_offset + 0.25 * spacing_depth  # the arc just reaches the last row
    spacing_lateral = 2.0 * max_range * math.sin(half_angle) * 1.04 / width

    # 2. ED anatomy: body size by sex, dilated ventricles at low EF (all draws first, in a fixed order).
    scale = (1.05 if attributes.sex == "M" else 0.95) * patient_rng.normal(1.0, 0.05)
    dilation = 1.0 + 0.25 * max(0.0, 50.0 - attributes.ef) / 30.0
    length = 74.0 * scale * (1.0 + 0.4 * (dilation - 1.0)) * rng.normal(1.0, 0.03)
    half_width = 22.5 * scale * dilation * rng.normal(1.0, 0.04)
    wall = rng.uniform(8.5, 11.5)
    if view == "4CH":
        apex_x, angle = rng.normal(2.0, 1.5), math.radians(rng.normal(8.0, 2.0))
        septal, lateral = 0.92 * half_width, 1.05 * half_width  # the septum is flatter
    else:
        apex_x, angle = rng.normal(0.0, 2.5), math.radians(rng.normal(1.0, 3.0))
        septal, lateral = 1.0 * half_width, 1.0 * half_width
    apex_y = max(wall + 3.0, rng.normal(23.0, 2.0))
    la_angle = angle + math.radians(rng.normal(3.0, 3.0))
    chambers = {
        "la_length": 38.0 * scale * rng.normal(1.0, 0.05),
        "la_half_width": 20.0 * scale * rng.normal(1.0, 0.05),
        "rv_half_width": 24.0 * scale * rng.normal(1.0, 0.06),
        "ra_length": 38.0 * scale * rng.normal(1.0, 0.05),
        "ra_half_width": 18.0 * scale * rng.normal(1.0, 0.05),
    }
    harmonics = [(float(rng.normal(0.0, a)), float(rng.uniform(0, 2 * np.pi))) for a in (0.03, 0.025, 0.015)]
    wall_harmonics = [
        (float(rng.normal(0.0, a)), float(rng.uniform(0, 2 * np.pi))) for a in (0.10, 0.08, 0.05)
    ]

    # 3. ES from EF. Area-length volume V ~ A^2 / L with A ~ length * half-width (self-similar bullet), so
    # V_es/V_ed = Lr * Wr^2 = 1 - EF  ->  Wr = sqrt((1 - EF) / Lr). The apex stays put; the base descends.
    ef = attributes.ef / 100.0
    length_ratio = 1.0 - (0.03 + 0.15 * ef)
    width_ratio = math.sqrt((1.0 - ef) / length_ratio)

    def build(fit: float, apex_shift: float) -> ViewGeometry:
        ed = HeartShape(
            apex_x=apex_x * fit,
            apex_y=apex_y + apex_shift,
            angle=angle,
            length=length * fit,
            half_width_septal=septal * fit,
            half_width_lateral=lateral * fit,
            wall=wall,
            la_angle=la_angle,
            **{name: value * fit for name, value in chambers.items()},
        )
        base_descent = ed.length * (1.0 - length_ratio)
        es = replace(
            ed,
            length=ed.length * length_ratio,
            half_width_septal=ed.half_width_septal * width_ratio,
            half_width_lateral=ed.half_width_lateral * width_ratio,
            wall=wall * (1.0 + 1.2 * (1.0 - width_ratio)),  # thickening, weak in failing hearts
            la_length=ed.la_length + base_descent + 2.5,  # the LA fills while its far wall stays put
            la_half_width=ed.la_half_width * 1.08,
            rv_half_width=ed.rv_half_width * 0.85,
            ra_length=ed.ra_length + base_descent + 2.0,
            ra_half_width=ed.ra_half_width * 1.06,
        )
        return ViewGeometry(
            view=view,
            height=height,
            width=width,
            spacing_depth=spacing_depth,
            spacing_lateral=spacing_lateral,
            half_angle=half_angle,
            apex_offset=apex_offset,
            max_range=max_range,
            ed=ed,
            es=es,
            width_harmonics=tuple(harmonics),
            wall_harmonics=tuple(wall_harmonics),
        )

    # 4. Big hearts in narrow fans: shrink the heart, and lower and centre its apex (where the fan is
    # narrowest), until every structure, drawn or labelled, sits inside the fan at both ED and ES.
    fit, apex_shift = 1.0, 0.0
    geometry = build(fit, apex_shift)
    while not _fits_in_fan(geometry) and fit > 0.6:
        fit, apex_shift = fit * 0.98, apex_shift + 1.0
        geometry = build(fit, apex_shift)
    return geometry


def _fits_in_fan(
    geometry: ViewGeometry, margin_mm: float = 2.0, margin_angle: float = math.radians(1.0)
) -> bool:
    g = geometry
    half_width = g.max_range * math.sin(g.half_angle)
    x, y = np.meshgrid(np.arange(-half_width, half_width, 1.5), np.arange(0.0, g.max_range, 1.5))
    r = np.hypot(x, y + g.apex_offset)
    inside = (r <= g.max_range - margin_mm) & (
        np.abs(np.arctan2(x, y + g.apex_offset)) <= g.half_angle - margin_angle
    )
    for shape in (g.ed, g.es):
        classes, _ = _classify(shape, g, x, y)
        if np.any((classes != BACKGROUND) & ~inside):
            return False
    return True


def _ellipse(u: np.ndarray, v: np.ndarray, center_u: float, semi_u, semi_v) -> np.ndarray:
    return ((u - center_u) / semi_u) ** 2 + (v / semi_v) ** 2 <= 1.0


def _lv_profile(t: np.ndarray) -> np.ndarray:
    """LV half-width along the long axis (t = 0 apex, 1 mitral plane), as a fraction of the widest point.

    A bullet: a tip that opens a little narrower than the fan (so the apex fits in the near field),
    widest at 60% of the length, narrowing to 65% at the mitral annulus.
    """
    t = np.clip(t, 0.0, 1.0)
    rise = np.sin(np.minimum(t / 0.6, 1.0) * np.pi / 2) ** 0.65
    taper = 1.0 - 0.35 * np.clip((t - 0.6) / 0.4, 0.0, 1.0) ** 2
    return np.where(t <= 0.6, rise, taper)


def _harmonic_factor(t: np.ndarray, harmonics) -> np.ndarray:
    factor = np.ones_like(t)
    for k, (amplitude, phase) in enumerate(harmonics, start=1):
        factor = factor + amplitude * np.sin(k * np.pi * t + phase)
    return factor


def _classify(
    shape: HeartShape, geometry: ViewGeometry, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue class (for rendering) and CAMUS label (for masks) at points (x, y) in mm."""
    right_heart = geometry.right_heart
    # 1. LV frame.
    sin_a, cos_a = math.sin(shape.angle), math.cos(shape.angle)
    dx, dy = x - shape.apex_x, y - shape.apex_y
    u = dx * sin_a + dy * cos_a
    v = dx * cos_a - dy * sin_a
    length = shape.length
    t = np.clip(u / length, 0.0, 1.2)
    width_factor = _harmonic_factor(t, geometry.width_harmonics)
    # The apical wall is thinner than the rest (normal apical thinning).
    wall = (
        shape.wall * _harmonic_factor(t, geometry.wall_harmonics) * (0.6 + 0.4 * np.clip(t / 0.35, 0.0, 1.0))
    )
    septal_width = shape.half_width_septal * width_factor
    half_width = np.where(v >= 0, shape.half_width_lateral * width_factor, septal_width)
    above_mitral = u <= length

    def lv_outline(grow: np.ndarray | float) -> np.ndarray:
        # The cavity outline grown by `grow` mm sideways and above the apex.
        return (u >= -grow) & (np.abs(v) <= (half_width + grow) * _lv_profile((u + grow) / (length + grow)))

    cavity = lv_outline(0.0) & above_mitral
    epicardium = lv_outline(wall) & above_mitral
    pericardium = lv_outline(wall + 2.5) & (u <= length + 2)

    # 2. LA frame: origin at the mitral centre; truncated by the mitral plane so LV and LA just touch.
    mitral_x, mitral_y = shape.apex_x + length * sin_a, shape.apex_y + length * cos_a
    sin_l, cos_l = math.sin(shape.la_angle), math.cos(shape.la_angle)
    ul = (x - mitral_x) * sin_l + (y - mitral_y) * cos_l
    vl = (x - mitral_x) * cos_l - (y - mitral_y) * sin_l
    below_mitral = ~above_mitral
    la_center, la_semi = 0.35 * shape.la_length, 0.65 * shape.la_length
    atrium = _ellipse(ul, vl, la_center, la_semi, shape.la_half_width) & below_mitral
    atrial_wall = _ellipse(ul, vl, la_center, la_semi + 2.5, shape.la_half_width + 2.5) & below_mitral

    classes = np.full(x.shape, BACKGROUND, dtype=np.uint8)
    classes[pericardium] = PERICARDIUM
    if right_heart:
        # 3. Right heart in the LV frame: an RV ellipse whose centre line follows the septal epicardium and
        # that is cut by the LV, so the septum is the LV's septal wall and the RV hugs it along its whole
        # length; the tricuspid plane sits a little apical to the mitral plane.
        rv_center_v = -(septal_width * _lv_profile(t) + wall)
        septum_v = -(0.65 * shape.half_width_septal + shape.wall)  # at the base
        tricuspid = length - 4.0
        rv_v = v - rv_center_v
        rv_center = 0.65 * length  # the RV is shorter than the LV and widens toward its base (triangular)
        rv_semi = 0.5 * length
        rv_width = shape.rv_half_width * (0.55 + 0.6 * t)
        rv = _ellipse(u, rv_v, rv_center, rv_semi, rv_width) & (u <= tricuspid) & ~epicardium
        rv_wall = _ellipse(u, rv_v, rv_center, rv_semi + 3.5, rv_width + 3.5) & (u <= tricuspid + 2)
        rv_pericardium = _ellipse(u, rv_v, rv_center, rv_semi + 5.5, rv_width + 5.5)
        ra_v = v - (septum_v - 0.55 * shape.ra_half_width)
        ra_u = u - tricuspid
        ra_center, ra_semi = 0.4 * shape.ra_length, 0.6 * shape.ra_length
        la_grown = _ellipse(ul, vl, la_center, la_semi + 4.0, shape.la_half_width + 4.0)
        right_atrium = _ellipse(ra_u, ra_v, ra_center, ra_semi, shape.ra_half_width) & (ra_u > 0) & ~la_grown
        ra_wall = _ellipse(ra_u, ra_v, ra_center, ra_semi + 2.5, shape.ra_half_width + 2.5) & (ra_u > -1)
        classes[(rv_pericardium & (u <= tricuspid + 4)) & ~epicardium] = PERICARDIUM
        classes[(rv_wall | ra_wall) & ~epicardium] = THIN_WALL
        classes[atrial_wall] = THIN_WALL
        classes[rv] = RV_BLOOD
        classes[right_atrium & ~rv] = RA_BLOOD
        # Tricuspid leaflets: a shallow arc across the RV inflow.
        tv_w = 0.45 * shape.rv_half_width
        tv_c = septum_v - 0.55 * shape.rv_half_width
        tv_leaf = (np.abs(u - (tricuspid + 2.0 * (1 - ((v - tv_c) / tv_w) ** 2))) < 0.9) & (
            np.abs(v - tv_c) < tv_w
        )
    else:
        classes[atrial_wall] = THIN_WALL
        tv_leaf = None
    classes[atrium] = LA_BLOOD
    classes[epicardium] = MYOCARDIUM
    classes[cavity] = LV_BLOOD
    # 4. Anterolateral papillary muscle (rendered only: CAMUS counts it as cavity).
    papillary = _ellipse(
        u, v - 0.72 * shape.half_width_lateral, 0.62 * length, 0.12 * length, 0.16 * shape.half_width_lateral
    )
    classes[papillary & cavity] = PAPILLARY
    # 5. Closed mitral leaflets bowing slightly into the LA.
    annulus = shape.half_width_lateral * float(_lv_profile(np.array(1.0)))
    mv_leaf = (np.abs(u - (length + 3.0 * (1 - (v / annulus) ** 2))) < 0.6) & (np.abs(v) < annulus)
    classes[mv_leaf] = VALVE
    if tv_leaf is not None:
        classes[tv_leaf & ~epicardium] = VALVE

    labels = np.zeros(x.shape, dtype=np.uint8)
    labels[atrium] = 3
    labels[epicardium] = 2
    labels[cavity] = 1
    return classes, labels


# --------------------------------------------------------------------------------------------------
# Echo formation
# --------------------------------------------------------------------------------------------------


def _smooth_lognormal(rng: np.random.Generator, shape, sigma_px, log_std: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    field /= field.std() + 1e-12
    return np.exp(log_std * field - 0.5 * log_std**2)


def _render_view(
    geometry: ViewGeometry, quality: str, phases: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) uint8 images and masks of one view at the given ED->ES phases (0 = ED, 1 = ES)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    g = geometry
    params = QUALITY_PARAMETERS[quality]

    # 1. Point-spread function (mm) and the polar beam grid that resolves it. Never finer than ~1 output
    # pixel, so tiny test images still show speckle rather than a smooth average.
    sigma_axial = max(0.45, 0.9 * g.spacing_depth)
    sigma_angle = max(1.6, 1.25 * g.spacing_lateral) / (0.5 * g.max_range)
    d_range, d_angle = sigma_axial / 1.2, sigma_angle / 1.2
    ranges = np.arange(0.0, g.max_range + 3 * d_range, d_range)
    angle_edge = g.half_angle + 3 * d_angle
    angles = np.arange(-angle_edge, angle_edge + d_angle / 2, d_angle)
    r_grid, a_grid = np.meshgrid(ranges, angles, indexing="ij")
    polar_x = r_grid * np.sin(a_grid)
    polar_y = r_grid * np.cos(a_grid) - g.apex_offset
    polar_shape = r_grid.shape
    psf_px = (sigma_axial / d_range, sigma_angle / d_angle)
    psf_gain = math.sqrt(4 * math.pi * psf_px[0] * psf_px[1])  # unit-RMS scatterers stay unit RMS

    # 2. Output pixel grid (rows = depth, cols = lateral) and where each pixel falls on the beam grid.
    rows, cols = np.mgrid[0 : g.height, 0 : g.width].astype(np.float64)
    pixel_x = (cols - (g.width - 1) / 2.0) * g.spacing_lateral
    pixel_y = rows * g.spacing_depth
    pixel_r = np.hypot(pixel_x, pixel_y + g.apex_offset)
    pixel_a = np.arctan2(pixel_x, pixel_y + g.apex_offset)
    sector = (pixel_r <= g.max_range) & (np.abs(pixel_a) <= g.half_angle)
    scan_coords = np.stack([pixel_r / d_range, (pixel_a + angle_edge) / d_angle])

    # 3. Fields fixed for the whole sequence: scatterers, sparse blood, tissue texture, acquisition.
    def complex_noise() -> np.ndarray:
        return (rng.standard_normal(polar_shape) + 1j * rng.standard_normal(polar_shape)) / math.sqrt(2)

    base_scatterers = complex_noise()
    blood_sparse = (rng.random(polar_shape) < BLOOD_SCATTERER_FRACTION) / math.sqrt(BLOOD_SCATTERER_FRACTION)
    myo_texture = _smooth_lognormal(
        rng, polar_shape, (3.0 / d_range, 3.0 / (0.5 * g.max_range * d_angle)), 0.4
    )
    tissue_texture = _smooth_lognormal(
        rng, polar_shape, (12.0 / d_range, 12.0 / (0.5 * g.max_range * d_angle)), 0.8
    )
    # The pericardium is bright in patches (strongest where it meets the beam at right angles).
    patch_texture = _smooth_lognormal(
        rng, polar_shape, (8.0 / d_range, 8.0 / (0.5 * g.max_range * d_angle)), 0.8
    )
    # Near-field haze with reverberation bands, plus clutter that fills the cavities in poor windows.
    reverb_period = rng.uniform(5.0, 8.0)
    haze = params["haze"] * rng.uniform(0.8, 1.2) * np.exp(-r_grid / params["haze_depth"])
    haze = (
        haze * (1.0 + 0.6 * np.cos(2 * np.pi * r_grid / reverb_period)) + params["clutter"] * tissue_texture
    )
    # Lateral-wall dropout: the wall on the image right runs parallel to the beams and echoes weakly.
    drop_angle = g.half_angle * rng.uniform(0.45, 0.75)
    drop_center = g.ed.apex_y + 0.55 * g.ed.length
    drop = params["dropout"] * rng.uniform(0.6, 1.0)
    dropout = 1.0 - drop * np.exp(
        -(((a_grid - drop_angle) / 0.12) ** 2) - ((r_grid - drop_center) / 30.0) ** 4
    )
    # Depth attenuation left after partial time-gain compensation, weaker beams at the fan edges.
    gain_db = DISPLAY_GAIN_DB + rng.normal(0.0, 1.5)
    atten_db = -params["atten"] * rng.uniform(0.8, 1.2) * r_grid
    edge_db = -6.0 * (np.abs(a_grid) / g.half_angle) ** 6
    amplitude_gain = 10.0 ** ((atten_db + edge_db) / 20.0)

    images = np.zeros((len(phases), g.height, g.width), dtype=np.uint8)
    masks = np.zeros((len(phases), g.height, g.width), dtype=np.uint8)
    for t, phase in enumerate(phases):
        shape = _lerp_shape(g.ed, g.es, float(phase))
        # 4. Tissue amplitude on the beam grid.
        classes, _ = _classify(shape, g, polar_x, polar_y)
        amplitude = CLASS_AMPLITUDE[classes]
        is_blood = np.isin(classes, BLOOD_CLASSES)
        is_muscle = (classes == MYOCARDIUM) | (classes == THIN_WALL) | (classes == PAPILLARY)
        amplitude = np.where(is_muscle, amplitude * myo_texture * params["myo_gain"], amplitude)
        amplitude = np.where(classes == BACKGROUND, amplitude * tissue_texture, amplitude)
        amplitude = np.where(classes == PERICARDIUM, amplitude * patch_texture, amplitude)
        # Tissue boundaries are not razor-sharp (partial volume across the elevation slice thickness).
        amplitude = gaussian_filter(amplitude, (0.8 / d_range, 0.8 / (0.5 * g.max_range * d_angle)))
        amplitude = np.where(is_blood, amplitude * blood_sparse, amplitude)
        amplitude = np.hypot(amplitude * dropout, haze)
        # 5. Scatterers (partly renewed each frame) blurred by the PSF -> envelope -> log compression.
        scatterers = math.sqrt(1 - FRAME_DECORRELATION) * base_scatterers
        scatterers = scatterers + math.sqrt(FRAME_DECORRELATION) * complex_noise()
        weighted = amplitude * scatterers
        field = gaussian_filter(weighted.real, psf_px) + 1j * gaussian_filter(weighted.imag, psf_px)
        field = field * psf_gain * amplitude_gain + params["noise"] * complex_noise()
        decibels = 20.0 * np.log10(np.abs(field) + 1e-9) + gain_db
        polar_image = np.clip((decibels + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB * 255.0, 0.0, 255.0)
        # 6. Scan conversion; exactly 0 outside the fan, >= 1 inside so the fan is recoverable.
        image = map_coordinates(polar_image, scan_coords, order=1, mode="constant", cval=0.0)
        image = np.where(sector, np.clip(np.rint(image), 1, 255), 0)
        images[t] = image.astype(np.uint8)
        # 7. Mask at pixel centres, clipped to the fan.
        _, labels = _classify(shape, g, pixel_x, pixel_y)
        masks[t] = np.where(sector, labels, 0)
        missing = {1, 2, 3} - set(np.unique(masks[t]).tolist())
        if missing:
            raise SynthechoError(
                f"phantom {g.view} frame {t}: labels {sorted(missing)} vanished at size {g.height}x{g.width}; "
                "use a larger --size (at least 32x32)"
            )
    return images, masks


# --------------------------------------------------------------------------------------------------
# One patient
# --------------------------------------------------------------------------------------------------


@dataclass
class ViewRecord:
    """One rendered view: the half sequence, its masks, and what its cfg says."""

    view: str
    images: np.ndarray  # (T, H, W) uint8
    masks: np.ndarray  # (T, H, W) uint8 in {0, 1, 2, 3}
    spacing: tuple[float, float]  # (lateral, depth) mm, SimpleITK order
    ed: int  # 1-based
    es: int
    frame_rate: float
    length_ed: float  # LV long axis at ED, mm (for the 2019 volumes)


def _render_patient(
    seed: int, number: int, size: tuple[int, int], frames: tuple[int, int], reversed_4ch: bool
) -> tuple[PatientAttributes, dict[str, ViewRecord]]:
    attributes = sample_patient(seed, number)
    records = {}
    for view in VIEWS:
        rng = np.random.default_rng([seed, number, 2 if view == "2CH" else 4, 2])
        n_frames = int(rng.integers(frames[0], frames[1] + 1))
        frame_rate = round(float(rng.uniform(40.0, 75.0)), 1)
        geometry = _sample_view_geometry(seed, number, view, attributes, size)
        ramp = np.linspace(0.0, 1.0, n_frames)
        phases = 0.5 - 0.5 * np.cos(np.pi * ramp)  # smooth ED -> ES
        is_reversed = reversed_4ch and view == "4CH"
        if is_reversed:
            phases = phases[::-1]
        images, masks = _render_view(geometry, attributes.image_quality, phases, rng)
        ed, es = (n_frames, 1) if is_reversed else (1, n_frames)
        records[view] = ViewRecord(
            view=view,
            images=images,
            masks=masks,
            spacing=(geometry.spacing_lateral, geometry.spacing_depth),
            ed=ed,
            es=es,
            frame_rate=frame_rate,
            length_ed=geometry.ed.length,
        )
    return attributes, records


def _cfg_2023(attributes: PatientAttributes, record: ViewRecord) -> str:
    lines = [
        f"ED: {record.ed}",
        f"ES: {record.es}",
        f"NbFrame: {len(record.images)}",
        f"Sex: {attributes.sex}",
        f"Age: {attributes.age}",
        f"ImageQuality: {attributes.image_quality}",
        f"EF: {attributes.ef}",
        f"FrameRate: {record.frame_rate:.1f}",
    ]
    return "\n".join(lines) + "\n"


def _biplane_edv_ml(records: dict[str, ViewRecord]) -> float:
    """Biplane area-length LV volume at ED from the two views' masks: V = 8 A2 A4 / (3 pi L)."""
    areas = []
    for record in records.values():
        sx, sy = record.spacing
        areas.append(float((record.masks[record.ed - 1] == 1).sum()) * sx * sy)
    length = np.mean([record.length_ed for record in records.values()])
    return 8.0 * areas[0] * areas[1] / (3.0 * math.pi * length) / 1000.0


def _cfg_2019(attributes: PatientAttributes, record: ViewRecord, edv_ml: float) -> str:
    lines = [
        f"ED: {record.ed}",
        f"ES: {record.es}",
        f"NbFrame: {len(record.images)}",
        f"Sex: {attributes.sex}",
        f"Age: {attributes.age}",
        f"ImageQuality: {attributes.image_quality}",
        f"LVedv: {edv_ml:.2f}",
        f"LVesv: {edv_ml * (1.0 - attributes.ef / 100.0):.2f}",
        f"LVef: {float(attributes.ef):.1f}",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class _ImageWriter:
    """SimpleITK writes into a private staging folder, then each file is renamed into place (atomic).

    SimpleITK picks the format from the file name (and a .mhd names its .raw), so the staged files carry
    their final names; the .raw moves before its .mhd header so a header never points at a missing file.
    """

    def __init__(self, out_dir: Path):
        import SimpleITK as sitk

        self.sitk = sitk
        self.staging = out_dir / f".phantom-staging-{os.getpid()}"
        self.staging.mkdir(parents=True, exist_ok=True)

    def write(self, array: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
        image = self.sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
        image.SetSpacing(tuple(spacing) if array.ndim == 2 else (*spacing, 1.0))
        staged = self.staging / path.name
        compress = path.name.endswith(".nii.gz")
        self.sitk.WriteImage(image, str(staged), useCompression=compress)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".mhd":
            raw = path.with_suffix(".raw")
            os.replace(staged.with_suffix(".raw"), raw)
        os.replace(staged, path)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _write_patient_2023(writer: _ImageWriter, folder: Path, pid: str, attributes, records) -> None:
    for view, record in records.items():
        stem = folder / f"{pid}_{view}"
        for instant, index in (("ED", record.ed), ("ES", record.es)):
            writer.write(record.images[index - 1], record.spacing, Path(f"{stem}_{instant}.nii.gz"))
            writer.write(record.masks[index - 1], record.spacing, Path(f"{stem}_{instant}_gt.nii.gz"))
        writer.write(record.images, record.spacing, Path(f"{stem}_half_sequence.nii.gz"))
        writer.write(record.masks, record.spacing, Path(f"{stem}_half_sequence_gt.nii.gz"))
        write_text_atomic(folder / f"Info_{view}.cfg", _cfg_2023(attributes, record))


def _write_patient_2019(
    writer: _ImageWriter, folder: Path, pid: str, attributes, records, with_gt: bool
) -> None:
    edv_ml = _biplane_edv_ml(records)
    for view, record in records.items():
        stem = folder / f"{pid}_{view}"
        for instant, index in (("ED", record.ed), ("ES", record.es)):
            # ED/ES are stored 3-D with a singleton axis (DimSize W H 1), as in the 2019 release.
            writer.write(record.images[index - 1 : index], record.spacing, Path(f"{stem}_{instant}.mhd"))
            if with_gt:
                writer.write(
                    record.masks[index - 1 : index], record.spacing, Path(f"{stem}_{instant}_gt.mhd")
                )
        writer.write(record.images, record.spacing, Path(f"{stem}_sequence.mhd"))
        write_text_atomic(folder / f"Info_{view}.cfg", _cfg_2019(attributes, record, edv_ml))


def _check_no_stale_patients(folder: Path, expected: set[str]) -> None:
    if not folder.is_dir():
        return
    stale = sorted(
        p.name for p in folder.iterdir() if re.fullmatch(r"patient\d{4}", p.name) and p.name not in expected
    )
    if stale:
        raise SynthechoError(
            f"{folder} already holds patient folders this phantom would not write ({', '.join(stale[:5])}...); "
            "write the phantom into an empty folder"
        )


def write_phantom(
    out_dir: Path,
    patients: int = 12,
    seed: int = 0,
    layout: str = "2023",
    size: tuple[int, int] = (192, 160),
    frames: tuple[int, int] = (6, 10),
    preview: bool = True,
) -> Path:
    """Write a simulated CAMUS tree and return the dataset root a CAMUS reader gets.

    Args:
        out_dir: folder to write into (created if needed).
        patients: number of patients (>= 3: one per split at least).
        seed: everything random is drawn from generators seeded with (seed, patient, ...); the same
            arguments give byte-identical files.
        layout: "2023" (NIfTI, returns ``out_dir/CAMUS_public``) or "2019" (MetaImage, returns ``out_dir``);
            see the module docstring for how the 2019 training/testing folders map onto the 2023 split.
        size: (rows, cols) of every image: rows are depth, cols lateral; apex at row 0.
        frames: inclusive range of the half-sequence length (NbFrame).
        preview: also write ``out_dir/phantom_preview.png`` (4 patients x 2CH/4CH ED/ES, plain + contours).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if layout not in ("2023", "2019"):
        raise SynthechoError(f"phantom layout must be '2023' or '2019', got {layout!r}")
    if len(size) != 2 or min(size) < 32:
        raise SynthechoError(f"phantom size must be (rows, cols) with both >= 32, got {tuple(size)}")
    if len(frames) != 2 or not 2 <= frames[0] <= frames[1]:
        raise SynthechoError(f"phantom frames must be (min, max) with 2 <= min <= max, got {tuple(frames)}")
    size = (int(size[0]), int(size[1]))
    splits = phantom_splits(patients, seed)
    reversed_ids = _reversed_patients(patients, seed)

    # 1. Where each 2023 patient goes in the requested layout.
    if layout == "2023":
        root = out_dir / "CAMUS_public"
        patient_root = root / "database_nifti"
        targets = {
            patient_id(n): (patient_root / patient_id(n), patient_id(n), True) for n in range(1, patients + 1)
        }
        _check_no_stale_patients(patient_root, set(targets))
    else:
        root = out_dir
        targets = {}
        for id_2019, id_2023 in phantom_id_map(patients, seed).items():
            folder_name, pid = id_2019.split("/")
            targets[id_2023] = (out_dir / folder_name / pid, pid, folder_name == "training")
        for folder_name in ("training", "testing"):
            expected = {pid for path, pid, _ in targets.values() if path.parent.name == folder_name}
            _check_no_stale_patients(out_dir / folder_name, expected)

    # 2. Render and write patient by patient (memory stays flat whatever the cohort size).
    writer = _ImageWriter(out_dir)
    previews = []
    try:
        for number in tqdm(range(1, patients + 1), desc="phantom patients", unit="patient", disable=None):
            attributes, records = _render_patient(seed, number, size, frames, number in reversed_ids)
            folder, pid, with_gt = targets[patient_id(number)]
            if layout == "2023":
                _write_patient_2023(writer, folder, pid, attributes, records)
            else:
                _write_patient_2019(writer, folder, pid, attributes, records, with_gt)
            if preview and len(previews) < 4:
                previews.append((patient_id(number), attributes, records))
    finally:
        writer.close()

    # 3. Split files (2023 only; the 2019 release encodes the split as folders).
    if layout == "2023":
        for name, ids in splits.items():
            write_text_atomic(
                root / "database_split" / f"subgroup_{name}.txt", "".join(f"{i}\n" for i in ids)
            )
    if preview:
        write_bytes_atomic(out_dir / "phantom_preview.png", _preview_png(previews))
    return root


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------

CONTOUR_COLOURS = {1: (255, 64, 64), 2: (64, 255, 64), 3: (64, 160, 255)}  # LV red, MYO green, LA blue


def _contour_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(image[..., None], 3, axis=2)
    for label, colour in CONTOUR_COLOURS.items():
        inside = mask == label
        padded = np.pad(inside, 1, mode="edge")
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        rgb[inside & ~interior] = colour
    return rgb


def _preview_png(previews) -> bytes:
    """Grid: one row per patient; columns 2CH ED, 2CH ES, 4CH ED, 4CH ES, each plain and with contours."""
    from PIL import Image, ImageDraw

    height, width = previews[0][2]["2CH"].images.shape[1:]
    header, gap = 14, 2
    columns = [(view, instant) for view in VIEWS for instant in ("ED", "ES")]
    row_height = height + header
    canvas = Image.new("RGB", (len(columns) * 2 * (width + gap), len(previews) * row_height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for row, (pid, attributes, records) in enumerate(previews):
        top = row * row_height
        text = f"{pid}  {attributes.sex} {attributes.age}y  {attributes.image_quality}  EF {attributes.ef}"
        draw.text((2, top + 1), text, fill=(230, 230, 230))
        for col, (view, instant) in enumerate(columns):
            record = records[view]
            index = (record.ed if instant == "ED" else record.es) - 1
            image, mask = record.images[index], record.masks[index]
            left = col * 2 * (width + gap)
            canvas.paste(Image.fromarray(image).convert("RGB"), (left, top + header))
            canvas.paste(Image.fromarray(_contour_overlay(image, mask)), (left + width + gap, top + header))
            draw.text((left + 2, top + header + 2), f"{view} {instant}", fill=(255, 255, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
