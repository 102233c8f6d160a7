"""`synthecho regenerate` on a tiny real demo build: rows come back bit-identical on the same CPU from the
published folder plus its locally laid-out generator folder, and from the run folder; a changed row is
named (exit 1); a wrong generator or an unknown row is one error line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_markers import TINY

from synthecho.layout import hub
from synthecho.real import decode_png, encode_png

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
pytestmark = pytest.mark.slow  # one tiny real build (about a minute of CPU), shared by the module
ROWS = ["demo/train/0", "demo/train/3", "demo/validation/5"]  # three batches: 3 + 1 + 3 rows sampled


class Result:
    def __init__(self, exit_code: int, output: str) -> None:
        self.returncode, self.output = exit_code, output


def synthecho(*args: str) -> Result:
    """The real `synthecho` command line, in this process (torch and the models load once)."""
    from typer.testing import CliRunner

    from synthecho.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.output)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(run dir, published folder, generator folder) of a tiny demo build laid out with --with-generator."""
    root = tmp_path_factory.mktemp("regenerate")
    run_dir, out = root / "run", root / "hub"
    sets = [arg for value in TINY_DEMO for arg in ("--set", value)]
    built = synthecho("build", "--recipe", "demo", "--run-dir", str(run_dir), *sets)
    assert built.returncode == 0, built.output
    laid = synthecho(
        "publish", "--recipe", "demo", "--run-dir", str(run_dir), "--to", str(out), "--with-generator", *sets
    )
    assert laid.returncode == 0, laid.output
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
    assert result.returncode == 0, result.output
    lines = result.output.splitlines()
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
    assert result.returncode == 0, result.output
    assert "demo/train/1 (batch 0 of train): identical" in result.output
    assert "demo/validation/6 (batch 0 of validation): identical" in result.output


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
    assert result.returncode == 1, result.output
    assert "demo/train/0 (batch 0 of train): regenerated; not published" in result.output
    assert (
        "demo/train/3 (batch 1 of train): differs, largest pixel difference 7 (1 of 1024 pixels)"
        in result.output
    )
    assert "demo/validation/5 (batch 0 of validation): identical" in result.output
    assert "1 row(s) differ on the recorded device and precision: demo/train/3" in result.output


def test_a_wrong_generator_and_an_unknown_row_are_one_error_line(published, tmp_path):
    _, out, generator = published
    other = tmp_path / "other-generator"
    shutil.copytree(generator, other)
    config = other / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "note": "changed"}))
    wrong = synthecho("regenerate", "--dataset", str(out), "--generator", str(other), "--row", "0")
    assert wrong.returncode == 2 and "Traceback" not in wrong.output
    (line,) = wrong.output.strip().splitlines()
    assert line.startswith(f"error: {other} holds other weights than the ones that generated this corpus")
    unknown = synthecho(
        "regenerate", "--dataset", str(out), "--generator", str(generator), "--row", "demo/train/99"
    )
    assert unknown.returncode == 2
    assert unknown.output.strip().splitlines() == [
        "error: no planned row is called 'demo/train/99': name rows by id (e.g. demo/train/0, demo/train/1) "
        "or by plan index (the `index` column)."
    ]
