"""Stage `filter`: score every generated row, keep the good ones, measure the corpus.

1. Inputs: every raw shard the plan calls for must be finished (completion marker matching its file);
   the real train/validation splits and the trained segmenter.
2. References from real train: the copy index and its threshold (calibrated on ED-vs-ES pairs unless the
   recipe sets one), the anatomy limits (area range of each structure).
3. Score each raw shard into `shards/scored/<name>.parquet` (`quality.scoring`: every row, with Dice,
   copy similarity, `passed`, `reject_reason`). A scored shard whose raw shard and settings are
   unchanged is reused.
4. Write the rows that passed into the publishable splits `data/{split}-{i:05d}-of-{n:05d}.parquet`
   (`quality.corpus`), collecting the counts, the passed rows' domain features (and Inception features
   when the weights exist), attribute predictions and example frames.
5. Dataset metrics (FID/KID per split and overall, real train vs real validation for scale), attribute
   fidelity (classifiers trained on real data), mask fidelity.
6. Reports (`reports/filter_examples.png`, `reports/quality.md`) and manifest sections.
"""

from __future__ import annotations

from pathlib import Path

from synthecho.errors import SynthechoError
from synthecho.io import sha256_file, sha256_json, write_text_atomic
from synthecho.layout import RunLayout
from synthecho.quality.corpus import attribute_fidelity, mask_fidelity, prompts_config_size, write_publishable
from synthecho.quality.metrics import feature_space_metrics
from synthecho.quality.report import quality_markdown, write_examples_png
from synthecho.quality.scores import REJECT_REASONS, AnatomyLimits, CopyIndex
from synthecho.quality.scoring import SCORES_VERSION, ScoringContext, score_shard
from synthecho.schema import schema_record

ATTRIBUTE_STEPS = 200  # training steps of the view/phase classifier (seconds on a CPU)


def raw_shards(recipe, run_dir: Path, real: dict) -> list[tuple[object, Path, dict]]:
    """(ShardPlan, path, marker) of every planned raw shard; an error naming what is missing otherwise."""
    from synthecho.plan import build_plan, shards_of
    from synthecho.shards import read_marker, shard_matches_marker

    planned = shards_of(build_plan(recipe, real))
    found, missing = [], []
    for shard in planned:
        path = RunLayout.of(run_dir).raw_shard(shard.name)
        marker = read_marker(path)
        if marker is None or not shard_matches_marker(path, marker):
            missing.append(path.relative_to(run_dir).as_posix())
        else:
            found.append((shard, path, marker))
    if missing:
        raise SynthechoError(
            f"generate is incomplete: {len(missing)} of {len(planned)} planned raw shards are missing or "
            f"unfinished (first: {missing[0]}). Run `synthecho generate --recipe ...` to finish them."
        )
    return found


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    """Score, filter and measure the generated rows (see the module docstring for the steps)."""
    from tqdm.auto import tqdm

    from synthecho.generators.base import resolve_device
    from synthecho.manifest import (
        environment_info,
        merge_section,
        recipe_sections,
        update_manifest,
    )
    from synthecho.quality.attributes import train_attribute_classifier
    from synthecho.quality.metrics import resolve_inception_weights
    from synthecho.real import load_real
    from synthecho.segmenter import load_segmenter
    from synthecho.shards import read_marker, remove_shard, shard_matches_marker

    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)
    config = recipe.filter

    # 1. Inputs.
    real = {split: load_real(run_dir, split) for split in ("train", "validation")}
    raw = raw_shards(recipe, run_dir, real)
    segmenter = load_segmenter(layout.segmenter, device=resolve_device(recipe.generate.device))

    # 2. References from real train.
    train = real["train"]
    copies = CopyIndex(train.images, train.ids)
    if config.copy_threshold is not None:
        copy_threshold, calibration = float(config.copy_threshold), {"source": "recipe filter.copy_threshold"}
    else:
        try:
            calibration = {"source": "calibrated", **copies.calibrate(train.records)}
        except ValueError as error:
            raise SynthechoError(
                f"cannot calibrate the near-copy threshold: {error}. Set filter.copy_threshold in the recipe."
            ) from None
        copy_threshold = calibration["threshold"]
    limits = AnatomyLimits.from_masks(train.masks)
    context = ScoringContext(segmenter, copies, limits, dict(config.dice_threshold), copy_threshold)
    settings = sha256_json(
        {
            "version": SCORES_VERSION,
            "dice_threshold": context.dice_threshold,
            "copy_threshold": copy_threshold,
            "limits": limits.to_dict(),
            "segmenter": sha256_file(layout.segmenter / "model.safetensors"),
            "real_train": sha256_file(layout.real_split("train")),
        }
    )

    # 3. Score each raw shard (reusing scored shards whose raw shard and settings are unchanged).
    scored = []
    for shard, raw_path, raw_marker in tqdm(raw, desc="score", disable=not progress, unit="shard"):
        path = layout.scored_shards / raw_path.name
        marker = read_marker(path)
        fresh = (
            marker is not None
            and marker.get("raw_sha256") == raw_marker["sha256"]
            and marker.get("settings") == settings
            and shard_matches_marker(path, marker)
        )
        if force or not fresh:
            marker = score_shard(raw_path, raw_marker, path, context, settings, run_dir)
        scored.append((shard, path, marker))
    current = {path.name for _, path, _ in scored}
    for stale in layout.scored_shards.glob("*.parquet"):  # from an earlier, larger plan
        if stale.name not in current:
            remove_shard(stale)

    # 4. Publishable splits, and what is measured on them.
    classifier, classifier_metrics = train_attribute_classifier(
        train, real["validation"], steps=ATTRIBUTE_STEPS, seed=recipe.seed, progress=progress
    )
    inception_path, inception_note = resolve_inception_weights(config.inception_weights, config.inception_env)
    extractor = None
    if inception_path is not None:
        from synthecho.quality.metrics import InceptionFeatures

        extractor = InceptionFeatures(inception_path, device=segmenter.device)
    entries, collected = write_publishable(
        run_dir, scored, segmenter, classifier, config.feature_dims, extractor, progress
    )

    # 5. Metrics.
    real_domain = {split: segmenter.features(real[split].images, dims=config.feature_dims) for split in real}
    domain, domain_reference = feature_space_metrics(real_domain, collected.domain, config, recipe.seed)
    inception = inception_reference = None
    if extractor is not None:
        real_inception = {split: extractor(real[split].images) for split in real}
        inception, inception_reference = feature_space_metrics(
            real_inception, collected.inception, config, recipe.seed
        )
    metrics = {
        "domain": domain,
        "domain_features": f"segmenter encoder (deepest level, global average pooled, <= {config.feature_dims} dims) at native resolution",
        "inception": inception,
        "inception_note": inception_note,
        "real_reference": {"domain": domain_reference, "inception": inception_reference},
        "kid": {"subsets": config.kid_subsets, "subset_size": config.kid_subset_size, "seed": recipe.seed},
        "copy_threshold": copy_threshold,
        "copy_similarity": "max NCC to real train frames after removing the mean training frame",
        "copy_calibration": calibration,
        "dice_threshold": context.dice_threshold,
        "anatomy_limits": limits.to_dict(),
        "attribute_fidelity": attribute_fidelity(collected, classifier_metrics),
        "mask_fidelity": mask_fidelity(collected, segmenter, real.get("validation") or real["train"]),
    }  # fmt: skip

    # 6. Counts, reports, manifest, marker.
    rejected = {
        reason: sum(collected.rejected[s][reason] for s in collected.rejected) for reason in REJECT_REASONS
    }
    planned = {
        s: sum(len(shard.rows) for shard, _, _ in raw if shard.split == s) for s in collected.generated
    }
    by_split = {
        split: {
            "planned": planned[split],
            "generated": collected.generated[split],
            "passed": collected.passed[split],
            "rejected": sum(collected.rejected[split].values()),
            "rejected_by_reason": collected.rejected[split],
        }
        for split in collected.generated
    }
    counts = {
        "planned": sum(planned.values()),
        "generated": sum(collected.generated.values()),
        "passed": sum(collected.passed.values()),
        "rejected": rejected,
        "by_split": by_split,
    }
    reports = layout.reports
    write_examples_png(reports / "filter_examples.png", collected)
    write_text_atomic(reports / "quality.md", quality_markdown(recipe, counts, metrics))
    update_manifest(run_dir, **recipe_sections(recipe), environment=environment_info(), metrics=metrics)
    merge_section(run_dir, "counts", **counts)
    merge_section(run_dir, "shards", data=entries, prompts=prompts_config_size(run_dir, entries))
    update_manifest(run_dir, schema=schema_record())  # what the card describes: the files just written
    info = {
        "passed": counts["passed"],
        "rejected": rejected,
        "copy_threshold": copy_threshold,
        "domain_kid_overall": domain["overall"].get("kid_mean"),
        "data_shards": len(entries),
    }
    return info
