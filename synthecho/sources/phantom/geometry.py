"""One view's geometry drawn for one patient: fan, LV family and size, tilt, apex, ES from EF, fit.

Draw order is fixed (patient-level draws first, then the view's), so a patient's views depend only on
(seed, patient, view). The distributions are described in `anatomy`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from synthecho.sources.phantom.anatomy import (
    FAMILIES,
    FAMILY_PROBABILITIES,
    FORESHORTENED_PROBABILITY,
    HYPOKINESIS_EF,
    HYPOKINESIS_PROBABILITY,
    TERRITORIES,
    TILT_DEGREES,
    TILT_LIMITS,
    HeartShape,
    Layout,
    LVForm,
    ViewGeometry,
    solve_contraction,
)
from synthecho.sources.phantom.cohort import PatientAttributes

VIEW_STREAMS = {"2CH": 2, "4CH": 4}  # the view's number in its random streams
LA_INSIDE_FRACTION = 0.6  # at least this much of the atrium lies inside the fan


def ef_band(ef: int) -> str:
    return "low" if ef < 40 else "mid" if ef < 50 else "normal"


def patient_heart(seed: int, patient_number: int, attributes: PatientAttributes) -> dict:
    """Draws shared by both views of a patient: body size, LV family, hypokinetic territory."""
    rng = np.random.default_rng([seed, patient_number, 1])
    scale = (1.05 if attributes.sex == "M" else 0.95) * rng.normal(1.0, 0.05)
    probabilities = FAMILY_PROBABILITIES[ef_band(attributes.ef)]
    names = list(FAMILIES)
    family = names[int(rng.choice(len(names), p=[probabilities[name] for name in names]))]
    territory = None
    draw = rng.random()
    if attributes.ef < HYPOKINESIS_EF and draw < HYPOKINESIS_PROBABILITY:
        territory = list(TERRITORIES)[int(rng.integers(len(TERRITORIES)))]
    residual = float(rng.uniform(0.0, 0.35))
    return {"scale": scale, "family": family, "territory": territory, "residual": residual}


def sample_view_geometry(
    seed: int, patient_number: int, view: str, attributes: PatientAttributes, size: tuple[int, int]
) -> ViewGeometry:
    height, width = size
    heart = patient_heart(seed, patient_number, attributes)
    rng = np.random.default_rng([seed, patient_number, VIEW_STREAMS[view], 1])

    # 1. Fan: ~75-90 degree opening, ~15 cm deep; spacing follows from the pixel grid.
    half_angle = math.radians(rng.uniform(37.5, 45.0))
    depth = rng.uniform(140.0, 160.0)
    apex_offset = rng.uniform(3.0, 6.0)
    spacing_depth = depth / (height - 1)
    max_range = depth + apex_offset + 0.25 * spacing_depth  # the arc just reaches the last row
    spacing_lateral = 2.0 * max_range * math.sin(half_angle) * 1.04 / width

    # 2. LV form: the patient's family, drawn anew per view within its ranges, and how the view cut it.
    family = FAMILIES[heart["family"]]
    scale = heart["scale"]
    dilation = 1.0 + 0.25 * max(0.0, 50.0 - attributes.ef) / 30.0
    length = 74.0 * scale * family["length"] * (1.0 + 0.4 * (dilation - 1.0)) * rng.normal(1.0, 0.04)
    half_width = 22.5 * scale * family["width"] * dilation * rng.normal(1.0, 0.05)
    wall = rng.uniform(*family["wall"])
    peak, bluntness, annulus = (rng.uniform(*family[key]) for key in ("peak", "bluntness", "annulus"))
    foreshortened = bool(rng.random() < FORESHORTENED_PROBABILITY)
    cut = rng.uniform(0.72, 0.9)
    apical_wall = rng.uniform(1.1, 1.5) if foreshortened else rng.uniform(0.45, 0.7)
    if foreshortened:  # the plane misses the true apex: a shorter LV with a blunt, thick cap
        length, bluntness, peak = length * cut, max(bluntness, min(bluntness + 0.8, 2.2)), peak * 0.7
    territory = TERRITORIES.get(heart["territory"]) if heart["territory"] else None
    bulge = rng.random() < 0.5  # half the hypertrophied hearts have a basal septal bulge
    form = LVForm(
        family=heart["family"],
        peak=peak,
        bluntness=bluntness,
        basal_flare=rng.uniform(*family["flare"]),
        annulus=annulus,
        apical_wall=apical_wall,
        apical_extent=rng.uniform(*family["extent"]),
        septal_bulge=rng.uniform(0.12, 0.25) if heart["family"] == "hypertrophied" and bulge else 0.0,
        la_power=rng.uniform(2.0, 4.0),
        tip=rng.uniform(*family.get("tip", (0.0, 0.0))),
        thickening=1.0 if heart["family"] == "hypertrophied" else 1.2,
        foreshortened=foreshortened,
        hypokinesis=territory,
        residual=heart["residual"] if territory else 1.0,
    )

    # 3. Position: tilt of the long axis, apex off the fan axis, apex depth.
    mean, sd = TILT_DEGREES[view]
    angle = math.radians(float(np.clip(rng.normal(mean, sd), *TILT_LIMITS)))
    if view == "4CH":
        apex_x = float(np.clip(rng.normal(3.0, 5.0), -10.0, 15.0))
        septal, lateral = 0.92 * half_width, 1.05 * half_width  # the septum is flatter
    else:
        apex_x = float(np.clip(rng.normal(0.0, 5.0), -14.0, 14.0))
        septal, lateral = (half_width * rng.normal(1.0, 0.04) for _ in range(2))
    apex_y = float(np.clip(rng.normal(22.0, 4.0), wall + 3.0, 36.0)) + (
        rng.uniform(3, 10) if foreshortened else 0
    )
    la_angle = angle + math.radians(rng.normal(3.0, 5.0))
    la_dilation = 1.0 + 0.6 * (dilation - 1.0)
    chambers = {
        "la_length": 38.0 * scale * la_dilation * rng.normal(1.0, 0.12),
        "la_half_width": 20.0 * scale * la_dilation * rng.normal(1.0, 0.12),
        "rv_half_width": 24.0 * scale * rng.normal(1.0, 0.06),
        "ra_length": 38.0 * scale * rng.normal(1.0, 0.05),
        "ra_half_width": 18.0 * scale * rng.normal(1.0, 0.05),
    }
    harmonics = [(float(rng.normal(0.0, a)), float(rng.uniform(0, 2 * np.pi))) for a in (0.03, 0.025, 0.015)]
    wall_harmonics = [
        (float(rng.normal(0.0, a)), float(rng.uniform(0, 2 * np.pi))) for a in (0.10, 0.08, 0.05)
    ]
    papillary = [(float(rng.uniform(0.5, 0.72)), 1, float(rng.uniform(0.09, 0.14)))]
    if rng.random() < 0.5:  # the second muscle, on the other wall, is not always in the plane
        papillary.append((float(rng.uniform(0.5, 0.72)), -1, float(rng.uniform(0.07, 0.12))))

    # 4. ES from EF: the apex stays put and the base descends; the contraction is solved for the EF.
    ef = attributes.ef / 100.0
    length_ratio = 1.0 - (0.03 + 0.15 * ef)

    def build(fit: float, apex_shift: float, centring: float) -> ViewGeometry:
        ed = HeartShape(
            apex_x=apex_x * centring,
            apex_y=apex_y + apex_shift,
            angle=angle,
            length=length * fit,
            half_width_septal=septal * fit,
            half_width_lateral=lateral * fit,
            contraction=0.0,
            wall=wall,
            la_angle=la_angle,
            **{name: value * fit for name, value in chambers.items()},
        )
        geometry = ViewGeometry(
            view=view,
            height=height,
            width=width,
            spacing_depth=spacing_depth,
            spacing_lateral=spacing_lateral,
            half_angle=half_angle,
            apex_offset=apex_offset,
            max_range=max_range,
            ed=ed,
            es=ed,
            form=form,
            width_harmonics=tuple(harmonics),
            wall_harmonics=tuple(wall_harmonics),
            papillary=tuple(papillary),
        )
        base_descent = ed.length * (1.0 - length_ratio)
        es = replace(
            ed,
            length=ed.length * length_ratio,
            contraction=solve_contraction(ed, geometry, ef, length_ratio),
            la_length=ed.la_length + base_descent + 2.5,  # the LA fills while its far wall stays put
            la_half_width=ed.la_half_width * 1.08,
            rv_half_width=ed.rv_half_width * 0.85,
            ra_length=ed.ra_length + base_descent + 2.0,
            ra_half_width=ed.ra_half_width * 1.06,
        )
        return replace(geometry, es=es)

    # 5. As a sonographer would: bring a heart whose cavity leaves the fan toward the axis and deeper,
    # shrinking it a little, until the LV cavity and most of the atrium are inside at both phases.
    # Walls, atrium and right heart may still be cut by the sector edge, as in real recordings.
    fit, apex_shift, centring = 1.0, 0.0, 1.0
    geometry = build(fit, apex_shift, centring)
    while not cavity_fits(geometry) and fit > 0.6:
        fit, apex_shift, centring = fit * 0.985, min(apex_shift + 0.8, 15.0), centring * 0.9
        geometry = build(fit, apex_shift, centring)
    return geometry


def fan_mask(
    g: ViewGeometry, x: np.ndarray, y: np.ndarray, margin_mm: float = 0.0, margin_angle: float = 0.0
):
    r = np.hypot(x, y + g.apex_offset)
    return (r <= g.max_range - margin_mm) & (
        np.abs(np.arctan2(x, y + g.apex_offset)) <= g.half_angle - margin_angle
    )


def cavity_fits(g: ViewGeometry, step_mm: float = 1.2) -> bool:
    """The LV cavity lies inside the fan (with a 1.5 mm / 1 degree margin) and the atrium mostly does."""
    half_width = g.max_range * math.sin(g.half_angle)
    # The grid reaches below the bottom arc: an atrium cut by it must count what lies beyond.
    x, y = np.meshgrid(
        np.arange(-half_width, half_width, step_mm), np.arange(0.0, g.max_range + 60.0, step_mm)
    )
    inside = fan_mask(g, x, y, 1.5, math.radians(1.0))
    for shape in (g.ed, g.es):
        lay = Layout(shape, g, x, y)
        if np.any(lay.cavity & ~inside):
            return False
        atrium = int(lay.atrium.sum())
        if atrium == 0 or (lay.atrium & inside).sum() < LA_INSIDE_FRACTION * atrium:
            return False
    return True
