"""The prepared real dataset (`<run>/real/`): the contract between `prepare` and every later stage.

`prepare` writes one Parquet file per split (`real/train.parquet`, `validation.parquet`, `test.parquet`)
with one row per labelled frame, resized to the recipe resolution (`record_row`, `write_split`). Frames,
masks and sectors are stored as PNG bytes (lossless, small); `load_real` decodes them into stacked numpy
arrays for training code. When the source is the phantom, `real/test_truth.parquet` holds the clean
rendering masks of the test frames (`write_truth`): `load_real(run, "test")` attaches them as `truth`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.io import atomic_path
from synthecho.labels import sector_from_image
from synthecho.layout import RunLayout

SPLITS = ("train", "validation", "test")

# Scalar columns of a real/ Parquet file (besides the image/mask/sector PNG bytes).
SCALAR_COLUMNS = (
    "id",  # release-prefixed record id, e.g. phantom2023/patient0007_4CH_ES
    "patient",
    "split",
    "view",  # 2CH | 4CH
    "phase",  # ED | ES
    "sex",  # F | M
    "age",
    "image_quality",  # Good | Medium | Poor
    "ef",
    "spacing_row_mm",  # pixel spacing after resize
    "spacing_col_mm",
    "shape_lv",
    "shape_myo",
    "shape_la",
    "prompt",  # image-level generation prompt
    "source_file",
)
IMAGE_COLUMNS = ("image", "mask", "sector")


def encode_png(array: np.ndarray, palette: bool = False) -> bytes:
    """uint8 (H, W) array -> PNG bytes; `palette` writes a CAMUS-coloured palette image (mask indices)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette(MASK_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: ~1 ms per frame, near level-9 size
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("L", "P"):
            image = image.convert("L")
        return np.asarray(image, dtype=np.uint8)


# Palette for masks: black background, red LV, green myocardium, blue LA (viewers show colours).
MASK_PALETTE = [0, 0, 0, 220, 50, 50, 50, 200, 80, 60, 110, 230] + [0, 0, 0] * 252


@dataclass
class RealSplit:
    """One split of the prepared real data, decoded."""

    split: str
    records: list[dict] = field(default_factory=list)  # SCALAR_COLUMNS per row
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))  # (N, H, W) uint8
    masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))  # (N, H, W) 0..3
    sectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), bool))  # (N, H, W) bool
    # (N, H, W) 0..3: what the frames were rendered from, free of label noise (phantom test split only)
    truth: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [record["id"] for record in self.records]

    def subset(self, indices) -> RealSplit:
        indices = list(indices)
        return RealSplit(
            split=self.split,
            records=[self.records[i] for i in indices],
            images=self.images[indices],
            masks=self.masks[indices],
            sectors=self.sectors[indices],
            truth=None if self.truth is None else self.truth[indices],
        )


def load_real(run_dir: str | Path, split: str) -> RealSplit:
    """Decode `<run>/real/<split>.parquet`; a clear error if `prepare` has not run."""
    import pyarrow.parquet as pq

    path = RunLayout.of(run_dir).real_split(split)
    if not path.is_file():
        raise SynthechoError(f"{path} is missing: run `synthecho prepare --recipe ...` first.")
    table = pq.read_table(path)
    columns = table.to_pydict()
    count = table.num_rows
    records = [{name: columns[name][i] for name in SCALAR_COLUMNS} for i in range(count)]

    def stack(name: str, dtype) -> np.ndarray:
        if count == 0:
            return np.zeros((0, 0, 0), dtype)
        return np.stack([decode_png(blob) for blob in columns[name]]).astype(dtype)

    sectors = stack("sector", np.uint8) > 0
    loaded = RealSplit(split, records, stack("image", np.uint8), stack("mask", np.uint8), sectors)
    if split == "test":
        loaded.truth = load_truth(run_dir, loaded.ids)
    return loaded


def load_truth(run_dir: str | Path, ids: list[str]) -> np.ndarray | None:
    """The test frames' truth masks in the order of `ids`, or None when the run has none (CAMUS)."""
    import pyarrow.parquet as pq

    path = RunLayout.of(run_dir).test_truth
    if not path.is_file():
        return None
    columns = pq.read_table(path).to_pydict()
    if columns["id"] != list(ids):
        raise SynthechoError(
            f"{path} holds the truth of other frames than {RunLayout.of(run_dir).real_split('test')}: "
            "re-run `synthecho prepare --recipe ... --force`."
        )
    if not ids:
        return np.zeros((0, 0, 0), np.uint8)
    return np.stack([decode_png(blob) for blob in columns["mask"]]).astype(np.uint8)


# --- writing (the prepare stage) ----------------------------------------------------------------------


def resize_frame(image: np.ndarray, mask: np.ndarray, sector: np.ndarray, resolution: int):
    """Image: area averaging (no aliasing of speckle); mask and sector: nearest (labels stay labels)."""
    from PIL import Image

    size = (resolution, resolution)
    image_small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX), dtype=np.uint8)
    mask_small = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST), dtype=np.uint8)
    sector_img = Image.fromarray(sector.astype(np.uint8) * 255)
    sector_small = np.asarray(sector_img.resize(size, Image.Resampling.NEAREST)) > 0
    # The fan is where the image is; labels never leave it (resampling can shift an edge pixel).
    image_small = np.where(sector_small, image_small, 0).astype(np.uint8)
    mask_small = np.where(sector_small, mask_small, 0).astype(np.uint8)
    return image_small, mask_small, sector_small


def record_row(record, resolution: int) -> dict:
    """One row of a real/ Parquet file from a source record (CAMUS reader), resized to `resolution`."""
    from synthecho.prompts import Attributes, image_prompt, shapes_of

    sector = sector_from_image(record.image)
    image, mask, sector = resize_frame(record.image, record.mask, sector, resolution)
    rows, cols = record.image.shape
    shapes = shapes_of(mask)
    attrs = Attributes(record.view, record.phase, record.sex, record.age, record.image_quality)
    return {
        "id": record.id,
        "patient": record.patient,
        "split": record.split,
        "view": record.view,
        "phase": record.phase,
        "sex": record.sex,
        "age": int(record.age),
        "image_quality": record.image_quality,
        "ef": None if record.ef is None else float(record.ef),
        "spacing_row_mm": float(record.spacing[0]) * rows / resolution,
        "spacing_col_mm": float(record.spacing[1]) * cols / resolution,
        "shape_lv": shapes["lv"],
        "shape_myo": shapes["myo"],
        "shape_la": shapes["la"],
        "prompt": image_prompt(attrs),
        "source_file": record.source_file,
        "image": encode_png(image),
        "mask": encode_png(mask, palette=True),
        "sector": encode_png(sector.astype(np.uint8)),
    }


def write_split(rows: list[dict], path: Path) -> None:
    """Write one split's rows as `real/<split>.parquet` (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [row[name] for row in rows] for name in SCALAR_COLUMNS + IMAGE_COLUMNS}
    types = {name: pa.binary() for name in IMAGE_COLUMNS}
    types.update(
        {
            "age": pa.int32(),
            "ef": pa.float64(),
            "spacing_row_mm": pa.float64(),
            "spacing_col_mm": pa.float64(),
        }
    )
    table = pa.table(
        {name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_truth(rows: list[dict], path: Path) -> None:
    """Write `real/test_truth.parquet`: {"id", "mask" (uint8 label map)} per test frame, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([row["id"] for row in rows], type=pa.string()),
            "mask": pa.array([encode_png(row["mask"], palette=True) for row in rows], type=pa.binary()),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def real_content_hash(rows: list[dict]) -> str:
    """Hash over ids, decoded pixels and attributes: survives a PNG/pyarrow upgrade, unlike file bytes."""
    digest = hashlib.sha256()
    for row in rows:
        scalars = {name: row[name] for name in SCALAR_COLUMNS if name != "source_file"}
        digest.update(json.dumps(scalars, sort_keys=True, default=str).encode())
        for name in IMAGE_COLUMNS:
            digest.update(decode_png(row[name]).tobytes())
    return digest.hexdigest()


def check_patient_splits(rows: list[dict]) -> dict[str, int]:
    """Patients per split; no patient may appear in two splits (that would leak test anatomy)."""
    seen: dict[str, str] = {}
    for row in rows:
        other = seen.setdefault(row["patient"], row["split"])
        if other != row["split"]:
            raise SynthechoError(f"patient {row['patient']} appears in splits {other} and {row['split']}")
    return {split: sum(1 for s in seen.values() if s == split) for split in SPLITS}


# --- the copy check's null: legitimate same-anatomy frames (`real/copy_null.parquet`) ------------------

# kind: "rerender" (phantom: the record's geometry imaged again with fresh speckle seeds), "other_phase"
# (the other labelled phase of the record's recording), "neighbour_frame" (a frame of the recording's
# half sequence next to the record's). made_from: the record id the frame *is*, when it is one.
COPY_NULL_COLUMNS = ("record_id", "split", "kind", "detail", "made_from")


@dataclass
class CopyNull:
    """Null pairs: (record `pairs[i]["record_id"]`, frame `images[i]`), frames at the prepared resolution."""

    pairs: list[dict] = field(default_factory=list)  # COPY_NULL_COLUMNS per pair
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))

    def __len__(self) -> int:
        return len(self.pairs)


def write_copy_null(pairs: list[dict], images: list[np.ndarray], path: Path) -> None:
    """Write `real/copy_null.parquet` (COPY_NULL_COLUMNS + the frame as PNG bytes), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: pa.array([pair[name] for pair in pairs], type=pa.string()) for name in COPY_NULL_COLUMNS}
    columns["image"] = pa.array([encode_png(image) for image in images], type=pa.binary())
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp, compression="zstd")


def load_copy_null(run_dir: str | Path) -> CopyNull:
    """Decode `real/copy_null.parquet`; a clear error naming the fix when `prepare` did not write it."""
    import pyarrow.parquet as pq

    path = RunLayout.of(run_dir).copy_null
    if not path.is_file():
        raise SynthechoError(
            f"{path} is missing: it is written by `synthecho prepare` since the copy check's null was added; "
            f"re-run `synthecho prepare --recipe ... --force` (the filter measures the copy check on it)."
        )
    columns = pq.read_table(path).to_pydict()
    pairs = [
        dict(zip(COPY_NULL_COLUMNS, values, strict=True))
        for values in zip(*(columns[n] for n in COPY_NULL_COLUMNS), strict=True)
    ]
    images = (
        np.stack([decode_png(blob) for blob in columns["image"]]) if pairs else np.zeros((0, 0, 0), np.uint8)
    )
    return CopyNull(pairs, images)
