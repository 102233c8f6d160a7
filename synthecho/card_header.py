"""The dataset card's `dataset_info` YAML, built from plain feature dicts: no `datasets` import.

`synthecho card --check` and `card --push` run in a CI job that installs no torch, diffusers or datasets,
so the header cannot go through `datasets`' serialisers. A manifest records its corpus schema as
`Features.to_dict()` output (`schema.features`, see `synthecho.schema`); `features_yaml` turns such a dict
into the list `Features._to_yaml_list()` writes (datasets/features/features.py), and `dataset_info_yaml`
lays out configs the way `DatasetInfosDict.to_dataset_card_data` does. tests/test_cards_ci.py checks both
against `datasets` itself, byte for byte, for every committed manifest and the current schema.

Manifests from before the schema record were written with schema version 1: `V1_FEATURES` and
`V1_PROMPT_FEATURES` are that schema as plain dicts (a test keeps them equal to
`synthecho.schema.corpus_features(1).to_dict()` and `prompt_features(1).to_dict()`).
"""

from __future__ import annotations

import copy
import re
from typing import Any


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


def _class_label(names: tuple[str, ...]) -> dict:
    return {"names": list(names), "_type": "ClassLabel"}


def _v1_features() -> dict:
    from synthecho.schema import MASK_TRANSFORM_FIELDS, PHASES, QUALITIES, SEXES, VIEWS

    strings = ("generator", "generator_sha256", "sampler")
    features: dict[str, Any] = {"id": _value("string"), "index": _value("int64")}
    features |= {"image": {"_type": "Image"}, "mask": {"_type": "Image"}, "prompt": _value("string")}
    features |= {f"shape_{part}": _value("string") for part in ("lv", "myo", "la")}
    features |= {"view": _class_label(VIEWS), "phase": _class_label(PHASES), "sex": _class_label(SEXES)}
    features |= {"image_quality": _class_label(QUALITIES), "age": _value("int32")}
    features |= {name: _value("string") for name in strings}
    features |= {"steps": _value("int32"), "guidance_scale": _value("float32"), "seed": _value("int64")}
    features |= {"batch_size": _value("int32")}
    features |= {name: _value("string") for name in ("source_id", "source_patient", "source_split")}
    features |= {"variant": _value("int32")}
    features["mask_transform"] = {name: _value(dtype) for name, dtype in MASK_TRANSFORM_FIELDS.items()}
    features["spacing_mm"] = {"row": _value("float32"), "col": _value("float32")}
    features["mask_source"] = _value("string")
    features |= {name: _value("float32") for name in ("dice_lv", "dice_myo", "dice_la", "copy_similarity")}
    return features


V1_FEATURES = _v1_features()
V1_PROMPT_FEATURES = {name: _value(dtype) for name, dtype in (
    ("id", "string"), ("structure", "string"), ("level", "int32"), ("phrasing", "string"), ("text", "string")
)}  # fmt: skip


def recorded_feature_dict(manifest: dict) -> dict:
    """The corpus schema (as `Features.to_dict()`) a manifest's files were written with."""
    record = manifest.get("schema")
    return copy.deepcopy(record["features"] if record else V1_FEATURES)


def recorded_prompt_feature_dict(manifest: dict) -> dict:
    """The `prompts` config schema (as `Features.to_dict()`) of a manifest's corpus."""
    record = manifest.get("schema") or {}
    return copy.deepcopy(record.get("prompt_features") or V1_PROMPT_FEATURES)


def _snake(name: str) -> str:
    """CamelCase -> snake_case, as `datasets.naming.camelcase_to_snakecase` spells feature types."""
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)).lower()


def _simplify(feature: dict) -> dict:
    for list_type in ("large_list", "list", "sequence"):
        inner = feature.get(list_type)
        if isinstance(inner, dict) and list(inner) == ["dtype"]:
            feature[list_type] = inner["dtype"]
        elif isinstance(inner, dict) and list(inner) == ["struct"]:
            feature[list_type] = inner["struct"]
    label = feature.get("class_label")
    if isinstance(label, dict) and isinstance(label.get("names"), list):
        label["names"] = {str(i): name for i, name in enumerate(label["names"])}  # the Hub wants str keys
    return feature


def _to_yaml(obj: Any) -> dict:
    if isinstance(obj, tuple):
        obj = list(obj)
    if isinstance(obj, list):
        return _simplify({"list": _simplify(_to_yaml(obj[0]))})
    if not isinstance(obj, dict):
        raise TypeError(f"a feature must be a dict or a list, got {type(obj).__name__}: {obj!r}")
    obj = dict(obj)
    kind = obj.pop("_type", None)
    if kind in ("LargeList", "List"):
        inner = obj.pop("feature")
        return _simplify({"large_list" if kind == "LargeList" else "list": _to_yaml(inner), **obj})
    if kind == "Value":
        return obj
    if kind and not obj:
        return {"dtype": _snake(kind)}
    if kind:
        return {"dtype": _simplify({_snake(kind): obj})}
    return {"struct": [{"name": name, **_to_yaml(feature)} for name, feature in obj.items()]}


def features_yaml(features: dict) -> list[dict]:
    """`Features.from_dict(features)._to_yaml_list()`, computed from the dict alone."""
    return _to_yaml(copy.deepcopy(features))["struct"]


def dataset_info_yaml(infos: dict[str, dict]) -> list[dict] | dict:
    """The `dataset_info` value for {config: {features, splits, download_size?, dataset_size?}}.

    Several configs are a list sorted by name, each starting with `config_name`; a lone "default" config
    is a plain mapping without it (as `DatasetInfosDict.to_dataset_card_data` writes them).
    """
    entries = {}
    for config, info in infos.items():
        entry: dict[str, Any] = {"features": features_yaml(info["features"])}
        entry["splits"] = [
            {"name": s["name"], "num_bytes": s["num_bytes"], "num_examples": s["num_examples"]}
            for s in info["splits"]
        ]
        entry |= {key: info[key] for key in ("download_size", "dataset_size") if info.get(key) is not None}
        entries[config] = entry
    if len(entries) == 1:
        ((config, entry),) = entries.items()
        return entry if config == "default" else {"config_name": config, **entry}
    return [{"config_name": config, **entry} for config, entry in sorted(entries.items())]
