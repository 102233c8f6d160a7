"""The corpus schema researchers load: ONE `datasets.Features` object (`corpus_features`).

It is written into every Parquet file's metadata (the `huggingface` key, so `datasets` decodes `image`
and `mask` as PIL images and attributes as ClassLabels) and rendered into the dataset card's
`dataset_info.features`; a test checks that both agree. Raw and scored shards in the run dir use the same
columns plus the filter verdict (`scored_features`). The `prompts` config has its own long-format
schema (`prompt_features`).

Published columns change only with a new `SCHEMA_VERSION`, whose columns are appended after the older
ones. The filter stage records the schema of the files it writes in the manifest (`schema` section), and
the card renders that record (`recorded_features`), so the card of a published version keeps describing
its own files whatever the current code writes; manifests from before the record carry version 1.
"""

from __future__ import annotations

import json
from functools import cache

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
SEXES = ("F", "M")
QUALITIES = ("Good", "Medium", "Poor")
MASK_SOURCES = ("conditioning", "generated", "segmenter")

# Perturbation parameters of the conditioning mask (synthecho.perturb.sample_transform): typed scalars.
MASK_TRANSFORM_FIELDS = {
    "angle": "float32",
    "translate_row": "float32",
    "translate_col": "float32",
    "scale": "float32",
    "shear": "float32",
    "elastic_seed": "int64",
    "elastic_max_displacement": "float32",
    "elastic_control_points": "int32",
    "identity": "bool",
}


SCHEMA_VERSION = 2
# Columns each schema version added (appended after the older ones). 2: what the generator was
# conditioned on, and the filter's attribute scores (probability of the claimed view / phase).
ADDED_IN = {2: ("conditioned_on", "view_score", "phase_score")}


@cache
def corpus_features(version: int = SCHEMA_VERSION):
    """Columns of a published row, in order, as of schema `version`."""
    from datasets import ClassLabel, Features, Image, Sequence, Value

    if not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"corpus schema version must be 1..{SCHEMA_VERSION}, got {version}")
    later = {
        "conditioned_on": Sequence(Value("string")),  # label_map, view, phase, sex, age, image_quality
        "view_score": Value("float32"),
        "phase_score": Value("float32"),
    }
    added = [name for v in range(2, version + 1) for name in ADDED_IN[v]]
    return Features(
        {
            "id": Value("string"),
            "index": Value("int64"),
            "image": Image(),
            "mask": Image(),
            "prompt": Value("string"),
            "shape_lv": Value("string"),
            "shape_myo": Value("string"),
            "shape_la": Value("string"),
            "view": ClassLabel(names=list(VIEWS)),
            "phase": ClassLabel(names=list(PHASES)),
            "sex": ClassLabel(names=list(SEXES)),
            "image_quality": ClassLabel(names=list(QUALITIES)),
            "age": Value("int32"),
            "generator": Value("string"),
            "generator_sha256": Value("string"),
            "sampler": Value("string"),
            "steps": Value("int32"),
            "guidance_scale": Value("float32"),
            "seed": Value("int64"),
            "batch_size": Value("int32"),
            "source_id": Value("string"),
            "source_patient": Value("string"),
            "source_split": Value("string"),
            "variant": Value("int32"),
            "mask_transform": {name: Value(dtype) for name, dtype in MASK_TRANSFORM_FIELDS.items()},
            "spacing_mm": {"row": Value("float32"), "col": Value("float32")},
            "mask_source": Value("string"),
            "dice_lv": Value("float32"),
            "dice_myo": Value("float32"),
            "dice_la": Value("float32"),
            "copy_similarity": Value("float32"),
            **{name: later[name] for name in added},
        }
    )


def schema_record() -> dict:
    """The manifest's `schema` section for files written now (the corpus and its `prompts` config)."""
    return {
        "version": SCHEMA_VERSION,
        "features": corpus_features().to_dict(),
        "prompt_features": prompt_features().to_dict(),
    }


def recorded_features(manifest: dict):
    """The corpus schema a manifest's files were written with (version 1 when it recorded none)."""
    from datasets import Features

    record = manifest.get("schema")
    return Features.from_dict(record["features"]) if record else corpus_features(1)


def recorded_prompt_features(manifest: dict):
    """The `prompts` config schema of a manifest's corpus (version 1 when it recorded none)."""
    from datasets import Features

    record = manifest.get("schema") or {}
    return (
        Features.from_dict(record["prompt_features"]) if "prompt_features" in record else prompt_features(1)
    )


def prompt_features(version: int = SCHEMA_VERSION):
    """Columns of the `prompts` config (long format, one row per prompt of a corpus row). Version 2 adds
    `attributes`: what the prompt asserts (structure, view, phase, sex, age, image_quality, shape)."""
    from datasets import Features, Sequence, Value

    columns = {
        "id": Value("string"),
        "structure": Value("string"),
        "level": Value("int32"),
        "phrasing": Value("string"),
        "text": Value("string"),
    }
    if version >= 2:
        columns["attributes"] = Sequence(Value("string"))
    return Features(columns)


@cache
def scored_features():
    """Published columns plus the filter's verdict (kept in the run dir, rejected rows included)."""
    from datasets import Features, Value

    features = dict(corpus_features())
    features["passed"] = Value("bool")
    features["reject_reason"] = Value("string")
    return Features(features)


def arrow_schema(features):
    """The Arrow schema with the `huggingface` metadata `datasets` reads back into `features`."""
    metadata = {"huggingface": json.dumps({"info": {"features": features.to_dict()}})}
    return features.arrow_schema.with_metadata(metadata)


def class_index(names: tuple[str, ...], value: str) -> int:
    """ClassLabel integer of `value` (CAMUS spelling), with an error naming the allowed values."""
    try:
        return names.index(value)
    except ValueError:
        raise ValueError(f"{value!r} is not one of {names}") from None
