"""The publishable corpus: the rows that passed, streamed from the scored shards into `data/`.

`write_publishable` writes `data/{split}-{i:05d}-of-{n:05d}.parquet` (the Hub layout) in plan order and
collects along the way what the corpus metrics need: counts by reject reason, the passed rows' domain
(and Inception) features, the attribute classifiers' predictions against the rows' claims, the Dice of
every judged row (before filtering) and a few example frames per verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthecho.layout import RunLayout, hub
from synthecho.quality.scores import REJECT_REASONS, mask_dice
from synthecho.quality.scoring import decode_column

EXAMPLES_PER_GROUP = 6  # frames per row of the kept-vs-rejected picture


@dataclass
class Collected:
    """Per-split counts, features and predictions of the passed rows, and example frames."""

    generated: dict[str, int] = field(default_factory=dict)
    passed: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    domain: dict[str, list] = field(default_factory=dict)
    inception: dict[str, list] = field(default_factory=dict)
    predicted: dict[str, dict[str, list]] = field(default_factory=dict)
    claimed: dict[str, dict[str, list]] = field(default_factory=dict)
    examples: dict[str, list] = field(default_factory=dict)  # "kept" or a reason -> (image, mask, title)
    # Dice of every generated row whose mask was judged (conditioning/generated), passed or not.
    dice: dict[str, list] = field(default_factory=lambda: {name: [] for name in ("lv", "myo", "la")})


def _example_title(row: dict) -> str:
    dice = [
        f"{name} {row[f'dice_{name}']:.2f}" for name in ("lv", "myo", "la") if row[f"dice_{name}"] is not None
    ]
    lines = [row["reject_reason"] or "kept", f"NCC {row['copy_similarity']:.2f}"]
    if dice:
        lines.append("Dice " + " ".join(dice))
    return "\n".join(lines)


def _collect_examples(collected: Collected, rows: list[dict]) -> None:
    """Keep the first few kept rows, and the first few rows of each reject reason."""
    from synthecho.real import decode_png

    for row in rows:
        group = "kept" if row["passed"] else row["reject_reason"]
        examples = collected.examples.setdefault(group, [])
        if len(examples) < EXAMPLES_PER_GROUP:
            image, mask = decode_png(row["image"]["bytes"]), decode_png(row["mask"]["bytes"])
            examples.append((image, mask, _example_title(row)))


def _finish_data_shard(shard_file, split: str, run_dir: Path) -> dict:
    """Close a data shard (rename + marker) and return its manifest entry."""
    marker = shard_file.finish({"split": split})
    return {
        "path": shard_file.path.relative_to(run_dir).as_posix(),
        "split": split,
        **{key: marker[key] for key in ("rows", "bytes", "sha256", "content_hash")},
    }


def write_publishable(
    run_dir: Path,
    scored: list[tuple[object, Path, dict]],
    segmenter,
    classifier,
    feature_dims: int,
    inception,
    progress: bool,
) -> tuple[list[dict], Collected]:
    """Stream the scored shards, split by split, into `data/`; returns the manifest entries and what was
    collected. Files from an earlier run that are not part of this one are removed afterwards."""
    from tqdm.auto import tqdm

    from synthecho.schema import PHASES, VIEWS, corpus_features
    from synthecho.shards import ShardFile, read_shard, remove_shard

    data_dir = RunLayout.of(run_dir).data
    features = corpus_features()
    columns = list(features)
    collected = Collected()
    entries: list[dict] = []
    splits = list(dict.fromkeys(shard.split for shard, _, _ in scored))
    for split in splits:
        shards = [(path, marker) for shard, path, marker in scored if shard.split == split]
        total = sum(marker["passed"] for _, marker in shards)
        count = math.ceil(total / hub.DATA_SHARD_ROWS)
        collected.generated[split] = sum(marker["rows"] for _, marker in shards)
        collected.passed[split] = total
        collected.rejected[split] = {reason: 0 for reason in REJECT_REASONS}
        for key in ("domain", "inception"):
            getattr(collected, key)[split] = []
        collected.predicted[split] = {"view": [], "phase": []}
        collected.claimed[split] = {"view": [], "phase": []}

        number, current, in_current = 0, None, 0

        for path, _ in tqdm(shards, desc=f"write data/{split}", disable=not progress, leave=False):
            rows = read_shard(path).to_pylist()
            _collect_examples(collected, rows)
            for row in rows:
                if not row["passed"]:
                    collected.rejected[split][row["reject_reason"]] += 1
                if row["dice_lv"] is not None:
                    for name, values in collected.dice.items():
                        values.append(row[f"dice_{name}"])
            kept = [{name: row[name] for name in columns} for row in rows if row["passed"]]
            if not kept:
                continue
            images = decode_column([row["image"] for row in kept])
            collected.domain[split].append(segmenter.features(images, dims=feature_dims))
            if inception is not None:
                collected.inception[split].append(inception(images))
            predicted = classifier.predict(images)
            for attribute, names in (("view", VIEWS), ("phase", PHASES)):
                collected.predicted[split][attribute].extend(predicted[attribute].tolist())
                collected.claimed[split][attribute].extend(names[row[attribute]] for row in kept)
            for row in kept:  # fill data shards of hub.DATA_SHARD_ROWS rows, in plan order
                if current is None:
                    current = ShardFile(data_dir / f"{split}-{number:05d}-of-{count:05d}.parquet", features)
                current.add_rows([row])
                in_current += 1
                if in_current == hub.DATA_SHARD_ROWS:
                    entries.append(_finish_data_shard(current, split, run_dir))
                    current, number, in_current = None, number + 1, 0
        if current is not None:
            entries.append(_finish_data_shard(current, split, run_dir))

    # Shards of an earlier run (other split sizes) would be published along with these: remove them.
    written = {Path(entry["path"]).name for entry in entries}
    for stale in data_dir.glob("*.parquet") if data_dir.is_dir() else []:
        if stale.name not in written:
            remove_shard(stale)
    return entries, collected


def prompts_config_size(run_dir: Path, entries: list[dict]) -> dict:
    """Rows and in-memory (Arrow) bytes of the `prompts` config `publish` derives from these shards.

    The card states every config's size, and it is rendered from the manifest alone, so the size is
    measured here, where the shards are written (a few ms per thousand rows: the text is cached per
    attribute combination).
    """
    from synthecho.manifest import article_rule, read_manifest
    from synthecho.prompts import prompts_table

    rule = article_rule(read_manifest(run_dir))
    table = prompts_table([run_dir / entry["path"] for entry in entries], rule)
    return {"rows": table.num_rows, "arrow_bytes": table.nbytes}


# --- what the collected rows say -------------------------------------------------------------------


def mask_fidelity(collected: Collected, segmenter, real_reference) -> dict | None:
    """How closely the frames follow their masks: mean Dice over every judged generated row (pre-filter).

    None when no row was judged (masks drawn by the segmenter itself say nothing about the generator).
    `ceiling_dice` is the same segmenter's mean Dice on real frames against their annotations: a generator
    whose frames score as high follows its masks as well as this segmenter can tell.
    """
    rows = len(collected.dice["lv"])
    if not rows:
        return None
    ceiling = mask_dice(segmenter.predict(real_reference.images), real_reference.masks)
    return {
        "rows": rows,
        "mean_dice": {name: float(np.mean(values)) for name, values in collected.dice.items()},
        "ceiling_split": real_reference.split,
        "ceiling_dice": {name: float(np.mean(ceiling[name])) for name in collected.dice},
    }


def audit_fidelity(scored: list[tuple[object, Path, dict]], judge_metrics: dict) -> dict:
    """The attribute judge on every generated row, before any verdict, and on each row's warped-real
    counterpart (from the scored shards' markers): {"generated"|"warped_real": {"view"|"phase":
    proportion, "by_split": {...}}, "judge": judge_metrics}."""
    from synthecho.quality.attributes import proportion

    pooled: dict[str, dict[str, list[bool]]] = {}
    for shard, _, marker in scored:
        audit = marker.get("audit") or {}
        store = pooled.setdefault(
            shard.split, {key: [] for key in ("view", "phase", "warped_view", "warped_phase")}
        )
        for key, values in store.items():
            values.extend(audit.get(key, []))

    def summary(prefix: str, splits: list[str]) -> dict:
        return {
            name: proportion(
                sum(sum(pooled[s][prefix + name]) for s in splits),
                sum(len(pooled[s][prefix + name]) for s in splits),
            )
            for name in ("view", "phase")
        }

    splits = list(pooled)
    return {
        kind: {**summary(prefix, splits), "by_split": {split: summary(prefix, [split]) for split in splits}}
        for kind, prefix in (("generated", ""), ("warped_real", "warped_"))
    } | {"judge": judge_metrics}


def attribute_fidelity(collected: Collected, classifier_metrics: dict) -> dict:
    """Agreement of the filter's classifier with the passed rows' claimed view/phase, per split and
    overall, with the classifier's own real accuracy alongside."""
    from synthecho.quality.attributes import agreement

    def pooled(store: dict, splits: list[str]) -> dict[str, np.ndarray]:
        return {k: np.array([value for s in splits for value in store[s][k]]) for k in ("view", "phase")}

    def agreement_of(splits: list[str]) -> dict:
        claimed = pooled(collected.claimed, splits)
        return agreement(pooled(collected.predicted, splits), claimed["view"], claimed["phase"])

    splits = list(collected.predicted)
    return {
        **agreement_of(splits),
        "by_split": {split: agreement_of([split]) for split in splits},
        "classifier": classifier_metrics,
    }
