"""Stage `filter`: score every generated row, keep the good ones, measure the corpus.

1. Inputs: every raw shard the plan calls for must be finished (completion marker matching its file);
   the real train/validation splits, the copy null (`real/copy_null.parquet`) and the trained segmenter.
2. References from real data: the attribute classifiers on real train + validation (the filter's, with
   its patient-grouped cross-validated accuracy, and the judge's fold models), the copy check (the
   threshold from the null of legitimate same-anatomy pairs unless the recipe sets one, with the null's
   false-positive rate), the anatomy limits (area range of each structure, real train).
3. Score each raw shard into `shards/scored/<name>.parquet` (`quality.scoring`: every row, with Dice,
   copy similarity, attribute scores, `passed`, `reject_reason`; the judge's audit in the marker). A
   scored shard whose raw shard and settings are unchanged is reused.
4. Write the rows that passed into the publishable splits `data/{split}-{i:05d}-of-{n:05d}.parquet`
   (`quality.corpus`), collecting the counts, the passed rows' domain features (and Inception features
   when the weights exist) and example frames.
5. Dataset metrics (FID/KID per split and overall, real train vs real validation for scale), attribute
   fidelity (the judge on every row and on its warped-real counterpart), phase geometry of the plan (both
   phase policies), the copy check's positive control (planted copies), mask fidelity.
6. Reports (`reports/filter_examples.png`, `reports/copy_nearest.png`, `reports/quality.md`) and
   manifest sections.
"""

from __future__ import annotations

from pathlib import Path

from synthecho.errors import SynthechoError
from synthecho.io import sha256_file, sha256_json, write_text_atomic
from synthecho.layout import RunLayout
from synthecho.quality.corpus import (
    attribute_fidelity,
    audit_fidelity,
    mask_fidelity,
    prompts_config_size,
    write_publishable,
)
from synthecho.quality.metrics import feature_space_metrics
from synthecho.quality.report import quality_markdown, write_copy_nearest_png, write_examples_png
from synthecho.quality.scores import REJECT_REASONS, AnatomyLimits
from synthecho.quality.scoring import SCORES_VERSION, ScoringContext, score_shard
from synthecho.schema import schema_record


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


def attribute_references(recipe, real: dict, progress: bool) -> tuple[object, object, dict, dict]:
    """(filter classifier, judge, classifier metrics, judge metrics), all trained on train + validation.

    The filter's classifier: seed recipe.seed, its accuracy by patient-grouped cross-validation (fold
    seed recipe.seed). The judge: the other architecture, seed recipe.seed + 1, other folds (fold seed
    recipe.seed + 1); its fold models are the judge, so its real accuracy is out-of-patient too.
    """
    import time

    from synthecho.quality.attributes import ARCHITECTURES
    from synthecho.quality.folds import (
        Fit,
        fit_classifiers,
        judge_steps,
        plan_folds,
        plan_judge,
        pooled,
        training_augmentation,
    )

    frames = pooled(real["train"], real["validation"])
    augmentation = training_augmentation(recipe)
    architecture = ARCHITECTURES["filter"]
    options = {
        "steps": recipe.filter.attribute_steps,
        "seed": recipe.seed,
        "augment": augmentation["augment"],
        "view_augment": augmentation["view_augment"],
        "copies": augmentation["copies"],
    }
    started = time.perf_counter()
    # The 11 fits (5 folds + 1 final, then the judge's 5 folds) at once: both cores stay busy to the end.
    filter_folds = plan_folds(frames, architecture, fold_seed=recipe.seed, **options)
    judge_folds = plan_judge(recipe, frames)
    fits = [*filter_folds.fits, Fit(frames, {**options, "architecture": architecture}), *judge_folds.fits]
    models = fit_classifiers(fits, progress=progress)
    folds = len(filter_folds.fits)
    _, filter_cv = filter_folds.result(models[:folds])
    classifier = models[folds]
    judge, judge_cv = judge_folds.result(models[folds + 1 :])
    seconds = round(time.perf_counter() - started, 3)
    classifier_metrics = {
        "model": classifier.architecture.description,
        "input_size": int(min(classifier.architecture.input_size, frames.images.shape[1])),
        "trained_on": frames.split,
        "augmentation": augmentation["description"],
        "n_train": len(frames),
        "steps": recipe.filter.attribute_steps,
        "seed": recipe.seed,
        "cross_validation": filter_cv,
        "seconds": seconds,  # the filter's and the judge's fits ran together: their time is one figure
    }
    judge_metrics = {
        "model": ARCHITECTURES["judge"].description,
        "augmentation": augmentation["description"],
        "seed": recipe.seed + 1,
        "steps": judge_steps(recipe),
        "real": judge_cv,
        "seconds": seconds,
    }
    return classifier, judge, classifier_metrics, judge_metrics


def copy_references(recipe, run_dir: Path, real: dict) -> tuple[object, float, dict]:
    """(copy check, threshold, calibration): the null of legitimate pairs scored as generated rows are."""
    import numpy as np

    from synthecho.plan import perturb_config
    from synthecho.quality.attributes import proportion
    from synthecho.quality.copies import CopyCheck, calibrate, null_sources
    from synthecho.real import load_copy_null

    config = recipe.filter
    check = CopyCheck(real)
    null = load_copy_null(run_dir)
    if not len(null):
        raise SynthechoError(
            f"{RunLayout.of(run_dir).copy_null} holds no pairs (no train/validation record has a "
            f"same-anatomy frame): the copy check cannot be calibrated or measured; "
            f"re-run `synthecho prepare --force`."
        )
    images, sources, patients = null_sources(null, real, perturb_config(recipe), recipe.seed)
    every = check.similarity(images, sources)
    kinds = np.array([pair["kind"] for pair in null.pairs])
    used = np.isin(kinds, list(config.copy_null_kinds))
    if not used.any():
        raise SynthechoError(
            f"{RunLayout.of(run_dir).copy_null} has no pairs of the kinds in filter.copy_null_kinds "
            f"{list(config.copy_null_kinds)} (it has {sorted(set(kinds))}): add one of those kinds."
        )
    scores = every[used]
    calibration = calibrate(
        scores, [p for p, u in zip(patients, used, strict=True) if u], config.copy_null_quantile
    )
    calibration["kinds"] = sorted(set(kinds[used]))
    calibration["by_kind"] = {
        kind: {q: float(np.quantile(every[kinds == kind], float(q))) for q in ("0.5", "0.99", "1.0")}
        | {"pairs": int(np.sum(kinds == kind)), "used": bool(kind in config.copy_null_kinds)}
        for kind in sorted(set(kinds))
    }
    if config.copy_threshold is not None:
        threshold = float(config.copy_threshold)
        calibration = {
            **calibration,
            "source": "recipe filter.copy_threshold",
            "threshold": threshold,
            "false_positive": proportion(int((scores > threshold).sum()), len(scores)),
        }
    else:
        calibration["source"] = "null quantile"
        threshold = calibration["threshold"]
    check.threshold = threshold
    return check, threshold, calibration


def nearest_rows(scored: list[tuple[object, Path, dict]], check, count: int = 3) -> list[tuple]:
    """The `count` generated rows most similar to a real frame: (image, reference, title) each."""
    import numpy as np
    import pyarrow.parquet as pq

    from synthecho.quality.scoring import decode_column, row_sources

    ranked = []
    for shard, path, _ in scored:
        table = pq.read_table(path, columns=["id", "copy_similarity"]).to_pydict()
        ranked += [
            (value, row_id, shard, path)
            for row_id, value in zip(table["id"], table["copy_similarity"], strict=True)
        ]
    ranked.sort(key=lambda item: -item[0])
    out = []
    for _, row_id, shard, path in ranked[:count]:
        rows = [row for row in pq.read_table(path).to_pylist() if row["id"] == row_id]
        sources, _ = row_sources(rows, shard.rows)
        image = decode_column([rows[0]["image"]])
        references = check.references(sources)
        found = check.compare(image, sources, references)
        kind = str(found["nearest"][0])
        if kind == "train":
            reference = check.real["train"].images[int(found["train_index"][0])]
            name = check.train_ids[int(found["train_index"][0])]
        else:
            reference = references[0][0] if kind == "source" else references[1][0]
            name = f"{kind} {sources[0].split}:{check.real[sources[0].split].ids[sources[0].index]} (warped)"
        title = f"{row_id}\nspeckle NCC {float(found['similarity'][0]):.3f} to {name}"
        out.append((image[0], np.asarray(reference), title))
    return out


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    """Score, filter and measure the generated rows (see the module docstring for the steps)."""
    from tqdm.auto import tqdm

    from synthecho.generators.base import resolve_device
    from synthecho.manifest import environment_info, merge_section, recipe_sections, update_manifest
    from synthecho.quality.copies import planted_copies
    from synthecho.quality.metrics import resolve_inception_weights
    from synthecho.quality.phase import phase_geometry
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

    # 2. References from real data.
    classifier, judge, classifier_metrics, judge_metrics = attribute_references(recipe, real, progress)
    copies, copy_threshold, calibration = copy_references(recipe, run_dir, real)
    limits = AnatomyLimits.from_masks(real["train"].masks)
    attribute_threshold = dict(config.attribute_threshold)
    context = ScoringContext(
        segmenter,
        copies,
        limits,
        dict(config.dice_threshold),
        copy_threshold,
        classifier,
        attribute_threshold,
        judge,
    )
    settings = sha256_json(
        {
            "version": SCORES_VERSION,
            "dice_threshold": context.dice_threshold,
            "copy_threshold": copy_threshold,
            "attribute_threshold": attribute_threshold,
            "classifier": classifier.sha256(),
            "judge": judge.sha256(),
            "limits": limits.to_dict(),
            "segmenter": sha256_file(layout.segmenter / "model.safetensors"),
            "real": {split: sha256_file(layout.real_split(split)) for split in real},
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
            marker = score_shard(raw_path, raw_marker, path, context, settings, run_dir, shard.rows)
        scored.append((shard, path, marker))
    current = {path.name for _, path, _ in scored}
    for stale in layout.scored_shards.glob("*.parquet"):  # from an earlier, larger plan
        if stale.name not in current:
            remove_shard(stale)

    # 4. Publishable splits, and what is measured on them.
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
    plan = [row for shard, _, _ in raw for row in shard.rows]
    fidelity = attribute_fidelity(collected, classifier_metrics)
    fidelity["independent"] = audit_fidelity(scored, judge_metrics)
    fidelity["attribute_threshold"] = attribute_threshold
    copy_check = {
        "representation": (
            "frame minus its Gaussian blur (speckle band), sector eroded, normalised cross-correlation"
        ),
        "compared_with": [
            "own source warped by the row's mask_transform",
            "record's other phase, warped alike",
            "every real train frame",
        ],
        "threshold": copy_threshold,
        "calibration": calibration,
        "planted": planted_copies(copies, plan, copy_threshold, recipe.seed),
    }
    metrics = {
        "domain": domain,
        "domain_features": (
            f"segmenter encoder (deepest level, global average pooled, <= {config.feature_dims} dims) "
            f"at native resolution"
        ),
        "inception": inception,
        "inception_note": inception_note,
        "real_reference": {"domain": domain_reference, "inception": inception_reference},
        "kid": {"subsets": config.kid_subsets, "subset_size": config.kid_subset_size, "seed": recipe.seed},
        "copy_threshold": copy_threshold,
        "copy_similarity": (
            "max speckle NCC to the row's warped source, its record's other phase and every real train frame"
        ),
        "copy_check": copy_check,
        "dice_threshold": context.dice_threshold,
        "anatomy_limits": limits.to_dict(),
        "attribute_fidelity": fidelity,
        "phase_geometry": phase_geometry(recipe, real, plan),
        "mask_fidelity": mask_fidelity(collected, segmenter, real.get("validation") or real["train"]),
    }  # fmt: skip

    # 6. Counts, reports, manifest, marker.
    rejected = {
        reason: sum(collected.rejected[s][reason] for s in collected.rejected) for reason in REJECT_REASONS
    }
    copy_check["rejected"] = rejected["near_copy"]
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
    write_copy_nearest_png(reports / "copy_nearest.png", nearest_rows(scored, copies))
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
