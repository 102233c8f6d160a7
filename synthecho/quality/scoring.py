"""Scoring generated rows: every check of `quality.scores` applied to a batch, and to a whole shard.

`score_rows` judges a batch of frames against one `ScoringContext` (the segmenter, the copy index and
the thresholds of a run) and names the first failing check of each row; `score_shard` does it for one
raw shard and writes the scored shard (every row, with its scores, `passed` and `reject_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.quality.scores import (
    REJECT_REASONS,
    AnatomyLimits,
    CopyIndex,
    degenerate_reason,
    implausibility,
    mask_consistent,
    mask_dice,
)

SCORES_VERSION = 1  # bump when a check changes: scored shards of an older version are redone
JUDGED_BY_DICE = ("conditioning", "generated")  # mask sources the segmenter can check independently


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


def decode_column(cells: list) -> np.ndarray:
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
    images = decode_column([row["image"] for row in rows])
    masks = decode_column([row["mask"] for row in rows])
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
