"""What regenerating a row needs, shipped with the corpus: every planned row's exact sampler inputs.

A generated row is a pure function of the generator weights, the sampler settings and its batch: the
5-class conditioning maps, prompts, seeds and attributes of every row sampled with it. The published data
cannot give that back alone: the conditioning map separates the ultrasound sector of the *source* frame,
which the published 0..3 mask does not hold, and a batch also holds rows the filter rejected (not
published), whose inputs are part of what the CPU's float kernels saw (results can depend on batch
composition). So `publish` writes `regeneration/plan-00000-of-00001.parquet`: one row per planned row,
published or not, with its id, index, split, batch, the `published` flag, seed, prompt, attributes and
the conditioning map as a palette PNG (a few percent of the corpus size; it derives from the same
annotations as the published masks, under the same licence).

Why a file rather than re-deriving the plan from the source dataset at regeneration time: re-deriving
needs the source (CAMUS is a registration download, not something a reader of the corpus has), the same
reader, resize and perturbation code, and the run's prepared frames; the file needs only itself and the
generator. It is built from the run with the same plan code `generate` used, and checked against the
plan hash `generate` recorded, so it cannot describe another plan.
"""

from __future__ import annotations

from pathlib import Path

from synthecho.errors import SynthechoError
from synthecho.layout import RunLayout
from synthecho.plan import ROW_ATTRIBUTES as ATTRIBUTES

CHUNK_ROWS = 256


def run_plan(run_dir: Path, manifest: dict):
    """(plan rows, real splits) of a run, rebuilt from its prepared data and checked against the manifest."""
    from synthecho.io import sha256_json
    from synthecho.plan import build_plan
    from synthecho.real import load_real
    from synthecho.recipe import recipe_from_dict

    generation = manifest.get("generation") or {}
    if not generation.get("plan_sha256"):
        raise SynthechoError(
            f"{RunLayout.of(run_dir).manifest} records no generation.plan_sha256: run `synthecho generate` "
            f"before publishing or regenerating."
        )
    recipe = recipe_from_dict(manifest["recipe"])
    real = {split: load_real(run_dir, split) for split in recipe.generate.splits}
    plan = build_plan(recipe, real)
    if sha256_json([row.to_dict() for row in plan]) != generation["plan_sha256"]:
        raise SynthechoError(
            f"the plan rebuilt from {RunLayout.of(run_dir).real} and the manifest's recipe differs from the "
            f"one `generate` recorded (generation.plan_sha256): real/ or the plan code changed since; rerun "
            f"`synthecho generate --force` so the corpus and its regeneration record agree."
        )
    return plan, real


def table(run_dir: Path, manifest: dict, published_ids: set[str]):
    """The regeneration table of a run (a pyarrow Table, one row per planned row, in plan order)."""
    import pyarrow as pa

    from synthecho.plan import conditioning
    from synthecho.real import encode_png

    plan, real = run_plan(run_dir, manifest)
    maps = []  # PNG bytes, computed a chunk at a time (a 9k-row plan at 256 px is 600 MB of maps)
    for start in range(0, len(plan), CHUNK_ROWS):
        _, labels = conditioning(plan[start : start + CHUNK_ROWS], real)
        maps += [encode_png(label_map, palette=True) for label_map in labels]
    columns = {
        "id": [row.id for row in plan],
        "index": [row.index for row in plan],
        "split": [row.split for row in plan],
        "batch": [row.batch for row in plan],
        "published": [row.id in published_ids for row in plan],
        "seed": [row.seed for row in plan],
        "prompt": [row.prompt for row in plan],
        **{name: [getattr(row, name) for row in plan] for name in ATTRIBUTES},
        "conditioning": maps,
    }
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("index", pa.int64()),
            ("split", pa.string()),
            ("batch", pa.int32()),
            ("published", pa.bool_()),
            ("seed", pa.int64()),
            ("prompt", pa.string()),
            *((name, pa.int32() if name == "age" else pa.string()) for name in ATTRIBUTES),
            ("conditioning", pa.binary()),
        ]
    )
    return pa.table(columns, schema=schema)


def write(table_, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table_, path, compression="zstd")


def read(path: Path) -> list[dict]:
    """The rows of a regeneration file, each with its conditioning map decoded to a uint8 array."""
    import pyarrow.parquet as pq

    from synthecho.real import decode_png

    if not Path(path).is_file():
        raise SynthechoError(
            f"{path} is missing: this corpus was published without its regeneration record; republish it "
            f"with a synthecho that writes it (`synthecho publish`), or regenerate from the run folder."
        )
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["conditioning"] = decode_png(row["conditioning"])
    return rows
