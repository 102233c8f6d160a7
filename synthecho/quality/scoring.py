"""Scoring generated rows: every check of `quality.scores` applied to a batch, and to a whole shard.

`score_rows` judges a batch of frames against one `ScoringContext` (the segmenter, the copy check, the
attribute classifier and the thresholds of a run) and names the first failing check of each row;
`score_shard` does it for one raw shard and writes the scored shard (every row, with its scores, `passed`
and `reject_reason`). Every row is also shown to the attribute judge, with its warped-real counterpart,
before any verdict: the shard's marker keeps what the judge said (`audit`), the corpus metrics pool it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.quality.copies import CopyCheck, Source
from synthecho.quality.scores import (
    REJECT_REASONS,
    AnatomyLimits,
    degenerate_reason,
    implausibility,
    mask_consistent,
    mask_dice,
)

SCORES_VERSION = 2  # bump when a check changes: scored shards of an older version are redone
JUDGED_BY_DICE = ("conditioning", "generated")  # mask sources the segmenter can check independently


@dataclass
class ScoringContext:
    """What a row is judged against (built once per run from the real splits and the recipe)."""

    segmenter: object  # synthecho.segmenter.Segmenter
    copies: CopyCheck
    limits: AnatomyLimits
    dice_threshold: dict[str, float]
    copy_threshold: float
    classifier: object  # quality.attributes.AttributeClassifier: view_score / phase_score
    attribute_threshold: dict[str, float | None]  # {"view": 0.5, "phase": None}: None = not judged
    judge: object | None = None  # quality.folds.AttributeJudge: the audit (None: no audit)


def score_rows(
    images: np.ndarray,
    masks: np.ndarray,
    mask_sources: list[str],
    context: ScoringContext,
    sources: list[Source],
    claims: list[dict],
) -> dict:
    """Quality columns and verdict of a batch of rows ((N, H, W) uint8 images and masks).

    `sources`: each row's real source record and `mask_transform`; `claims`: each row's {"view", "phase",
    "patient"} (CAMUS spelling; patient of the source). Returns {"dice_lv", "dice_myo", "dice_la": lists
    of float or None (None for segmenter-drawn masks), "copy_similarity", "view_score", "phase_score":
    lists of float, "copy_nearest": list of str, "passed": list of bool, "reject_reason": list of str or
    None, "detail": list of str, "audit": {...} or None}. The reason is the first failing check in the
    order of `REJECT_REASONS`.
    """
    unknown = sorted(set(mask_sources) - {*JUDGED_BY_DICE, "segmenter"})
    if unknown:
        raise SynthechoError(
            f"unknown mask_source values {unknown}: expected conditioning/generated/segmenter"
        )
    predicted = context.segmenter.predict(images)
    dice = mask_dice(predicted, masks)
    consistent = mask_consistent(dice, context.dice_threshold)
    references = context.copies.references(sources)
    copies = context.copies.compare(images, sources, references)
    views, phases = [c["view"] for c in claims], [c["phase"] for c in claims]
    scores = context.classifier.scores(images, views, phases)

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
        elif copies["similarity"][i] > context.copy_threshold:
            failed = (
                "near_copy",
                f"speckle NCC {copies['similarity'][i]:.3f} to the {copies['nearest'][i]} "
                f"> {context.copy_threshold:.3f}",
            )
        elif detail := _attribute_detail(scores, i, context.attribute_threshold):
            failed = ("attribute_mismatch", detail)
        else:
            failed = (None, "")
        result["reject_reason"].append(failed[0])
        result["detail"].append(failed[1])
    result["copy_similarity"] = [float(value) for value in copies["similarity"]]
    result["copy_nearest"] = [str(value) for value in copies["nearest"]]
    result["view_score"] = [float(value) for value in scores["view"]]
    result["phase_score"] = [float(value) for value in scores["phase"]]
    result["passed"] = [reason is None for reason in result["reject_reason"]]
    result["audit"] = None
    if context.judge is not None:
        patients = [c["patient"] for c in claims]
        generated = context.judge.predict(images, patients)
        warped = context.judge.predict(references[0], patients)
        result["audit"] = {
            "view": [bool(a == b) for a, b in zip(generated["view"], views, strict=True)],
            "phase": [bool(a == b) for a, b in zip(generated["phase"], phases, strict=True)],
            "warped_view": [bool(a == b) for a, b in zip(warped["view"], views, strict=True)],
            "warped_phase": [bool(a == b) for a, b in zip(warped["phase"], phases, strict=True)],
        }
    return result


def _dice_detail(dice: dict, i: int, thresholds: dict) -> str:
    failing = [
        f"{name} {dice[name][i]:.2f} < {limit:.2f}"
        for name, limit in thresholds.items()
        if dice[name][i] < limit
    ]
    return "Dice " + ", ".join(failing)


def _attribute_detail(scores: dict, i: int, thresholds: dict) -> str:
    failing = [
        f"p(claimed {name}) {scores[name][i]:.2f} < {limit:.2f}"
        for name, limit in thresholds.items()
        if limit is not None and scores[name][i] < limit
    ]
    return ", ".join(failing)


def decode_column(cells: list) -> np.ndarray:
    from synthecho.real import decode_png

    return np.stack([decode_png(cell["bytes"]) for cell in cells])


def _check_resolution(images: np.ndarray, copies: CopyCheck, where: str) -> None:
    shape = copies.real["train"].images.shape[1:]
    if tuple(images.shape[1:]) != tuple(shape):
        raise SynthechoError(
            f"{where}: generated frames are {images.shape[1]}x{images.shape[2]} but the real training frames "
            f"are {shape[0]}x{shape[1]}: generate at prepare.resolution (re-run generate)."
        )


def row_sources(rows: list[dict], plan_rows) -> tuple[list[Source], list[dict]]:
    """Each raw row's `Source` (from its plan row: the exact transform, not the float32 column) and claim."""
    from synthecho.schema import PHASES, VIEWS

    by_id = {row.id: row for row in plan_rows}
    missing = [row["id"] for row in rows if row["id"] not in by_id]
    if missing:
        raise SynthechoError(f"raw rows {missing[:3]} are not in the plan: re-run `synthecho generate`.")
    planned = [by_id[row["id"]] for row in rows]
    sources = [Source(p.split, p.source_index, p.mask_transform) for p in planned]
    claims = [
        {"view": VIEWS[row["view"]], "phase": PHASES[row["phase"]], "patient": p.source_patient}
        for row, p in zip(rows, planned, strict=True)
    ]
    return sources, claims


def score_shard(
    raw_path: Path,
    raw_marker: dict,
    path: Path,
    context: ScoringContext,
    settings: str,
    run_dir: Path,
    plan_rows=(),
) -> dict:
    """Score every row of one raw shard into the scored shard `path` (all rows, verdict columns filled);
    returns its completion marker, which also holds the counts, what it was scored against and the
    attribute judge's audit of every row."""
    from synthecho.schema import scored_features
    from synthecho.shards import read_shard, write_shard

    rows = read_shard(raw_path).to_pylist()
    images = decode_column([row["image"] for row in rows])
    masks = decode_column([row["mask"] for row in rows])
    _check_resolution(images, context.copies, raw_path.relative_to(run_dir).as_posix())
    sources, claims = row_sources(rows, plan_rows)
    verdict = score_rows(images, masks, [row["mask_source"] for row in rows], context, sources, claims)
    columns = ("dice_lv", "dice_myo", "dice_la", "copy_similarity", "view_score", "phase_score")
    for i, row in enumerate(rows):
        for key in (*columns, "passed", "reject_reason"):
            row[key] = verdict[key][i]
    reasons = [reason for reason in verdict["reject_reason"] if reason]
    extra = {
        "raw": raw_path.relative_to(run_dir).as_posix(),
        "raw_sha256": raw_marker["sha256"],
        "settings": settings,
        "passed": int(sum(verdict["passed"])),
        "rejected": {reason: reasons.count(reason) for reason in REJECT_REASONS},
        "copy_nearest": verdict["copy_nearest"],
        "audit": verdict["audit"],
    }
    return write_shard(path, rows, scored_features(), extra=extra)
