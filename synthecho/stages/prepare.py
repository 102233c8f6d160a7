"""Stage `prepare`: source dataset -> `<run>/real/{train,validation,test}.parquet`.

1. Resolve the source: the phantom is written under `<run>/source/` (deterministic from its seed); CAMUS
   is read where the recipe or $SYNTHECHO_CAMUS_ROOT points.
2. Read every labelled ED/ES frame with the CAMUS reader (both releases; patient-level splits).
3. Resize to the recipe resolution: images with area averaging, masks and sectors nearest-neighbour;
   the pixel spacing after resizing is recorded (frames become square, spacing anisotropic).
4. Derive the sector (fan) from the native image, the shape words from the resized mask, and the
   image-level prompt from the attributes (`synthecho.real.record_row`).
5. Write one Parquet file per split (atomic) and the manifest's `dataset`/`source` sections.
6. Phantom only: the clean rendering masks of the test frames (the `_gt` files carry an observer's
   label noise), resized exactly as the labels are, into `real/test_truth.parquet` for `evaluate`.
7. The copy check's null (`real/copy_null.parquet`): frames that show a train/validation record's
   anatomy without being it, resized as the record was. Phantom: the record's geometry imaged again with
   `prepare.copy_null_renders` fresh speckle seeds; CAMUS: the recording's other labelled phase and the
   half-sequence frame next to the record's.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from synthecho.errors import SynthechoError
from synthecho.layout import RunLayout
from synthecho.markers import current_info, write_marker
from synthecho.real import SPLITS, check_patient_splits, real_content_hash, record_row, write_split


def missing_inputs(recipe) -> list[str]:
    """The CAMUS root, when the source is CAMUS (the phantom is simulated here)."""
    if recipe.source.kind != "camus":
        return []
    try:
        recipe.source.resolve_root()
    except SynthechoError as error:
        return [str(error)]
    return []


def phantom_folder(recipe, run_dir: Path) -> Path:
    """Where the phantom of this recipe is written (`write_phantom`'s out_dir: tree and truth)."""
    spec = recipe.source.phantom
    return RunLayout.of(run_dir).source / f"phantom-{spec.layout}-n{spec.patients}-s{spec.seed}"


def resolve_source(recipe, run_dir: Path) -> tuple[Path, str]:
    """The dataset root to read and the name that prefixes record ids ("phantom" or "camus")."""
    source = recipe.source
    if source.kind == "camus":
        return source.resolve_root(), "camus"
    from synthecho.sources.phantom import SIMULATOR_VERSION, write_phantom

    spec = source.phantom
    folder = phantom_folder(recipe, run_dir)
    marker = folder / ".complete.json"
    # The folder name lacks the frame size and the simulator's version: the marker holds them all.
    settings = f"{spec.model_dump_json()} simulator {SIMULATOR_VERSION}"
    if (done := current_info(marker, settings)) is not None:
        return Path(done["root"]), "phantom"
    root = write_phantom(
        folder,
        patients=spec.patients,
        seed=spec.seed,
        layout=spec.layout,
        size=tuple(spec.size),
        test_patients=spec.test_patients,
    )
    write_marker(marker, "source", folder.name, {"root": str(root)}, input_hash=settings)  # after the tree
    return root, "phantom"


def write_test_truth(recipe, run_dir: Path, records, resolution: int) -> int:
    """`real/test_truth.parquet` from the phantom's truth of the test records; the number of frames.

    The truth is resized as `record_row` resizes the labels (nearest, clipped to the resized sector). No
    file is left behind when there is no truth (CAMUS; a 2019-layout phantom, whose test split is carved
    from training patients the phantom does not keep truth for): a stale one would pair other frames.
    """
    from synthecho.labels import sector_from_image
    from synthecho.real import resize_frame, write_truth

    path = RunLayout.of(run_dir).test_truth
    test = [record for record in records if record.split == "test"]
    truths = []
    if recipe.source.kind == "phantom":
        from synthecho.sources.phantom import read_truth

        folder = phantom_folder(recipe, run_dir)
        truths = [read_truth(folder, record.id) for record in test]
    if not test or not truths or any(truth is None for truth in truths):
        path.unlink(missing_ok=True)
        return 0
    rows = []
    for record, truth in zip(test, truths, strict=True):
        _, mask, _ = resize_frame(record.image, truth, sector_from_image(record.image), resolution)
        rows.append({"id": record.id, "mask": mask})
    write_truth(rows, path)
    return len(rows)


def write_copy_null(recipe, run_dir: Path, records, resolution: int, progress: bool) -> dict:
    """`real/copy_null.parquet` (step 7); returns {"pairs", "kinds": {kind: count}}."""
    from collections import Counter

    from synthecho.labels import sector_from_image
    from synthecho.real import resize_frame
    from synthecho.real import write_copy_null as write

    sources = [r for r in records if r.split in ("train", "validation") and r.mask is not None]
    pairs, images = [], []

    sectors: dict[str, object] = {}  # one per record: every frame made from it shares its sector

    def add(record, frame, kind: str, detail: str, made_from: str = "") -> None:
        if record.id not in sectors:
            sectors[record.id] = sector_from_image(record.image)
        image, _, _ = resize_frame(frame, record.mask, sectors[record.id], resolution)
        pairs.append(
            {
                "record_id": record.id,
                "split": record.split,
                "kind": kind,
                "detail": detail,
                "made_from": made_from,
            }
        )
        images.append(image)

    if recipe.source.kind == "phantom":
        from synthecho.parallel import ordered_map
        from synthecho.sources.phantom import rerender_record

        spec, renders = recipe.source.phantom.model_dump(), recipe.prepare.copy_null_renders
        jobs = [(record, k) for record in sources for k in range(renders)]
        frames = ordered_map(
            rerender_record, [r.id for r, _ in jobs], [spec] * len(jobs), [k for _, k in jobs]
        )
        for (record, k), frame in tqdm(
            zip(jobs, frames, strict=True),
            total=len(jobs),
            desc="copy null (re-render)",
            disable=not progress,
            unit="frame",
        ):
            add(record, frame, "rerender", f"speckle seed {k}")
    else:
        from synthecho.sources.camus import read_sequence_frame

        flip = {"ED": "ES", "ES": "ED"}
        by_key = {(r.split, r.patient, r.view, r.phase): r for r in sources}
        for record in tqdm(sources, desc="copy null (sequences)", disable=not progress, unit="frame"):
            other = by_key.get((record.split, record.patient, record.view, flip[record.phase]))
            if other is not None:
                add(record, other.image, "other_phase", other.id, made_from=other.id)
            # The neighbour inside the half sequence (ED is its first frame, ES its last, or the reverse).
            step = 1 if record.frame_index + 1 < max(record.nb_frames, 1) else -1
            neighbour = record.frame_index + step
            frame = read_sequence_frame(record, neighbour) if neighbour >= 0 else None
            if frame is not None:
                add(record, frame, "neighbour_frame", f"frame {neighbour}")
    write(pairs, images, RunLayout.of(run_dir).copy_null)
    return {"pairs": len(pairs), "kinds": dict(Counter(pair["kind"] for pair in pairs))}


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    from synthecho.manifest import dataset_section, environment_info, update_manifest
    from synthecho.sources.camus import detect_release, file_list_hash, read_camus

    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)

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
    counts, content = {}, {}
    for split in SPLITS:
        split_rows = [row for row in rows if row["split"] == split]
        counts[split] = len(split_rows)
        content[split] = real_content_hash(split_rows)
        write_split(split_rows, layout.real_split(split))
    # 6. The phantom's truth of the test frames.
    truth_frames = write_test_truth(recipe, run_dir, records, resolution)
    # 7. The copy check's null.
    copy_null = write_copy_null(recipe, run_dir, records, resolution, progress)

    note = ""
    if release == "2019":
        note = (
            "CAMUS 2019 release: its testing folder has no labels, so validation and test were carved from "
            "training patients."
        )
    update_manifest(
        run_dir,
        dataset=dataset_section(recipe),
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
            "test_truth_frames": truth_frames,
            "copy_null": copy_null,
            "note": note,
        },
    )
    return {
        "records": counts,
        "patients": patients,
        "release": release,
        "resolution": resolution,
        "test_truth_frames": truth_frames,
    }
