"""The prepared real dataset (`<run>/real/`): the contract between `prepare` and every later stage.

`prepare` writes one Parquet file per split (`real/train.parquet`, `validation.parquet`, `test.parquet`)
with one row per labelled frame, resized to the recipe resolution. Frames, masks and sectors are stored
as PNG bytes (lossless, small); `load_real` decodes them into stacked numpy arrays for training code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError

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
        )


def real_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "real"


def load_real(run_dir: str | Path, split: str) -> RealSplit:
    """Decode `<run>/real/<split>.parquet`; a clear error if `prepare` has not run."""
    import pyarrow.parquet as pq

    path = real_dir(run_dir) / f"{split}.parquet"
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
    return RealSplit(split, records, stack("image", np.uint8), stack("mask", np.uint8), sectors)
