"""Stage `filter`: score every generated row, keep the good ones, measure the corpus (DESIGN §6, §8).

1. Inputs: every raw shard the plan calls for must be finished (completion marker matching its file);
   the real train/validation splits and the trained segmenter.
2. References from real train: the copy index and its threshold (calibrated on ED-vs-ES pairs unless the
   recipe sets one), the anatomy limits (area range of each structure).
3. Score each raw shard into `shards/scored/<name>.parquet` (every row, with Dice, copy similarity,
   `passed`, `reject_reason`). A scored shard whose raw shard and settings are unchanged is reused.
4. Write the rows that passed into the publishable splits `data/{split}-{i:05d}-of-{n:05d}.parquet`,
   collecting along the way the counts, the passed rows' domain features (and Inception features when
   the weights exist), attribute predictions and example frames.
5. Dataset metrics (FID/KID per split and overall, real train vs real validation for scale), attribute
   fidelity (classifiers trained on real data).
6. Reports (`reports/filter_examples.png`, `reports/quality.md`), manifest sections, stage marker.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.io import sha256_file, sha256_json, write_text_atomic
from synthecho.quality.scores import (
    REJECT_REASONS,
    AnatomyLimits,
    CopyIndex,
    degenerate_reason,
    implausibility,
    mask_consistent,
    mask_dice,
)
from synthecho.stages import is_current, mark_done
from synthecho.stages import read_marker as read_stage_marker

STAGE = "filter"
SCORES_VERSION = 1  # bump when a check changes: scored shards of an older version are redone
DATA_SHARD_ROWS = 1000  # rows per published shard (~20-40 MB at 256 px): few files, cheap downloads
ATTRIBUTE_STEPS = 200  # training steps of the view/phase classifier (seconds on a CPU)
EXAMPLES_PER_GROUP = 6  # frames per row of the kept-vs-rejected picture
JUDGED_BY_DICE = ("conditioning", "generated")  # mask sources the segmenter can check independently


# --- scoring ----------------------------------------------------------------------------------------


@dataclass
class ScoringContext:
    """What a row is judged against (built once per run from real train and the recipe)."""

    segmenter: object  # synthecho.segmenter.Segmenter
    copies: CopyIndex
    limits: AnatomyLimits
    dice_threshold: dict[str, float]
    copy_threshold: float


def score_rows(
    images: np.ndarray, masks: np.ndarray, mask_sources: list[str], context: ScoringContext
) -> dict:
    """Quality columns and verdict of a batch of rows ((N, H, W) uint8 images and masks).

    Returns {"dice_lv", "dice_myo", "dice_la": lists of float or None (None for segmenter-drawn masks),
    "copy_similarity": list of float, "nearest_train": list of int, "passed": list of bool,
    "reject_reason": list of str or None, "detail": list of str}. The reason is the first failing check
    in the order of `REJECT_REASONS`.
    """
    unknown = sorted(set(mask_sources) - {*JUDGED_BY_DICE, "segmenter"})
    if unknown:
        raise SynthechoError(
            f"unknown mask_source values {unknown}: expected conditioning/generated/segmenter"
        )
    predicted = context.segmenter.predict(images)
    dice = mask_dice(predicted, masks)
    consistent = mask_consistent(dice, context.dice_threshold)
    similarity, nearest = context.copies.nearest(images)

    result: dict[str, list] = {
        key: [] for key in ("dice_lv", "dice_myo", "dice_la", "reject_reason", "detail")
    }
    for i, source in enumerate(mask_sources):
        judged = source in JUDGED_BY_DICE
        for name in ("lv", "myo", "la"):
            result[f"dice_{name}"].append(float(dice[name][i]) if judged else None)
        # The checks, in REJECT_REASONS order: the first that fails names the reason.
        if detail := degenerate_reason(images[i]):
            failed = ("degenerate", detail)
        elif judged and not consistent[i]:
            failed = ("mask_inconsistent", _dice_detail(dice, i, context.dice_threshold))
        elif not judged and (detail := implausibility(masks[i], context.limits)):
            failed = ("implausible_anatomy", detail)
        elif similarity[i] > context.copy_threshold:
            failed = ("near_copy", f"NCC {similarity[i]:.3f} > {context.copy_threshold:.3f}")
        else:
            failed = (None, "")
        result["reject_reason"].append(failed[0])
        result["detail"].append(failed[1])
    result["copy_similarity"] = [float(value) for value in similarity]
    result["nearest_train"] = [int(value) for value in nearest]
    result["passed"] = [reason is None for reason in result["reject_reason"]]
    return result


def _dice_detail(dice: dict, i: int, thresholds: dict) -> str:
    failing = [
        f"{name} {dice[name][i]:.2f} < {limit:.2f}"
        for name, limit in thresholds.items()
        if dice[name][i] < limit
    ]
    return "Dice " + ", ".join(failing)


def _decode_column(cells: list) -> np.ndarray:
    from synthecho.real import decode_png

    return np.stack([decode_png(cell["bytes"]) for cell in cells])


def _check_resolution(images: np.ndarray, copies: CopyIndex, where: str) -> None:
    if tuple(images.shape[1:]) != copies.shape:
        raise SynthechoError(
            f"{where}: generated frames are {images.shape[1]}x{images.shape[2]} but the real training frames "
            f"are {copies.shape[0]}x{copies.shape[1]}: generate at prepare.resolution (re-run generate)."
        )


def score_shard(
    raw_path: Path, raw_marker: dict, path: Path, context: ScoringContext, settings: str, run_dir: Path
) -> dict:
    """Score every row of one raw shard into the scored shard `path` (all rows, verdict columns filled);
    returns its completion marker, which also holds the counts and what it was scored against."""
    from synthecho.schema import scored_features
    from synthecho.shards import read_shard, write_shard

    rows = read_shard(raw_path).to_pylist()
    images = _decode_column([row["image"] for row in rows])
    masks = _decode_column([row["mask"] for row in rows])
    _check_resolution(images, context.copies, raw_path.relative_to(run_dir).as_posix())
    verdict = score_rows(images, masks, [row["mask_source"] for row in rows], context)
    for i, row in enumerate(rows):
        for key in ("dice_lv", "dice_myo", "dice_la", "copy_similarity", "passed", "reject_reason"):
            row[key] = verdict[key][i]
    reasons = [reason for reason in verdict["reject_reason"] if reason]
    extra = {
        "raw": raw_path.relative_to(run_dir).as_posix(),
        "raw_sha256": raw_marker["sha256"],
        "settings": settings,
        "passed": int(sum(verdict["passed"])),
        "rejected": {reason: reasons.count(reason) for reason in REJECT_REASONS},
    }
    return write_shard(path, rows, scored_features(), extra=extra)


# --- inputs -----------------------------------------------------------------------------------------


def raw_shards(recipe, run_dir: Path, real: dict) -> list[tuple[object, Path, dict]]:
    """(ShardPlan, path, marker) of every planned raw shard; an error naming what is missing otherwise."""
    from synthecho.generate import shard_path
    from synthecho.plan import build_plan, shards_of
    from synthecho.shards import read_marker, shard_matches_marker

    planned = shards_of(build_plan(recipe, real))
    found, missing = [], []
    for shard in planned:
        path = shard_path(run_dir, shard)
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


# --- collected while writing the publishable splits -------------------------------------------------


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

    data_dir = run_dir / "data"
    features = corpus_features()
    columns = list(features)
    collected = Collected()
    entries: list[dict] = []
    splits = list(dict.fromkeys(shard.split for shard, _, _ in scored))
    for split in splits:
        shards = [(path, marker) for shard, path, marker in scored if shard.split == split]
        total = sum(marker["passed"] for _, marker in shards)
        count = math.ceil(total / DATA_SHARD_ROWS)
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
            images = _decode_column([row["image"] for row in kept])
            collected.domain[split].append(segmenter.features(images, dims=feature_dims))
            if inception is not None:
                collected.inception[split].append(inception(images))
            predicted = classifier.predict(images)
            for attribute, names in (("view", VIEWS), ("phase", PHASES)):
                collected.predicted[split][attribute].extend(predicted[attribute].tolist())
                collected.claimed[split][attribute].extend(names[row[attribute]] for row in kept)
            for row in kept:  # fill data shards of DATA_SHARD_ROWS rows, in plan order
                if current is None:
                    current = ShardFile(data_dir / f"{split}-{number:05d}-of-{count:05d}.parquet", features)
                current.add_rows([row])
                in_current += 1
                if in_current == DATA_SHARD_ROWS:
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


# --- reports ----------------------------------------------------------------------------------------


def write_examples_png(path: Path, collected: Collected) -> None:
    """Kept vs rejected frames, each with its mask outlined and the reason / scores above it."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import binary_erosion

    from synthecho.grids import MASK_COLOURS
    from synthecho.io import write_bytes_atomic

    # Rejected frames taken in turn from each reason, so every reason that occurred is shown.
    by_reason = [collected.examples.get(reason, []) for reason in REJECT_REASONS]
    rejected = [group[i] for i in range(EXAMPLES_PER_GROUP) for group in by_reason if i < len(group)]
    groups = [("kept", collected.examples.get("kept", [])), ("rejected", rejected[:EXAMPLES_PER_GROUP])]
    columns = max(1, *(len(examples) for _, examples in groups))
    figure, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 5.4), squeeze=False)
    try:
        for r, (label, examples) in enumerate(groups):
            for c in range(columns):
                axis = axes[r][c]
                axis.axis("off")
                if c >= len(examples):
                    if c == 0:
                        axis.text(0.5, 0.5, f"no {label} rows", ha="center", va="center")
                    continue
                image, mask, title = examples[c]
                rgb = np.repeat(image[:, :, None], 3, axis=2).copy()
                for value in (1, 2, 3):  # outline each structure in its CAMUS colour
                    region = mask == value
                    rgb[region & ~binary_erosion(region)] = MASK_COLOURS[value]
                axis.imshow(rgb, interpolation="nearest")
                axis.set_title(title, fontsize=7, color="black" if r == 0 else "darkred")
            axes[r][0].text(
                -0.08,
                0.5,
                label,
                transform=axes[r][0].transAxes,
                rotation=90,
                ha="right",
                va="center",
                fontsize=11,
            )
        figure.suptitle("filter: kept rows (top) and rejected rows with their reasons (bottom)", fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def _fraction(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt(value, digits: int = 3) -> str:
    """Significant digits, not decimals: domain-feature KIDs are ~1e-4, Inception FIDs ~10-100."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def quality_markdown(recipe, counts: dict, metrics: dict) -> str:
    """`reports/quality.md`: counts by reason, dataset metrics by feature space, thresholds, fidelity."""
    lines = [f"# Quality of {recipe.name} {recipe.version}", "", "## Rows", ""]
    lines += [
        "| split | generated | passed | " + " | ".join(REJECT_REASONS) + " |",
        "|---" * (3 + len(REJECT_REASONS)) + "|",
    ]
    for split, values in counts["by_split"].items():
        reasons = " | ".join(str(values["rejected_by_reason"].get(reason, 0)) for reason in REJECT_REASONS)
        lines.append(f"| {split} | {values['generated']} | {values['passed']} | {reasons} |")
    overall = " | ".join(str(counts["rejected"][reason]) for reason in REJECT_REASONS)
    lines.append(f"| all | {counts['generated']} | {counts['passed']} | {overall} |")
    lines += [
        "",
        "## Dataset metrics",
        "",
        "KID is the headline at small N (unbiased); FID is biased upwards when N is small.",
        "",
    ]
    lines += [
        "| feature space | comparison | n real | n synthetic | KID (mean ± std) | FID |",
        "|---|---|---|---|---|---|",
    ]
    spaces = [("domain (segmenter encoder)", metrics["domain"], metrics["real_reference"]["domain"])]
    if metrics["inception"] is not None:
        spaces.append(("inception (clean-fid)", metrics["inception"], metrics["real_reference"]["inception"]))
    for space, per_split, reference in spaces:
        rows = [(f"synthetic {split} vs real", values) for split, values in per_split.items()]
        rows.append(("real train vs real validation (reference)", reference))
        for label, values in rows:
            kid = (
                f"{_fmt(values.get('kid_mean'))} ± {_fmt(values.get('kid_std'))}"
                if values.get("kid_mean") is not None
                else values.get("note", "–")
            )
            lines.append(
                f"| {space} | {label} | {values['n_real']} | {values['n_synthetic']} | {kid} | {_fmt(values.get('fid'))} |"
            )
    lines += ["", f"Inception: {metrics['inception_note']}", "", "## Thresholds", ""]
    calibration = metrics["copy_calibration"]
    lines.append(
        f"- near copy: NCC (after removing the mean training frame) to the closest real training frame above "
        f"**{metrics['copy_threshold']:.4f}** ({calibration['source']}"
        + (
            f"; max over {calibration['pairs']} real ED-vs-ES pairs, median {calibration['quantiles']['0.5']:.3f}"
            if calibration.get("pairs")
            else ""
        )
        + ")"
    )
    lines.append(
        "- mask consistency (segmenter vs row mask, Dice): "
        + ", ".join(f"{k} ≥ {v}" for k, v in metrics["dice_threshold"].items())
    )
    limits = metrics["anatomy_limits"]
    ranges = ", ".join(
        f"{name} in [{limits['area_min'][name]:.3f}, {limits['area_max'][name]:.3f}]"
        for name in limits["area_min"]
    )
    lines.append(f"- anatomy (segmenter-drawn masks): area fraction {ranges}; LA centroid below LV centroid")
    from synthecho.card import mask_fidelity_sentence

    lines += ["", "## Mask fidelity", "", mask_fidelity_sentence(metrics.get("mask_fidelity"))]
    fidelity = metrics["attribute_fidelity"]
    validation = fidelity["classifier"]["validation"]
    lines += ["", "## Attribute fidelity", ""]
    lines.append(
        f"Classifiers trained on real train; on real validation they reach view accuracy "
        f"{_fraction(validation['view_accuracy'])} and phase accuracy {_fraction(validation['phase_accuracy'])} "
        f"(the ceiling for the agreement below)."
    )
    lines += ["", "| split | view agreement | phase agreement |", "|---|---|---|"]
    for split, values in fidelity["by_split"].items():
        lines.append(
            f"| {split} | {_fraction(values['view_agreement'])} | {_fraction(values['phase_agreement'])} |"
        )
    lines.append(
        f"| overall | {_fraction(fidelity['view_agreement'])} | {_fraction(fidelity['phase_agreement'])} |"
    )
    return "\n".join(lines) + "\n"


# --- metrics ----------------------------------------------------------------------------------------


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


def _compare(real: np.ndarray, synthetic: np.ndarray, config, seed: int) -> dict:
    from synthecho.quality.metrics import compare

    values = compare(
        real, synthetic, subsets=config.kid_subsets, subset_size=config.kid_subset_size, seed=seed
    )
    if values["kid_mean"] is None:  # fewer than 2 rows on a side: say so instead of a number
        return {
            "n_real": values["n_real"],
            "n_synthetic": values["n_synthetic"],
            "note": "fewer than 2 rows on a side: no distribution to compare",
        }
    return values


def feature_space_metrics(
    real: dict[str, np.ndarray], synthetic: dict[str, list], config, seed: int
) -> tuple[dict, dict]:
    """One feature space: ({split: ..., "overall": ...}, real train vs real validation).

    Each split's passed rows are compared with the real split of the same name; "overall" pools every
    split on both sides. `synthetic` maps split -> list of (n, d) feature blocks (possibly empty).
    """
    width = real["train"].shape[1]

    def stack(splits) -> np.ndarray:
        blocks = [block for split in splits for block in synthetic[split]]
        return np.concatenate(blocks) if blocks else np.zeros((0, width))

    result = {split: _compare(real[split], stack([split]), config, seed) for split in synthetic}
    everything = np.concatenate([real[split] for split in synthetic])
    result["overall"] = _compare(everything, stack(list(synthetic)), config, seed)
    reference = _compare(real["train"], real["validation"], config, seed)
    return result, reference


def attribute_fidelity(collected: Collected, classifier_metrics: dict) -> dict:
    """Agreement of the real-trained classifiers with the passed rows' claimed view/phase, per split and
    overall, with the classifiers' own real validation accuracy alongside (the ceiling)."""
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


# --- stage ------------------------------------------------------------------------------------------


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
    if not force and is_current(recipe, run_dir, STAGE):
        return {"skipped": True, **read_stage_marker(run_dir, STAGE)["info"]}
    started = time.time()
    config = recipe.filter

    # 1. Inputs.
    real = {split: load_real(run_dir, split) for split in ("train", "validation")}
    raw = raw_shards(recipe, run_dir, real)
    segmenter = load_segmenter(run_dir / "segmenter", device=resolve_device(recipe.generate.device))

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
            "segmenter": sha256_file(run_dir / "segmenter" / "model.safetensors"),
            "real_train": sha256_file(run_dir / "real" / "train.parquet"),
        }
    )

    # 3. Score each raw shard (reusing scored shards whose raw shard and settings are unchanged).
    scored = []
    for shard, raw_path, raw_marker in tqdm(raw, desc="score", disable=not progress, unit="shard"):
        path = run_dir / "shards" / "scored" / raw_path.name
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
    for stale in (run_dir / "shards" / "scored").glob("*.parquet"):  # from an earlier, larger plan
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
    reports = run_dir / "reports"
    write_examples_png(reports / "filter_examples.png", collected)
    write_text_atomic(reports / "quality.md", quality_markdown(recipe, counts, metrics))
    update_manifest(run_dir, **recipe_sections(recipe), environment=environment_info(), metrics=metrics)
    merge_section(run_dir, "counts", **counts)
    merge_section(run_dir, "shards", data=entries, prompts=prompts_config_size(run_dir, entries))
    info = {
        "passed": counts["passed"],
        "rejected": rejected,
        "copy_threshold": copy_threshold,
        "domain_kid_overall": domain["overall"].get("kid_mean"),
        "data_shards": len(entries),
    }
    marker = mark_done(recipe, run_dir, STAGE, info, started)
    return {"skipped": False, "seconds": marker["seconds"], **info}
