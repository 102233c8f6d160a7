"""A full disk as one clear error: which folder, how much is free there, roughly what the stage needs.

Any stage can hit ENOSPC (a Parquet shard, a checkpoint, the manifest); the stage runner turns that
OSError into `DiskFullError` with this module's message. Stages already write atomically (temporary file,
rename, marker last), so nothing half-written counts as done and a rerun after freeing space redoes only
the unfinished part. The estimate is deliberately rough: it is there to say "tens of megabytes" or "tens
of gigabytes", from what the run already measured (bytes per generated row) or the recipe's resolution.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from synthecho.errors import SynthechoError
from synthecho.layout import RunLayout

FULL_CODES = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
PNG_BYTES_PER_PIXEL = 1.1  # speckle barely compresses: an 8-bit frame's PNG is about its pixel count
ROW_BYTES = 2000  # a row's mask PNG, PNG headers and provenance columns
SHARD_BYTES = 30_000  # a Parquet file's own overhead (schema metadata, page indexes)


class DiskFullError(SynthechoError):
    """A stage ran out of disk space (the message names the folder and what it needs)."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and (
        error.errno in FULL_CODES or "No space left on device" in str(error)
    )


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _shard_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.parquet")) if folder.is_dir() else 0


def _planned_rows(recipe, run: RunLayout) -> tuple[int, int] | None:
    """(rows, shards) the plan will have, from the prepared record counts (no plan is built)."""
    import math

    import pyarrow.parquet as pq

    config = recipe.generate
    rows = shards = 0
    for split in config.splits:
        path = run.real_split(split)
        if not path.is_file():
            return None
        records = pq.ParquetFile(path).metadata.num_rows
        split_rows = min(records, config.max_records_per_split or records) * config.variants
        rows += split_rows
        shards += math.ceil(split_rows / (config.batch_size * config.batches_per_shard))
    return rows, shards


def _measured_bytes_per_row(folder: Path) -> float | None:
    """Bytes per row of the shards this run already finished (their markers say both)."""
    from synthecho.shards import read_marker

    markers = [read_marker(p) for p in folder.glob("*.parquet")] if folder.is_dir() else []
    markers = [m for m in markers if m and m.get("rows")]
    return sum(m["bytes"] for m in markers) / sum(m["rows"] for m in markers) if markers else None


def estimate_bytes(stage: str, recipe, run_dir: Path) -> int | None:
    """Roughly how many bytes `stage` writes into the run for `recipe` (None when there is no estimate)."""
    run = RunLayout.of(run_dir)
    try:
        if stage == "generate":
            planned = _planned_rows(recipe, run)
            if not planned:
                return None
            rows, shards = planned
            measured = _measured_bytes_per_row(run.raw_shards)
            if measured:
                return int(rows * measured)
            side = recipe.prepare.resolution
            return int(rows * (side * side * PNG_BYTES_PER_PIXEL + ROW_BYTES) + shards * SHARD_BYTES)
        if stage == "filter":  # scored copies of every raw row, then the published rows
            return 2 * _shard_bytes(run.raw_shards) or None
        if stage == "publish":  # a copy of data/ when --to is on another file system, + the prompts
            return int(1.2 * _shard_bytes(run.data)) or None
    except (OSError, AttributeError, ValueError):
        return None
    return None


def disk_full_error(stage: str, recipe, run_dir: Path, error: OSError, folder: Path | None = None):
    """The DiskFullError for `error`, raised while `stage` wrote into `folder` (default: the run)."""
    where = Path(error.filename).parent if getattr(error, "filename", None) else Path(folder or run_dir)
    probe = next((p for p in (where, *where.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    need = estimate_bytes(stage, recipe, run_dir)
    needs = f"roughly {human(need)} for {stage} with this recipe" if need else f"room for {stage}'s outputs"
    return DiskFullError(
        f"no space left on the file system of {where} during {stage} ({human(free)} free): it needs "
        f"{needs}; free space there or use --run-dir on a larger disk, then rerun (finished work is kept, "
        f"nothing half-written counts as done)."
    )
