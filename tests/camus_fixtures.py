"""Tiny CAMUS trees in both on-disk layouts (docs/camus-format.md), written with SimpleITK.

The same arrays go into the 2023 NIfTI layout and the 2019 MetaImage layout, so a test can check that
both readers return identical records. Frames are 40x32 uint8 with header spacing (0.3, 0.15) mm in
SimpleITK's (lateral, depth) order: a fan of speckle-free grey levels, a LV cavity inside a myocardium
ring near the apex (top) and the left atrium below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS, COLS = 40, 32
SITK_SPACING = (0.3, 0.15)  # (lateral, depth) as SimpleITK writes it -> record spacing (0.15, 0.3)
PATIENTS = ("patient0001", "patient0002", "patient0003")
SPLITS_2023 = {"patient0001": "train", "patient0002": "validation", "patient0003": "test"}
REVERSED = ("patient0002", "4CH")  # the one sequence with ED == NbFrame and ES == 1
ATTRIBUTES = {  # patient -> (sex, age, quality, ef)
    "patient0001": ("M", 71, "Medium", 55),
    "patient0002": ("F", 34, "Good", 62),
    "patient0003": ("M", 80, "Poor", 38),
}
VIEW_INDEX = {"2CH": 0, "4CH": 1}
PHASE_INDEX = {"ED": 0, "ES": 1}


def _ellipse(center_row: float, center_col: float, half_rows: float, half_cols: float) -> np.ndarray:
    rows, cols = np.mgrid[0:ROWS, 0:COLS]
    return ((rows - center_row) / half_rows) ** 2 + ((cols - center_col) / half_cols) ** 2 <= 1.0


def frame_arrays(patient: str, view: str, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (image, mask) for one frame; every patient/view/phase differs slightly."""
    shift = PATIENTS.index(patient) - 1 + (1 if view == "4CH" else 0)
    cavity_scale = 1.0 if phase == "ED" else 0.75  # ES: smaller cavity
    col = 16 + shift
    myo = _ellipse(13, col, 11, 8)
    cavity = _ellipse(13 + (1 - cavity_scale) * 3, col, 8 * cavity_scale, 5 * cavity_scale)
    atrium = _ellipse(31, col, 5, 6) & ~myo
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[myo] = 2
    mask[cavity] = 1
    mask[atrium] = 3
    rows, cols = np.mgrid[0:ROWS, 0:COLS]
    sector = np.abs(cols - COLS / 2) <= 1 + rows * 0.6  # fan opening downwards from the apex
    rng = np.random.default_rng(PATIENTS.index(patient) * 4 + VIEW_INDEX[view] * 2 + PHASE_INDEX[phase])
    image = np.where(mask == 2, 180, np.where(mask == 1, 30, np.where(mask == 3, 40, 90))).astype(np.int32)
    image = np.clip(image + rng.integers(-10, 11, size=image.shape), 1, 255)
    image[~sector] = 0
    return image.astype(np.uint8), mask


def cfg_text(patient: str, view: str, release: str, testing: bool = False) -> str:
    """Info_{view}.cfg content in the key order of the release (one reversed sequence)."""
    sex, age, quality, ef = ATTRIBUTES[patient]
    nb_frames = 7 if view == "2CH" else 9
    ed, es = (nb_frames, 1) if (patient, view) == REVERSED else (1, nb_frames)
    lines = [
        f"ED: {ed}",
        f"ES: {es}",
        f"NbFrame: {nb_frames}",
        f"Sex: {sex}",
        f"Age: {age}",
        f"ImageQuality: {quality}",
    ]
    if release == "2023":
        lines += [f"EF: {ef}", "FrameRate: 56.5"]
    elif not testing:
        lines += ["LVedv: 120.5", "LVesv: 60.25", f"LVef: {ef}"]
    return "\n".join(lines) + "\n"


def write_image(path: Path, array: np.ndarray, spacing=SITK_SPACING) -> None:
    """Write a (rows, cols) or (T, rows, cols) array; .mhd ED/ES frames get the 2019 singleton 3rd axis."""
    import SimpleITK as sitk

    if path.suffix == ".mhd" and array.ndim == 2:
        array = array[None]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(spacing) + (1.0,) * (image.GetDimension() - len(spacing)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def write_patient(folder: Path, patient: str, release: str, labelled: bool = True, transform=None) -> None:
    """One patient folder: cfgs, ED/ES images (+ masks when labelled) and, for 2023, a half sequence."""
    transform = transform or (lambda a: a)
    suffix = ".nii.gz" if release == "2023" else ".mhd"
    folder.mkdir(parents=True, exist_ok=True)
    for view in ("2CH", "4CH"):
        (folder / f"Info_{view}.cfg").write_text(cfg_text(patient, view, release, testing=not labelled))
        frames = {}
        for phase in ("ED", "ES"):
            image, mask = frame_arrays(patient, view, phase)
            frames[phase] = image
            write_image(folder / f"{patient}_{view}_{phase}{suffix}", transform(image))
            if labelled:
                write_image(folder / f"{patient}_{view}_{phase}_gt{suffix}", transform(mask))
        if release == "2023":  # the reader ignores it, but a faithful tree has it
            sequence = np.stack([frames["ED"]] * 3 + [frames["ES"]] * 2)
            write_image(folder / f"{patient}_{view}_half_sequence{suffix}", sequence)


def write_camus_2023(root: Path, transform=None) -> Path:
    """`root/CAMUS_public/{database_nifti,database_split}` with PATIENTS split as SPLITS_2023. Returns
    root."""
    dataset = root / "CAMUS_public"
    for patient in PATIENTS:
        write_patient(dataset / "database_nifti" / patient, patient, "2023", transform=transform)
    split_dir = dataset / "database_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, stem in (("train", "training"), ("validation", "validation"), ("test", "testing")):
        ids = [p for p, s in SPLITS_2023.items() if s == split]
        (split_dir / f"subgroup_{stem}.txt").write_text("".join(f"{p}\n" for p in ids))
    return root


def write_camus_2019(root: Path, testing_patients=("patient0001",), transform=None) -> Path:
    """`root/training/` with the same PATIENTS and arrays as 2023, `root/testing/` unlabelled. Returns
    root."""
    for patient in PATIENTS:
        write_patient(root / "training" / patient, patient, "2019", transform=transform)
    for patient in testing_patients:
        write_patient(root / "testing" / patient, patient, "2019", labelled=False, transform=transform)
    return root


# split_map reproducing SPLITS_2023 for the 2019 tree.
SPLIT_MAP_2019 = {f"training/{p}": s for p, s in SPLITS_2023.items()}
