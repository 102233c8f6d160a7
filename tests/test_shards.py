"""Shard writer: corpus schema in the metadata, layout, markers, content hash, verification."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from synthecho.real import decode_png, encode_png
from synthecho.schema import MASK_TRANSFORM_FIELDS, corpus_features
from synthecho.shards import (
    BackgroundWriter,
    ShardFile,
    content_hash,
    marker_path,
    read_marker,
    read_shard,
    remove_shard,
    verify_shard,
    write_shard,
)

SIZE = 16


def make_row(index: int) -> dict:
    """A complete corpus row with array pixels (what `generate` hands the writer)."""
    rng = np.random.default_rng(index)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:10, 5:11] = 1 + index % 3
    return {
        "id": f"t/train/{index}",
        "index": index,
        "image": rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8),
        "mask": mask,
        "prompt": f"prompt {index}",
        "shape_lv": "oval",
        "shape_myo": "none",
        "shape_la": "circle",
        "view": index % 2,
        "phase": (index // 2) % 2,
        "sex": 1,
        "image_quality": index % 3,
        "age": 50 + index,
        "generator": "sdm/concat",
        "generator_sha256": "ab" * 32,
        "sampler": "dpmsolver++",
        "steps": 2,
        "guidance_scale": 1.0,
        "seed": 2**62 + index,
        "batch_size": 8,
        "source_id": f"phantom2023/patient{index:04d}_2CH_ED",
        "source_patient": f"patient{index:04d}",
        "source_split": "train",
        "variant": index % 5,
        "mask_transform": {
            name: (index if dtype.startswith("int") else bool(index % 2) if dtype == "bool" else 0.5)
            for name, dtype in MASK_TRANSFORM_FIELDS.items()
        },
        "spacing_mm": {"row": 0.5, "col": 0.25},
        "mask_source": "conditioning",
        "dice_lv": None,
        "dice_myo": None,
        "dice_la": None,
        "copy_similarity": None,
    }


@pytest.fixture
def shard(tmp_path):
    rows = [make_row(i) for i in range(250)]
    path = tmp_path / "shards" / "raw" / "train-00000.parquet"
    marker = write_shard(path, rows, corpus_features(), extra={"split": "train"})
    return path, rows, marker


def test_layout_marker_and_content_hash(shard):
    path, rows, marker = shard
    parquet = pq.ParquetFile(path)
    assert [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)] == [100, 100, 50]
    compression = {
        parquet.metadata.row_group(0).column(i).path_in_schema: parquet.metadata.row_group(0)
        .column(i)
        .compression
        for i in range(parquet.metadata.num_columns)
    }
    assert compression["image.bytes"] == compression["mask.bytes"] == "UNCOMPRESSED"
    assert compression["prompt"] == compression["mask_transform.angle"] == "ZSTD"
    hf = json.loads(parquet.schema_arrow.metadata[b"huggingface"])
    assert hf["info"]["features"] == corpus_features().to_dict()

    assert marker == read_marker(path) and marker["split"] == "train"
    assert marker["rows"] == 250 and marker["bytes"] == path.stat().st_size
    assert (marker["ids_first"], marker["ids_last"]) == ("t/train/0", "t/train/249")
    table = read_shard(path)
    # The hash the writer computed from arrays equals the one recomputed from decoded PNGs.
    assert content_hash(table) == content_hash(rows) == marker["content_hash"]
    assert np.array_equal(decode_png(table.column("mask")[7].as_py()["bytes"]), rows[7]["mask"])
    assert verify_shard(path)
    assert not list(path.parent.glob(".*.tmp"))


def test_datasets_decodes_the_schema(shard, tmp_path):
    from datasets import ClassLabel, load_dataset
    from PIL import Image

    path, rows, _ = shard
    dataset = load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.features == corpus_features()
    for name in ("view", "phase", "sex", "image_quality"):
        assert isinstance(dataset.features[name], ClassLabel)
    row = dataset[3]
    assert isinstance(row["image"], Image.Image) and row["image"].mode == "L"
    assert isinstance(row["mask"], Image.Image) and row["mask"].mode == "P"  # palette: viewers show colours
    assert np.array_equal(np.asarray(row["image"]), rows[3]["image"])
    assert np.array_equal(np.asarray(row["mask"]), rows[3]["mask"])
    assert row["mask_transform"]["elastic_seed"] == 3 and row["mask_transform"]["identity"] is True
    assert row["spacing_mm"] == {"row": 0.5, "col": 0.25} and row["dice_lv"] is None
    assert dataset.features["view"].int2str(row["view"]) == "4CH"  # row 3: index % 2 == 1


def test_content_hash_ignores_encoding_but_not_pixels(shard):
    from PIL import Image

    path, rows, marker = shard

    def reencode(data: bytes) -> bytes:  # same pixels, another PNG encoder setting
        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=9)
            return buffer.getvalue()

    table = read_shard(path).to_pylist()
    for row in table:
        row["image"] = {"bytes": reencode(row["image"]["bytes"]), "path": None}
    assert content_hash(table) == marker["content_hash"]
    table[5]["image"] = {"bytes": encode_png(rows[6]["image"]), "path": None}  # another row's pixels
    assert content_hash(table) != marker["content_hash"]
    table = read_shard(path).to_pylist()
    table[0]["prompt"] = "another prompt"
    assert content_hash(table) != marker["content_hash"]


def test_verify_detects_tampering_and_missing_marker(shard):
    path, _, marker = shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not verify_shard(path)
    remove_shard(path)
    assert not path.exists() and not marker_path(path).exists()
    assert not verify_shard(path)


def test_markers_stay_out_of_the_shard_folder_and_legacy_ones_are_adopted(shard):
    path, _, marker = shard
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".")) == [path.name]
    legacy = path.with_name(path.name + ".done.json")  # where earlier versions wrote it
    marker_path(path).rename(legacy)
    assert read_marker(path) == marker and verify_shard(path)
    assert marker_path(path).is_file() and not legacy.exists()


def test_abort_and_stale_temp_files_leave_nothing(tmp_path):
    path = tmp_path / "train-00001.parquet"
    partial = ShardFile(path, corpus_features(), row_group_size=10)
    partial.add_rows([make_row(i) for i in range(25)])  # two row groups written to the temp file
    assert len(list(tmp_path.glob(".train-00001.parquet.*.tmp"))) == 1
    partial.abort()
    assert list(tmp_path.iterdir()) == []
    # A killed writer leaves its temp file: remove_shard clears it before the shard is redone.
    (tmp_path / ".train-00001.parquet.abc.tmp").write_bytes(b"partial")
    remove_shard(path)
    assert list(tmp_path.iterdir()) == []


def test_background_writer_runs_in_order_and_reraises():
    seen = []
    with BackgroundWriter(max_pending=2) as writer:
        for i in range(20):
            writer.submit(seen.append, i)
    assert seen == list(range(20))

    def fail(_):
        raise RuntimeError("disk full")

    writer = BackgroundWriter(max_pending=1)
    writer.submit(fail, 0)
    with pytest.raises(RuntimeError, match="disk full"):
        for i in range(50):  # the bounded queue keeps draining, so the producer sees the error
            writer.submit(seen.append, i)
        writer.close()
