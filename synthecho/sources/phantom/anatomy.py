"""Heart anatomy in millimetres: each patient's chamber shapes per view, their ED -> ES motion, and the
tissue class / CAMUS label of any point.

Coordinates: x lateral (0 on the fan axis, + toward the image right), y depth (0 at image row 0). The LV
frame has u along the long axis from the endocardial apex (u = length is the mitral plane) and v across
it (v > 0 is the wall on the image right: lateral in 4CH, anterior in 2CH).

Variety, and where each range comes from (CAMUS publishes no distribution of these; each is an
assumption chosen to span what apical views show, stated so that tests can hold the phantom to it):
  * LV outline families: `conical` (rounded tip, straight walls, widest near the base), `bullet`
    (elliptic apex, walls nearly parallel, narrowing to the annulus), `spherical` (remodelled: short,
    wide, round; mostly at low EF), `hypertrophied` (walls 12-15.5 mm, tubular cavity, basal septal bulge
    in half of them). Probabilities depend on the EF (`FAMILY_PROBABILITIES`).
  * Tilt of the long axis from the fan axis: 4CH ~N(12, 7) degrees, 2CH ~N(3, 8), clipped to [-18, 28];
    apex off the fan axis by ~N(0-3, 5) mm; a foreshortened view (30 %) has a shorter LV with a blunt,
    thick apex.
  * Only the LV cavity must lie inside the fan at both phases (so the cfg EF stays measurable from the
    masks); walls, atrium and right heart may be cut by the sector edge or the bottom arc.
  * Motion: the apex stays, the base descends, the cavity narrows so that the area-length volume ratio
    is exactly 1 - EF (solved in closed form, `solve_contraction`), walls thicken. Below EF 45 most hearts
    (75 %) have a hypokinetic territory (apex, or the wall on one side) that keeps 0-35 % of its motion,
    the others compensating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

# Tissue classes used for rendering only (the masks use CAMUS labels 0..3).
BACKGROUND, LV_BLOOD, MYOCARDIUM, LA_BLOOD, RV_BLOOD, RA_BLOOD, THIN_WALL, PERICARDIUM, VALVE, PAPILLARY = (
    range(10)
)
BLOOD_CLASSES = (LV_BLOOD, LA_BLOOD, RV_BLOOD, RA_BLOOD)

# LV outline families: ranges of the widest point (fraction of the length), bluntness of the apex (1
# conical .. 2 elliptic .. boxy), annulus width (fraction of the widest), size factors, ED wall (mm) and
# basal wall flare.
FAMILIES = {
    "conical": dict(peak=(0.9, 1.0), bluntness=(1.0, 1.1), annulus=(0.95, 1.0), tip=(0.03, 0.06), length=1.0,
                    width=1.15, wall=(8.5, 11.0), flare=(0.0, 0.1), extent=(0.3, 0.5)),
    "bullet": dict(peak=(0.35, 0.6), bluntness=(1.6, 2.2), annulus=(0.72, 0.92), length=1.0, width=1.0,
                   wall=(8.5, 11.5), flare=(0.0, 0.2), extent=(0.3, 0.4)),
    "spherical": dict(peak=(0.45, 0.55), bluntness=(1.6, 2.2), annulus=(0.78, 0.9), length=0.8, width=1.4,
                      wall=(7.5, 10.0), flare=(0.0, 0.15), extent=(0.3, 0.4)),
    "hypertrophied": dict(peak=(0.4, 0.55), bluntness=(2.0, 2.8), annulus=(0.92, 1.0), length=0.95,
                          width=0.85, wall=(12.0, 15.5), flare=(0.0, 0.1), extent=(0.3, 0.5)),
}  # fmt: skip
# Family probabilities by EF band: remodelled spherical hearts are the failing ones.
FAMILY_PROBABILITIES = {
    "low": {"conical": 0.1, "bullet": 0.25, "spherical": 0.65, "hypertrophied": 0.0},  # EF < 40
    "mid": {"conical": 0.4, "bullet": 0.15, "spherical": 0.3, "hypertrophied": 0.15},  # 40 <= EF < 50
    "normal": {"conical": 0.65, "bullet": 0.15, "spherical": 0.0, "hypertrophied": 0.2},
}
TILT_DEGREES = {"4CH": (12.0, 7.0), "2CH": (3.0, 8.0)}  # mean, sd of the long axis from the fan axis
TILT_LIMITS = (-18.0, 28.0)
FORESHORTENED_PROBABILITY = 0.3
HYPOKINESIS_EF, HYPOKINESIS_PROBABILITY = 45, 0.75
# Territories in the LV frame: (centre along the axis, half-extent, side: 0 both, -1 image left, +1 right).
TERRITORIES = {"apical": (0.1, 0.35, 0), "left wall": (0.55, 0.4, -1), "right wall": (0.55, 0.4, 1)}


@dataclass(frozen=True)
class HeartShape:
    """Chamber geometry at one instant (mm, radians).

    The cavity half-widths are the ED ones; `contraction` (0 at ED) is the fraction of them lost where
    the wall moves normally, so a phase in between is a plain linear interpolation of the fields.
    """

    apex_x: float
    apex_y: float
    angle: float  # LV long axis from vertical, positive = base toward the image right
    length: float  # apex -> mitral plane
    half_width_septal: float  # cavity half-widths at the widest point (image left / right of the axis)
    half_width_lateral: float
    contraction: float
    wall: float  # mid-wall myocardial thickness at ED
    la_length: float
    la_half_width: float
    la_angle: float
    rv_half_width: float
    ra_length: float
    ra_half_width: float


def lerp_shape(ed: HeartShape, es: HeartShape, phase: float) -> HeartShape:
    values = {f.name: (1 - phase) * getattr(ed, f.name) + phase * getattr(es, f.name) for f in fields(ed)}
    return HeartShape(**values)


@dataclass(frozen=True)
class LVForm:
    """The outline family of one view's LV and how its acquisition cut it."""

    family: str
    peak: float
    bluntness: float
    annulus: float
    apical_wall: float  # apical wall relative to mid wall: < 1 normal apical thinning, > 1 foreshortened
    apical_extent: float  # fraction of the length over which the wall reaches its mid thickness
    septal_bulge: float  # basal septal bulge, as a fraction of the septal half-width
    basal_flare: float  # how much thicker the basal wall is than the mid wall (fraction)
    la_power: float  # LA outline: superellipse exponent (2 ellipse .. 4 rounded rectangle)
    thickening: float  # wall thickening per unit of contraction
    foreshortened: bool = False
    tip: float = 0.0  # rounding of a pointed apex (relative radius)
    hypokinesis: tuple[float, float, int] | None = None  # territory (see TERRITORIES)
    residual: float = 1.0  # motion left in the territory


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
    form: LVForm
    # Smooth irregularities along the long axis (fixed for the view, so they move with the wall):
    # (amplitude, phase) of 3 harmonics for the cavity width and for the wall thickness.
    width_harmonics: tuple[tuple[float, float], ...] = ()
    wall_harmonics: tuple[tuple[float, float], ...] = ()
    papillary: tuple[tuple[float, int, float], ...] = ()  # (position along the axis, side, size)

    @property
    def right_heart(self) -> bool:
        return self.view == "4CH"


# --- profiles along the long axis ------------------------------------------------------------------------


def lv_profile(t: np.ndarray, form: LVForm) -> np.ndarray:
    """Cavity half-width along the long axis (t = 0 apex, 1 mitral plane), as a fraction of the widest."""
    t = np.clip(t, 0.0, 1.0)
    # From the apex to the widest point a superellipse quadrant: bluntness 1 is a straight (conical) side,
    # 2 an elliptic one, more is boxy; `tip` rounds a pointed apex (a hyperbola of that relative radius).
    s = np.minimum(t / form.peak, 1.0)
    if form.tip > 0:
        s = (np.sqrt(s**2 + form.tip**2) - form.tip) / (math.sqrt(1.0 + form.tip**2) - form.tip)
    rise = (1.0 - (1.0 - s) ** form.bluntness) ** (1.0 / form.bluntness)
    taper = 1.0 - (1.0 - form.annulus) * np.clip((t - form.peak) / max(1.0 - form.peak, 1e-6), 0.0, 1.0) ** 2
    return np.where(t <= form.peak, rise, taper)


def harmonic_factor(t: np.ndarray, harmonics) -> np.ndarray:
    factor = np.ones_like(t)
    for k, (amplitude, phase) in enumerate(harmonics, start=1):
        factor = factor + amplitude * np.sin(k * np.pi * t + phase)
    return factor


def motion_factor(t: np.ndarray, right: np.ndarray, form: LVForm) -> np.ndarray:
    """How much of the normal inward motion each point of the wall makes (1 normal, `residual` at worst)."""
    if form.hypokinesis is None:
        return np.ones_like(t)
    centre, extent, side = form.hypokinesis
    bump = np.exp(-(((t - centre) / extent) ** 4))
    if side:
        bump = bump * (right == (side > 0))
    return 1.0 - (1.0 - form.residual) * bump


def septal_bulge(t: np.ndarray, form: LVForm) -> np.ndarray:
    return form.septal_bulge * np.exp(-(((t - 0.82) / 0.1) ** 2))


def cavity_half_width(shape: HeartShape, g: ViewGeometry, t: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Half-width (before the profile) of each side of the cavity at t; `right` = the image-right side."""
    base = np.where(
        right, shape.half_width_lateral, shape.half_width_septal * (1.0 - septal_bulge(t, g.form))
    )
    return (
        base
        * harmonic_factor(t, g.width_harmonics)
        * (1.0 - shape.contraction * motion_factor(t, right, g.form))
    )


def wall_thickness(shape: HeartShape, g: ViewGeometry, t: np.ndarray, right: np.ndarray) -> np.ndarray:
    form = g.form
    apical = form.apical_wall + (1.0 - form.apical_wall) * np.clip(t / form.apical_extent, 0.0, 1.0)
    apical = apical * (1.0 + form.basal_flare * np.clip((t - 0.4) / 0.6, 0.0, 1.0) ** 1.5)
    thickening = 1.0 + form.thickening * shape.contraction * motion_factor(t, right, form)
    wall = shape.wall * harmonic_factor(t, g.wall_harmonics) * apical * thickening
    # The bulge the cavity loses is septal muscle: the epicardium stays where it was.
    bulge = np.where(right, 0.0, shape.half_width_septal * septal_bulge(t, form) * lv_profile(t, form))
    return wall + bulge


def solve_contraction(ed: HeartShape, g: ViewGeometry, ef: float, length_ratio: float) -> float:
    """The contraction that makes the single-plane area-length volume ratio V_es / V_ed equal 1 - EF.

    Area A = L * integral over t of the two half-widths x profile; with contraction c the ES integral is
    I0 - c I1 (I1 weights each side by its motion), and V ~ A^2 / L, so
    (1 - EF) = length_ratio * ((I0 - c I1) / I0)^2  ->  c = (1 - sqrt((1 - EF) / length_ratio)) I0 / I1.
    """
    t = np.linspace(0.0, 1.0, 401)
    still = replace(ed, contraction=0.0)
    profile = lv_profile(t, g.form)
    i0 = i1 = 0.0
    for right in (False, True):
        side = np.full(t.shape, right)
        width = cavity_half_width(still, g, t, side) * profile
        i0 += float(np.trapezoid(width, t))
        i1 += float(np.trapezoid(width * motion_factor(t, side, g.form), t))
    return (1.0 - math.sqrt((1.0 - ef) / length_ratio)) * i0 / i1


# --- classification of points -----------------------------------------------------------------------------


def lv_frame(shape: HeartShape, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sin_a, cos_a = math.sin(shape.angle), math.cos(shape.angle)
    dx, dy = x - shape.apex_x, y - shape.apex_y
    return dx * sin_a + dy * cos_a, dx * cos_a - dy * sin_a


def superellipse(u, v, center_u, semi_u, semi_v, power: float = 2.0) -> np.ndarray:
    return np.abs((u - center_u) / semi_u) ** power + np.abs(v / semi_v) ** power <= 1.0


T_TABLE = np.linspace(0.0, 1.2, 1201)  # the along-axis functions are tabulated once per shape
T_STEP = T_TABLE[1]


class AxialTables:
    """Profile, cavity half-width and wall thickness of one shape along t, per side (rows: image left,
    image right), looked up at the nearest of 1201 samples (0.1 % of the length)."""

    def __init__(self, shape: HeartShape, g: ViewGeometry):
        self.profile = lv_profile(T_TABLE, g.form)
        sides = [np.full(T_TABLE.shape, right) for right in (False, True)]
        self.width = np.stack([cavity_half_width(shape, g, T_TABLE, side) for side in sides])
        self.wall = np.stack([wall_thickness(shape, g, T_TABLE, side) for side in sides])

    @staticmethod
    def index(t: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(t / T_STEP), 0, len(T_TABLE) - 1).astype(np.intp)

    @classmethod
    def sided(cls, table: np.ndarray, t: np.ndarray, right: np.ndarray) -> np.ndarray:
        return table[right.astype(np.intp), cls.index(t)]

    def profile_at(self, t: np.ndarray) -> np.ndarray:
        return self.profile[self.index(t)]


class Layout:
    """The LV and LA of one shape evaluated at points (x, y): the frames and outlines `classify` needs."""

    def __init__(self, shape: HeartShape, g: ViewGeometry, x: np.ndarray, y: np.ndarray):
        self.shape, self.g = shape, g
        self.tables = AxialTables(shape, g)
        self.u, self.v = lv_frame(shape, x, y)
        length = shape.length
        self.t = np.clip(self.u / length, 0.0, 1.2)
        self.right = self.v >= 0
        self.half_width = self.tables.sided(self.tables.width, self.t, self.right)
        self.wall = self.tables.sided(self.tables.wall, self.t, self.right)
        self.above_mitral = self.u <= length
        self.cavity = self.outline(0.0) & self.above_mitral
        self.epicardium = self.outline(self.wall) & self.above_mitral
        # LA frame: origin at the mitral centre; truncated by the mitral plane so LV and LA just touch.
        sin_a, cos_a = math.sin(shape.angle), math.cos(shape.angle)
        self.mitral = (shape.apex_x + length * sin_a, shape.apex_y + length * cos_a)
        sin_l, cos_l = math.sin(shape.la_angle), math.cos(shape.la_angle)
        self.ul = (x - self.mitral[0]) * sin_l + (y - self.mitral[1]) * cos_l
        self.vl = (x - self.mitral[0]) * cos_l - (y - self.mitral[1]) * sin_l
        self.la_center, self.la_semi = 0.35 * shape.la_length, 0.65 * shape.la_length
        self.atrium = self.atrium_outline(0.0) & ~self.above_mitral

    def outline(self, grow) -> np.ndarray:
        """The cavity outline grown by `grow` mm: the profile scaled up from a point `grow` above the apex,
        and past the widest point at least `grow` beside the cavity (the wall does not thin where the
        cavity narrows toward the annulus)."""
        u, length = self.u, self.shape.length
        cap = (self.half_width + grow) * self.tables.profile_at((u + grow) / (length + grow))
        side = self.half_width * self.tables.profile_at(self.t) + grow
        return (u >= -grow) & (
            np.abs(self.v) <= np.where(self.t >= self.g.form.peak, np.maximum(cap, side), cap)
        )

    def atrium_outline(self, grow: float) -> np.ndarray:
        half = self.shape.la_half_width + grow
        return superellipse(self.ul, self.vl, self.la_center, self.la_semi + grow, half, self.g.form.la_power)


def labels_of(layout: Layout) -> np.ndarray:
    """CAMUS labels: 1 LV cavity, 2 myocardium, 3 left atrium."""
    labels = np.zeros(layout.u.shape, dtype=np.uint8)
    labels[layout.atrium] = 3
    labels[layout.epicardium] = 2
    labels[layout.cavity] = 1
    return labels


def tissue_classes(lay: Layout) -> np.ndarray:
    """Tissue class (for rendering: chambers, walls, pericardium, valves, papillary muscles) of each point."""
    shape, g = lay.shape, lay.g
    u, v, t = lay.u, lay.v, lay.t
    length, wall = shape.length, lay.wall
    epicardium, cavity = lay.epicardium, lay.cavity
    pericardium = lay.outline(wall + 2.5) & (u <= length + 2)
    below_mitral = ~lay.above_mitral
    atrial_wall = lay.atrium_outline(2.5) & below_mitral

    classes = np.full(u.shape, BACKGROUND, dtype=np.uint8)
    classes[pericardium] = PERICARDIUM
    tv_leaf = None
    if g.right_heart:
        # Right heart in the LV frame: an RV ellipse whose centre line follows the septal epicardium and
        # that is cut by the LV, so the septum is the LV's septal wall and the RV hugs it along its whole
        # length; the tricuspid plane sits a little apical to the mitral plane.
        septal = np.zeros(t.shape, dtype=bool)
        septal_width = lay.tables.sided(lay.tables.width, t, septal) * lay.tables.profile_at(t)
        rv_center_v = -(septal_width + lay.tables.sided(lay.tables.wall, t, septal))
        septum_v = -(g.form.annulus * shape.half_width_septal + shape.wall)  # at the base
        tricuspid = length - 4.0
        rv_v = v - rv_center_v
        rv_center, rv_semi = 0.65 * length, 0.5 * length  # shorter than the LV, widening toward its base
        rv_width = shape.rv_half_width * (0.55 + 0.6 * t)
        rv = superellipse(u, rv_v, rv_center, rv_semi, rv_width) & (u <= tricuspid) & ~epicardium
        rv_wall = superellipse(u, rv_v, rv_center, rv_semi + 3.5, rv_width + 3.5) & (u <= tricuspid + 2)
        rv_pericardium = superellipse(u, rv_v, rv_center, rv_semi + 5.5, rv_width + 5.5)
        ra_v = v - (septum_v - 0.55 * shape.ra_half_width)
        ra_u = u - tricuspid
        ra_center, ra_semi = 0.4 * shape.ra_length, 0.6 * shape.ra_length
        la_grown = lay.atrium_outline(4.0)
        right_atrium = (
            superellipse(ra_u, ra_v, ra_center, ra_semi, shape.ra_half_width) & (ra_u > 0) & ~la_grown
        )
        ra_wall = superellipse(ra_u, ra_v, ra_center, ra_semi + 2.5, shape.ra_half_width + 2.5) & (ra_u > -1)
        classes[(rv_pericardium & (u <= tricuspid + 4)) & ~epicardium] = PERICARDIUM
        classes[(rv_wall | ra_wall) & ~epicardium] = THIN_WALL
        classes[rv] = RV_BLOOD
        classes[right_atrium & ~rv] = RA_BLOOD
        # Tricuspid leaflets: a shallow arc across the RV inflow.
        tv_w = 0.45 * shape.rv_half_width
        tv_c = septum_v - 0.55 * shape.rv_half_width
        tv_leaf = (np.abs(u - (tricuspid + 2.0 * (1 - ((v - tv_c) / tv_w) ** 2))) < 0.9) & (
            np.abs(v - tv_c) < tv_w
        )
    classes[atrial_wall & (classes != RV_BLOOD) & (classes != RA_BLOOD)] = THIN_WALL
    classes[lay.atrium] = LA_BLOOD
    classes[epicardium] = MYOCARDIUM
    classes[cavity] = LV_BLOOD
    # Papillary muscles (rendered only: CAMUS counts them as cavity), attached to their wall.
    for position, side, size in g.papillary:
        at = np.array([position])
        wall_v = float(cavity_half_width(shape, g, at, np.array([side > 0]))[0] * lv_profile(at, g.form)[0])
        muscle = superellipse(u, v - side * 0.72 * wall_v, position * length, size * length, 0.2 * wall_v)
        classes[muscle & cavity] = PAPILLARY
    # Closed mitral leaflets bowing slightly into the LA.
    annulus = 0.5 * (shape.half_width_lateral + shape.half_width_septal) * g.form.annulus
    mv_leaf = (np.abs(u - (length + 3.0 * (1 - (v / annulus) ** 2))) < 0.6) & (np.abs(v) < annulus)
    classes[mv_leaf] = VALVE
    if tv_leaf is not None:
        classes[tv_leaf & ~epicardium] = VALVE
    return classes


def material_points(lay: Layout, ed: HeartShape) -> tuple[np.ndarray, np.ndarray]:
    """Where the tissue at the points of `lay` was at ED: (x_ed, y_ed), so speckle can move with it.

    Along the axis the apex is fixed and the LV stretches back to its ED length (below the mitral plane
    the displacement fades over the atrium, whose far wall stays put); across it, cavity and wall are
    mapped proportionally onto their ED widths and the surroundings follow the epicardium, fading out.
    """
    shape, tables, ed_tables = lay.shape, lay.tables, AxialTables(ed, lay.g)
    u, v, length = lay.u, lay.v, shape.length
    below = np.clip((u - length) / max(shape.la_length, 1.0), 0.0, 1.0)
    u_ed = np.where(
        u <= 0, u, np.where(u <= length, u * ed.length / length, u + (ed.length - length) * (1 - below))
    )
    t = np.clip(u / length, 0.0, 1.0)
    profile = tables.profile_at(t)
    thick = np.maximum(profile, 0.3)
    width_now = np.maximum(lay.half_width * profile, 0.5)
    width_ed = np.maximum(ed_tables.sided(ed_tables.width, t, lay.right) * profile, 0.5)
    wall_now = np.maximum(lay.wall * thick, 0.5)
    wall_ed = np.maximum(ed_tables.sided(ed_tables.wall, t, lay.right) * thick, 0.5)
    a = np.abs(v)
    beyond = np.exp(-np.maximum(a - width_now - wall_now, 0) / 15.0)
    outside = a + (width_ed + wall_ed - width_now - wall_now) * beyond
    a_ed = np.where(
        a <= width_now,
        a * width_ed / width_now,
        np.where(a <= width_now + wall_now, width_ed + (a - width_now) * wall_ed / wall_now, outside),
    )
    fade = np.clip(1.0 - np.maximum(u - length, -u) / 10.0, 0.0, 1.0)  # above the apex, below the base
    v_ed = np.sign(v) * (a + (a_ed - a) * fade)
    sin_a, cos_a = math.sin(ed.angle), math.cos(ed.angle)
    return ed.apex_x + u_ed * sin_a + v_ed * cos_a, ed.apex_y + u_ed * cos_a - v_ed * sin_a
