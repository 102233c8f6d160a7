"""Text prompts: the Synthetic Boost / medvlsm per-structure prompt set, plus the image-level prompt.

Per-structure prompts have eight levels, each adding one attribute to the previous one:

    P0  ""                                   (both phrasings)
    P1  structure
    P2  + view          "in two-chamber view"
    P3  + cycle         "at end of the diastole cycle"
    P4  + sex           "of a male"
    P5  + age           "of a seventy-three-year-old male"
    P6  + image quality "with good image quality"
    P7  + shape         "<structure> of oval shape in ..." (inserted after the structure name)

Phrasing A says "... of the heart", phrasing B "... in the cardiac ultrasound" (the released JSON files
hold both for every level and pick one at random per sample). The templates, word choices and the
"at end of the" wording are copied from medvlsm's `scripts/generate_camus_json.py`.

Two deliberate differences from the originals, both stated in the dataset card:

1. Article. The original template always writes "a" ("a eighty-year-old"). By default synthecho writes
   "an" before an age whose words start with a vowel sound (eight, eleven, eighteen, eighty, eighty-x).
   `article_rule="a"` reproduces the original text exactly (`ORIGINAL_ALWAYS_A`).
2. Shape. The original shape word is the free-text answer of a VQA model that is not public. synthecho
   computes it from the mask geometry, deterministically: see `shape_word`.

Generators are conditioned on `image_prompt`: the same attributes without a structure. `prompts_table`
builds the published `prompts` config: every per-structure prompt of every row of a corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.labels import LA, LV, MYO

STRUCTURE_NAMES: dict[str, str] = {
    "lv": "Left ventricular cavity",
    "myo": "Myocardium",
    "la": "Left atrium cavity",
}
LEVELS = tuple(range(8))
PHRASINGS = ("A", "B")
PHRASING_PLACE = {"A": "of the heart", "B": "in the cardiac ultrasound"}

VIEW_WORDS = {"2CH": "two", "4CH": "four"}
PHASE_WORDS = {"ED": "diastole", "ES": "systole"}
SEX_WORDS = {"F": "female", "M": "male"}
QUALITY_WORDS = {"Good": "good", "Medium": "medium", "Poor": "poor"}
ARTICLE_RULES = ("an", "a")

# The Synthetic Boost / medvlsm template writes "of a $age-year-old" whatever the age ("a eighty-year-old").
# synthecho's default ("an" rule) differs from it for ages whose words start with a vowel sound;
# pass article_rule="a" for byte-identical original prompts.
ORIGINAL_ALWAYS_A = True

SHAPE_WORDS = ("oval", "circle", "triangle", "rectangle", "square")
NO_SHAPE = "none"


class PromptAttributeError(SynthechoError, ValueError):
    """An attribute outside the prompt vocabulary (a ValueError, printed cleanly by the CLI)."""


def _check(name: str, value: object, allowed) -> None:
    if value not in allowed:
        raise PromptAttributeError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")


@dataclass(frozen=True)
class Attributes:
    """The per-image attributes the prompts are built from (CAMUS file name + Info_*.cfg).

    view "2CH"/"4CH", phase "ED"/"ES", sex "F"/"M", age in years (int >= 0),
    image_quality "Good"/"Medium"/"Poor" as written in the CAMUS cfg files.
    """

    view: str
    phase: str
    sex: str
    age: int
    image_quality: str

    def __post_init__(self) -> None:
        _check("view", self.view, VIEW_WORDS)
        _check("phase", self.phase, PHASE_WORDS)
        _check("sex", self.sex, SEX_WORDS)
        _check("image_quality", self.image_quality, QUALITY_WORDS)
        if isinstance(self.age, bool) or not isinstance(self.age, int | np.integer) or self.age < 0:
            raise PromptAttributeError(f"unknown age {self.age!r}; allowed: an integer number of years >= 0")


def age_phrase(age: int, article_rule: str = "an") -> str:
    """'a seventy-three-year-old' / 'an eighty-year-old' (or 'a eighty-year-old' with rule 'a')."""
    from num2words import num2words

    _check("article_rule", article_rule, ARTICLE_RULES)
    words = num2words(int(age))
    # Vowel *sound*, not letter: "one" starts with a /w/ sound ("a one-year-old").
    vowel_sound = re.match(r"(?!one)[aeiou]", words) is not None
    article = "an" if article_rule == "an" and vowel_sound else "a"
    return f"{article} {words}-year-old"


def _attribute_clauses(level: int, phrasing: str, attrs: Attributes, article_rule: str) -> str:
    """Everything after the structure name for levels 2..7 (the view onwards), without the final '.'.

    Levels above 6 are capped at 6: level 7 adds only the shape, which goes after the structure name."""
    place = PHRASING_PLACE[phrasing]
    text = f"in {VIEW_WORDS[attrs.view]}-chamber view {place}"
    if level >= 3:
        text += f" at end of the {PHASE_WORDS[attrs.phase]} cycle"
    if level == 4:
        text += f" of a {SEX_WORDS[attrs.sex]}"
    if level >= 5:
        text += f" of {age_phrase(attrs.age, article_rule)} {SEX_WORDS[attrs.sex]}"
    if level >= 6:
        text += f" with {QUALITY_WORDS[attrs.image_quality]} image quality"
    return text


# Two prompt sets. "camus" is the Synthetic Boost / medvlsm set of the real CAMUS frames (P0-P7).
# "no_quality" is the set Synthetic Boost wrote for its synthetic SDM corpus (`get_sdm_json.py`): the
# generator never saw image quality, so there is no quality level and P6 is the shape prompt (P0-P6).
PROMPT_SETS = ("camus", "no_quality")
SET_LEVELS = {"camus": LEVELS, "no_quality": LEVELS[:7]}


def prompt_asserts(level: int, prompt_set: str = "camus") -> list[str]:
    """What a prompt of `level` states about its row, in the order the attributes are added."""
    _check("prompt_set", prompt_set, PROMPT_SETS)
    _check("level", level, SET_LEVELS[prompt_set])
    order = ["structure", "view", "phase", "sex", "age"]
    order += ["image_quality", "shape"] if prompt_set == "camus" else ["shape"]
    return order[:level]


def structure_prompt(
    structure: str,
    level: int,
    phrasing: str,
    attrs: Attributes,
    shape: str | None = None,
    article_rule: str = "an",
    prompt_set: str = "camus",
) -> str:
    """One per-structure prompt, e.g. level 7, phrasing A:

    "Left ventricular cavity of oval shape in two-chamber view of the heart at end of the diastole cycle
    of a seventy-three-year-old male with good image quality."

    `shape` is required (and used verbatim) at the shape level only (7, or 6 in the "no_quality" set,
    which then reads like the camus P7 without "with ... image quality"). Level 0 is "" for both phrasings.
    """
    _check("structure", structure, STRUCTURE_NAMES)
    _check("prompt_set", prompt_set, PROMPT_SETS)
    _check("level", level, SET_LEVELS[prompt_set])
    _check("phrasing", phrasing, PHRASINGS)
    _check("article_rule", article_rule, ARTICLE_RULES)
    if level == 0:
        return ""
    name = STRUCTURE_NAMES[structure]
    if level == 1:
        return f"{name} {PHRASING_PLACE[phrasing]}."
    clauses_level = level
    if "shape" in prompt_asserts(level, prompt_set):
        if not shape:
            raise PromptAttributeError(f"level {level} needs a shape word for {structure!r}; got {shape!r}")
        name = f"{name} of {shape} shape"
        clauses_level = 5 if prompt_set == "no_quality" else 6
    return f"{name} {_attribute_clauses(clauses_level, phrasing, attrs, article_rule)}."


def all_structure_prompts(
    attrs: Attributes, shapes: dict[str, str], article_rule: str = "an", prompt_set: str = "camus"
) -> list[dict]:
    """Every structure x level x phrasing (3 x 8 x 2 = 48 rows {structure, level, phrasing, text,
    attributes}; 42 in the "no_quality" set)."""
    missing = [s for s in STRUCTURE_NAMES if s not in shapes]
    if missing:
        raise PromptAttributeError(
            f"shapes has no entry for {missing}; expected keys {list(STRUCTURE_NAMES)}"
        )
    return [
        {
            "structure": structure,
            "level": level,
            "phrasing": phrasing,
            "text": structure_prompt(
                structure, level, phrasing, attrs, shapes[structure], article_rule, prompt_set
            ),
            "attributes": prompt_asserts(level, prompt_set),
        }
        for structure in STRUCTURE_NAMES
        for level in SET_LEVELS[prompt_set]
        for phrasing in PHRASINGS
    ]


def prompt_set_for(conditioned_on) -> str:
    """The prompt set of a row: without image quality among what its generator saw, "no_quality"."""
    return "camus" if conditioned_on is None or "image_quality" in conditioned_on else "no_quality"


def image_prompt(attrs: Attributes, article_rule: str = "an", phrasing: str = "A") -> str:
    """The image-level prompt generators are conditioned on: the P6 attributes, no structure, no shape.

    Exact form (phrasing A): "<Two|Four>-chamber view of the heart at end of the <diastole|systole> cycle
    of <a|an> <age words>-year-old <female|male> with <good|medium|poor> image quality."
    e.g. "Two-chamber view of the heart at end of the diastole cycle of a seventy-three-year-old male
    with good image quality." Phrasing B says "in the cardiac ultrasound" instead of "of the heart".
    """
    _check("phrasing", phrasing, PHRASINGS)
    _check("article_rule", article_rule, ARTICLE_RULES)
    # The level-6 clauses start "in two-chamber view ..."; drop "in " and capitalise the view word.
    clauses = _attribute_clauses(6, phrasing, attrs, article_rule).removeprefix("in ")
    return clauses[0].upper() + clauses[1:] + "."


# ----------------------------------------------------------------------------------------------------
# The `prompts` config of a published corpus
# ----------------------------------------------------------------------------------------------------

PROMPTS_PER_ROW = len(STRUCTURE_NAMES) * len(LEVELS) * len(PHRASINGS)  # the "camus" set
# Columns of a published shard that the prompts of its rows are made from (`conditioned_on` from schema
# version 2 on: it picks the prompt set).
ATTRIBUTE_COLUMNS = (
    "id",
    "view",
    "phase",
    "sex",
    "age",
    "image_quality",
    "shape_lv",
    "shape_myo",
    "shape_la",
)


@lru_cache(maxsize=4096)
def _prompt_texts(view, phase, sex, age, quality, shape_lv, shape_myo, shape_la, rule, prompt_set):
    """The prompts of one attribute combination (many rows share one: variants of a record)."""
    attrs = Attributes(view=view, phase=phase, sex=sex, age=int(age), image_quality=quality)
    shapes = {"lv": shape_lv, "myo": shape_myo, "la": shape_la}
    return tuple(
        (p["structure"], p["level"], p["phrasing"], p["text"], tuple(p["attributes"]))
        for p in all_structure_prompts(attrs, shapes, article_rule=rule, prompt_set=prompt_set)
    )


def prompts_table(files: list[Path], rule: str = "an"):
    """The `prompts` config as a pyarrow Table: one row per (corpus row, structure, level, phrasing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthecho.schema import PHASES, QUALITIES, SEXES, VIEWS, arrow_schema, prompt_features

    # ClassLabel columns are stored as ints; the prompt words need the CAMUS spellings back.
    names = {"view": VIEWS, "phase": PHASES, "sex": SEXES, "image_quality": QUALITIES}
    columns = {name: [] for name in ("id", "structure", "level", "phrasing", "text", "attributes")}
    for path in files:
        present = set(pq.read_schema(path).names)
        wanted = [*ATTRIBUTE_COLUMNS, "conditioned_on"] if "conditioned_on" in present else ATTRIBUTE_COLUMNS
        table = pq.read_table(path, columns=list(wanted)).to_pydict()
        for i, row_id in enumerate(table["id"]):
            labels = {key: values[table[key][i]] for key, values in names.items()}
            conditioned_on = table["conditioned_on"][i] if "conditioned_on" in table else None
            texts = _prompt_texts(
                labels["view"],
                labels["phase"],
                labels["sex"],
                table["age"][i],
                labels["image_quality"],
                table["shape_lv"][i],
                table["shape_myo"][i],
                table["shape_la"][i],
                rule,
                prompt_set_for(conditioned_on),
            )
            for structure, level, phrasing, text, asserts in texts:
                columns["id"].append(row_id)
                columns["structure"].append(structure)
                columns["level"].append(level)
                columns["phrasing"].append(phrasing)
                columns["text"].append(text)
                columns["attributes"].append(list(asserts))
    return pa.Table.from_pydict(columns, schema=arrow_schema(prompt_features()))


# ----------------------------------------------------------------------------------------------------
# Shape words from mask geometry
# ----------------------------------------------------------------------------------------------------

# Thresholds of `shape_word` (see its docstring). Reference values for ideal shapes are in comments;
# pixelation moves them by a few percent for small structures (a 16-px disk fills 0.86, a tilted
# 16 x 10 px rectangle 0.885), which is why the fill threshold sits at 0.87 and not halfway at 0.89.
TRIANGLE_MIN_RATIO = 0.80  # largest inscribed triangle / hull area: triangle 1.0, rectangle 0.5, ellipse 0.41
RECTANGLE_MIN_FILL = 0.87  # area / min-area rectangle: rectangle 1.0, ellipse pi/4 = 0.785
ROUND_MAX_ASPECT = 1.25  # long side / short side of the min-area rectangle for circle / square


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Hull vertices (k, 2) in counter-clockwise order; the points themselves when they are collinear."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # one pixel, or pixels on one line: no 2-D hull
        return np.unique(points, axis=0)


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _min_area_rectangle(hull: np.ndarray) -> tuple[float, float]:
    """(long side, short side) of the smallest rectangle holding the pixels whose centres span `hull`.

    Rotating calipers: the optimum has one side along a hull edge. Extents between pixel centres get one
    pixel added (each pixel is one unit wide), so an axis-aligned h x w block measures exactly h x w.
    """
    edges = np.roll(hull, -1, axis=0) - hull
    edges = edges[np.linalg.norm(edges, axis=1) > 0]
    if len(edges) == 0:  # a single pixel
        return 1.0, 1.0
    directions = edges / np.linalg.norm(edges, axis=1, keepdims=True)
    normals = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    along = hull @ directions.T  # (points, edges)
    across = hull @ normals.T
    lengths = along.max(axis=0) - along.min(axis=0) + 1.0
    widths = across.max(axis=0) - across.min(axis=0) + 1.0
    best = int(np.argmin(lengths * widths))
    return float(max(lengths[best], widths[best])), float(min(lengths[best], widths[best]))


def _largest_inscribed_triangle(hull: np.ndarray) -> float:
    """Area of the largest triangle with vertices on the hull (its optimum always uses hull vertices)."""
    best = 0.0
    for i in range(len(hull)):
        a = hull[i + 1 :] - hull[i]  # pairs (j, k) of later vertices
        cross = np.abs(a[:, None, 0] * a[None, :, 1] - a[:, None, 1] * a[None, :, 0])
        if cross.size:
            best = max(best, 0.5 * float(cross.max()))
    return best


def shape_word(binary_mask: np.ndarray) -> str:
    """The shape of one structure as one word: oval, circle, triangle, rectangle or square ("none" if empty).

    Deterministic geometry on the filled structure (holes filled, so a ring counts by its outline), using
    the convex hull of its pixel centres:

    1. triangle  if the largest triangle inscribed in the convex hull covers >= 80% of the hull's area
       (a triangle gives 1.0, a rectangle 0.5, an ellipse 0.41);
    2. otherwise the fill ratio, pixel count / area of the minimum-area enclosing rectangle (rotating
       calipers; sides measured between pixel centres plus one pixel), separates corners from curves:
       >= 0.87 is rectangle-like (a rectangle gives 1.0), below is ellipse-like (an ellipse gives pi/4);
    3. rectangle-like: square if that rectangle's long/short side ratio is <= 1.25, else rectangle;
       ellipse-like:   circle if that ratio is <= 1.25, else oval.

    Shapes outside the vocabulary (concave, irregular) get the nearest word by these rules, as the
    original VQA answers did; the words are a coarse description, not a measurement.
    """
    from scipy.ndimage import binary_erosion, binary_fill_holes

    filled = binary_fill_holes(np.asarray(binary_mask, dtype=bool))
    area = int(filled.sum())
    if area == 0:
        return NO_SHAPE
    # Interior pixels cannot be hull vertices; keeping only the boundary makes the hull cheap.
    boundary = filled & ~binary_erosion(filled, border_value=0)
    hull = _convex_hull(np.argwhere(boundary).astype(np.float64))
    hull_area = _polygon_area(hull)
    if hull_area > 0 and _largest_inscribed_triangle(hull) >= TRIANGLE_MIN_RATIO * hull_area:
        return "triangle"
    long_side, short_side = _min_area_rectangle(hull)
    round_aspect = long_side <= ROUND_MAX_ASPECT * short_side
    if area >= RECTANGLE_MIN_FILL * long_side * short_side:
        return "square" if round_aspect else "rectangle"
    return "circle" if round_aspect else "oval"


def shapes_of(mask: np.ndarray) -> dict[str, str]:
    """{"lv", "myo", "la"} -> shape word from a CAMUS mask (0 background, 1 LV, 2 myocardium, 3 LA).

    The myocardium is a horseshoe open towards the mitral valve, so filling holes would not close it;
    its shape is that of the epicardial outline, i.e. of myocardium + LV cavity with holes filled.
    """
    mask = np.asarray(mask)
    return {
        "lv": shape_word(mask == LV),
        "myo": shape_word((mask == MYO) | (mask == LV)) if (mask == MYO).any() else NO_SHAPE,
        "la": shape_word(mask == LA),
    }
