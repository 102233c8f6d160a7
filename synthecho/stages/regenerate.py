"""`synthecho regenerate`: re-sample named rows and compare them with the corpus, pixel for pixel.

A command, not a build stage (it is not in the stage table: it writes nothing a stage reads and marks
nothing). Two sources of rows:

- a run folder: the plan is rebuilt from `<run>/real/` (checked against the plan hash `generate`
  recorded); the expected pixels are the raw shards, which hold every planned row, rejected ones too;
  the generator is `<run>/generator/`.
- a published folder (`synthecho publish --to DIR`) plus the generator's model folder (`--with-generator`
  lays it out as `DIR-generator`; a download of the Hub's `ORG/NAME-generator` is the same files): the
  sampler inputs come from `regeneration/plan-*.parquet` (synthecho.regeneration), the expected pixels
  from `data/`; the generator folder must hash to the manifest's `generator.sha256`.

Every batch that holds a named row is sampled whole, as the plan fixes it (same rows in the same order,
seeds, conditioning maps, prompts, attributes, sampler settings), because CPU float kernels can depend on
what else is in the batch. Rows regenerate bit-identically on the device, precision and CPU kind that
produced them; elsewhere the report gives each row's largest pixel difference.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.io import read_json, sha256_model_folder
from synthecho.layout import RunLayout, hub
from synthecho.manifest import manifest_get


def _sampler_inputs_from_run(run_dir: Path, manifest: dict) -> list[dict]:
    """Regeneration rows (as in the published file) rebuilt from a run's plan and prepared data."""
    from synthecho import regeneration
    from synthecho.plan import conditioning

    plan, real = regeneration.run_plan(run_dir, manifest)
    rows = []
    for start in range(0, len(plan), regeneration.CHUNK_ROWS):
        chunk = plan[start : start + regeneration.CHUNK_ROWS]
        _, maps = conditioning(chunk, real)
        for row, labels in zip(chunk, maps, strict=True):
            entry = {name: getattr(row, name) for name in ("id", "index", "split", "batch", "seed", "prompt")}
            entry |= {name: getattr(row, name) for name in regeneration.ATTRIBUTES}
            rows.append({**entry, "published": None, "conditioning": labels})
    return rows


def _expected(files: list[Path], ids: set[str]) -> dict[str, dict]:
    """id -> {"image", "mask"} pixels of the named rows found in `files` (Parquet shards)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synthecho.real import decode_png

    found = {}
    for path in files:
        table = pq.read_table(path, columns=["id", "image", "mask"])
        table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(sorted(ids))))
        for row in table.to_pylist():
            found[row["id"]] = {key: decode_png(row[key]["bytes"]) for key in ("image", "mask")}
    return found


def _select(rows: list[dict], names: list[str]) -> list[dict]:
    """The regeneration rows named by id ("demo/train/5") or plan index ("5"), in the order given."""
    by_id = {row["id"]: row for row in rows}
    by_index = {str(row["index"]): row for row in rows}
    chosen, unknown = [], []
    for name in names:
        row = by_id.get(name) or by_index.get(name)
        (chosen if row else unknown).append(row or name)
    if unknown:
        examples = ", ".join(row["id"] for row in rows[:2])
        raise SynthechoError(
            f"no planned row is called {', '.join(map(repr, unknown))}: name rows by id (e.g. {examples}) "
            f"or by plan index (the `index` column)."
        )
    return chosen


def _check_generator(folder: Path, manifest: dict) -> None:
    if not folder.is_dir():
        raise SynthechoError(
            f"{folder} is not a folder: pass the generator's model folder (`synthecho publish --to DIR "
            f"--with-generator` writes DIR-generator; or download ORG/NAME-generator from the Hub)."
        )
    recorded = manifest_get(manifest, "generator.sha256")
    actual = sha256_model_folder(folder)
    if recorded and actual != recorded:
        raise SynthechoError(
            f"{folder} holds other weights than the ones that generated this corpus (sha256 {actual[:12]}, "
            f"manifest generator.sha256 {recorded[:12]}): use the generator of this version (tag "
            f"v{manifest_get(manifest, 'dataset.version', '?')})."
        )


def run(
    *,
    rows: list[str],
    run_dir: Path | None = None,
    dataset: Path | None = None,
    generator: Path | None = None,
    device: str | None = None,
    precision: str | None = None,
    sampler=None,
) -> dict:
    """Regenerate `rows` and compare; returns {"rows": [...], "recorded": {...}, "used": {...}, ...}.

    `sampler`: an already loaded Sampler (tests); by default the generator folder is loaded.
    """
    from synthecho import regeneration
    from synthecho.generators import get_generator
    from synthecho.generators.base import as_uint8, resolve_device

    if (run_dir is None) == (dataset is None):
        raise SynthechoError("say what to regenerate from: --run-dir RUN, or --dataset DIR --generator DIR")
    if not rows:
        raise SynthechoError("name the rows to regenerate: --row ID (repeatable), e.g. --row demo/train/3")
    if run_dir is not None:
        source = Path(run_dir)
        manifest = read_json(RunLayout.of(source).manifest) if RunLayout.of(source).manifest.is_file() else {}
        inputs = _sampler_inputs_from_run(source, manifest)
        expected_files = sorted(RunLayout.of(source).raw_shards.glob("*.parquet"))
        generator = Path(generator) if generator is not None else RunLayout.of(source).generator
    else:
        source = Path(dataset)
        if not (source / hub.MANIFEST).is_file():
            raise SynthechoError(
                f"{source / hub.MANIFEST} is missing: --dataset takes a `publish --to` folder"
            )
        manifest = read_json(source / hub.MANIFEST)
        inputs = regeneration.read(source / hub.REGENERATION_FILE)
        expected_files = sorted((source / hub.DATA_DIR).glob("*.parquet"))
        if generator is None:
            raise SynthechoError("--dataset needs --generator DIR (the generator's model folder)")
        generator = Path(generator)
    _check_generator(generator, manifest)
    chosen = _select(inputs, rows)

    generation = manifest.get("generation") or {}
    recorded = {
        "device": generation.get("device"),
        "precision": generation.get("precision"),
        "cpu_model": manifest_get(manifest, "environment.cpu_model"),
        "torch_threads": manifest_get(manifest, "environment.torch_threads"),
    }
    device = resolve_device(device or recorded["device"] or "auto")
    precision = precision or recorded["precision"] or "fp32"
    if sampler is None:
        kind = manifest_get(manifest, "generator.kind") or manifest_get(manifest, "recipe.generator.kind")
        sampler = get_generator(kind).load(generator, device=device, dtype=precision)

    # Whole planned batches: every row of each batch that holds a named row, in plan order.
    batches = defaultdict(list)
    for row in inputs:
        batches[(row["split"], row["batch"])].append(row)
    wanted = {(row["split"], row["batch"]) for row in chosen}
    regenerated: dict[str, dict] = {}
    for key in sorted(wanted, key=lambda k: batches[k][0]["index"]):
        batch = sorted(batches[key], key=lambda row: row["index"])
        result = sampler.sample(
            np.stack([row["conditioning"] for row in batch]),
            [row["prompt"] for row in batch],
            [row["seed"] for row in batch],
            sampler=generation.get("sampler", "dpmsolver++"),
            steps=generation.get("steps", 20),
            guidance_scale=generation.get("guidance_scale", 1.0),
            attributes=[{name: row[name] for name in regeneration.ATTRIBUTES} for row in batch],
        )
        images = as_uint8(result.images, 255)
        masks = as_uint8(result.masks, 3) if result.masks is not None else [None] * len(batch)
        for row, image, mask in zip(batch, images, masks, strict=True):
            regenerated[row["id"]] = {"image": image, "mask": mask}

    expected = _expected(expected_files, {row["id"] for row in chosen})
    report = []
    for row in chosen:
        entry = {"id": row["id"], "index": row["index"], "split": row["split"], "batch": row["batch"]}
        if row["id"] not in expected:  # rejected by the filter: regenerated, nothing published to compare
            report.append({**entry, "status": "not published"})
            continue
        new, old = regenerated[row["id"]], expected[row["id"]]
        diff = np.abs(new["image"].astype(np.int16) - old["image"].astype(np.int16))
        if new["mask"] is not None:  # a generator that draws its own masks: those must match too
            diff = np.maximum(diff, 255 * (new["mask"] != old["mask"]))
        entry |= {
            "max_abs_diff": int(diff.max()),
            "pixels_differing": int((diff > 0).sum()),
            "pixels": diff.size,
        }
        report.append({**entry, "status": "identical" if entry["max_abs_diff"] == 0 else "differs"})
    used = {"device": device, "precision": precision}
    return {
        "rows": report,
        "recorded": recorded,
        "used": used,
        "same_setup": used["device"] == recorded["device"] and used["precision"] == recorded["precision"],
        "batches": len(wanted),
        "rows_sampled": sum(len(batches[key]) for key in wanted),
    }
