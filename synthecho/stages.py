"""Stage bookkeeping: "train generators once".

Each stage writes `<run>/stages/<stage>.json` when it has finished, holding the hash of its inputs (the
recipe sections it reads plus the input hashes of the stages it depends on) and what it measured. A
rerun whose inputs hash the same is skipped; `--force` redoes it. The marker is written last and
atomically, so a crash mid-stage leaves no marker and the rerun redoes (or resumes) the stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from synthecho.io import read_json, sha256_json, write_json_atomic

STAGES = ("prepare", "train", "generate", "filter", "evaluate", "card")

# Recipe sections each stage reads, and the stages whose outputs it consumes.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("source", "prepare"),
    "train": ("generator", "train", "segmenter", "seed"),
    "generate": ("generate",),
    "filter": ("filter",),
    "evaluate": ("evaluate",),
    "card": ("name", "version", "description", "license", "publish"),
}
UPSTREAM: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "train": ("prepare",),
    "generate": ("train", "prepare"),
    "filter": ("generate", "train", "prepare"),
    "evaluate": ("filter", "prepare"),
    "card": ("filter",),
}


def marker_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / f"{stage}.json"


def read_marker(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    path = marker_path(run_dir, stage)
    return read_json(path) if path.is_file() else None


def stage_input_hash(recipe, run_dir: str | Path, stage: str) -> str:
    """Hash of what the stage reads: its recipe sections and its upstream stages' input hashes."""
    dumped = recipe.model_dump(mode="json")
    upstream = {}
    for name in UPSTREAM[stage]:
        marker = read_marker(run_dir, name)
        upstream[name] = marker["input_hash"] if marker else None
    return sha256_json({"sections": {k: dumped[k] for k in STAGE_SECTIONS[stage]}, "upstream": upstream})


def is_current(recipe, run_dir: str | Path, stage: str) -> bool:
    marker = read_marker(run_dir, stage)
    return marker is not None and marker["input_hash"] == stage_input_hash(recipe, run_dir, stage)


def mark_done(
    recipe, run_dir: str | Path, stage: str, info: dict[str, Any], started: float
) -> dict[str, Any]:
    """Record that `stage` finished (written last, atomically)."""
    marker = {
        "stage": stage,
        "input_hash": stage_input_hash(recipe, run_dir, stage),
        "seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "info": info,
    }
    from synthecho.manifest import merge_section

    # Timings go into the manifest too (the card reports them); the marker is still written last.
    merge_section(
        run_dir, "stages", **{stage: {"seconds": marker["seconds"], "finished_at": marker["finished_at"]}}
    )
    write_json_atomic(marker_path(run_dir, stage), marker)
    return marker


def invalidate(run_dir: str | Path, stage: str) -> None:
    """Remove the marker of `stage` (used by --force and --from)."""
    marker_path(run_dir, stage).unlink(missing_ok=True)
