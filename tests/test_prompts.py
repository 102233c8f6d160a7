"""Prompt text (Synthetic Boost / medvlsm templates) and geometric shape words."""

from __future__ import annotations

import numpy as np
import pytest

from synthecho.errors import SynthechoError
from synthecho.prompts import (
    LEVELS,
    PHRASINGS,
    STRUCTURE_NAMES,
    Attributes,
    all_structure_prompts,
    image_prompt,
    shape_word,
    shapes_of,
    structure_prompt,
)

MALE_73 = Attributes(view="2CH", phase="ED", sex="M", age=73, image_quality="Good")
FEMALE_41 = Attributes(view="4CH", phase="ES", sex="F", age=41, image_quality="Medium")

# (structure, level, phrasing, attrs, shape, expected) - written by hand from the templates.
CASES = [
    ("lv", 0, "A", MALE_73, None, ""),
    ("lv", 0, "B", MALE_73, None, ""),
    ("lv", 1, "A", MALE_73, None, "Left ventricular cavity of the heart."),
    ("myo", 1, "B", MALE_73, None, "Myocardium in the cardiac ultrasound."),
    ("la", 2, "A", FEMALE_41, None, "Left atrium cavity in four-chamber view of the heart."),
    ("la", 2, "B", FEMALE_41, None, "Left atrium cavity in four-chamber view in the cardiac ultrasound."),
    (
        "myo",
        3,
        "A",
        MALE_73,
        None,
        "Myocardium in two-chamber view of the heart at end of the diastole cycle.",
    ),
    (
        "lv",
        4,
        "B",
        FEMALE_41,
        None,
        "Left ventricular cavity in four-chamber view in the cardiac ultrasound at end of the systole cycle"
        " of a female.",
    ),
    (
        "lv",
        5,
        "A",
        MALE_73,
        None,
        "Left ventricular cavity in two-chamber view of the heart at end of the diastole cycle"
        " of a seventy-three-year-old male.",
    ),
    (
        "la",
        6,
        "B",
        FEMALE_41,
        None,
        "Left atrium cavity in four-chamber view in the cardiac ultrasound at end of the systole cycle"
        " of a forty-one-year-old female with medium image quality.",
    ),
    (
        "lv",
        7,
        "A",
        MALE_73,
        "oval",
        "Left ventricular cavity of oval shape in two-chamber view of the heart at end of the diastole cycle"
        " of a seventy-three-year-old male with good image quality.",
    ),
    (
        "lv",
        7,
        "B",
        MALE_73,
        "oval",
        "Left ventricular cavity of oval shape in two-chamber view in the cardiac ultrasound at end of the"
        " diastole cycle of a seventy-three-year-old male with good image quality.",
    ),
    (
        "la",
        7,
        "A",
        FEMALE_41,
        "triangular",
        "Left atrium cavity of triangular shape in four-chamber view of the heart at end of the systole cycle"
        " of a forty-one-year-old female with medium image quality.",
    ),
]


@pytest.mark.parametrize("structure, level, phrasing, attrs, shape, expected", CASES)
def test_structure_prompt_matches_the_released_templates(structure, level, phrasing, attrs, shape, expected):
    assert structure_prompt(structure, level, phrasing, attrs, shape=shape) == expected


@pytest.mark.parametrize(
    "age, article_rule, phrase",
    [
        (8, "an", "an eight-year-old"),
        (11, "an", "an eleven-year-old"),
        (18, "an", "an eighteen-year-old"),
        (80, "an", "an eighty-year-old"),
        (84, "an", "an eighty-four-year-old"),
        (56, "an", "a fifty-six-year-old"),
        (1, "an", "a one-year-old"),  # "one" starts with a consonant sound
        (80, "a", "a eighty-year-old"),  # the original template's behaviour
        (18, "a", "a eighteen-year-old"),
    ],
)
def test_age_article(age, article_rule, phrase):
    attrs = Attributes(view="4CH", phase="ES", sex="F", age=age, image_quality="Poor")
    text = structure_prompt("myo", 6, "A", attrs, article_rule=article_rule)
    assert text == (
        f"Myocardium in four-chamber view of the heart at end of the systole cycle of {phrase} female"
        " with poor image quality."
    )


def test_image_prompt_has_the_attributes_and_no_structure():
    assert image_prompt(MALE_73) == (
        "Two-chamber view of the heart at end of the diastole cycle of a seventy-three-year-old male"
        " with good image quality."
    )
    eighty = Attributes(view="4CH", phase="ES", sex="F", age=80, image_quality="Poor")
    assert image_prompt(eighty) == (
        "Four-chamber view of the heart at end of the systole cycle of an eighty-year-old female"
        " with poor image quality."
    )
    assert image_prompt(eighty, article_rule="a").endswith(
        "of a eighty-year-old female with poor image quality."
    )


def test_all_structure_prompts_covers_every_combination():
    shapes = {"lv": "oval", "myo": "triangle", "la": "square"}
    rows = all_structure_prompts(MALE_73, shapes)
    assert len(rows) == 3 * 8 * 2 == 48
    keys = {(r["structure"], r["level"], r["phrasing"]) for r in rows}
    assert keys == {(s, lv, p) for s in STRUCTURE_NAMES for lv in LEVELS for p in PHRASINGS}
    by_key = {(r["structure"], r["level"], r["phrasing"]): r["text"] for r in rows}
    assert by_key[("la", 7, "B")].startswith(
        "Left atrium cavity of square shape in two-chamber view in the cardiac"
    )
    assert by_key[("myo", 0, "A")] == by_key[("myo", 0, "B")] == ""
    # Each level adds text: P1 < P2 < ... < P6 in length, for every structure and phrasing.
    for s in STRUCTURE_NAMES:
        for p in PHRASINGS:
            lengths = [len(by_key[(s, level, p)]) for level in range(7)]
            assert lengths == sorted(lengths) and len(set(lengths)) == 7
    with pytest.raises(ValueError, match="la"):
        all_structure_prompts(MALE_73, {"lv": "oval", "myo": "oval"})


def test_the_no_quality_set_is_synthetic_boosts_sdm_set():
    """A generator that never saw image quality gets Synthetic Boost's SDM prompt set: P0-P6, P6 the shape
    prompt without quality; every prompt names what it asserts."""
    from synthecho.prompts import prompt_asserts, prompt_set_for, structure_prompt

    shapes = {"lv": "oval", "myo": "triangle", "la": "square"}
    rows = all_structure_prompts(MALE_73, shapes, prompt_set="no_quality")
    assert len(rows) == 3 * 7 * 2 and max(r["level"] for r in rows) == 6
    p6 = structure_prompt("lv", 6, "A", MALE_73, "oval", prompt_set="no_quality")
    assert p6 == (
        "Left ventricular cavity of oval shape in two-chamber view of the heart at end of the diastole "
        "cycle of a seventy-three-year-old male."
    )
    assert "image quality" not in " ".join(r["text"] for r in rows)
    assert prompt_asserts(6, "no_quality") == ["structure", "view", "phase", "sex", "age", "shape"]
    assert prompt_asserts(6) == ["structure", "view", "phase", "sex", "age", "image_quality"]
    assert prompt_asserts(0) == []
    full = all_structure_prompts(MALE_73, shapes)
    assert all(r["attributes"] == prompt_asserts(r["level"]) for r in full)
    assert prompt_set_for(["label_map", "view", "phase"]) == "no_quality"
    assert prompt_set_for(["prompt", "view", "phase", "sex", "age", "image_quality"]) == "camus"
    with pytest.raises(ValueError, match="level"):
        structure_prompt("lv", 7, "A", MALE_73, "oval", prompt_set="no_quality")


@pytest.mark.parametrize(
    "field, bad",
    [("view", "3CH"), ("phase", "MID"), ("sex", "X"), ("image_quality", "Excellent"), ("age", -1)],
)
def test_bad_attributes_name_the_value_and_the_allowed_ones(field, bad):
    values = dict(view="2CH", phase="ED", sex="M", age=73, image_quality="Good")
    values[field] = bad
    with pytest.raises(ValueError, match=str(bad)) as info:
        Attributes(**values)
    assert isinstance(info.value, SynthechoError)
    if field != "age":
        assert "allowed" in str(info.value)


def test_bad_level_phrasing_structure_and_missing_shape():
    with pytest.raises(ValueError, match=r"8.*allowed: 0, 1"):
        structure_prompt("lv", 8, "A", MALE_73)
    with pytest.raises(ValueError, match=r"'C'.*'A', 'B'"):
        structure_prompt("lv", 3, "C", MALE_73)
    with pytest.raises(ValueError, match=r"'rv'.*'lv'"):
        structure_prompt("rv", 3, "A", MALE_73)
    with pytest.raises(ValueError, match="shape"):
        structure_prompt("lv", 7, "A", MALE_73)
    with pytest.raises(ValueError, match="'the'"):
        structure_prompt("lv", 5, "A", MALE_73, article_rule="the")


# ---------------------------------------------------------------------------------------------------
# Shape words
# ---------------------------------------------------------------------------------------------------

SIZE = 64
ROWS, COLS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) - SIZE / 2


def rotated(degrees: float) -> tuple[np.ndarray, np.ndarray]:
    theta = np.deg2rad(degrees)
    u = ROWS * np.cos(theta) + COLS * np.sin(theta)
    v = -ROWS * np.sin(theta) + COLS * np.cos(theta)
    return u, v


@pytest.mark.parametrize("degrees", [0.0, 20.0, 45.0, 70.0])
def test_shape_words_of_synthetic_shapes(degrees):
    u, v = rotated(degrees)
    assert shape_word(u**2 + v**2 < 18**2) == "circle"
    assert shape_word((u / 26) ** 2 + (v / 10) ** 2 < 1) == "oval"
    assert shape_word((np.abs(u) < 24) & (np.abs(v) < 8)) == "rectangle"
    assert shape_word((np.abs(u) < 14) & (np.abs(v) < 14)) == "square"
    assert shape_word((u > -16) & (u < 18) & (np.abs(v) < (u + 16) * 0.6)) == "triangle"


def test_shape_word_fills_holes_and_handles_degenerate_masks():
    u, v = rotated(0.0)
    ring = ((u / 26) ** 2 + (v / 12) ** 2 < 1) & ((u / 18) ** 2 + (v / 6) ** 2 > 1)
    assert shape_word(ring) == "oval"  # classified by its outline, not as a thin ring
    assert shape_word(np.zeros((8, 8), dtype=bool)) == "none"
    single = np.zeros((8, 8), dtype=bool)
    single[3, 4] = True
    assert shape_word(single) == "square"
    line = np.zeros((8, 8), dtype=bool)
    line[2, 1:7] = True
    assert shape_word(line) == "rectangle"


def test_shape_word_is_deterministic():
    rng = np.random.default_rng(0)
    blob = rng.random((48, 48)) > 0.4
    words = {shape_word(blob.copy()) for _ in range(3)}
    assert len(words) == 1 and words.pop() in {"oval", "circle", "triangle", "rectangle", "square"}


def test_shapes_of_a_camus_like_mask():
    # An apical-view sketch: LV cavity (elongated ellipse), myocardium ring open towards the LA, LA below.
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    lv = ((ROWS + 8) / 18) ** 2 + (COLS / 8) ** 2 < 1
    epicardium = ((ROWS + 8) / 22) ** 2 + (COLS / 12) ** 2 < 1
    mask[epicardium & (ROWS < 6)] = 2
    mask[lv] = 1
    mask[((ROWS - 18) / 9) ** 2 + (COLS / 9) ** 2 < 1] = 3
    assert shapes_of(mask) == {"lv": "oval", "myo": "oval", "la": "circle"}
    assert shapes_of(np.where(mask == 3, 0, mask))["la"] == "none"
