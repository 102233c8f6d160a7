"""Stage `evaluate`: downstream baselines, with the statistics a claim needs.

For every real-data cap, task, strategy and seed a model is trained (selected on real validation, with
early stopping under a budget equal across strategies) and tested on the real test split; per-image
results are kept, and strategies are compared patient by patient (`synthecho.downstream.effects`).

1. Tasks: `segmentation` (MONAI U-Net), `phase` and `view` (ResNet-18), `clipseg` (one task per prompt
   level, skipped with a stated reason when no local CLIPSeg weights are configured).
2. Real-data caps. A cap p < 1 keeps round(p x train patients) patients (at least one), drawn once with
   `recipe.seed` (patient level, the same subset for every evaluation seed). The synthetic rows of a
   capped row must not have seen the held-back patients — neither through the generator nor through
   the filter's segmenter — so each cap gets a sub-run `<run>/caps/cap-{p}/` whose `real/train.parquet`
   is the capped subset (validation and test are copied unchanged), and train -> generate -> filter run
   there through the stage runner (its `prepare` marker is written here: `prepare` itself would rebuild
   the full split). A changed subset deletes the sub-run and rebuilds it. Cap 1.0 is the run itself.
3. Controls: at each cap, every kept synthetic train row's source frame and mask warped by the row's
   `mask_transform` (`downstream.warped_split`), for the warped strategies.
4. Each finished (cap, task, strategy, seed) unit is cached in `<run>/downstream/units/` with the hash of
   its inputs, so an interrupted study resumes.
5. Statistics: per-patient effects of every comparison (descriptive), and the confirmatory family of
   `evaluate.confirmatory` (tested, Holm).
6. Outputs: `<run>/downstream/results.json` (everything, per-image and per-patient included), manifest
   section `downstream` (summaries, effects, the family), `reports/downstream.md`, `reports/downstream.png`.
   With the phantom, segmentation is also scored against its truth (`truth_dice_*`, beside Dice
   against the noisy test labels) and the labels' own Dice to the truth is recorded.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from synthecho.downstream import STRATEGIES, corpora_of, corpus_split, warped_split
from synthecho.downstream.effects import STATISTICS, aggregate, confirmatory_family
from synthecho.downstream.report import REPORT_MD, REPORT_PNG, render_chart, render_markdown
from synthecho.downstream.segmentation import label_noise_dice
from synthecho.downstream.study import (
    build_tasks,
    capped_patients,
    corpus_fingerprint,
    run_tasks,
    strip_per_image,
    warped_fingerprint,
)
from synthecho.errors import SynthechoError
from synthecho.io import atomic_path, sha256_file, sha256_json, write_json_atomic, write_text_atomic
from synthecho.layout import RunLayout, cap_label
from synthecho.markers import current_info, write_marker
from synthecho.real import SPLITS, load_real
from synthecho.stages import is_current, mark_done, read_stage_marker, run_stage

CAP_STAGES = ("train", "generate", "filter")
CLASSIFICATION_TASKS = ("phase", "view")


def missing_inputs(recipe) -> list[str]:
    """The ImageNet ResNet-18 weights the classifiers start from (`evaluate.classification.pretrained`),
    when this machine lacks them. CLIPSeg weights are optional: without them its task is skipped."""
    if not set(CLASSIFICATION_TASKS) & set(recipe.evaluate.tasks):
        return []
    try:
        recipe.evaluate.classification.resolved_weights()
    except SynthechoError as error:
        return [str(error)]
    return []


def prepare_cap_run(recipe, run_dir: Path, cap: float, *, force: bool = False, progress: bool = True) -> Path:
    """Build (or resume) `<run>/caps/cap-{p}/` whose real train split holds only the capped patients.

    1. Select the patients; compare with the selection recorded in the sub-run's marker `cap.json` — a
       different subset (or a re-prepared parent) deletes the sub-run: its generator and segmenter saw
       the wrong patients.
    2. Write `real/train.parquet` (capped rows), copy validation/test, then the marker `cap.json`.
    3. Write the sub-run's `prepare` marker and manifest sections (the parent's, with capped counts).
    4. Run train -> generate -> filter there through the stage runner (each skips when current).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synthecho.manifest import read_manifest, update_manifest

    started = time.time()
    parent = RunLayout.of(run_dir)
    sub = RunLayout(parent.cap_run(cap_label(cap)))
    table = pq.read_table(parent.real_split("train"))
    chosen = capped_patients(table.column("patient").to_pylist(), cap, recipe.seed)
    selection = {
        "cap": cap,
        "seed": recipe.seed,
        "patients": chosen,
        "parent_real_sha256": {split: sha256_file(parent.real_split(split)) for split in SPLITS},
    }
    selection_hash = sha256_json(selection)
    cap_marker = sub.root / "cap.json"
    if cap_marker.is_file() and current_info(cap_marker, selection_hash) is None:
        shutil.rmtree(sub.root)
    if not cap_marker.is_file():
        capped = table.filter(pc.is_in(table.column("patient"), value_set=_string_array(chosen)))
        with atomic_path(sub.real_split("train")) as tmp:
            pq.write_table(capped, tmp, compression="zstd")
        for split in ("validation", "test"):
            with atomic_path(sub.real_split(split)) as tmp:
                shutil.copyfile(parent.real_split(split), tmp)
        # last: marks the sub-run's real/ as complete
        write_marker(cap_marker, "cap", cap_label(cap), selection, input_hash=selection_hash)
    if parent.copy_null.is_file() and not sub.copy_null.is_file():
        # The copy check's null (written by prepare), for the records the sub-run keeps.
        null = pq.read_table(parent.copy_null)
        kept = pq.read_table(sub.real_split("train"), columns=["id"]).column("id").to_pylist()
        kept += pq.read_table(sub.real_split("validation"), columns=["id"]).column("id").to_pylist()
        with atomic_path(sub.copy_null) as tmp:
            kept_null = null.filter(pc.is_in(null.column("record_id"), value_set=_string_array(kept)))
            pq.write_table(kept_null, tmp)

    if force or not is_current(recipe, sub.root, "prepare"):
        parent_manifest = read_manifest(run_dir)
        counts = {split: pq.read_metadata(sub.real_split(split)).num_rows for split in SPLITS}
        patients = dict(parent_manifest.get("source", {}).get("patients", {}), train=len(chosen))
        note = (
            f"real-data cap {cap:g}: train split limited to {len(chosen)} of "
            f"{len(set(table.column('patient').to_pylist()))} patients (seed {recipe.seed}); generator and "
            f"segmenter trained on this subset only."
        )
        source = {**parent_manifest.get("source", {}), "records": counts, "patients": patients, "note": note}
        update_manifest(sub.root, dataset=parent_manifest.get("dataset", {}), source=source)
        info = {"records": counts, "patients": patients, "cap": cap, "capped_from": str(parent.real)}
        mark_done(recipe, sub.root, "prepare", info, started)
    for stage in CAP_STAGES:  # through the stage runner: each is skipped when current
        run_stage(stage, recipe, sub.root, force=force, progress=progress)
    return sub.root


def _corpora(recipe, cap_run: Path, needed: set[str]) -> tuple[dict, dict, dict | None]:
    """The training corpora of one cap: real train, and as the strategies need them the passed synthetic
    train rows and their warped control; what identifies each; the control's pairing check."""
    config = recipe.evaluate
    corpora, fingerprints, pairing = {"real": load_real(cap_run, "train")}, {}, None
    if needed & {"synthetic", "warped"}:
        filtered = read_stage_marker(cap_run, "filter") is not None
        corpora["synthetic"] = corpus_split(cap_run, "train", limit=config.max_synthetic, filtered=filtered)
        fingerprints["synthetic"] = corpus_fingerprint(cap_run, config.max_synthetic)
    if "warped" in needed:
        spec = recipe.generate.perturb  # rows record the elastic grid's rows only; the columns are here
        cols = spec.elastic_control_points_col
        grid = {"elastic_control_points_col": cols} if cols not in (None, spec.elastic_control_points) else {}
        corpora["warped"], pairing = warped_split(corpora["synthetic"], corpora["real"], grid)
        fingerprints["warped"] = warped_fingerprint(corpora["synthetic"], grid)
    return corpora, fingerprints, pairing


def _string_array(values: list[str]):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


# --- the stage ---------------------------------------------------------------------------------------


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    """Train and test every (cap, task, strategy, seed); write results, report, chart and manifest."""
    from synthecho.manifest import environment_info, update_manifest

    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)
    config = recipe.evaluate
    if not config.seeds or not config.strategies or not config.tasks:
        raise SynthechoError(
            "evaluate.tasks, evaluate.strategies and evaluate.seeds must each list at least one entry"
        )
    strategies = [s for s in STRATEGIES if s in config.strategies]  # fixed order: synthetic before fine-tune
    units_root = layout.downstream_units
    if force and units_root.exists():
        shutil.rmtree(units_root)

    # 1. Real validation and test (shared by every cap), and the tasks.
    validation, test = load_real(run_dir, "validation"), load_real(run_dir, "test")
    if len(test) == 0 or len(validation) == 0:
        raise SynthechoError(f"{layout.real}: the real validation and test splits must not be empty")
    tasks, skipped_tasks = build_tasks(recipe, validation, test)
    needed = {name for strategy in strategies for name in corpora_of(strategy)}

    # 2-3. Caps, largest first (the run's own corpus), then each task's strategies and seeds.
    study = {
        "tasks": [task.name for task in tasks],
        "settings": {task.name: task.settings for task in tasks},
        "strategies": strategies,
        "seeds": list(config.seeds),
        "skipped_tasks": skipped_tasks,
        "test": {
            "frames": len(test),
            "patients": len({r["patient"] for r in test.records}),
            "ids": test.ids,
            "labels_vs_truth_dice": label_noise_dice(test),  # None unless the source is the phantom
        },
        "validation": {
            "frames": len(validation),
            "patients": len({r["patient"] for r in validation.records}),
        },
        "statistics": STATISTICS,
        "caps": {},
    }
    # No runnable task (e.g. only clipseg without weights): nothing to train, so no capped sub-run either.
    for cap in sorted(set(config.real_caps), reverse=True) if tasks else []:
        cap_run = (
            run_dir if cap >= 1 else prepare_cap_run(recipe, run_dir, cap, force=force, progress=progress)
        )
        corpora, fingerprints, pairing = _corpora(recipe, cap_run, needed)
        real_train = corpora["real"]
        synthetic = corpora.get("synthetic")
        entry = {
            "cap": cap,
            "run": cap_run.relative_to(run_dir).as_posix() or ".",
            "real_train_patients": len({r["patient"] for r in real_train.records}),
            "real_train_frames": len(real_train),
            "synthetic_train_rows": len(synthetic) if synthetic is not None else 0,
            **({"warped_pairing": pairing} if pairing else {}),
            "tasks": {},
        }
        units = run_tasks(tasks, strategies, list(config.seeds), corpora, fingerprints,
                          units_root / cap_label(cap), progress=progress)  # fmt: skip
        for task in tasks:
            entry["tasks"][task.name] = aggregate(task, units[task.name], strategies)
        study["caps"][cap_label(cap)] = entry
    study["confirmatory"] = confirmatory_family(study, config.confirmatory)

    # 4-5. Results, report, chart, manifest, marker.
    write_json_atomic(layout.downstream / "results.json", study)
    reports = layout.reports
    write_text_atomic(reports / REPORT_MD, render_markdown(recipe, study))
    (reports / REPORT_PNG).unlink(missing_ok=True)  # a chart from an earlier study must not outlive it
    render_chart(study, reports / REPORT_PNG)
    summary = strip_per_image(study)
    summary["test"] = {k: v for k, v in study["test"].items() if k != "ids"}
    summary["files"] = {
        "results": "downstream/results.json",
        "report": f"reports/{REPORT_MD}",
        "figure": f"reports/{REPORT_PNG}" if (reports / REPORT_PNG).is_file() else None,
    }
    update_manifest(
        run_dir,
        recipe=recipe.model_dump(mode="json"),
        recipe_sha256=recipe.content_hash(),
        environment=environment_info(),
        downstream=summary,
    )
    return {
        "caps": [entry["cap"] for entry in study["caps"].values()],
        "tasks": study["tasks"],
        "skipped_tasks": skipped_tasks,
        "report": f"reports/{REPORT_MD}",
    }
