"""`synthecho regenerate` on a tiny real demo build: rows come back bit-identical on the same CPU from the
published folder plus its locally laid-out generator folder, and from the run folder; a changed row is
named (exit 1); a wrong generator or an unknown row is one error line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_markers import TINY

from synthecho.layout import hub
from synthecho.real import decode_png, encode_png

REPO = Path(__file__).resolve().parents[1]
# The tiny demo of the marker test, with 8 planned rows in batches of 3 (so batches of 3 and of 1) and a
# filter that keeps every row (its thresholds are not what is tested here); later --set values win.
TINY_DEMO = [
    *TINY,
    "source.phantom.patients=6",
    "generate.variants=2",
    "generate.steps=2",
    "generate.batch_size=3",
    "filter.dice_threshold={lv: 0.0, myo: 0.0, la: 0.0}",
    "filter.copy_threshold=1.0",
    "evaluate.enabled=false",
]
ROWS = ["demo/train/0", "demo/train/3", "demo/validation/5"]  # three batches: 3 + 1 + 3 rows sampled


def synthecho(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthecho", *args], capture_output=True, text=True, cwd=REPO, timeout=900
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(run dir, published folder, generator folder) of a tiny demo build laid out with --with-generator."""
    root = tmp_path_factory.mktemp("regenerate")
    run_dir, out = root / "run", root / "hub"
    sets = [arg for value in TINY_DEMO for arg in ("--set", value)]
    built = synthecho("build", "--recipe", "demo", "--run-dir", str(run_dir), *sets)
    assert built.returncode == 0, built.stdout + built.stderr
    laid = synthecho(
        "publish", "--recipe", "demo", "--run-dir", str(run_dir), "--to", str(out), "--with-generator", *sets
    )
    assert laid.returncode == 0, laid.stdout + laid.stderr
    return run_dir, out, root / "hub-generator"


def test_the_published_folder_carries_every_planned_row(published):
    run_dir, out, generator = published
    table = pq.read_table(out / hub.REGENERATION_FILE)
    assert table.num_rows == 8 and table.column("id").to_pylist()[:2] == ["demo/train/0", "demo/train/1"]
    assert table.column("batch").to_pylist() == [0, 0, 0, 1, 0, 0, 0, 1]
    maps = [decode_png(data) for data in table.column("conditioning").to_pylist()]
    assert all(m.shape == (32, 32) and m.max() <= 4 for m in maps)
    # The conditioning map holds the sector (class 0 outside, 1 inside) the published 0..3 mask cannot.
    assert all({0, 1} <= set(np.unique(m)) for m in maps)
    assert (generator / "synthecho_generator.json").is_file() and (generator / "README.md").is_file()


def test_three_rows_regenerate_bit_identically_from_the_published_folder(published):
    _, out, generator = published
    result = synthecho(
        "regenerate",
        "--dataset",
        str(out),
        "--generator",
        str(generator),
        *[a for r in ROWS for a in ("--row", r)],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "demo/train/0 (batch 0 of train): identical (1024 pixels)",
        "demo/train/3 (batch 1 of train): identical (1024 pixels)",
        "demo/validation/5 (batch 0 of validation): identical (1024 pixels)",
    ]
    assert lines[3].startswith(
        "regenerate: 3 row(s), 3 batch(es) (7 rows sampled) on cpu fp32; generated on cpu fp32"
    )


def test_rows_regenerate_from_the_run_folder_too(published):
    run_dir, _, _ = published
    result = synthecho("regenerate", "--run-dir", str(run_dir), "--row", "1,6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo/train/1 (batch 0 of train): identical" in result.stdout
    assert "demo/validation/6 (batch 0 of validation): identical" in result.stdout


def test_a_row_that_differs_is_named_and_a_missing_one_reported(published, tmp_path):
    """Positive control: one pixel of one published row changed, another row dropped from data/."""
    _, out, generator = published
    copy = tmp_path / "hub"
    shutil.copytree(out, copy)
    shard = copy / "data" / "train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    image = decode_png(rows[3]["image"]["bytes"]).copy()  # demo/train/3
    value = int(image[10, 10])
    image[10, 10] = value + 7 if value < 128 else value - 7
    rows[3]["image"] = {"bytes": encode_png(image), "path": None}
    rows = [row for row in rows if row["id"] != "demo/train/0"]
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), shard)

    result = synthecho(
        "regenerate", "--dataset", str(copy), "--generator", str(generator), "--row", ",".join(ROWS)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "demo/train/0 (batch 0 of train): regenerated; not published" in result.stdout
    assert (
        "demo/train/3 (batch 1 of train): differs, largest pixel difference 7 (1 of 1024 pixels)"
        in result.stdout
    )
    assert "demo/validation/5 (batch 0 of validation): identical" in result.stdout
    assert "1 row(s) differ on the recorded device and precision: demo/train/3" in result.stderr


def test_a_wrong_generator_and_an_unknown_row_are_one_error_line(published, tmp_path):
    _, out, generator = published
    other = tmp_path / "other-generator"
    shutil.copytree(generator, other)
    config = other / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "note": "changed"}))
    wrong = synthecho("regenerate", "--dataset", str(out), "--generator", str(other), "--row", "0")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    (line,) = wrong.stderr.strip().splitlines()
    assert line.startswith(f"error: {other} holds other weights than the ones that generated this corpus")
    unknown = synthecho(
        "regenerate", "--dataset", str(out), "--generator", str(generator), "--row", "demo/train/99"
    )
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "error: no planned row is called 'demo/train/99': name rows by id (e.g. demo/train/0, demo/train/1) "
        "or by plan index (the `index` column)."
    ]
