"""Completion markers: the one record that says "this piece of work is finished, for these inputs".

Every resumable piece of a run writes one when it is done — a stage (`stages/<name>.json`), a Parquet
shard (`.markers/<shard>.json`), a trained model (`generator/.complete.json`), the phantom source tree, a
capped sub-run (`caps/cap-p/cap.json`), a downstream unit (`downstream/units/.../<unit>.json`). All use
one JSON schema:

    {"schema": 1, "kind": "stage" | "shard" | "model" | "source" | "cap" | "unit",
     "name": ..., "input_hash": ... or null, "seconds": ... or null, "finished_at": "...Z", "info": {...}}

A marker is written last and atomically (temporary file, then rename), so a crash mid-work leaves no
marker and the rerun redoes (or resumes) that piece; finished work is never mistaken for unfinished, and
half-written work never for finished. `input_hash` names what the work was done for: a marker whose hash
differs from the current inputs does not count (`current_info`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from synthecho.io import read_json, write_json_atomic

SCHEMA = 1
KINDS = ("stage", "shard", "model", "source", "cap", "unit")


def write_marker(
    path: str | os.PathLike,
    kind: str,
    name: str,
    info: dict[str, Any],
    *,
    input_hash: str | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Write the marker of a finished piece of work (atomically) and return it."""
    if kind not in KINDS:
        raise ValueError(f"marker kind must be one of {KINDS}, got {kind!r}")
    marker = {
        "schema": SCHEMA,
        "kind": kind,
        "name": name,
        "input_hash": input_hash,
        "seconds": None if seconds is None else round(float(seconds), 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "info": info,
    }
    write_json_atomic(path, marker)
    return marker


def read_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marker at `path`, or None when there is none (or it is unreadable: then the work is redone)."""
    try:
        marker = read_json(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def current_info(path: str | os.PathLike, input_hash: str) -> dict[str, Any] | None:
    """The marker's `info` when the work at `path` is finished for exactly these inputs, else None."""
    marker = read_marker(path)
    if marker is None or marker.get("input_hash") != input_hash:
        return None
    return marker.get("info")


def remove_marker(path: str | os.PathLike) -> None:
    """Forget that the work is finished (the next run redoes it)."""
    Path(path).unlink(missing_ok=True)
