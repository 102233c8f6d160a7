"""The dataset card (README.md with a Hub YAML header), rendered from the manifest alone.

`render_card(manifest)` is a pure function: the same manifest gives a byte-identical card, so CI can
re-render every committed card (`cards/<dataset>/README.md`) from its committed manifest
(`manifests/<dataset>/<version>.json`) and fail when one is stale (`check_cards`). Missing optional
sections (downstream results, Inception metrics, a run that has not been filtered yet) render as an
explicit sentence, never as an error.

The YAML header is built with huggingface_hub's `DatasetCardData` and the `datasets` library's own
serialisers (`MetadataConfigs`, `DatasetInfosDict`), so `configs:` and `dataset_info.features` are in exactly
the form `datasets` reads back; the features come from `synthecho.schema.corpus_features()`, the same object
written into every Parquet file's metadata. The body is the Jinja2 template
`synthecho/templates/dataset_card.md`.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from pathlib import Path
from typing import Any

from synthecho.errors import SynthechoError
from synthecho.formatting import STRATEGY_TITLES, cell, number, plus_minus, short_hash, significant
from synthecho.io import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from synthecho.manifest import (
    PUBLISHED_SPLITS,
    article_rule,
    dataset_section,
    manifest_get,
    published_bytes,
    published_rows,
    require_manifest,
    run_grid,
    update_manifest,
)
from synthecho.prompts import PROMPTS_PER_ROW
from synthecho.stages import is_current, mark_done, read_marker
from synthecho.templating import render

TASK_CATEGORIES = ["image-segmentation", "text-to-image"]
TAGS = ["echocardiography", "ultrasound", "medical", "synthetic", "cardiac", "diffusion"]
NO_LICENSE = "unknown"  # Hub licence id used until the recipe sets `license` (publish refuses it)

# Files of the published layout; `publish.layout_repo` writes them, the card's `configs:` points at them.
PROMPTS_FILE = "prompts/prompts-00000-of-00001.parquet"
DATA_PATTERN = "data/{split}-*"
PROMPTS_PATTERN = "prompts/prompts-*"

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
}

CAMUS_BIAS = (
    "CAMUS holds 500 patients from a single hospital (University Hospital of Saint-Étienne, France), "
    "apical two- and four-chamber views at end-diastole and end-systole only, annotated by one cardiologist "
    "on the full dataset. Its age, sex, pathology and image-quality mix, its scanner and its annotation "
    "conventions are those of this corpus; generalisation to other centres, vendors, views or populations "
    "is not established."
)
PHANTOM_BIAS = (
    "This version is built from synthecho's phantom simulator, not from patients: its anatomy, speckle "
    "and attributes follow hand-written simulation rules. It demonstrates the pipeline and is not a model "
    "of any real population."
)


# ----------------------------------------------------------------------------------------------------
# Small formatting helpers (deterministic: the card must be byte-identical for the same manifest)
# ----------------------------------------------------------------------------------------------------


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket for a number of rows."""
    buckets = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    buckets += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for limit, label in buckets:
        if rows < limit:
            return label
    return "n>1B"


SAMPLE_GRID = "sample_grid.png"  # beside the card, in cards/<name>/ and in the Hub repo


# ----------------------------------------------------------------------------------------------------
# YAML header
# ----------------------------------------------------------------------------------------------------


def _source_dataset(manifest: dict) -> str:
    kind = manifest_get(manifest, "source.kind", manifest_get(manifest, "recipe.source.kind", "camus"))
    return "synthecho phantom (simulated)" if kind == "phantom" else "CAMUS"


def card_data(manifest: dict):
    """The `DatasetCardData` of the YAML header: licence, tasks, configs and dataset_info."""
    from datasets import DatasetInfo
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    from synthecho.schema import corpus_features, prompt_features

    rows = published_rows(manifest)
    sizes = published_bytes(manifest)
    splits = [split for split in PUBLISHED_SPLITS if rows[split] > 0]
    data = DatasetCardData(
        license=manifest_get(manifest, "dataset.license") or NO_LICENSE,
        pretty_name=manifest_get(manifest, "dataset.pretty_name")
        or manifest_get(manifest, "dataset.name", "synthecho corpus"),
        task_categories=TASK_CATEGORIES,
        size_categories=[size_category(sum(rows.values()))],
        source_datasets=[_source_dataset(manifest)],
        tags=TAGS,
    )
    # A config may only list splits that have files: a pattern matching nothing fails load_dataset.
    configs = {"prompts": {"data_files": [{"split": "train", "path": PROMPTS_PATTERN}]}}
    if splits:
        configs["default"] = {
            "data_files": [{"split": s, "path": DATA_PATTERN.format(split=s)} for s in splits]
        }
    MetadataConfigs(configs).to_dataset_card_data(data)

    # num_bytes is the Parquet size (image columns are stored uncompressed, so close to the Arrow size);
    # num_examples is exact and load_dataset checks it against the files.
    corpus_splits, prompt_splits = SplitDict(), SplitDict()
    for split in splits:
        corpus_splits.add(SplitInfo(name=split, num_bytes=sizes[split], num_examples=rows[split]))
    # The prompts config is built by publish; the filter stage measured its Arrow size (0 if unknown).
    prompt_bytes = int(manifest_get(manifest, "shards.prompts.arrow_bytes", 0) or 0)
    prompt_splits.add(
        SplitInfo(name="train", num_bytes=prompt_bytes, num_examples=sum(rows.values()) * PROMPTS_PER_ROW)
    )
    total = sum(sizes.values())
    infos = {"prompts": DatasetInfo(features=prompt_features(), splits=prompt_splits)}
    if splits:
        infos["default"] = DatasetInfo(
            features=corpus_features(), splits=corpus_splits, download_size=total, dataset_size=total
        )
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data


# ----------------------------------------------------------------------------------------------------
# Body context: every value pre-formatted here, so the template is text and loops
# ----------------------------------------------------------------------------------------------------


def _feature_type(feature) -> str:
    from datasets import ClassLabel, Image, Value

    if isinstance(feature, Image):
        return "Image (PNG)"
    if isinstance(feature, ClassLabel):
        return "ClassLabel (" + ", ".join(feature.names) + ")"
    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, dict):
        return "struct {" + ", ".join(f"{k}: {_feature_type(v)}" for k, v in feature.items()) + "}"
    return type(feature).__name__


def _columns() -> list[dict]:
    from synthecho.schema import corpus_features

    return [
        {"name": name, "type": _feature_type(feature), "meaning": COLUMN_DOCS.get(name, "")}
        for name, feature in corpus_features().items()
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


def _source(manifest: dict) -> dict:
    source = manifest.get("source") or {}
    kind = source.get("kind", manifest_get(manifest, "recipe.source.kind", "camus"))
    name = source.get("name", kind)
    release = source.get("release")
    resolution = source.get("resolution", manifest_get(manifest, "recipe.prepare.resolution"))
    size = f"{resolution}×{resolution} px" if resolution else "the recipe resolution"
    if kind == "phantom":
        label = "synthecho phantom (simulated CAMUS-format data)"
        description = (
            f"Frames and masks from synthecho's built-in phantom (`{name}`), a simulator that writes apical "
            f"2CH/4CH frames at ED and ES in the CAMUS {release or ''} layout with its label values, read by "
            f"the same CAMUS reader and resized to {size}."
        )
        bias = PHANTOM_BIAS
    else:
        label = f"CAMUS ({release} release)" if release else "CAMUS"
        description = (
            f"The CAMUS dataset (Leclerc et al., IEEE TMI 2019){f', {release} release' if release else ''}: "
            f"apical 2CH and 4CH frames at ED and ES with expert labels of the LV cavity, LV myocardium and left "
            f"atrium, split by patient as the release defines, resized to {size}. Only training-split "
            f"records condition the train split and validation records the validation split; the test split "
            f"is never used for generation."
        )
        bias = CAMUS_BIAS
    rows = []
    for split in ("train", "validation", "test"):
        records = manifest_get(source, f"records.{split}")
        patients = manifest_get(source, f"patients.{split}")
        if records is not None or patients is not None:
            rows.append({"split": split, "records": number(records), "patients": number(patients)})
    return {
        "label": label,
        "description": description,
        "note": source.get("note") or "",
        "rows": rows,
        "bias": bias,
        "file_list_sha256": short_hash(source.get("file_list_sha256")),
    }


def _perturbation(manifest: dict) -> str:
    generate = manifest_get(manifest, "recipe.generate", {})
    p = generate.get("perturb") or {}
    variants = manifest_get(manifest, "generation.variants", generate.get("variants"))
    if not p:
        return "The recipe in the manifest does not record the mask perturbation."
    scale = p.get("scale") or [None, None]
    return (
        f"Each real training or validation mask gives {number(variants)} variants, as Echo from Noise did: a random "
        f"affine transform (rotation up to ±{number(p.get('degrees'), 1)}°, vertical shift up to "
        f"±{number(p.get('translate'), 3)} of the height, scale in [{number(scale[0], 2)}, {number(scale[1], 2)}], "
        f"shear up to ±{number(p.get('shear'), 1)}°) composed with a cubic B-spline elastic deformation "
        f"({number(p.get('elastic_control_points'))}×{number(p.get('elastic_control_points'))} control points, "
        f"borders locked, displacement up to {number(p.get('elastic_max_displacement'), 3)} of the image side), "
        f"sampled once with nearest-neighbour interpolation and clipped to the ultrasound sector of the real "
        f"frame. The generator is conditioned on a 5-class map (outside sector, sector background, LV, "
        f"myocardium, LA). Each row's parameters are in its `mask_transform` column."
    )


def _generator(manifest: dict) -> dict:
    gen = manifest.get("generator") or {}
    kind = gen.get("kind", manifest_get(manifest, "recipe.generator.kind", "unknown"))
    variant = gen.get("variant")
    config = gen.get("config") or manifest_get(manifest, "recipe.generator", {})
    # generator.train holds the recipe's train section plus what training measured; older or partial
    # manifests may only have the measurements, so the recipe fills the gaps.
    train = {**manifest_get(manifest, "recipe.train", {}), **(gen.get("train") or {})}
    names = {
        "sdm": "semantic diffusion model (pixel-space diffusion conditioned on the label map)",
        "ddpm": "unconditional DDPM",
        "sd": "text-guided latent diffusion (Stable Diffusion)",
        "controlnet": "ControlNet on Stable Diffusion (text + label map)",
    }
    what = names.get(kind, kind)
    summary = (
        f"`{kind}`" + (f" ({variant})" if variant else "") + f", sha256 `{short_hash(gen.get('sha256'))}`"
    )
    architecture = ", ".join(
        f"{key} {json.dumps(config[key])}"
        for key in ("channels", "layers_per_block", "attention", "train_timesteps", "beta_schedule")
        if key in config
    )
    description = (
        f"`{kind}`{f' ({variant})' if variant else ''}: {what}"
        + (f"; {architecture}" if architecture else "")
        + f". Trained for {number(train.get('steps'))} steps (batch {number(train.get('batch_size'))}, "
        f"learning rate {number(train.get('learning_rate'), 6)}, EMA {number(train.get('ema_decay'), 4)}, "
        f"mixed precision {number(train.get('mixed_precision'))}) in {number(train.get('seconds'), 0)} s; "
        f"final loss {number(train.get('final_loss'), 4)}."
    )
    base_model, base_license = gen.get("base_model"), gen.get("base_license")
    if base_model:
        weights = f"Base weights: `{base_model}`, licence {base_license or 'not recorded'}."
        if "openrail" in str(base_license).lower() or "stable-diffusion" in str(base_model).lower():
            weights += (
                " Stable Diffusion 1.5 weights carry the CreativeML OpenRAIL-M licence, whose use restrictions "
                "forbid using the model or its derivatives to provide medical advice or medical results "
                "interpretation; that restriction applies to the generator and its outputs."
            )
    else:
        weights = (
            "No pretrained image weights: the generator was trained from scratch on the source data, so no "
            "base-model licence applies to the images."
        )
    text_encoder = config.get("text_encoder")
    if text_encoder:
        weights += f" Text encoder: `{text_encoder}`."
    if kind in ("sd", "controlnet"):
        prompt_use = "The `prompt` column is the image-level prompt the generator was conditioned on."
    else:
        prompt_use = (
            "This generator takes no text, so the `prompt` column is empty; the attributes are in their own "
            "columns and the per-structure prompts in the `prompts` config."
        )
    return {
        "summary": summary,
        "description": description,
        "weights": weights,
        "sha256": short_hash(gen.get("sha256")),
        "prompt_use": prompt_use,
    }


def _sampling(manifest: dict) -> str:
    generation = manifest.get("generation") or {}
    recipe_generate = manifest_get(manifest, "recipe.generate", {})
    if not generation:
        return "Generation has not run for this version."
    return (
        f"Sampler `{generation.get('sampler')}`, {number(generation.get('steps'))} steps, guidance scale "
        f"{number(generation.get('guidance_scale'), 2)}, batch size {number(generation.get('batch_size'))}, "
        f"base seed {number(generation.get('seed', recipe_generate.get('seed')))}, on {number(generation.get('device'))} in "
        f"{number(generation.get('precision'))}: {number(manifest_get(manifest, 'counts.generated'))} images in "
        f"{number(generation.get('seconds'), 0)} s ({number(generation.get('images_per_second'), 2)} images/s)."
    )


def _example_prompt(rule: str) -> str:
    from synthecho.prompts import Attributes, structure_prompt

    attrs = Attributes(view="2CH", phase="ED", sex="M", age=80, image_quality="Good")
    return structure_prompt("lv", 7, "A", attrs, shape="oval", article_rule=rule)


def _filter_summary(manifest: dict) -> str:
    metrics = manifest.get("metrics") or {}
    if not metrics and not manifest_get(manifest, "counts.passed"):
        return "The quality filter has not run for this version."
    dice = metrics.get("dice_threshold") or manifest_get(manifest, "recipe.filter.dice_threshold") or {}
    order = {"lv": 0, "myo": 1, "la": 2}
    ranked = sorted(dice.items(), key=lambda item: (order.get(item[0], 3), item[0]))
    dice_text = ", ".join(f"{k.upper()} {number(v, 2)}" for k, v in ranked) or "n/a"
    return (
        f"A row is rejected when the filter segmenter's prediction on the image disagrees with the row's mask "
        f"(Dice below {dice_text}; rows whose mask came from the segmenter are checked for anatomical "
        f"plausibility instead), when it is too similar to a real training image (copy similarity above "
        f"{number(metrics.get('copy_threshold'), 3)}), or when it is degenerate (NaN, constant, empty sector). "
        f"Of {number(manifest_get(manifest, 'counts.generated'))} generated rows, {number(manifest_get(manifest, 'counts.passed'))} "
        f"passed."
    )


def _outcome_rows(manifest: dict) -> list[dict]:
    rows = [{"outcome": "passed", "rows": number(manifest_get(manifest, "counts.passed"))}]
    for reason, count in sorted((manifest_get(manifest, "counts.rejected") or {}).items()):
        rows.append({"outcome": f"rejected: {cell(reason)}", "rows": number(count)})
    return rows


def _distance_rows(table: Any, reference: Any = None) -> list[dict]:
    """Rows of a {split: {fid, kid_mean, kid_std, n_real, n_synthetic}} table (+ the real-vs-real scale)."""
    rows = []

    def row(label, values):
        return {
            "label": label,
            "fid": significant(values.get("fid"), 3),
            "kid": f"{significant(values.get('kid_mean'))} ± {significant(values.get('kid_std'))}",
            "n_real": number(values.get("n_real")),
            "n_synthetic": number(values.get("n_synthetic")),
        }

    if isinstance(table, dict):
        for split, values in sorted(table.items()):
            if isinstance(values, dict):
                rows.append(row(f"synthetic {split} vs real {split}", values))
    if rows and isinstance(reference, dict):
        rows.append(row("real train vs real validation (scale)", reference))
    return rows


def _attribute_fidelity(manifest: dict) -> str:
    fidelity = manifest_get(manifest, "metrics.attribute_fidelity")
    if not fidelity:
        return "Attribute classifiers have not been run for this version."
    return (
        f"View and phase classifiers trained on real frames agree with the rows' `view` on "
        f"{number(fidelity.get('view_agreement'), 3)} and with their `phase` on "
        f"{number(fidelity.get('phase_agreement'), 3)} of the published rows (does the image show what the prompt says?)."
    )


def mask_fidelity_sentence(fidelity: dict | None) -> str:
    """The filter's `mask_fidelity` metric as a sentence (card and reports/quality.md)."""
    if not fidelity:
        return (
            "Not measured: no row's mask was judged (masks drawn by the filter segmenter itself say nothing "
            "about how well the generator follows a mask)."
        )
    dice, ceiling = fidelity["mean_dice"], fidelity["ceiling_dice"]
    return (
        f"The filter segmenter finds the rows' anatomy in the generated frames with mean Dice LV "
        f"{number(dice['lv'])}, myocardium {number(dice['myo'])}, LA {number(dice['la'])} (all "
        f"{fidelity['rows']} judged rows, before filtering); on real {fidelity['ceiling_split']} frames "
        f"it scores LV {number(ceiling['lv'])}, myocardium {number(ceiling['myo'])}, LA {number(ceiling['la'])}, "
        f"the ceiling for a generator that follows its masks exactly."
    )


def _mask_fidelity(manifest: dict) -> str:
    if "mask_fidelity" not in (manifest.get("metrics") or {}):  # manifests older than the metric
        return "Not recorded for this version."
    return mask_fidelity_sentence(manifest["metrics"]["mask_fidelity"])


def _segmenter_summary(manifest: dict) -> str:
    seg = manifest.get("segmenter") or {}
    dice = seg.get("validation_dice") or {}
    if not seg:
        return "No filter segmenter is recorded for this version."
    return (
        f"MONAI 2-D U-Net trained on the real train split for {number(seg.get('steps'))} steps; Dice on real "
        f"validation frames: LV {number(dice.get('lv'))}, myocardium {number(dice.get('myo'))}, LA "
        f"{number(dice.get('la'))} (mean {number(dice.get('mean'))}). sha256 `{short_hash(seg.get('sha256'))}`."
    )


def _flatten(value: Any, prefix: str = "") -> list[dict]:
    """Nested results -> [{key: "a / b / c", value}] rows, keys sorted (generic downstream table)."""
    if isinstance(value, dict):
        rows = []
        for key in sorted(value, key=str):
            rows += _flatten(value[key], f"{prefix} / {key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [{"key": cell(prefix), "value": ", ".join(number(v) for v in value)}]
    return [{"key": cell(prefix), "value": number(value)}]


# (task, metric keys shown, column titles); metrics are fractions rendered as percentages.
DOWNSTREAM_COLUMNS = {
    "segmentation": (
        ("dice_lv_endo", "dice_lv_epi", "dice_la"),
        ("LV endo Dice %", "LV epi Dice %", "LA Dice %"),
    ),
    "phase": (("accuracy", "f1"), ("ED/ES accuracy %", "ED/ES macro F1 %")),
    "view": (("accuracy", "f1"), ("2CH/4CH accuracy %", "2CH/4CH macro F1 %")),
}


def _downstream_tables(downstream: dict) -> list[dict]:
    """One table per (real-data cap, task): strategy rows, mean ± std over seeds of the headline metrics."""
    tables = []
    for cap_key in sorted(downstream.get("caps", {})):
        cap = downstream["caps"][cap_key]
        for task, (keys, titles) in DOWNSTREAM_COLUMNS.items():
            strategies = cap.get("tasks", {}).get(task, {}).get("strategies", {})
            rows = []
            for name in downstream.get("strategies", list(strategies)):
                if name not in strategies:
                    continue
                metrics = strategies[name]["metrics"]
                cells = [plus_minus(metrics.get(k), missing="–") for k in keys]
                rows.append({"strategy": STRATEGY_TITLES.get(name, name), "cells": cells})
            if rows:
                title = f"{task}, {100 * float(cap.get('cap', 1.0)):.0f}% of real train patients"
                tables.append({"title": title, "columns": titles, "rows": rows})
    return tables


def _environment(manifest: dict) -> dict:
    env = manifest.get("environment") or {}
    flat = {row["key"]: row["value"] for row in _flatten(env)}
    shown = [f"{key} {value}" for key, value in flat.items() if key not in ("synthecho", "git_commit")]
    return {
        "synthecho": env.get("synthecho", "n/a"),
        "git_commit": short_hash(env.get("git_commit")),
        "line": "; ".join(shown) if shown else "not recorded",
    }


def card_context(manifest: dict) -> dict:
    """Everything the template shows, formatted (a pure function of the manifest)."""
    from synthecho.prompts import RECTANGLE_MIN_FILL, ROUND_MAX_ASPECT, TRIANGLE_MIN_RATIO

    dataset = manifest.get("dataset") or {}
    name = dataset.get("name") or manifest_get(manifest, "recipe.name", "corpus")
    version = dataset.get("version") or manifest_get(manifest, "recipe.version", "0.0.0")
    license_id = dataset.get("license")
    publish = manifest.get("publish") or {}
    repo_id = publish.get("repo_id") or manifest_get(manifest, "recipe.publish.repo_id")
    rows = published_rows(manifest)
    metrics = manifest.get("metrics") or {}
    rule = article_rule(manifest)
    downstream = manifest.get("downstream")

    if license_id:
        license_line = (
            f"`{license_id}` for the synthetic images, masks and prompts, which derive from the source "
            f"annotations (CAMUS is distributed for research use; cite it)."
        )
    else:
        license_line = "not set: `synthecho publish` refuses until the recipe key `license` is set."

    return {
        "pretty_name": dataset.get("pretty_name") or name,
        "name": name,
        "description": (dataset.get("description") or "").strip()
        or f"Synthetic echocardiography corpus `{name}`.",
        "version": version,
        "revision": f"v{version}",
        "repo_id": repo_id,
        "load_id": repo_id or f"ORG/{name}",
        "generator_repo_id": publish.get("generator_repo_id"),
        "license_line": license_line,
        "rows_summary": ", ".join(f"{split} {number(n)}" for split, n in rows.items()),
        "split_names": ", ".join(split for split, n in rows.items() if n > 0) or "no published rows",
        "recipe_sha256": short_hash(manifest.get("recipe_sha256")),
        "environment": _environment(manifest),
        "source": _source(manifest),
        "generator": _generator(manifest),
        "perturbation": _perturbation(manifest),
        "sampling": _sampling(manifest),
        "article_rule": rule,
        "example_prompt": _example_prompt(rule),
        # publish puts the run's reports/generator_sample_grid.png beside the card as SAMPLE_GRID.
        "sample_grid": SAMPLE_GRID if manifest_get(manifest, "generator.train.sample_grid") else None,
        "shape": {
            "triangle": f"{TRIANGLE_MIN_RATIO:.0%}",
            "fill": f"{RECTANGLE_MIN_FILL:.0%}",
            "aspect": f"{ROUND_MAX_ASPECT:g}",
        },
        "columns": _columns(),
        "split_rows": _split_rows(manifest),
        "prompts_per_row": PROMPTS_PER_ROW,
        "prompt_rows": number(sum(rows.values()) * PROMPTS_PER_ROW),
        "filter_summary": _filter_summary(manifest),
        "outcome_rows": _outcome_rows(manifest),
        "feature_dims": number(manifest_get(manifest, "recipe.filter.feature_dims", 64)),
        "domain_rows": _distance_rows(metrics.get("domain"), manifest_get(metrics, "real_reference.domain")),
        "inception_rows": _distance_rows(
            metrics.get("inception"), manifest_get(metrics, "real_reference.inception")
        ),
        "inception_note": metrics.get("inception_note")
        or "Inception-feature metrics were not computed for this version.",
        "attribute_fidelity": _attribute_fidelity(manifest),
        "mask_fidelity": _mask_fidelity(manifest),
        "segmenter_summary": _segmenter_summary(manifest),
        "downstream_intro": (
            "Models trained by `synthecho evaluate` and tested on the real test split; mean ± std over "
            "seeds (per-seed values, HD95 and paired Wilcoxon p-values are in `manifest.json`)."
        ),
        "downstream_tables": _downstream_tables(downstream) if downstream else [],
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


# ----------------------------------------------------------------------------------------------------
# Rendering, the stage, committed copies and the CI check
# ----------------------------------------------------------------------------------------------------


def render_card(manifest: dict) -> str:
    """The dataset card (README.md text) of a manifest; the same manifest gives the same bytes."""
    from huggingface_hub import DatasetCard

    data = card_data(manifest)
    text = render("dataset_card.md", card_data=data.to_yaml(), **card_context(manifest))
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"  # optional sections leave blank runs
    DatasetCard(text)  # parses the YAML header exactly as the Hub does; raises when it is malformed
    return text


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    """Stage `card`: refresh the manifest's dataset section from the recipe and write `<run>/README.md`.

    Rendering is cheap, so a "current" stage is still re-rendered when the README differs from what the
    manifest gives now (e.g. `evaluate` ran after the card): the README never lags its manifest.
    """
    run_dir = Path(run_dir)
    readme = run_dir / "README.md"
    if not force and is_current(recipe, run_dir, "card") and readme.is_file():
        if readme.read_text(encoding="utf-8") == render_card(require_manifest(run_dir, "rendering the card")):
            return {"skipped": True, **read_marker(run_dir, "card")["info"]}
    started = time.time()
    require_manifest(
        run_dir, "rendering the card"
    )  # fails with a clear message before the manifest is touched
    # 1. The card stage reads name/version/description/license/publish from the recipe: refresh them.
    manifest = update_manifest(
        run_dir,
        dataset=dataset_section(recipe),
        recipe=recipe.model_dump(mode="json"),
        recipe_sha256=recipe.content_hash(),
    )
    # 2. Render and write.
    text = render_card(manifest)
    write_text_atomic(readme, text)
    rows = published_rows(manifest)
    info = {"card": str(readme), "rows": rows, "license": recipe.license}
    if not recipe.license:
        info["warning"] = "recipe key `license` is not set: publish will refuse"
    marker = mark_done(recipe, run_dir, "card", info, started)
    return {"skipped": False, "seconds": marker["seconds"], **info}


# Absolute paths are machine-specific: the committed manifest must compare across machines.
_ABSOLUTE_PATH = re.compile(r"^(?:/|~|[A-Za-z]:[\\/])\S*$")


def portable_manifest(manifest: Any, roots: tuple[Path, ...] = ()) -> Any:
    """A copy with absolute paths made relative to one of `roots`, or reduced to `<local>/<name>`."""
    if isinstance(manifest, dict):
        return {key: portable_manifest(value, roots) for key, value in manifest.items()}
    if isinstance(manifest, list):
        return [portable_manifest(value, roots) for value in manifest]
    if isinstance(manifest, str) and _ABSOLUTE_PATH.match(manifest):
        path = Path(manifest).expanduser()
        for root in roots:
            try:
                return path.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                continue
        return f"<local>/{path.name}"
    return manifest


def committed_paths(repo_root: Path, name: str, version: str) -> tuple[Path, Path]:
    """(manifests/<dataset>/<version>.json, cards/<dataset>/README.md) under `repo_root`."""
    return repo_root / "manifests" / name / f"{version}.json", repo_root / "cards" / name / "README.md"


def export_committed(run_dir: Path, repo_root: Path) -> tuple[Path, Path]:
    """Write the run's manifest (portable) and its card as the committed copies under `repo_root`.

    Timings and the environment stay in: they are part of the record. Only absolute paths are rewritten.
    The card is rendered from the written manifest, so `check_cards` passes right after an export.
    """
    run_dir, repo_root = Path(run_dir), Path(repo_root)
    manifest = portable_manifest(require_manifest(run_dir, "rendering the card"), roots=(run_dir, repo_root))
    name, version = manifest_get(manifest, "dataset.name"), manifest_get(manifest, "dataset.version")
    if not name or not version:
        raise SynthechoError(f"{run_dir / 'manifest.json'} has no dataset.name/version: run prepare first.")
    manifest_path, card_path = committed_paths(repo_root, name, version)
    write_json_atomic(manifest_path, manifest)
    # Render from what was written (JSON round trip), exactly as check_cards will read it.
    write_text_atomic(card_path, render_card(read_json(manifest_path)))
    # The sample grid travels with the card (the card shows it; the README shows the demo's).
    grid = run_grid(run_dir)
    if grid.is_file():
        write_bytes_atomic(card_path.parent / SAMPLE_GRID, grid.read_bytes())
    return manifest_path, card_path


def check_cards(repo_root: Path) -> list[str]:
    """Re-render every committed card from its newest committed manifest; one entry per stale card.

    Each entry names the card and holds a unified diff (committed -> re-rendered). A card with no
    manifest, or a manifest with no card, is reported too. An empty list means all cards are fresh.
    """
    from packaging.version import InvalidVersion, Version

    repo_root = Path(repo_root)

    def version_key(path: Path):
        try:
            return (1, Version(path.stem), path.stem)
        except InvalidVersion:
            return (0, None, path.stem)

    stale = []
    names = {p.parent.name for p in (repo_root / "manifests").glob("*/*.json")}
    names |= {p.parent.name for p in (repo_root / "cards").glob("*/README.md")}
    for name in sorted(names):
        manifests = sorted((repo_root / "manifests" / name).glob("*.json"), key=version_key)
        card_path = repo_root / "cards" / name / "README.md"
        if not manifests:
            stale.append(f"{card_path.relative_to(repo_root)}: no manifest in manifests/{name}/")
            continue
        # The card describes the newest version; older manifests stay as the record of past releases.
        expected = render_card(read_json(manifests[-1]))
        if not card_path.is_file():
            stale.append(f"{card_path.relative_to(repo_root)}: missing (manifest {manifests[-1].name})")
            continue
        committed = card_path.read_text(encoding="utf-8")
        if committed != expected:
            relative = card_path.relative_to(repo_root).as_posix()
            diff = difflib.unified_diff(
                committed.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=f"{relative} (committed)",
                tofile=f"{relative} (rendered from {manifests[-1].relative_to(repo_root).as_posix()})",
            )
            stale.append(f"{relative}: stale\n" + "".join(diff))
    return stale
