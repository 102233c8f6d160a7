"""Stage `generate`: the conditioning plan, sampled into `<run>/shards/raw/{split}-{i:05d}.parquet`.

1. Decide who this process is: `--shard-index/--num-shards` (job arrays), else the rank and world size
   of `accelerate launch`, else the only worker. Shard i (plan order) belongs to worker i % num_shards.
2. Load the real splits and build the plan (`synthecho.plan`): every row's source, perturbation, prompt,
   seed, batch and shard are fixed there, so pixels do not depend on how shards are spread.
3. Load the generator (and the segmenter when it supplies the masks).
4. Skip shards whose completion marker matches their file and this plan/generator; redo the rest.
5. For each batch: perturb the source masks into conditioning maps (one batch ahead, in a thread),
   sample, pick the row masks by `mask_source`, and hand the rows to the writer thread, which computes
   shape words, PNG-encodes and writes row groups behind a bounded queue while the next batch samples.
6. Whichever process sees every planned shard finished writes the manifest sections (`generation`,
   `shards.raw`, `counts`) and reports the stage complete (the stage runner then marks it).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from synthecho import profiling
from synthecho.errors import SynthechoError
from synthecho.generators.base import as_uint8, row_masks
from synthecho.io import sha256_json, sha256_model_folder
from synthecho.layout import RunLayout
from synthecho.plan import (
    ShardPlan,
    build_plan,
    conditioning,
    my_shards,
    row_attributes,
    rows_per_split,
    shards_of,
)
from synthecho.shards import (
    BackgroundWriter,
    ShardFile,
    read_marker,
    remove_shard,
    shard_matches_marker,
)

WRITER_QUEUE_BATCHES = 3  # batches sampled ahead of the writer: overlap without unbounded memory


def shard_path(run_dir: str | os.PathLike, shard: ShardPlan) -> Path:
    return RunLayout.of(run_dir).raw_shard(shard.name)


# --- 1. worker slot, device, precision ------------------------------------------------------------------


def worker_slot(shard_index: int | None, num_shards: int | None) -> tuple[int, int, str | None]:
    """(shard_index, num_shards, device chosen by the launcher or None)."""
    if shard_index is not None or num_shards is not None:
        if shard_index is None or num_shards is None:
            raise SynthechoError(
                "pass both --shard-index and --num-shards (e.g. from a Slurm array), or neither"
            )
        return shard_index, num_shards, None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch / torchrun
        import torch
        from accelerate import PartialState

        # cpu=True where there is no GPU: otherwise accelerate sees no distributed setup and every rank
        # would believe it is the only one (and write every shard).
        state = PartialState(cpu=not torch.cuda.is_available())
        return state.process_index, state.num_processes, str(state.device)
    return 0, 1, None


def resolve_precision(precision: str, device: str):
    """torch dtype for sampling: "auto" is bf16 on GPUs (fast, range-safe) and fp32 on CPUs."""
    import torch

    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    return precision, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def generator_sha256(run_dir: Path) -> str:
    """The generator's weight hash: as the train stage recorded it, else hashed from `generator/`."""
    from synthecho.manifest import read_manifest

    recorded = (read_manifest(run_dir).get("generator") or {}).get("sha256")
    if recorded:
        return recorded
    folder = RunLayout.of(run_dir).generator
    return sha256_model_folder(folder) if folder.is_dir() else ""


def generator_name(recipe, sampler) -> str:
    variant = getattr(recipe.generator, "variant", None)
    return f"{sampler.kind}/{variant}" if variant else sampler.kind


# --- 5. one batch ---------------------------------------------------------------------------------------


def batch_rows(batch, images, masks, common: dict, prompt_used: bool) -> list[dict]:
    """Row dicts of the corpus schema (image/mask still arrays; shape words filled in by the writer)."""
    from synthecho.schema import MASK_TRANSFORM_FIELDS, PHASES, QUALITIES, SEXES, VIEWS, class_index

    rows = []
    for row, image, mask in zip(batch, images, masks, strict=True):
        rows.append(
            {
                "id": row.id,
                "index": row.index,
                "image": image,
                "mask": mask,
                "prompt": row.prompt if prompt_used else "",
                "view": class_index(VIEWS, row.view),
                "phase": class_index(PHASES, row.phase),
                "sex": class_index(SEXES, row.sex),
                "image_quality": class_index(QUALITIES, row.image_quality),
                "age": row.age,
                **common,
                "seed": row.seed,
                "source_id": row.source_id,
                "source_patient": row.source_patient,
                "source_split": row.source_split,
                "variant": row.variant,
                "mask_transform": {name: row.mask_transform[name] for name in MASK_TRANSFORM_FIELDS},
                "spacing_mm": {"row": row.spacing_row_mm, "col": row.spacing_col_mm},
                "dice_lv": None,
                "dice_myo": None,
                "dice_la": None,
                "copy_similarity": None,
                "view_score": None,
                "phase_score": None,
            }
        )
    return rows


def add_shapes_and_write(shard_file: ShardFile, rows: list[dict]) -> None:
    """Writer-thread work: shape words from each row's final mask, then PNG encoding and writing."""
    from synthecho.prompts import shapes_of

    with profiling.section("generate/shape_words"):
        for row in rows:
            shapes = shapes_of(row["mask"])
            row["shape_lv"], row["shape_myo"], row["shape_la"] = shapes["lv"], shapes["myo"], shapes["la"]
    shard_file.add_rows(rows)


# --- stage ----------------------------------------------------------------------------------------------


def completed_markers(run_dir: Path, shards: list[ShardPlan], settings: dict) -> dict[int, dict]:
    """ordinal -> marker for the shards that are finished for this plan and generator."""
    done = {}
    for shard in shards:
        path = shard_path(run_dir, shard)
        marker = read_marker(path)
        if marker and marker.get("shard_key") == shard.key(settings) and shard_matches_marker(path, marker):
            done[shard.ordinal] = marker
    return done


def run(
    recipe,
    run_dir: Path,
    *,
    force: bool = False,
    progress: bool = True,
    shard_index: int | None = None,
    num_shards: int | None = None,
    device: str | None = None,
    sampler=None,
) -> dict:
    """Generate this process's shards of the plan; returns what it did.

    `sampler`: an already loaded Sampler (benchmarks, tests); by default `<run>/generator/` is loaded.
    """
    from tqdm.auto import tqdm

    from synthecho.generators import get_generator
    from synthecho.generators.base import resolve_device
    from synthecho.real import load_real
    from synthecho.schema import corpus_features

    run_dir = Path(run_dir)
    config = recipe.generate

    # 1. Who am I.
    shard_index, num_shards, launcher_device = worker_slot(shard_index, num_shards)
    device = resolve_device(device or launcher_device or config.device)
    precision, dtype = resolve_precision(config.precision, device)

    # 2. Real data and plan.
    real = {split: load_real(run_dir, split) for split in config.splits}
    plan = build_plan(recipe, real)
    shards = shards_of(plan)
    mine = my_shards(shards, shard_index, num_shards)

    # 3. Generator (+ segmenter).
    if sampler is None:
        sampler = get_generator(recipe.generator.kind).load(
            RunLayout.of(run_dir).generator, device=device, dtype=dtype
        )
    resolution = next(iter(real.values())).masks.shape[-1]
    if sampler.resolution != resolution:
        raise SynthechoError(
            f"generator resolution {sampler.resolution} != real data resolution {resolution} "
            f"(prepare.resolution): retrain with `synthecho train --force` or re-run prepare."
        )
    segmenter = None
    if sampler.mask_source == "segmenter":
        from synthecho.segmenter import load_segmenter

        segmenter = load_segmenter(RunLayout.of(run_dir).segmenter, device=device)
    common = {
        "generator": generator_name(recipe, sampler),
        "generator_sha256": generator_sha256(run_dir),
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "batch_size": config.batch_size,
        "mask_source": sampler.mask_source,
        "conditioned_on": list(getattr(sampler, "conditioned_on", ())),
    }
    # Everything besides the plan rows that decides a shard's bytes: part of each shard's key.
    settings = {**common, "uses_prompt": bool(sampler.uses_prompt), "precision": precision}

    # 4. What is left to do.
    done = {} if force else completed_markers(run_dir, mine, settings)
    pending = [shard for shard in mine if shard.ordinal not in done]
    jobs = [(shard, batch) for shard in pending for batch in shard.batches]

    # 5. Sample and write.
    features = corpus_features()
    written: list[dict] = []
    open_files: list[ShardFile] = []
    bar = tqdm(
        total=sum(len(shard.rows) for shard in pending),
        desc=f"generate {shard_index + 1}/{num_shards}" if num_shards > 1 else "generate",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
    )
    sampling_started = time.time()
    try:
        with BackgroundWriter(WRITER_QUEUE_BATCHES) as writer, ThreadPoolExecutor(1) as prefetch:
            upcoming = prefetch.submit(conditioning, jobs[0][1], real) if jobs else None
            shard_started = time.time()
            for position, (shard, batch) in enumerate(jobs):
                with profiling.section("generate/conditioning_wait"):  # the prefetch thread's lag
                    cond_masks, labels = upcoming.result()
                if position + 1 < len(jobs):  # perturb the next batch's masks while this one samples
                    upcoming = prefetch.submit(conditioning, jobs[position + 1][1], real)
                if batch[0] is shard.rows[0]:  # first batch of a shard: clear leftovers, open a new file
                    remove_shard(shard_path(run_dir, shard))
                    open_files.append(ShardFile(shard_path(run_dir, shard), features))
                    shard_started = time.time()

                with profiling.section("generate/sample"):
                    result = sampler.sample(
                        labels,
                        [row.prompt for row in batch],
                        [row.seed for row in batch],
                        sampler=config.sampler,
                        steps=config.steps,
                        guidance_scale=config.guidance_scale,
                        attributes=row_attributes(batch),
                    )
                images = as_uint8(result.images, 255)
                masks = row_masks(sampler, result, images, cond_masks, segmenter)
                rows = batch_rows(batch, images, masks, common, bool(sampler.uses_prompt))
                writer.submit(add_shapes_and_write, open_files[-1], rows)
                bar.update(len(batch))

                if batch[-1] is shard.rows[-1]:  # last batch: rename into place + marker, in order
                    extra = {
                        "split": shard.split,
                        "shard": shard.number,
                        "shard_key": shard.key(settings),
                        "seconds": round(time.time() - shard_started, 3),
                        "device": device,
                    }
                    writer.submit(
                        lambda file, extra: written.append(file.finish(extra)), open_files[-1], extra
                    )
    except BaseException:
        for shard_file in open_files:
            shard_file.abort()  # only removes temp files; finished shards were already renamed
        raise
    finally:
        bar.close()
    seconds_here = time.time() - sampling_started
    rows_here = sum(marker["rows"] for marker in written)

    info = {
        "shard_index": shard_index,
        "num_shards": num_shards,
        "device": device,
        "precision": precision,
        "rows_planned": len(plan),
        "shards_planned": len(shards),
        "shards_written": len(written),
        "shards_already_done": len(done),
        "rows_generated": rows_here,
        "seconds": round(seconds_here, 3),
        "images_per_second": round(rows_here / seconds_here, 3) if rows_here else None,
    }

    # 6. Last one out writes the manifest; the stage runner marks the stage done.
    all_done = completed_markers(run_dir, shards, settings)
    info["complete"] = len(all_done) == len(shards)
    if info["complete"]:
        _finalize(recipe, run_dir, plan, shards, all_done, settings, device, precision, info)
    return info


def _finalize(recipe, run_dir, plan, shards, markers, settings, device, precision, info) -> None:
    from synthecho.manifest import environment_info, merge_section, recipe_sections, update_manifest

    config = recipe.generate
    # Shards from an earlier, larger plan would be picked up by `filter`: remove them.
    planned = {shard_path(run_dir, shard).name for shard in shards}
    for stale in RunLayout.of(run_dir).raw_shards.glob("*.parquet"):
        if stale.name not in planned:
            remove_shard(stale)

    entries = []
    for shard in shards:
        marker = markers[shard.ordinal]
        entries.append(
            {
                "path": shard_path(run_dir, shard).relative_to(run_dir).as_posix(),
                "split": shard.split,
                **{key: marker[key] for key in ("rows", "bytes", "sha256", "content_hash")},
            }
        )
    generated = sum(entry["rows"] for entry in entries)
    # Sampling time summed over shards (all processes): images/s per worker, comparable across runs.
    busy = sum(float(marker.get("seconds", 0.0)) for marker in markers.values())
    generation = {
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "batch_size": config.batch_size,
        "batches_per_shard": config.batches_per_shard,
        "variants": config.variants,
        "seed": config.seed,
        "device": device,
        "precision": precision,
        "generator": settings["generator"],
        "generator_sha256": settings["generator_sha256"],
        "mask_source": settings["mask_source"],
        "conditioned_on": settings["conditioned_on"],
        "plan_sha256": sha256_json([row.to_dict() for row in plan]),
        "rows_planned": rows_per_split(plan),
        "workers": info["num_shards"],
        "seconds": round(busy, 3),
        "images_per_second": round(generated / busy, 3) if busy else None,
    }
    update_manifest(run_dir, **recipe_sections(recipe), environment=environment_info(), generation=generation)
    merge_section(run_dir, "shards", raw=entries)
    merge_section(run_dir, "counts", planned=len(plan), generated=generated)
