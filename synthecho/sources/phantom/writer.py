"""Patients rendered and written as a CAMUS tree (2023 or 2019 layout), plus the test patients' truth.

Layouts and how they map (the same seed gives the same patients in both):
  * "2023": ``CAMUS_public/database_nifti/patientNNNN`` (ids 0001..N) and
    ``CAMUS_public/database_split/subgroup_{training,validation,testing}.txt`` (shuffled with the seed,
    ~70/15/15 or `test_patients` test, at least one patient each). Returns ``out_dir/CAMUS_public``.
  * "2019": 2023 training+validation patients become ``training/patient0001..`` in 2023 id order, 2023
    testing patients become ``testing/patient0001..`` (ids restart, as in the real release). Images are
    MetaImage; ED/ES are 3-D with a singleton axis; testing has no ``_gt``. Returns ``out_dir``.
    ``phantom_id_map(patients, seed)`` gives the mapping ``"training/patient0003" -> "patient0004"``.
  The 2019 cfg carries LVedv/LVesv/LVef instead of EF/FrameRate: LVedv is the biplane area-length
  volume of the ED LV masks, LVef the patient's EF (the same value as the 2023 EF, like a clinical
  reference), LVesv = LVedv * (1 - EF/100).

Truth: the `_gt` masks are an observer's noisy contours (`observer`); the clean rendering masks of the
2023 *testing* patients' ED and ES frames are written outside the CAMUS tree, where no reader looks:
``out_dir/truth/patientNNNN_{2CH|4CH}_{ED|ES}.png`` (2023 layout) or ``out_dir/truth/testing/...``
(2019 layout, whose testing folder carries no labels), 8-bit PNG of CAMUS labels. `read_truth(out_dir,
record_id)` reads one back by the CAMUS reader's record id.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.io import write_bytes_atomic, write_text_atomic
from synthecho.parallel import ordered_map
from synthecho.sources.phantom.cohort import (
    VIEWS,
    PatientAttributes,
    patient_id,
    phantom_id_map,
    phantom_splits,
    reversed_patients,
    sample_patient,
)
from synthecho.sources.phantom.echo import render_view
from synthecho.sources.phantom.geometry import VIEW_STREAMS, sample_view_geometry
from synthecho.sources.phantom.observer import Observer

TRUTH_DIR = "truth"
PREVIEW_PATIENTS = 6


@dataclass
class ViewRecord:
    """One rendered view: the half sequence, its (observer) masks, the clean truth, its cfg values."""

    view: str
    images: np.ndarray  # (T, H, W) uint8
    masks: np.ndarray  # (T, H, W) uint8 in {0, 1, 2, 3}: what `_gt` files hold (observer contours)
    truth: np.ndarray  # (T, H, W) uint8: the rendering truth the images were made from
    spacing: tuple[float, float]  # (lateral, depth) mm, SimpleITK order
    ed: int  # 1-based
    es: int
    frame_rate: float
    length_ed: float  # LV long axis at ED, mm (for the 2019 volumes)
    quality: str
    family: str  # LV outline family (anatomy.FAMILIES)


def render_patient(
    seed: int, number: int, size: tuple[int, int], frames: tuple[int, int], reversed_4ch: bool
) -> tuple[PatientAttributes, dict[str, ViewRecord]]:
    """Attributes and both views of 2023 patient `number`, with observer masks and the clean truth."""
    attributes = sample_patient(seed, number)
    records = {}
    for view in VIEWS:
        rng = np.random.default_rng([seed, number, VIEW_STREAMS[view], 2])
        n_frames = int(rng.integers(frames[0], frames[1] + 1))
        frame_rate = round(float(rng.uniform(40.0, 75.0)), 1)
        geometry = sample_view_geometry(seed, number, view, attributes, size)
        ramp = np.linspace(0.0, 1.0, n_frames)
        phases = 0.5 - 0.5 * np.cos(np.pi * ramp)  # smooth ED -> ES
        is_reversed = reversed_4ch and view == "4CH"
        if is_reversed:
            phases = phases[::-1]
        quality = attributes.quality(view)
        images, truth = render_view(geometry, quality, phases, rng)
        spacing_rows_cols = (geometry.spacing_depth, geometry.spacing_lateral)
        observer = Observer(
            np.random.default_rng([seed, number, VIEW_STREAMS[view], 3]), size, spacing_rows_cols
        )
        masks = np.stack(
            [
                observer.contour(clean, float(p), image > 0)
                for clean, p, image in zip(truth, phases, images, strict=True)
            ]
        )
        ed, es = (n_frames, 1) if is_reversed else (1, n_frames)
        records[view] = ViewRecord(
            view=view,
            images=images,
            masks=masks,
            truth=truth,
            spacing=(geometry.spacing_lateral, geometry.spacing_depth),
            ed=ed,
            es=es,
            frame_rate=frame_rate,
            length_ed=geometry.ed.length,
            quality=quality,
            family=geometry.form.family,
        )
    return attributes, records


def rerender_record(record_id: str, spec: dict, speckle_seed: int) -> np.ndarray:
    """The record's frame imaged again: the same patient, view, anatomy, phase and image quality, with
    speckle, textures and probe artefacts drawn anew from `speckle_seed` (uint8, native size).

    `spec` holds the phantom's `patients`, `seed`, `size` and (optional) `test_patients`, as the recipe's
    `source.phantom`; 2019 ids are mapped to their 2023 patient (`phantom_id_map`). A frame that shows a
    record's anatomy without being that record: the null of a copy detector.
    """
    release, patient, view, phase = parse_record_id(record_id)
    if release != "2023":
        id_map = phantom_id_map(spec["patients"], spec["seed"], spec.get("test_patients"))
        patient = id_map[f"{release.removeprefix('2019-')}/{patient}"]
    number, size = int(patient.removeprefix("patient")), tuple(spec["size"])
    attributes = sample_patient(spec["seed"], number)
    geometry = sample_view_geometry(spec["seed"], number, view, attributes, size)
    rng = np.random.default_rng([spec["seed"], number, VIEW_STREAMS[view], 5, speckle_seed])
    images, _ = render_view(
        geometry, attributes.quality(view), np.array([0.0 if phase == "ED" else 1.0]), rng
    )
    return images[0]


def cfg_text(attributes: PatientAttributes, record: ViewRecord, edv_ml: float | None = None) -> str:
    """Info_{view}.cfg: the 2023 keys (EF, FrameRate), or with `edv_ml` the 2019 ones (LVedv/LVesv/LVef)."""
    lines = [
        f"ED: {record.ed}",
        f"ES: {record.es}",
        f"NbFrame: {len(record.images)}",
        f"Sex: {attributes.sex}",
        f"Age: {attributes.age}",
        f"ImageQuality: {record.quality}",
    ]
    if edv_ml is None:
        lines += [f"EF: {attributes.ef}", f"FrameRate: {record.frame_rate:.1f}"]
    else:
        lines += [
            f"LVedv: {edv_ml:.2f}",
            f"LVesv: {edv_ml * (1.0 - attributes.ef / 100.0):.2f}",
            f"LVef: {float(attributes.ef):.1f}",
        ]
    return "\n".join(lines) + "\n"


def biplane_edv_ml(records: dict[str, ViewRecord]) -> float:
    """Biplane area-length LV volume at ED from the two views' masks: V = 8 A2 A4 / (3 pi L)."""
    areas = []
    for record in records.values():
        sx, sy = record.spacing
        areas.append(float((record.masks[record.ed - 1] == 1).sum()) * sx * sy)
    length = np.mean([record.length_ed for record in records.values()])
    return 8.0 * areas[0] * areas[1] / (3.0 * math.pi * length) / 1000.0


def single_plane_volume(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    """Single-plane area-length volume of a CAMUS mask, up to a constant: A^2 / L, spacing (row, col) mm.

    L is the LV extent along its long axis, from the LV centroid toward the middle of its border with the
    atrium (the mitral plane), as a reader would draw it (a principal axis is ambiguous for a round LV).
    The cfg EF of the phantom is 1 - V_ES / V_ED of the truth by this measure (`anatomy.solve_contraction`).
    """
    from scipy.ndimage import binary_dilation

    sy, sx = spacing
    lv = mask == 1
    rows, cols = np.nonzero(lv)
    points = np.stack([cols * sx, rows * sy], axis=1)
    centre = points.mean(axis=0)
    border = np.argwhere(lv & binary_dilation(mask == 3, iterations=2))
    axis = (
        np.array([border[:, 1].mean() * sx, border[:, 0].mean() * sy]) - centre
        if len(border)
        else np.array([0.0, 1.0])
    )
    projection = (points - centre) @ (axis / np.linalg.norm(axis))
    return (len(rows) * sx * sy) ** 2 / (projection.max() - projection.min())


class ImageWriter:
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


def write_patient_2023(writer: ImageWriter, folder: Path, pid: str, attributes, records) -> None:
    for view, record in records.items():
        stem = folder / f"{pid}_{view}"
        for instant, index in (("ED", record.ed), ("ES", record.es)):
            writer.write(record.images[index - 1], record.spacing, Path(f"{stem}_{instant}.nii.gz"))
            writer.write(record.masks[index - 1], record.spacing, Path(f"{stem}_{instant}_gt.nii.gz"))
        writer.write(record.images, record.spacing, Path(f"{stem}_half_sequence.nii.gz"))
        writer.write(record.masks, record.spacing, Path(f"{stem}_half_sequence_gt.nii.gz"))
        write_text_atomic(folder / f"Info_{view}.cfg", cfg_text(attributes, record))


def write_patient_2019(
    writer: ImageWriter, folder: Path, pid: str, attributes, records, with_gt: bool
) -> None:
    edv_ml = biplane_edv_ml(records)
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
        write_text_atomic(folder / f"Info_{view}.cfg", cfg_text(attributes, record, edv_ml))


# --- truth ---------------------------------------------------------------------------------------------

_RECORD_ID = re.compile(r"(2023|2019-training|2019-testing)/(patient\d{4})_(2CH|4CH)_(ED|ES)")


def parse_record_id(record_id: str) -> tuple[str, str, str, str]:
    """(release group, patient, view, phase) of a CAMUS-reader record id, e.g.
    ``phantom2023/patient0007_4CH_ES`` -> ("2023", "patient0007", "4CH", "ES"); the group is "2023",
    "2019-training" or "2019-testing"."""
    match = _RECORD_ID.search(record_id)
    if match is None or not record_id.endswith(match.group(0)):
        raise SynthechoError(
            f"{record_id!r} is not a CAMUS record id (expected e.g. 'phantom2023/patient0007_4CH_ES' or "
            "'phantom2019-testing/patient0001_2CH_ED')."
        )
    return match.groups()


def truth_path(out_dir: Path | str, record_id: str) -> Path:
    """Where the truth of a CAMUS-reader record id (``phantom2023/patient0007_4CH_ES``) would lie."""
    release, patient, view, phase = parse_record_id(record_id)
    folder = Path(out_dir) / TRUTH_DIR
    if release != "2023":
        folder = folder / release.removeprefix("2019-")
    return folder / f"{patient}_{view}_{phase}.png"


def read_truth(out_dir: Path | str, record_id: str) -> np.ndarray | None:
    """The clean rendering masks (uint8 CAMUS labels, native size) of one record, or None if the phantom
    in `out_dir` (the folder given to `write_phantom`) holds no truth for it (not a test patient)."""
    from synthecho.real import decode_png

    path = truth_path(out_dir, record_id)
    if not path.is_file():
        return None
    return decode_png(path.read_bytes())


def write_truth(folder: Path, pid: str, records: dict[str, ViewRecord]) -> list[Path]:
    from synthecho.real import encode_png

    written = []
    for view, record in records.items():
        for instant, index in (("ED", record.ed), ("ES", record.es)):
            path = folder / f"{pid}_{view}_{instant}.png"
            write_bytes_atomic(path, encode_png(record.truth[index - 1]))
            written.append(path)
    return written


def remove_stale_truth(out_dir: Path, written: set[Path]) -> None:
    """Truth of patients that are no longer test patients (a different test_patients) must not linger."""
    for path in sorted((out_dir / TRUTH_DIR).rglob("patient*_*_*.png")):
        if path not in written:
            path.unlink()


# --- the tree ------------------------------------------------------------------------------------------


def check_no_stale_patients(folder: Path, expected: set[str]) -> None:
    if not folder.is_dir():
        return
    stale = sorted(
        p.name for p in folder.iterdir() if re.fullmatch(r"patient\d{4}", p.name) and p.name not in expected
    )
    if stale:
        raise SynthechoError(
            f"{folder} already holds patient folders this phantom would not write "
            f"({', '.join(stale[:5])}...); write the phantom into an empty folder"
        )


def write_phantom(
    out_dir: Path,
    patients: int = 12,
    seed: int = 0,
    layout: str = "2023",
    size: tuple[int, int] = (192, 160),
    frames: tuple[int, int] = (6, 10),
    preview: bool = True,
    test_patients: int | None = None,
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
        preview: also write ``out_dir/phantom_preview.png`` (patients x 2CH/4CH ED/ES, plain + contours).
        test_patients: patients in the 2023 testing split (default ~15 %); their truth goes to
            ``out_dir/truth/``.
    """
    from tqdm.auto import tqdm

    from synthecho.sources.phantom.preview import preview_png

    out_dir = Path(out_dir)
    if layout not in ("2023", "2019"):
        raise SynthechoError(f"phantom layout must be '2023' or '2019', got {layout!r}")
    if len(size) != 2 or min(size) < 32:
        raise SynthechoError(f"phantom size must be (rows, cols) with both >= 32, got {tuple(size)}")
    if len(frames) != 2 or not 2 <= frames[0] <= frames[1]:
        raise SynthechoError(f"phantom frames must be (min, max) with 2 <= min <= max, got {tuple(frames)}")
    size = (int(size[0]), int(size[1]))
    splits = phantom_splits(patients, seed, test_patients)
    testing = set(splits["testing"])
    reversed_ids = reversed_patients(patients, seed)

    # 1. Where each 2023 patient goes in the requested layout (and its truth, if it is a test patient).
    if layout == "2023":
        root = out_dir / "CAMUS_public"
        patient_root = root / "database_nifti"
        targets = {
            patient_id(n): (patient_root / patient_id(n), patient_id(n), True) for n in range(1, patients + 1)
        }
        check_no_stale_patients(patient_root, set(targets))
        truth_folder = out_dir / TRUTH_DIR
    else:
        root = out_dir
        targets = {}
        for id_2019, id_2023 in phantom_id_map(patients, seed, test_patients).items():
            folder_name, pid = id_2019.split("/")
            targets[id_2023] = (out_dir / folder_name / pid, pid, folder_name == "training")
        for folder_name in ("training", "testing"):
            expected = {pid for path, pid, _ in targets.values() if path.parent.name == folder_name}
            check_no_stale_patients(out_dir / folder_name, expected)
        truth_folder = out_dir / TRUTH_DIR / "testing"

    # 2. Render (on every core: each patient is seeded by its number) and write patient by patient, in
    #    order, as the renderings arrive.
    writer = ImageWriter(out_dir)
    previews, truth_files = [], set()
    numbers = range(1, patients + 1)
    rendered = ordered_map(
        render_patient,
        [seed] * patients,
        numbers,
        [size] * patients,
        [tuple(frames)] * patients,
        [number in reversed_ids for number in numbers],
    )
    try:
        for number, (attributes, records) in tqdm(
            zip(numbers, rendered, strict=True),
            total=patients,
            desc="phantom patients",
            unit="patient",
            disable=None,
        ):
            folder, pid, with_gt = targets[patient_id(number)]
            if layout == "2023":
                write_patient_2023(writer, folder, pid, attributes, records)
            else:
                write_patient_2019(writer, folder, pid, attributes, records, with_gt)
            if patient_id(number) in testing:
                truth_files.update(write_truth(truth_folder, pid, records))
            if preview and len(previews) < PREVIEW_PATIENTS:
                previews.append((patient_id(number), attributes, records))
    finally:
        writer.close()
    remove_stale_truth(out_dir, truth_files)

    # 3. Split files (2023 only; the 2019 release encodes the split as folders).
    if layout == "2023":
        for name, ids in splits.items():
            write_text_atomic(
                root / "database_split" / f"subgroup_{name}.txt", "".join(f"{i}\n" for i in ids)
            )
    if preview:
        write_bytes_atomic(out_dir / "phantom_preview.png", preview_png(previews))
    return root
