"""A tiny filtered run (data shards + manifest) for the card and publish tests.

Rows are written with the real shard writer (`synthecho.shards.write_shard`, corpus schema in the Parquet
metadata) and the manifest has every section the stages write, with small made-up numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from synthecho.io import write_json_atomic
from synthecho.recipe import recipe_from_dict
from synthecho.schema import (
    MASK_TRANSFORM_FIELDS,
    PHASES,
    QUALITIES,
    SEXES,
    VIEWS,
    corpus_features,
    schema_record,
)
from synthecho.shards import write_shard

RESOLUTION = 16


def tiny_recipe(**overrides):
    data = {
        "name": "tiny",
        "version": "0.1.0",
        "description": "Tiny test corpus.",
        "license": "cc-by-nc-sa-4.0",
        "source": {"kind": "phantom"},
        "prepare": {"resolution": RESOLUTION},
    }
    data.update(overrides)
    return recipe_from_dict(data)


def _row(split: str, index: int, rng: np.random.Generator) -> dict:
    mask = np.zeros((RESOLUTION, RESOLUTION), np.uint8)
    mask[3:9, 5:11] = 1
    mask[2:10, 4:5] = 2
    mask[10:14, 6:10] = 3
    transform = {
        name: (False if dtype == "bool" else int(index) if dtype.startswith("int") else 0.5)
        for name, dtype in MASK_TRANSFORM_FIELDS.items()
    }
    return {
        "id": f"tiny/{split}/{index}",
        "index": index,
        "image": rng.integers(0, 255, (RESOLUTION, RESOLUTION), dtype=np.uint8),
        "mask": mask,
        "prompt": "Two-chamber view of the heart at end of the diastole cycle.",
        "shape_lv": "square",
        "shape_myo": "rectangle",
        "shape_la": "oval",
        # Plan indices step by 2 (gaps = rejected rows): attributes cycle on index // 2.
        "view": (index // 2) % len(VIEWS),
        "phase": (index // 4) % len(PHASES),
        "sex": (index // 2) % len(SEXES),
        "image_quality": (index // 2) % len(QUALITIES),
        "age": 18 + index,  # 18 = "an eighteen-year-old": exercises the article rule
        "generator": "sdm/concat",
        "generator_sha256": "ab" * 32,
        "sampler": "dpmsolver++",
        "steps": 2,
        "guidance_scale": 1.0,
        "seed": 1000 + index,
        "batch_size": 2,
        "source_id": f"phantom2023/patient{index:04d}_2CH_ED",
        "source_patient": f"patient{index:04d}",
        "source_split": split,
        "variant": index % 2,
        "mask_transform": transform,
        "spacing_mm": {"row": 0.5, "col": 0.6},
        "mask_source": "conditioning",
        "dice_lv": 0.9,
        "dice_myo": 0.8,
        "dice_la": 0.85,
        "copy_similarity": 0.3,
    }


def make_run(run_dir: Path, rows: dict[str, int] | None = None, recipe=None, seed: int = 0) -> dict:
    """Write data/{split}-*.parquet and manifest.json into `run_dir`; returns the manifest."""
    rows = rows or {"train": 5, "validation": 3}
    recipe = recipe or tiny_recipe()
    rng = np.random.default_rng(seed)
    shards, index = [], 0
    for split, count in rows.items():
        relative = f"data/{split}-00000-of-00001.parquet"
        split_rows = []
        for _ in range(count):
            split_rows.append(_row(split, index, rng))
            index += 2  # gaps: rejected rows keep their plan index
        marker = write_shard(run_dir / relative, split_rows, corpus_features())
        shards.append(
            {
                "path": relative,
                "split": split,
                **{k: marker[k] for k in ("rows", "bytes", "sha256", "content_hash")},
            }
        )
    # The generator's sample grid, as `train` leaves it in the run's reports.
    grid = run_dir / "reports" / "generator_sample_grid.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 24), np.uint8)).save(grid)
    passed = sum(rows.values())
    manifest = {
        "schema": schema_record(),  # the shards above are written with the current schema
        "dataset": {
            "name": recipe.name,
            "version": recipe.version,
            "description": recipe.description,
            "license": recipe.license,
            "pretty_name": recipe.name,
        },
        "recipe": recipe.model_dump(mode="json"),
        "recipe_sha256": recipe.content_hash(),
        "environment": {
            "python": "3.11.0",
            "torch": "2.5.0",
            "synthecho": "0.1.0",
            "git_commit": "c0ffee" * 6,
        },
        "source": {
            "kind": "phantom",
            "name": "phantom2023",
            "release": "2023",
            "file_list_sha256": "cd" * 32,
            "records": {"train": 12, "validation": 4, "test": 4},
            "patients": {"train": 3, "validation": 1, "test": 1},
            "resolution": RESOLUTION,
            "note": "",
        },
        "generator": {
            "kind": "sdm",
            "variant": "concat",
            "sha256": "ab" * 32,
            "config": recipe.generator.model_dump(mode="json"),
            "train": {
                "steps": 2,
                "batch_size": 2,
                "seconds": 1.5,
                "final_loss": 0.25,
                "sample_grid": "sample_grid.png",
            },
            "base_model": None,
            "base_license": None,
        },
        "segmenter": {
            "sha256": "ef" * 32,
            "validation_dice": {"lv": 0.9, "myo": 0.8, "la": 0.85, "mean": 0.85},
            "steps": 2,
        },
        "generation": {
            "sampler": "dpmsolver++",
            "steps": 2,
            "guidance_scale": 1.0,
            "batch_size": 2,
            "variants": 2,
            "device": "cpu",
            "precision": "fp32",
            "rows_planned": {split: count + 1 for split, count in rows.items()},
            "seconds": 3.0,
            "images_per_second": 3.33,
        },
        "shards": {"data": shards},
        "counts": {
            "planned": passed + len(rows),
            "generated": passed + len(rows),
            "passed": passed,
            "rejected": {"dice_lv": len(rows)},
            "by_split": {
                split: {"planned": count + 1, "passed": count, "rejected": 1} for split, count in rows.items()
            },
        },
        "metrics": {
            "domain": {
                split: {"fid": 12.5, "kid_mean": 0.012, "kid_std": 0.003, "n_real": 4, "n_synthetic": count}
                for split, count in rows.items()
            },
            "inception": None,
            "inception_note": (
                "Inception metrics skipped: no local clean-fid Inception weights (filter.inception_weights)."
            ),
            "copy_threshold": 0.95,
            "dice_threshold": {"lv": 0.5, "myo": 0.3, "la": 0.4},
            "attribute_fidelity": {"view_agreement": 0.75, "phase_agreement": 0.5},
            "real_reference": {
                "domain": {"fid": 3.0, "kid_mean": 0.001, "kid_std": 0.001, "n_real": 4, "n_synthetic": 4}
            },
        },
        "stages": {"filter": {"seconds": 1.0, "finished_at": "2024-01-01T00:00:00Z"}},
    }
    write_json_atomic(run_dir / "manifest.json", manifest)
    return manifest
