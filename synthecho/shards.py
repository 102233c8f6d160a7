"""Parquet shards of the corpus: writing, completion markers, content hashes, verification.

A shard is written to a temporary file and renamed into place; only then is its completion marker
`.markers/<shard>.json` written beside it (`synthecho.markers`, kind "shard"; its info holds rows,
bytes, sha256, content_hash, ids_first, ids_last and what the writer adds).
A shard without a marker, or whose file no longer matches its marker, is unfinished and gets redone.
Markers live in a hidden folder so that a shard folder holds only Parquet files: `datasets` skips hidden
paths, so `load_dataset("<run>/data")` reads the corpus as it is.

Files carry the corpus schema (`synthecho.schema`) in their `huggingface` metadata, so
`datasets.load_dataset("parquet", ...)` decodes `image`/`mask` as PIL images and attributes as ClassLabels.
Layout follows what the Hub deduplicates well: ~100-row row groups, image columns stored uncompressed
(PNG is already compressed; zstd over it only costs time), content-defined chunking when pyarrow has it.

The content hash covers row ids, decoded image and mask pixels and prompt text, in row order, so it stays
the same across PNG encoder or pyarrow versions, unlike the file sha256.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from synthecho import profiling
from synthecho.io import sha256_file
from synthecho.layout import hub
from synthecho.markers import read_marker as read_marker_file
from synthecho.markers import write_marker
from synthecho.real import decode_png, encode_png

IMAGE_COLUMNS = ("image", "mask")
ROW_GROUP_SIZE = hub.ROW_GROUP_SIZE
CDC_MIN_PYARROW = 21  # pyarrow 21 added use_content_defined_chunking


# --- markers --------------------------------------------------------------------------------------------


MARKER_DIR = ".markers"


def marker_path(shard_path: str | os.PathLike) -> Path:
    shard_path = Path(shard_path)
    return shard_path.parent / MARKER_DIR / f"{shard_path.name}.json"


def read_marker(shard_path: str | os.PathLike) -> dict | None:
    """The info of the shard's completion marker (rows, bytes, sha256, content_hash, ...), or None."""
    path = marker_path(shard_path)
    # Earlier synthecho versions kept `<shard>.done.json` beside the shard: move it in (atomic,
    # once), so their finished shards are not redone.
    legacy = Path(shard_path).with_name(Path(shard_path).name + ".done.json")
    if legacy.is_file() and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(legacy, path)
    marker = read_marker_file(path)
    if marker is None:
        return None
    # Markers of earlier versions were the info itself, without the common schema around it.
    return marker["info"] if "schema" in marker else marker


def remove_shard(shard_path: str | os.PathLike) -> None:
    """Delete a shard, its marker, and temp files a killed writer left behind (`.<name>.*.tmp`)."""
    shard_path = Path(shard_path)
    marker_path(shard_path).unlink(missing_ok=True)  # marker first: a half-removed shard is never "done"
    shard_path.unlink(missing_ok=True)
    for stale in shard_path.parent.glob(f".{shard_path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


# --- content hash ---------------------------------------------------------------------------------------


def _pixels(value: Any) -> np.ndarray:
    """uint8 pixels of an image cell: numpy array, PIL image, PNG bytes or {"bytes": ..., "path": ...}."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Mapping):
        value = value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()
    if isinstance(value, bytes | bytearray):
        return decode_png(bytes(value))
    if hasattr(value, "mode"):  # PIL image: palette masks keep their indices, as decode_png does
        return np.asarray(value if value.mode in ("L", "P") else value.convert("L"), dtype=np.uint8)
    raise TypeError(f"cannot read pixels from {type(value).__name__}")


class ContentHasher:
    """Incremental sha256 over (id, image pixels, mask pixels, prompt) of each row, in order."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256(b"synthecho-content-v1")

    def _part(self, data: bytes) -> None:
        self._digest.update(len(data).to_bytes(8, "little"))  # length prefix: no ambiguous concatenation
        self._digest.update(data)

    def update(self, row_id: str, image: Any, mask: Any, prompt: str | None) -> None:
        self._part(row_id.encode("utf-8"))
        for value in (image, mask):
            pixels = np.ascontiguousarray(_pixels(value), dtype=np.uint8)
            self._part(np.asarray(pixels.shape, dtype="<i8").tobytes())
            self._part(pixels.tobytes())
        self._part((prompt or "").encode("utf-8"))

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def content_hash(table_or_rows) -> str:
    """Content hash of a pyarrow Table (as read from a shard) or an iterable of row dicts."""
    hasher = ContentHasher()
    if hasattr(table_or_rows, "column_names"):
        table = table_or_rows
        for batch in table.select(["id", "image", "mask", "prompt"]).to_batches(max_chunksize=256):
            columns = batch.to_pydict()
            for row_id, image, mask, prompt in zip(
                columns["id"], columns["image"], columns["mask"], columns["prompt"], strict=True
            ):
                hasher.update(row_id, image, mask, prompt)
    else:
        for row in table_or_rows:
            hasher.update(row["id"], row["image"], row["mask"], row["prompt"])
    return hasher.hexdigest()


# --- writing --------------------------------------------------------------------------------------------


def _leaf_paths(fields, prefix: str = "") -> list[str]:
    """Dotted Parquet column paths of every leaf (pyarrow's per-column options are keyed by them)."""
    import pyarrow as pa

    paths = []
    for item in fields:
        name = f"{prefix}{item.name}"
        if pa.types.is_struct(item.type):
            paths += _leaf_paths(list(item.type), prefix=f"{name}.")
        else:
            paths.append(name)
    return paths


def parquet_writer(where, schema):
    """A ParquetWriter with the corpus layout: PNG columns uncompressed, the rest zstd, CDC if available."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    compression = {
        path: "NONE" if path.split(".")[0] in IMAGE_COLUMNS else "zstd" for path in _leaf_paths(schema)
    }
    options: dict[str, Any] = {"compression": compression, "write_page_index": True}
    if int(pa.__version__.split(".")[0]) >= CDC_MIN_PYARROW:
        options["use_content_defined_chunking"] = True  # pages cut by content: Hub dedup across versions
    return pq.ParquetWriter(where, schema, **options)


class ShardFile:
    """Writes one shard: rows in, PNG-encoded row groups out, atomic rename + marker on `finish`.

    Rows are dicts holding every column of `features`; `image` and `mask` may be uint8 arrays (encoded
    here: 8-bit grayscale PNG and palette PNG) or already {"bytes", "path"} dicts.
    """

    def __init__(self, path: str | os.PathLike, features, row_group_size: int = ROW_GROUP_SIZE) -> None:
        from synthecho.schema import arrow_schema

        self.path = Path(path)
        self.schema = arrow_schema(features)
        self.row_group_size = row_group_size
        self.rows_written = 0
        self.ids: list[str] = []
        self._buffer: list[dict] = []
        self._hasher = ContentHasher()
        self._writer = None
        self._tmp: Path | None = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer = parquet_writer(str(self._tmp), self.schema)

    def add_rows(self, rows: Iterable[dict]) -> None:
        for row in rows:
            row = dict(row)
            with profiling.section("shards/hash"):
                self._hasher.update(row["id"], row["image"], row["mask"], row["prompt"])
            with profiling.section("shards/png"):
                if isinstance(row["image"], np.ndarray):
                    row["image"] = {"bytes": encode_png(row["image"]), "path": None}
                if isinstance(row["mask"], np.ndarray):
                    row["mask"] = {"bytes": encode_png(row["mask"], palette=True), "path": None}
            self.ids.append(row["id"])
            self._buffer.append(row)
            if len(self._buffer) >= self.row_group_size:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer:
            return
        with profiling.section("shards/parquet"):
            if self._writer is None:
                self._open()
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
            self._writer.write_table(table, row_group_size=self.row_group_size)
        self.rows_written += len(self._buffer)
        self._buffer = []

    def finish(self, extra: Mapping | None = None) -> dict:
        """Flush, close, rename into place, then write the completion marker; returns the marker."""
        self._flush()
        if self._writer is None:
            raise ValueError(f"shard {self.path} has no rows; refusing to write an empty shard")
        self._writer.close()
        os.replace(self._tmp, self.path)
        marker = {
            "rows": self.rows_written,
            "bytes": self.path.stat().st_size,
            "sha256": sha256_file(self.path),
            "content_hash": self._hasher.hexdigest(),
            "ids_first": self.ids[0],
            "ids_last": self.ids[-1],
            **dict(extra or {}),
        }
        write_marker(marker_path(self.path), "shard", self.path.name, marker)
        return marker

    def abort(self) -> None:
        """Drop the partial file (the shard stays unfinished and is redone by the next run)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # a broken writer must not hide the error that made us abort
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def write_shard(
    path: str | os.PathLike, rows: Iterable[dict], features, extra: Mapping | None = None
) -> dict:
    """Write `rows` as one finished shard (synchronously); returns its marker."""
    shard = ShardFile(path, features)
    try:
        shard.add_rows(rows)
        return shard.finish(extra)
    except BaseException:
        shard.abort()
        raise


class BackgroundWriter:
    """Runs submitted calls (PNG encoding, Parquet writing) in order on one worker thread.

    The queue is bounded, so the producer (the sampler) runs ahead by at most `max_pending` batches:
    sampling never waits on encoding unless encoding is the slower of the two, and memory stays flat
    however many rows are produced. An error in the worker is raised in the producer at its next call.
    """

    def __init__(self, max_pending: int = 3) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="synthecho-shard-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so a blocked producer wakes up and sees the error
            function, args = item
            try:
                function(*args)
            except BaseException as error:  # noqa: BLE001 - re-raised in the producer thread
                self._error = error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, function: Callable, *args) -> None:
        self._raise_if_failed()
        self._queue.put((function, args))

    def close(self) -> None:
        """Wait for every submitted call to finish; raise the worker's error if it had one."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:  # finish what was queued, but let the producer's own error propagate
            self._queue.put(None)
            self._thread.join()


# --- reading and verification ---------------------------------------------------------------------------


def read_shard(path: str | os.PathLike):
    """The shard as a pyarrow Table (image/mask as {"bytes", "path"} structs, with its schema metadata)."""
    import pyarrow.parquet as pq

    return pq.read_table(path)


def shard_matches_marker(path: str | os.PathLike, marker: Mapping | None = None) -> bool:
    """Cheap check (size, file sha256, row count) that a shard is the file its marker describes."""
    import pyarrow.parquet as pq

    path = Path(path)
    marker = marker if marker is not None else read_marker(path)
    if not marker or not path.is_file() or path.stat().st_size != marker.get("bytes"):
        return False
    if sha256_file(path) != marker.get("sha256"):
        return False
    return pq.ParquetFile(path).metadata.num_rows == marker.get("rows")


def verify_shard(path: str | os.PathLike, *, check_content: bool = True) -> bool:
    """True when the shard has a marker and its bytes, sha256, rows (and content hash) match it."""
    marker = read_marker(path)
    if not shard_matches_marker(path, marker):
        return False
    if not check_content:
        return True
    table = read_shard(path)
    ids = table.column("id").to_pylist()
    return (
        content_hash(table) == marker.get("content_hash")
        and ids[:1] == [marker.get("ids_first")]
        and ids[-1:] == [marker.get("ids_last")]
    )
