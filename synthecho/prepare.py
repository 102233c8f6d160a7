"""Stage `prepare`: source dataset -> `<run>/real/{train,validation,test}.parquet`.

1. Resolve the source: the phantom is written under `<run>/source/` (deterministic from its seed); CAMUS
   is read where the recipe or $SYNTHECHO_CAMUS_ROOT points.
2. Read every labelled ED/ES frame with the CAMUS reader (both releases; patient-level splits).
3. Resize to the recipe resolution: images with area averaging, masks and sectors nearest-neighbour;
   the pixel spacing after resizing is recorded (frames become square, spacing anisotropic).
4. Derive the sector (fan) from the native image, the shape words from the resized mask, and the
   image-level prompt from the attributes.
5. Write one Parquet file per split (atomic), the manifest's `dataset`/`source` sections, the marker.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from synthecho.errors import SynthechoError
from synthecho.labels import sector_from_image
from synthecho.real import IMAGE_COLUMNS, SCALAR_COLUMNS, SPLITS, encode_png, real_dir
from synthecho.stages import is_current, mark_done, read_marker


def resolve_source(recipe, run_dir: Path) -> tuple[Path, str]:
    """The dataset root to read and the name that prefixes record ids ("phantom" or "camus")."""
    source = recipe.source
    if source.kind == "camus":
        return source.resolve_root(), "camus"
    from synthecho.sources.phantom import write_phantom

    spec = source.phantom
    folder = run_dir / "source" / f"phantom-{spec.layout}-n{spec.patients}-s{spec.seed}"
    done = folder / ".complete"
    if done.is_file():
        return Path(done.read_text().strip()), "phantom"
    root = write_phantom(
        folder, patients=spec.patients, seed=spec.seed, layout=spec.layout, size=tuple(spec.size)
    )
    done.write_text(str(root))  # written after the tree: a crash mid-write re-simulates next time
    return root, "phantom"


def resize_frame(image: np.ndarray, mask: np.ndarray, sector: np.ndarray, resolution: int):
    """Image: area averaging (no aliasing of speckle); mask and sector: nearest (labels stay labels)."""
    from PIL import Image

    size = (resolution, resolution)
    image_small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX), dtype=np.uint8)
    mask_small = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST), dtype=np.uint8)
    sector_img = Image.fromarray(sector.astype(np.uint8) * 255)
    sector_small = np.asarray(sector_img.resize(size, Image.Resampling.NEAREST)) > 0
    # The fan is where the image is; labels never leave it (resampling can shift an edge pixel).
    image_small = np.where(sector_small, image_small, 0).astype(np.uint8)
    mask_small = np.where(sector_small, mask_small, 0).astype(np.uint8)
    return image_small, mask_small, sector_small


def record_row(record, resolution: int) -> dict:
    from synthecho.prompts import Attributes, image_prompt, shapes_of

    sector = sector_from_image(record.image)
    image, mask, sector = resize_frame(record.image, record.mask, sector, resolution)
    rows, cols = record.image.shape
    shapes = shapes_of(mask)
    attrs = Attributes(record.view, record.phase, record.sex, record.age, record.image_quality)
    return {
        "id": record.id,
        "patient": record.patient,
        "split": record.split,
        "view": record.view,
        "phase": record.phase,
        "sex": record.sex,
        "age": int(record.age),
        "image_quality": record.image_quality,
        "ef": None if record.ef is None else float(record.ef),
        "spacing_row_mm": float(record.spacing[0]) * rows / resolution,
        "spacing_col_mm": float(record.spacing[1]) * cols / resolution,
        "shape_lv": shapes["lv"],
        "shape_myo": shapes["myo"],
        "shape_la": shapes["la"],
        "prompt": image_prompt(attrs),
        "source_file": record.source_file,
        "image": encode_png(image),
        "mask": encode_png(mask, palette=True),
        "sector": encode_png(sector.astype(np.uint8)),
    }


def write_split(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthecho.io import atomic_path

    columns = {name: [row[name] for row in rows] for name in SCALAR_COLUMNS + IMAGE_COLUMNS}
    types = {name: pa.binary() for name in IMAGE_COLUMNS}
    types.update(
        {
            "age": pa.int32(),
            "ef": pa.float64(),
            "spacing_row_mm": pa.float64(),
            "spacing_col_mm": pa.float64(),
        }
    )
    table = pa.table(
        {name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def real_content_hash(rows: list[dict]) -> str:
    """Hash over ids, decoded pixels and attributes: survives a PNG/pyarrow upgrade, unlike file bytes."""
    from synthecho.real import decode_png

    digest = hashlib.sha256()
    for row in rows:
        scalars = {name: row[name] for name in SCALAR_COLUMNS if name != "source_file"}
        digest.update(json.dumps(scalars, sort_keys=True, default=str).encode())
        for name in IMAGE_COLUMNS:
            digest.update(decode_png(row[name]).tobytes())
    return digest.hexdigest()


def check_patient_splits(rows: list[dict]) -> dict[str, int]:
    """Patients per split; no patient may appear in two splits (that would leak test anatomy)."""
    seen: dict[str, str] = {}
    for row in rows:
        other = seen.setdefault(row["patient"], row["split"])
        if other != row["split"]:
            raise SynthechoError(f"patient {row['patient']} appears in splits {other} and {row['split']}")
    return {split: sum(1 for s in seen.values() if s == split) for split in SPLITS}


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    from synthecho.manifest import environment_info, update_manifest
    from synthecho.sources.camus import detect_release, file_list_hash, read_camus

    run_dir = Path(run_dir)
    if not force and is_current(recipe, run_dir, "prepare"):
        return {"skipped": True, **read_marker(run_dir, "prepare")["info"]}
    started = time.time()

    # 1-2. Source and records.
    root, name = resolve_source(recipe, run_dir)
    release = detect_release(root) if recipe.source.release == "auto" else recipe.source.release
    # A 2019-layout phantom is small: carve 15% of its training patients for validation and for test
    # (the CAMUS convention of 50 patients is for the real 450-patient training folder).
    validation_2019 = recipe.source.validation_patients_2019 if name == "camus" else 0.15
    records = read_camus(root, release=release, name=name, validation_patients_2019=validation_2019)
    if not records:
        raise SynthechoError(f"no labelled records found under {root}")

    # 3-4. Resize, sector, shapes, prompts.
    resolution = recipe.prepare.resolution
    rows = [
        record_row(r, resolution) for r in tqdm(records, desc="prepare", disable=not progress, unit="frame")
    ]
    patients = check_patient_splits(rows)

    # 5. One file per split.
    out = real_dir(run_dir)
    counts, content = {}, {}
    for split in SPLITS:
        split_rows = [row for row in rows if row["split"] == split]
        counts[split] = len(split_rows)
        content[split] = real_content_hash(split_rows)
        write_split(split_rows, out / f"{split}.parquet")

    note = ""
    if release == "2019":
        note = "CAMUS 2019 release: its testing folder has no labels, so validation and test were carved from training patients."
    info = {"records": counts, "patients": patients, "release": release, "resolution": resolution}
    update_manifest(
        run_dir,
        dataset={
            "name": recipe.name,
            "version": recipe.version,
            "description": recipe.description.strip(),
            "license": recipe.license,
            "pretty_name": recipe.publish.pretty_name or recipe.name,
        },
        recipe=recipe.model_dump(mode="json"),
        recipe_sha256=recipe.content_hash(),
        environment=environment_info(),
        source={
            "kind": recipe.source.kind,
            "name": name,
            "release": release,
            "file_list_sha256": file_list_hash(root),
            "records": counts,
            "patients": patients,
            "resolution": resolution,
            "real_content_sha256": content,
            "note": note,
        },
    )
    marker = mark_done(recipe, run_dir, "prepare", info, started)
    return {"skipped": False, "seconds": marker["seconds"], **info}
