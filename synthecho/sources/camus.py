"""CAMUS reader for both public releases (Leclerc et al., IEEE TMI 2019).

Layouts (docs/camus-format.md):

- 2023 NIfTI release: ``[CAMUS_public/]database_nifti/patientNNNN/patientNNNN_{2CH|4CH}_{ED|ES}[_gt].nii.gz``
  plus ``Info_{2CH|4CH}.cfg``; splits from ``database_split/subgroup_{training,validation,testing}.txt``.
- 2019 challenge release: ``training/patientNNNN/`` and ``testing/patientNNNN/`` (ids restart at 0001),
  MetaImage ``.mhd`` + ``.raw``, ED/ES frames stored 3-D with a singleton axis, no ``_gt`` in testing.

Every ED/ES frame becomes one `CamusRecord` with its image, mask (None when unlabelled), spacing read from
the header and the patient attributes of the view's cfg. Arrays are (rows=depth, cols=lateral) with the
apex at row 0, as SimpleITK returns them; a cheap anatomy check refuses data that looks transposed or
flipped instead of silently training on it.

Splits:

- 2023: the release's own ``subgroup_*.txt`` files -> ``train`` / ``validation`` / ``test``.
- 2019: the testing folder has no labels, so with the 2019 release **the labelled test split is carved from
  training patients**. Training patients sorted by folder name: the first ``k`` are ``validation`` (the Echo
  from noise convention: ids <= 50), the next ``k`` are ``test``, the rest ``train``. ``k`` is
  ``validation_patients_2019``: a whole number >= 1 is a patient count, a number in (0, 1) a fraction of
  the training patients (``k = max(1, round(fraction * n))``). The unlabelled ``testing/`` folder is returned
  only when ``"test_unlabelled"`` is among the requested splits. A ``split_map`` reproduces a known
  assignment instead of carving.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.labels import LA, LV, MYO

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
SPLITS = ("train", "validation", "test", "test_unlabelled")
SPLIT_FILES_2023 = {"train": "training", "validation": "validation", "test": "testing"}
SEXES = ("F", "M")
QUALITIES = ("Good", "Medium", "Poor")
ROOT_ENV_VAR = "SYNTHECHO_CAMUS_ROOT"

# cfg keys and the type each value must parse to.
_CFG_KEYS = {
    "2023": {
        "ED": "int",
        "ES": "int",
        "NbFrame": "int",
        "Sex": "sex",
        "Age": "int",
        "ImageQuality": "quality",
        "EF": "float",
        "FrameRate": "float",
    },
    "2019": {
        "ED": "int",
        "ES": "int",
        "NbFrame": "int",
        "Sex": "sex",
        "Age": "int",
        "ImageQuality": "quality",
        "LVedv": "float",
        "LVesv": "float",
        "LVef": "float",
    },
}
# The 2019 testing cfg files may not carry the volumes/EF (they were the challenge's hidden targets).
_OPTIONAL_IN_2019_TESTING = ("LVedv", "LVesv", "LVef")


def _float32_spacing(value: float) -> float:
    """The shortest decimal that round-trips through float32 (0.15000000596 -> 0.15).

    NIfTI stores spacing as float32 and MetaImage prints doubles; passing both through float32 makes the
    same header value identical in either release (plain decimal rounding would still split values that
    straddle a rounding boundary).
    """
    return float(str(np.float32(value)))


@dataclass(frozen=True, eq=False)  # eq=False: records hold arrays, compare them explicitly
class CamusRecord:
    """One annotated (or, for 2019 testing, unannotated) ED/ES frame of one view of one patient."""

    id: str  # release-prefixed, e.g. "camus2023/patient0042_2CH_ED", "camus2019-testing/patient0001_4CH_ES"
    patient: str  # patient folder name, e.g. "patient0042"
    split: str  # "train" | "validation" | "test" | "test_unlabelled"
    view: str  # "2CH" | "4CH"
    phase: str  # "ED" | "ES"
    image: np.ndarray  # uint8 (rows=depth, cols=lateral), apex at row 0
    mask: np.ndarray | None  # uint8 in {0,1,2,3}, same shape; None when unlabelled
    spacing: tuple[float, float]  # (row_mm, col_mm) from the file header
    sex: str  # "M" | "F"
    age: int
    image_quality: str  # "Good" | "Medium" | "Poor"
    ef: float | None  # 2023: EF; 2019: LVef (None when a 2019 testing cfg lacks it)
    frame_index: int  # 0-based index of this frame in the view's sequence
    source_file: str  # path of the image file
    release: str = ""  # "2023" | "2019"
    split_group: str = ""  # folder the patient lives in: "database_nifti", "training" or "testing"
    nb_frames: int = 0  # NbFrame of the view's sequence
    frame_rate: float | None = None  # 2023 FrameRate; None for 2019


# ----------------------------------------------------------------------------------------------------------
# Layout detection
# ----------------------------------------------------------------------------------------------------------


def _missing_root_error(root: Path | None) -> SynthechoError:
    where = f"CAMUS root {root} does not exist" if root is not None else "no CAMUS root was given"
    return SynthechoError(
        f"{where}. Point the recipe key `source.root` (or the environment variable {ROOT_ENV_VAR}) at the "
        "folder that holds `CAMUS_public/` or `database_nifti/` (2023 NIfTI release) or `training/` "
        "(2019 challenge release), or use the built-in phantom source."
    )


def _resolve(root: Path | str | None, release: str = "auto") -> tuple[Path, str]:
    """Find the dataset folder inside `root` and its release: (folder holding the layout, "2023"|"2019").

    `release` ("auto", "2023", "2019") picks a layout when `root` holds both, and must match otherwise.
    """
    if release not in ("auto", "2023", "2019"):
        raise SynthechoError(f"source.release = {release!r}: use auto, 2023 or 2019.")
    if root is None:
        env = os.environ.get(ROOT_ENV_VAR)
        if not env:
            raise _missing_root_error(None)
        root = env
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _missing_root_error(root)
    candidates_2023 = [root, root / "CAMUS_public"]
    # Also accept a path that points at database_nifti itself (its splits live next to it).
    if root.name == "database_nifti":
        candidates_2023.append(root.parent)
    found_2023 = next((c for c in candidates_2023 if (c / "database_nifti").is_dir()), None)
    found_2019 = root if (root / "training").is_dir() else None
    if release == "2023" and found_2023 is not None:
        return found_2023, "2023"
    if release == "2019" and found_2019 is not None:
        return found_2019, "2019"
    if release != "auto" and (found_2023 is not None or found_2019 is not None):
        found = "2023" if found_2023 is not None else "2019"
        raise SynthechoError(f"source.release is {release} but {root} holds the {found} layout.")
    if found_2023 is not None and found_2019 is not None:
        raise SynthechoError(
            f"{root} holds both a 2023 layout ({found_2023 / 'database_nifti'}) and a 2019 layout "
            f"({root / 'training'}); point `source.root` at one of them or set `source.release`."
        )
    if found_2023 is not None:
        return found_2023, "2023"
    if found_2019 is not None:
        return found_2019, "2019"
    raise SynthechoError(
        f"{root} is not a CAMUS folder: looked for {root / 'database_nifti'}, "
        f"{root / 'CAMUS_public' / 'database_nifti'} (2023 NIfTI release) and {root / 'training'} "
        "(2019 challenge release). Point `source.root` at the folder that contains one of them."
    )


def detect_release(root: Path) -> str:
    """Return "2023" if `root` (or root/CAMUS_public) has database_nifti/, "2019" if it has training/."""
    return _resolve(root)[1]


# ----------------------------------------------------------------------------------------------------------
# cfg parsing
# ----------------------------------------------------------------------------------------------------------


def _parse_value(kind: str, raw: str, key: str, path: Path):
    def bad(expected: str) -> SynthechoError:
        return SynthechoError(f"{path}: `{key}: {raw}` is not {expected}; fix the value in that file.")

    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            try:
                number = float(raw)
            except ValueError:
                raise bad("an integer") from None
            if not number.is_integer():
                raise bad("an integer") from None
            return int(number)
    if kind == "float":
        try:
            number = float(raw)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if kind == "sex":
        value = raw.upper()
        if value not in SEXES:
            raise bad("M or F")
        return value
    if kind == "quality":
        value = raw.capitalize()
        if value not in QUALITIES:
            raise bad("Good, Medium or Poor")
        return value
    raise AssertionError(kind)


def parse_cfg(path: Path, release: str, *, testing: bool = False) -> dict:
    """Parse an ``Info_{2CH|4CH}.cfg`` into typed values.

    Lines are ``Key: value`` (split on the first colon, stripped). The release's keys are required
    (2023: ED, ES, NbFrame, Sex, Age, ImageQuality, EF, FrameRate; 2019: ... LVedv, LVesv, LVef, which
    may be missing when `testing` is true). ED/ES are 1-based and must lie in 1..NbFrame; a reversed
    sequence (ED == NbFrame, ES == 1) is legal. Unknown keys are kept as strings.
    """
    path = Path(path)
    if release not in _CFG_KEYS:
        raise ValueError(f"release must be '2023' or '2019', got {release!r}")
    if not path.is_file():
        raise SynthechoError(f"{path} is missing: every patient folder needs Info_2CH.cfg and Info_4CH.cfg.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SynthechoError(f"{path} cannot be read as text ({exc}); restore it from the release.") from None
    raw: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise SynthechoError(
                f"{path}, line {number}: `{line.strip()}` is not `Key: value`; fix that line."
            )
        key, value = (part.strip() for part in line.split(":", 1))
        if key in raw:
            raise SynthechoError(f"{path}, line {number}: key `{key}` appears twice; keep one.")
        raw[key] = value
    schema = _CFG_KEYS[release]
    parsed: dict = dict(raw)
    for key, kind in schema.items():
        if key not in raw:
            if testing and release == "2019" and key in _OPTIONAL_IN_2019_TESTING:
                parsed[key] = None
                continue
            raise SynthechoError(
                f"{path} has no `{key}` key (a {release} cfg needs {', '.join(schema)}); "
                f"add a `{key}: ...` line."
            )
        parsed[key] = _parse_value(kind, raw[key], key, path)
    nb_frames = parsed["NbFrame"]
    if nb_frames < 1:
        raise SynthechoError(f"{path}: `NbFrame: {nb_frames}` must be at least 1.")
    for key in ("ED", "ES"):
        if not 1 <= parsed[key] <= nb_frames:
            raise SynthechoError(
                f"{path}: `{key}: {parsed[key]}` is outside 1..NbFrame={nb_frames} (ED/ES are 1-based frame "
                "indices); fix the value."
            )
    return parsed


# ----------------------------------------------------------------------------------------------------------
# Image reading
# ----------------------------------------------------------------------------------------------------------


def _sitk_message(exc: Exception) -> str:
    """The informative last line of a SimpleITK exception (they carry source paths and line numbers)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _check_mhd_data_file(path: Path) -> None:
    """A MetaImage header names its pixel file; say which one is missing before SimpleITK does."""
    try:
        header = path.read_text(encoding="latin-1", errors="replace")
    except OSError:
        return
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, flags=re.MULTILINE)
    if match and match.group(1) != "LOCAL" and "%" not in match.group(1):
        data_file = path.parent / match.group(1)
        if not data_file.is_file():
            raise SynthechoError(
                f"{data_file} is missing (named by {path}); copy the .mhd and its .raw file together."
            )


def _check_gzip_complete(path: Path) -> None:
    """Decompress a .gz to nowhere: ITK reads a truncated .nii.gz without complaint, zero-filling the rest."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise SynthechoError(
            f"{path} cannot be read (gzip: {exc}); it is truncated or corrupt, fetch it again."
        ) from None


def _read_frame(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read one 2-D frame (a singleton 3rd axis is squeezed) -> (array in its stored dtype,
    (row_mm, col_mm))."""
    import SimpleITK as sitk

    if not path.is_file():
        raise SynthechoError(f"{path} is missing; restore it from the CAMUS release.")
    if path.stat().st_size == 0:
        raise SynthechoError(
            f"{path} is empty (0 bytes); the download or copy was cut short, fetch it again."
        )
    if path.suffix == ".mhd":
        _check_mhd_data_file(path)
    if path.suffix == ".gz":
        _check_gzip_complete(path)
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise SynthechoError(
            f"{path} cannot be read ({_sitk_message(exc)}); it is truncated or corrupt, fetch it again."
        ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SynthechoError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} channels; CAMUS frames are grayscale."
        )
    size, spacing = image.GetSize(), image.GetSpacing()  # SimpleITK order: (lateral, depth[, frame])
    if len(size) < 2 or any(s != 1 for s in size[2:]) or min(size[:2]) < 2:
        raise SynthechoError(
            f"{path} has size {size} (lateral, depth, ...); an ED/ES file must hold one 2-D frame "
            "(a singleton third axis is fine)."
        )
    array = array.reshape(size[1], size[0])  # (rows=depth, cols=lateral)
    row_mm, col_mm = float(spacing[1]), float(spacing[0])
    if not (row_mm > 0 and col_mm > 0 and math.isfinite(row_mm) and math.isfinite(col_mm)):
        raise SynthechoError(
            f"{path} has spacing {spacing}; the header must give positive pixel sizes in mm."
        )
    return array, (_float32_spacing(row_mm), _float32_spacing(col_mm))


def _to_uint8(array: np.ndarray, path: Path, *, is_mask: bool) -> np.ndarray:
    """Cast a stored frame to uint8, refusing values that a CAMUS image (0..255) or mask (0..3) cannot
    hold."""
    if array.dtype == np.uint8:
        values = array
    else:
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise SynthechoError(f"{path} contains NaN or infinite values; re-export it as uint8.")
            rounded = np.rint(array)
            if is_mask and not np.array_equal(rounded, array):
                raise SynthechoError(
                    f"{path} has non-integer label values; it looks interpolated: resample masks with "
                    "nearest neighbour and store them as uint8."
                )
            array = rounded
        elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
            raise SynthechoError(f"{path} has pixel type {array.dtype}; CAMUS frames are uint8.")
        low, high = (array.min(), array.max()) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise SynthechoError(
                f"{path} has values in [{low}, {high}], outside 0..255 "
                f"({'negative values' if low < 0 else 'too large for uint8'}); re-export it as uint8."
            )
        values = array.astype(np.uint8)
    if is_mask:
        bad = np.setdiff1d(np.unique(values), np.array([0, LV, MYO, LA], dtype=np.uint8))
        if bad.size:
            raise SynthechoError(
                f"{path} has label values {bad.tolist()} outside 0..3 (0 background, 1 LV, 2 myocardium, "
                "3 left atrium); fix or remap that mask."
            )
    return np.ascontiguousarray(values)


# ----------------------------------------------------------------------------------------------------------
# Anatomy check
# ----------------------------------------------------------------------------------------------------------


def _check_anatomy(record: CamusRecord) -> None:
    mask = record.mask
    if mask is None:
        return
    orientation_hint = (
        "the dataset looks transposed or flipped. CAMUS arrays are (rows=depth, cols=lateral) with the apex "
        "at row 0, as SimpleITK reads them (nibabel returns the transpose); re-export the files in that "
        "orientation."
    )
    heart = (mask == LV) | (mask == MYO)
    if not heart.any():
        raise SynthechoError(
            f"{record.source_file}: its mask has no LV cavity or myocardium (labels 1, 2); the _gt file is "
            "empty or uses other label values."
        )
    rows = mask.shape[0]
    top_row = int(np.argmax(heart.any(axis=1)))
    # 1. The apex (topmost LV/MYO pixel) sits near the probe, i.e. in the top half.
    if top_row >= rows / 2:
        raise SynthechoError(
            f"{record.source_file}: the topmost LV/myocardium row is {top_row} of {rows}, not in the top "
            f"half where the apex belongs; {orientation_hint}"
        )
    # 2. The left atrium lies below the ventricle: its centroid is lower, and more down than sideways
    #    (|dx| <= 2 dy, i.e. within ~63 degrees of straight down; a transposed image puts it sideways).
    atrium = mask == LA
    if atrium.any():
        lv_row, lv_col = np.argwhere(heart).mean(axis=0)
        la_row, la_col = np.argwhere(atrium).mean(axis=0)
        down, sideways = la_row - lv_row, abs(la_col - lv_col)
        if down <= 0 or sideways > 2 * down:
            raise SynthechoError(
                f"{record.source_file}: the left atrium centroid (row {la_row:.1f}, col {la_col:.1f}) is not "
                f"below the LV centroid (row {lv_row:.1f}, col {lv_col:.1f}); {orientation_hint}"
            )


def check_anatomy(record: CamusRecord) -> None:
    """Raise SynthechoError (naming record.source_file) if the mask looks transposed or flipped.

    Checks: the topmost LV/MYO row lies in the top half of the image (apex at the top), and the left
    atrium centroid lies below the LV centroid. Records without a mask are skipped.
    """
    _check_anatomy(record)


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------


def _read_split_files_2023(dataset: Path) -> dict[str, str]:
    """patient -> split, from database_split/subgroup_*.txt, with every inconsistency reported."""
    split_dir = dataset / "database_split"
    patient_split: dict[str, str] = {}
    patient_file: dict[str, Path] = {}
    for split, stem in SPLIT_FILES_2023.items():
        path = split_dir / f"subgroup_{stem}.txt"
        if not path.is_file():
            raise SynthechoError(
                f"split file {path} is missing; the 2023 release ships database_split/subgroup_"
                "{training,validation,testing}.txt next to database_nifti/ — "
                "copy the whole CAMUS_public folder."
            )
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not ids:
            raise SynthechoError(f"split file {path} is empty; it must list one patientNNNN per line.")
        for patient in ids:
            if patient in patient_split:
                where = (
                    "twice in that file"
                    if patient_file[patient] == path
                    else f"also in {patient_file[patient]}"
                )
                raise SynthechoError(
                    f"split file {path} lists {patient}, which is {where}; "
                    f"each patient belongs to exactly one split."
                )
            if not (dataset / "database_nifti" / patient).is_dir():
                raise SynthechoError(
                    f"split file {path} lists {patient}, but {dataset / 'database_nifti' / patient} does not "
                    "exist; restore that patient folder or fix the split file."
                )
            patient_split[patient] = split
            patient_file[patient] = path
    return patient_split


def _patient_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _carve_2019(patients: list[str], validation_patients: int | float, training_dir: Path) -> dict[str, str]:
    """Training patients sorted by id: first k -> validation, next k -> test, rest -> train."""
    n = len(patients)
    if isinstance(validation_patients, bool):
        raise SynthechoError(
            "source.validation_patients_2019 must be an int count or a float fraction, not a bool."
        )
    # A recipe may hand over 50.0 for 50 (pydantic float field): any whole number >= 1 is a count.
    if (
        isinstance(validation_patients, (int, float))
        and validation_patients >= 1
        and float(validation_patients).is_integer()
    ):
        k = int(validation_patients)
    elif isinstance(validation_patients, float) and 0 < validation_patients < 1:
        k = max(1, round(validation_patients * n))
    else:
        raise SynthechoError(
            f"source.validation_patients_2019 = {validation_patients!r}: use a whole number >= 1 (a patient "
            "count) or a number in (0, 1) (a fraction of the training patients)."
        )
    if 2 * k >= n:
        raise SynthechoError(
            f"{training_dir} has {n} patients, too few for {k} validation + {k} test patients carved from it "
            "(the 2019 testing folder has no labels) and a non-empty train split; lower "
            "source.validation_patients_2019 or give a fraction such as 0.15."
        )
    return {p: ("validation" if i < k else "test" if i < 2 * k else "train") for i, p in enumerate(patients)}


def _split_from_map_2019(
    patients: list[str], split_map: dict[str, str], training_dir: Path
) -> dict[str, str]:
    known = {f"training/{p}" for p in patients}
    unknown = sorted(set(split_map) - known)
    if unknown:
        raise SynthechoError(
            f"split_map names {unknown[:5]} which are not folders under {training_dir} "
            "(keys look like 'training/patient0003')."
        )
    missing = sorted(known - set(split_map))
    if missing:
        raise SynthechoError(
            f"split_map has no split for {missing[:5]}; give every training patient a split."
        )
    bad = {k: v for k, v in split_map.items() if v not in ("train", "validation", "test")}
    if bad:
        raise SynthechoError(f"split_map values must be train, validation or test; got {bad}.")
    return {p: split_map[f"training/{p}"] for p in patients}


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def _frame_paths(folder: Path, patient: str, view: str, phase: str, release: str) -> tuple[Path, Path]:
    suffix = ".nii.gz" if release == "2023" else ".mhd"
    stem = f"{patient}_{view}_{phase}"
    return folder / f"{stem}{suffix}", folder / f"{stem}_gt{suffix}"


def _read_patient(
    folder: Path, release: str, group: str, split: str, name: str, labelled: bool
) -> list[CamusRecord]:
    """All ED/ES records of one patient folder (2 views x 2 phases)."""
    patient = folder.name
    prefix = f"{name}2023" if release == "2023" else f"{name}2019-{group}"
    # 1. Check the whole file set first, so the first error names the first missing file.
    needed = [folder / f"Info_{view}.cfg" for view in VIEWS]
    for view in VIEWS:
        for phase in PHASES:
            image_path, mask_path = _frame_paths(folder, patient, view, phase, release)
            needed += [image_path, mask_path] if labelled else [image_path]
    for path in needed:
        if not path.is_file():
            raise SynthechoError(f"{path} is missing; restore it from the CAMUS release (patient {patient}).")
    records = []
    for view in VIEWS:
        # 2. Attributes of this view's sequence.
        cfg = parse_cfg(folder / f"Info_{view}.cfg", release, testing=(group == "testing"))
        for phase in PHASES:
            # 3. Image and mask, cast and cross-checked.
            image_path, mask_path = _frame_paths(folder, patient, view, phase, release)
            image_raw, spacing = _read_frame(image_path)
            image = _to_uint8(image_raw, image_path, is_mask=False)
            mask = None
            if labelled:
                mask_raw, mask_spacing = _read_frame(mask_path)
                mask = _to_uint8(mask_raw, mask_path, is_mask=True)
                if mask.shape != image.shape:
                    raise SynthechoError(
                        f"{mask_path} has shape {mask.shape} but {image_path} has shape {image.shape} "
                        "(rows, cols); a mask must match its image."
                    )
                if not np.allclose(mask_spacing, spacing, rtol=1e-2):
                    raise SynthechoError(
                        f"{mask_path} has spacing {mask_spacing} mm but {image_path} has {spacing} mm "
                        "(row, col); a mask must share its image's header."
                    )
            records.append(
                CamusRecord(
                    id=f"{prefix}/{patient}_{view}_{phase}",
                    patient=patient,
                    split=split,
                    view=view,
                    phase=phase,
                    image=image,
                    mask=mask,
                    spacing=spacing,
                    sex=cfg["Sex"],
                    age=cfg["Age"],
                    image_quality=cfg["ImageQuality"],
                    ef=cfg["EF"] if release == "2023" else cfg["LVef"],
                    frame_index=cfg[phase] - 1,
                    source_file=str(image_path),
                    release=release,
                    split_group=group,
                    nb_frames=cfg["NbFrame"],
                    frame_rate=cfg.get("FrameRate") if release == "2023" else None,
                )
            )
    return records


def _plan(
    dataset: Path,
    release: str,
    validation_patients_2019: int | float,
    split_map: dict[str, str] | None,
) -> list[tuple[Path, str, str, bool]]:
    """Every patient folder the release defines, as (folder, group, split, labelled)."""
    if release == "2023":
        if split_map is not None:
            raise SynthechoError(
                "split_map only applies to the 2019 layout; the 2023 release's splits come from "
                "database_split/."
            )
        nifti = dataset / "database_nifti"
        return [(nifti / p, "database_nifti", s, True) for p, s in _read_split_files_2023(dataset).items()]
    training_dir = dataset / "training"
    patients = _patient_folders(training_dir)
    if not patients:
        raise SynthechoError(f"{training_dir} has no patient folders; copy the extracted training.zip there.")
    if split_map is not None:
        assignment = _split_from_map_2019(patients, split_map, training_dir)
    else:
        assignment = _carve_2019(patients, validation_patients_2019, training_dir)
    plan = [(training_dir / p, "training", s, True) for p, s in assignment.items()]
    testing_dir = dataset / "testing"
    if testing_dir.is_dir():
        plan += [
            (testing_dir / p, "testing", "test_unlabelled", False) for p in _patient_folders(testing_dir)
        ]
    return plan


def read_camus(
    root: Path | str | None,
    release: str = "auto",
    name: str = "camus",
    splits: tuple[str, ...] = ("train", "validation", "test"),
    validation_patients_2019: int | float = 50,
    check_anatomy: bool = True,
    split_map: dict[str, str] | None = None,
) -> list[CamusRecord]:
    """Read every ED/ES frame of the requested splits of a CAMUS tree (either release) into records.

    Args:
        root: folder holding ``CAMUS_public/``, ``database_nifti/`` (2023) or ``training/`` (2019); None
            falls back to the ``SYNTHECHO_CAMUS_ROOT`` environment variable.
        release: "auto" (detect), "2023" or "2019".
        name: id prefix: ids are ``{name}2023/patientNNNN_2CH_ED`` or ``{name}2019-training/...``.
        splits: any of "train", "validation", "test", "test_unlabelled" (2019 testing/ folder, no masks;
            the 2023 release has none).
        validation_patients_2019: 2019 only: validation and test sizes carved from training patients
            (whole number >= 1: count, default 50 as in Echo from noise; in (0, 1): fraction). Too many
            for the number of training patients is an error, never silently shrunk.
        check_anatomy: run `check_anatomy` on every labelled record.
        split_map: 2019 only: ``{"training/patientNNNN": split}`` for every training patient, overriding
            the carving (to reproduce a known assignment).

    Returns:
        Records sorted by (split, patient, view, phase), splits in the order train, validation, test,
        test_unlabelled.
    """
    from tqdm.auto import tqdm

    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise SynthechoError(f"unknown CAMUS split(s) {unknown}; choose from {list(SPLITS)}.")
    dataset, detected = _resolve(root, release)
    plan = [
        item for item in _plan(dataset, detected, validation_patients_2019, split_map) if item[2] in splits
    ]
    plan.sort(key=lambda item: (SPLITS.index(item[2]), item[0].name))
    records: list[CamusRecord] = []
    for folder, group, split, labelled in tqdm(
        plan, desc=f"reading CAMUS {detected}", unit="patient", leave=False
    ):
        records += _read_patient(folder, detected, group, split, name, labelled)
    if check_anatomy:
        for record in records:
            _check_anatomy(record)
    return records


def file_list_hash(root: Path | str) -> str:
    """sha256 over the sorted relative paths and sizes of the files `read_camus` uses (cheap provenance).

    Paths are relative to the folder holding the layout, so the hash is the same whether `root` is that
    folder or its parent (``CAMUS_public/``). Contents are not hashed: renaming, adding, removing or
    resizing a file changes the hash; an in-place edit of equal size does not.
    """
    dataset, release = _resolve(root)
    files: list[Path] = []
    if release == "2023":
        files += [dataset / "database_split" / f"subgroup_{s}.txt" for s in SPLIT_FILES_2023.values()]
        groups = [dataset / "database_nifti"]
    else:
        groups = [dataset / "training", dataset / "testing"]
    for group in groups:
        if not group.is_dir():
            continue
        for patient in _patient_folders(group):
            folder = group / patient
            files += [folder / f"Info_{view}.cfg" for view in VIEWS]
            for view in VIEWS:
                for phase in PHASES:
                    for path in _frame_paths(folder, patient, view, phase, release):
                        files.append(path)
                        if release == "2019":
                            files.append(path.with_suffix(".raw"))
    digest = hashlib.sha256(f"camus {release}\n".encode())
    for path in sorted(p for p in files if p.is_file()):
        digest.update(f"{path.relative_to(dataset).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def read_sequence_frame(record: CamusRecord, frame_index: int) -> np.ndarray | None:
    """Frame `frame_index` (0-based) of the sequence `record` belongs to, as uint8 (rows, cols) like
    `record.image`; None when the release holds no sequence file for it, or the file no such frame.

    2023: ``patientNNNN_{view}_half_sequence.nii.gz`` (ED -> ES); 2019: ``patientNNNN_{view}_sequence.mhd``,
    both beside the ED/ES files. Used for the copy check's null (neighbouring frames of one recording).
    """
    import SimpleITK as sitk

    folder, stem = Path(record.source_file).parent, f"{record.patient}_{record.view}"
    path = folder / (f"{stem}_half_sequence.nii.gz" if record.release == "2023" else f"{stem}_sequence.mhd")
    if not path.is_file():
        return None
    try:
        frames = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (frames, rows=depth, cols=lateral)
    except RuntimeError as exc:
        raise SynthechoError(f"{path} cannot be read ({_sitk_message(exc)}); fetch it again.") from None
    if frames.ndim != 3 or frames.shape[1:] != record.image.shape:
        raise SynthechoError(
            f"{path} has shape {frames.shape} (frames, rows, cols); expected frames shaped like "
            f"{record.image.shape} (the {record.view} {record.phase} file beside it)."
        )
    if not 0 <= frame_index < len(frames):
        return None
    return _to_uint8(frames[frame_index], path, is_mask=False)
