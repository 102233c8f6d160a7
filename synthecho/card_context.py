"""The values the dataset card shows, read from a manifest: names, formatted numbers, flags and table rows.

`card_context(manifest)` is what `synthecho/templates/dataset_card.md` renders; the sentences around the
values are in the templates. Everything here is a pure function of the manifest (the committed cards are
compared byte for byte with a re-rendering), and every value arrives formatted (`synthecho.formatting`),
so the templates only place text, test flags and loop over rows. A missing section gives None (or an
empty list), which the template states as a sentence.
"""

from __future__ import annotations

import json
from typing import Any

from synthecho.card_downstream import downstream_study, downstream_tables
from synthecho.card_quality import attribute_audit_values, copy_check_values, phase_geometry_values
from synthecho.formatting import cell, number, percent, short_hash, significant
from synthecho.layout import hub
from synthecho.manifest import PUBLISHED_SPLITS, article_rule, manifest_get, published_rows
from synthecho.prompts import PROMPTS_PER_ROW

# What each published column means (the card's column table). A test checks every schema column has one.
COLUMN_DOCS: dict[str, str] = {
    "id": "`{dataset}/{split}/{index}`",
    "index": "plan index of the row (gaps are rejected rows)",
    "image": "synthetic frame",
    "mask": "label map: 0 background, 1 LV cavity, 2 LV myocardium, 3 left atrium (CAMUS values)",
    "prompt": "image-level prompt the generator saw (empty when it takes no text)",
    "shape_lv": "shape word of the LV cavity, used in P7",
    "shape_myo": "shape word of the myocardium (epicardial outline), used in P7",
    "shape_la": "shape word of the left atrium, used in P7",
    "view": "apical view",
    "phase": "cardiac phase: end-diastole / end-systole",
    "sex": "sex of the source patient",
    "image_quality": "image quality of the source recording (CAMUS spelling)",
    "age": "age of the source patient, years",
    "generator": "generator kind (and variant)",
    "generator_sha256": "sha256 of the generator weights",
    "sampler": "diffusers scheduler used for sampling",
    "steps": "sampling steps",
    "guidance_scale": "classifier-free guidance scale (1 = none)",
    "seed": "noise seed of this row (its initial noise depends on it alone)",
    "batch_size": "sampling batch size",
    "source_id": "release-prefixed id of the real record the row came from",
    "source_patient": "patient of that record",
    "source_split": "split of that record",
    "variant": "perturbation variant number of that record's mask",
    "mask_transform": "perturbation parameters of the conditioning mask",
    "spacing_mm": "pixel spacing after resizing, mm",
    "mask_source": "where the mask comes from: conditioning / generated / segmenter",
    "dice_lv": "Dice between the filter segmenter's prediction and `mask`, LV cavity",
    "dice_myo": "same, myocardium",
    "dice_la": "same, left atrium",
    "copy_similarity": "similarity to the closest real training image (memorisation check)",
    "conditioned_on": "what the generator was conditioned on (label_map, prompt, view, phase, ...)",
    "view_score": "filter classifier's probability of the row's `view`",
    "phase_score": "filter classifier's probability of the row's `phase`",
}
# Meanings that changed with a check: used for manifests that record the newer check (`metrics.copy_check`).
COLUMN_DOCS_COPY_CHECK = {
    "copy_similarity": "memorisation check: highest speckle similarity to the row's source frame warped by "
    "its `mask_transform`, that record's other phase, or any real train frame",
}

# Architecture keys of a generator config that the card names.
ARCHITECTURE_KEYS = ("channels", "layers_per_block", "attention", "train_timesteps", "beta_schedule")


# --- data and source ---------------------------------------------------------------------------------


def _feature_type(feature: dict) -> str:
    """A column's type in the card, from its `Features.to_dict()` form (no `datasets` import: CI)."""
    kind = feature.get("_type")
    if kind == "Image":
        return "Image (PNG)"
    if kind == "ClassLabel":
        return "ClassLabel (" + ", ".join(feature["names"]) + ")"
    if kind == "Value":
        return feature["dtype"]
    if kind in ("List", "LargeList", "Sequence"):
        return f"list of {_feature_type(feature['feature'])}"
    if kind is None:
        return "struct {" + ", ".join(f"{k}: {_feature_type(v)}" for k, v in feature.items()) + "}"
    return kind


def _columns(manifest: dict) -> list[dict]:
    from synthecho.card_header import recorded_feature_dict

    docs = COLUMN_DOCS | (COLUMN_DOCS_COPY_CHECK if manifest_get(manifest, "metrics.copy_check") else {})
    return [
        {"name": name, "type": _feature_type(feature), "meaning": docs.get(name, "")}
        for name, feature in recorded_feature_dict(manifest).items()
    ]


def _split_rows(manifest: dict) -> list[dict]:
    published = published_rows(manifest)
    rows = []
    for split in PUBLISHED_SPLITS:
        counts = manifest_get(manifest, f"counts.by_split.{split}", {})
        planned = counts.get("planned", manifest_get(manifest, f"generation.rows_planned.{split}"))
        rows.append(
            {
                "split": split,
                "planned": number(planned),
                "passed": number(published[split]),
                "rejected": number(counts.get("rejected")),
            }
        )
    return rows


def source_values(manifest: dict) -> dict:
    """The source data: phantom or CAMUS, its release, resolution and counts per split."""
    source = manifest.get("source") or {}
    kind = source.get("kind", manifest_get(manifest, "recipe.source.kind", "camus"))
    resolution = source.get("resolution", manifest_get(manifest, "recipe.prepare.resolution"))
    rows = []
    for split in ("train", "validation", "test"):
        records = manifest_get(source, f"records.{split}")
        patients = manifest_get(source, f"patients.{split}")
        if records is not None or patients is not None:
            rows.append({"split": split, "records": number(records), "patients": number(patients)})
    return {
        "phantom": kind == "phantom",
        "name": str(source.get("name", kind)),
        "release": str(source["release"]) if source.get("release") else None,
        "resolution": str(resolution) if resolution else None,
        "note": source.get("note") or "",
        "rows": rows,
        "file_list_sha256": short_hash(source.get("file_list_sha256")),
    }


def _perturbation(manifest: dict) -> dict | None:
    generate = manifest_get(manifest, "recipe.generate", {})
    p = generate.get("perturb") or {}
    if not p:
        return None
    scale = p.get("scale") or [None, None]
    return {
        "variants": number(manifest_get(manifest, "generation.variants", generate.get("variants"))),
        "degrees": number(p.get("degrees"), 1),
        "translate": number(p.get("translate"), 3),
        "scale_min": number(scale[0], 2),
        "scale_max": number(scale[1], 2),
        "shear": number(p.get("shear"), 1),
        "control_points": number(p.get("elastic_control_points")),
        # rows x columns; manifests before the key existed used a square grid
        "control_points_col": number(p.get("elastic_control_points_col") or p.get("elastic_control_points")),
        "displacement": number(p.get("elastic_max_displacement"), 3),
    }


# --- generator and sampling --------------------------------------------------------------------------


def generator_values(manifest: dict) -> dict:
    """The generator: kind, architecture, training, base weights (dataset card and model card)."""
    gen = manifest.get("generator") or {}
    kind = gen.get("kind", manifest_get(manifest, "recipe.generator.kind", "unknown"))
    config = gen.get("config") or manifest_get(manifest, "recipe.generator", {})
    # generator.train holds the recipe's train section plus what training measured; older or partial
    # manifests may only have the measurements, so the recipe fills the gaps.
    train = {**manifest_get(manifest, "recipe.train", {}), **(gen.get("train") or {})}
    base_model, base_license = gen.get("base_model"), gen.get("base_license")
    return {
        "kind": str(kind),
        "variant": str(gen["variant"]) if gen.get("variant") else None,
        "sha256": short_hash(gen.get("sha256")),
        "architecture": [f"{key} {json.dumps(config[key])}" for key in ARCHITECTURE_KEYS if key in config],
        "steps": number(train.get("steps")),
        "batch_size": number(train.get("batch_size")),
        "learning_rate": number(train.get("learning_rate"), 6),
        "ema_decay": number(train.get("ema_decay"), 4),
        "mixed_precision": number(train.get("mixed_precision")),
        "seconds": number(train.get("seconds"), 0),
        "final_loss": number(train.get("final_loss"), 4),
        "base_model": str(base_model) if base_model else None,
        "base_license": str(base_license) if base_license else None,
        # Stable Diffusion weights carry the CreativeML OpenRAIL-M use restrictions (the card states them).
        "openrail": "openrail" in str(base_license).lower() or "stable-diffusion" in str(base_model).lower(),
        "text_encoder": config.get("text_encoder"),
        "takes_text": kind in ("sd", "controlnet"),
    }


def _sampling(manifest: dict) -> dict | None:
    generation = manifest.get("generation") or {}
    if not generation:
        return None
    return {
        "sampler": str(generation.get("sampler")),
        "steps": number(generation.get("steps")),
        "guidance_scale": number(generation.get("guidance_scale"), 2),
        "batch_size": number(generation.get("batch_size")),
        "seed": number(generation.get("seed", manifest_get(manifest, "recipe.generate.seed"))),
        "device": number(generation.get("device")),
        "precision": number(generation.get("precision")),
        "images": number(manifest_get(manifest, "counts.generated")),
        "seconds": number(generation.get("seconds"), 0),
        "images_per_second": number(generation.get("images_per_second"), 2),
        "mask_source": generation.get("mask_source", "conditioning"),
    }


def _example_prompt(rule: str) -> str:
    from synthecho.prompts import Attributes, structure_prompt

    attrs = Attributes(view="2CH", phase="ED", sex="M", age=80, image_quality="Good")
    return structure_prompt("lv", 7, "A", attrs, shape="oval", article_rule=rule)


# --- quality -----------------------------------------------------------------------------------------


def _filter(manifest: dict) -> dict | None:
    metrics = manifest.get("metrics") or {}
    if not metrics and not manifest_get(manifest, "counts.passed"):
        return None
    dice = metrics.get("dice_threshold") or manifest_get(manifest, "recipe.filter.dice_threshold") or {}
    order = {"lv": 0, "myo": 1, "la": 2}
    ranked = sorted(dice.items(), key=lambda item: (order.get(item[0], 3), item[0]))
    return {
        "dice": [{"structure": key.upper(), "threshold": number(value, 2)} for key, value in ranked],
        "copy_threshold": number(metrics.get("copy_threshold"), 3),
        "generated": number(manifest_get(manifest, "counts.generated")),
        "passed": number(manifest_get(manifest, "counts.passed")),
    }


def _rejected_rows(manifest: dict) -> list[dict]:
    rejected = manifest_get(manifest, "counts.rejected") or {}
    return [{"reason": cell(reason), "rows": number(count)} for reason, count in sorted(rejected.items())]


def distance_rows(table: Any, reference: Any = None) -> list[dict]:
    """Rows of a {split: {fid, kid_mean, kid_std, n_real, n_synthetic}} table (+ the real-vs-real scale).

    A split row has `split`; the real-vs-real reference row, last, has `split` None.
    """
    rows = []

    def row(split, values):
        return {
            "split": split,
            "fid": significant(values.get("fid"), 3),
            "kid": f"{significant(values.get('kid_mean'))} ± {significant(values.get('kid_std'))}",
            "n_real": number(values.get("n_real")),
            "n_synthetic": number(values.get("n_synthetic")),
        }

    if isinstance(table, dict):
        for split, values in sorted(table.items()):
            if isinstance(values, dict):
                rows.append(row(split, values))
    if rows and isinstance(reference, dict):
        rows.append(row(None, reference))
    return rows


def _attribute_fidelity(manifest: dict) -> dict | None:
    fidelity = manifest_get(manifest, "metrics.attribute_fidelity")
    if not fidelity:
        return None
    return {
        "view": number(fidelity.get("view_agreement"), 3),
        "phase": number(fidelity.get("phase_agreement"), 3),
    }


def mask_fidelity_values(fidelity: dict | None) -> dict | None:
    """The filter's `mask_fidelity` metric (mean Dice on generated frames, and on real ones as the
    ceiling)."""
    if not fidelity:
        return None
    dice, ceiling = fidelity["mean_dice"], fidelity["ceiling_dice"]
    return {
        "dice": {structure: number(dice[structure]) for structure in ("lv", "myo", "la")},
        "ceiling": {structure: number(ceiling[structure]) for structure in ("lv", "myo", "la")},
        "rows": str(fidelity["rows"]),
        "ceiling_split": str(fidelity["ceiling_split"]),
    }


def _segmenter(manifest: dict) -> dict | None:
    seg = manifest.get("segmenter") or {}
    if not seg:
        return None
    dice = seg.get("validation_dice") or {}
    return {
        "steps": number(seg.get("steps")),
        "dice": {key: number(dice.get(key)) for key in ("lv", "myo", "la", "mean")},
        "sha256": short_hash(seg.get("sha256")),
    }


# --- downstream, environment, the whole context ------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested values -> [("a / b / c", value)] with keys sorted."""
    if isinstance(value, dict):
        rows = []
        for key in sorted(value, key=str):
            rows += _flatten(value[key], f"{prefix} / {key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [(cell(prefix), ", ".join(number(v) for v in value))]
    return [(cell(prefix), number(value))]


def _environment(manifest: dict) -> dict:
    env = manifest.get("environment") or {}
    flat = dict(_flatten(env))
    return {
        "synthecho": env.get("synthecho", "n/a"),
        "git_commit": short_hash(env.get("git_commit")),
        "software": [
            f"{key} {value}" for key, value in flat.items() if key not in ("synthecho", "git_commit")
        ],
    }


def card_context(manifest: dict) -> dict:
    """Everything the dataset card template shows (a pure function of the manifest)."""
    from synthecho.prompts import RECTANGLE_MIN_FILL, ROUND_MAX_ASPECT, TRIANGLE_MIN_RATIO

    dataset = manifest.get("dataset") or {}
    name = dataset.get("name") or manifest_get(manifest, "recipe.name", "corpus")
    version = dataset.get("version") or manifest_get(manifest, "recipe.version", "0.0.0")
    publish = manifest.get("publish") or {}
    repo_id = publish.get("repo_id") or manifest_get(manifest, "recipe.publish.repo_id")
    rows = published_rows(manifest)
    metrics = manifest.get("metrics") or {}
    rule = article_rule(manifest)
    downstream = manifest.get("downstream")
    phantom = source_values(manifest)["phantom"]
    return {
        "pretty_name": dataset.get("pretty_name") or name,
        "name": name,
        "description": (dataset.get("description") or "").strip(),
        "version": version,
        "revision": f"v{version}",
        "repo_id": repo_id,
        "load_id": repo_id or f"ORG/{name}",
        "generator_repo_id": publish.get("generator_repo_id"),
        "license": dataset.get("license"),
        "published": [{"split": split, "rows": number(n)} for split, n in rows.items()],
        "split_names": [split for split, n in rows.items() if n > 0],
        "recipe_sha256": short_hash(manifest.get("recipe_sha256")),
        "environment": _environment(manifest),
        "source": source_values(manifest),
        "generator": generator_values(manifest),
        "perturbation": _perturbation(manifest),
        "sampling": _sampling(manifest),
        "article_rule": rule,
        "example_prompt": _example_prompt(rule),
        # publish puts the run's reports/generator_sample_grid.png beside the card as SAMPLE_GRID.
        "sample_grid": hub.SAMPLE_GRID if manifest_get(manifest, "generator.train.sample_grid") else None,
        "shape": {
            "triangle": percent(TRIANGLE_MIN_RATIO),
            "fill": percent(RECTANGLE_MIN_FILL),
            "aspect": f"{ROUND_MAX_ASPECT:g}",
        },
        "columns": _columns(manifest),
        "split_rows": _split_rows(manifest),
        "prompts_per_row": PROMPTS_PER_ROW,
        "prompt_rows": number(sum(rows.values()) * PROMPTS_PER_ROW),
        "filter": _filter(manifest),
        "passed": number(manifest_get(manifest, "counts.passed")),
        "rejected_rows": _rejected_rows(manifest),
        "feature_dims": number(manifest_get(manifest, "recipe.filter.feature_dims", 64)),
        "domain_rows": distance_rows(metrics.get("domain"), manifest_get(metrics, "real_reference.domain")),
        "inception_rows": distance_rows(
            metrics.get("inception"), manifest_get(metrics, "real_reference.inception")
        ),
        "inception_note": metrics.get("inception_note"),
        "attribute_fidelity": _attribute_fidelity(manifest),
        "attribute_audit": attribute_audit_values(metrics),
        "copy_check": copy_check_values(metrics, manifest_get(manifest, "counts.rejected.near_copy")),
        "phase_geometry": phase_geometry_values(metrics),
        "mask_fidelity_recorded": "mask_fidelity" in metrics,  # manifests older than the metric lack it
        "mask_fidelity": mask_fidelity_values(metrics.get("mask_fidelity")),
        "segmenter": _segmenter(manifest),
        "downstream_tables": downstream_tables(downstream) if downstream else [],
        "downstream_study": downstream_study(downstream, phantom) if downstream else None,
        # publish writes every planned row's sampler inputs when generate recorded the plan's hash.
        "regeneration_file": manifest_get(manifest, "generation.plan_sha256") and hub.REGENERATION_FILE,
        "shards": [
            {
                "path": shard.get("path"),
                "rows": number(shard.get("rows")),
                "sha256": short_hash(shard.get("sha256")),
                "content_hash": short_hash(shard.get("content_hash")),
            }
            for shard in manifest_get(manifest, "shards.data", [])
        ],
    }
