"""Every completion marker of a run has one schema, written by `synthecho.markers` (a tiny real build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthecho.markers import KINDS, SCHEMA, current_info, read_marker, write_marker
from synthecho.recipe import load_recipe

TINY = [
    "source.phantom.patients=8",
    "source.phantom.size=[96,80]",
    "prepare.resolution=32",
    "prepare.copy_null_renders=1",
    "train.steps=2",
    "train.batch_size=2",
    "train.grid_sampler_steps=1",
    "segmenter.steps=2",
    "segmenter.validate_every=1",
    "generate.variants=1",
    "generate.max_records_per_split=2",
    "generate.steps=1",
    "generate.batch_size=2",
    "generate.batches_per_shard=1",
    "filter.kid_subsets=2",
    "filter.kid_subset_size=2",
    "filter.attribute_steps=2",  # the audit's classifiers: 200 steps x 11 fits would dominate
    "evaluate.tasks=[segmentation]",
    "evaluate.strategies=[real,synthetic,pretrain_finetune]",
    "evaluate.seeds=[0]",
    "evaluate.real_caps=[0.5,1.0]",
    "evaluate.validate_every=1",
    "evaluate.segmentation.steps=1",
    "evaluate.segmentation.finetune_steps=1",
]


def test_write_and_read_a_marker(tmp_path):
    path = tmp_path / "deep" / "x.json"
    marker = write_marker(path, "unit", "seg/real/seed0", {"dice": 0.5}, input_hash="abc", seconds=1.23456)
    assert read_marker(path) == marker and marker["schema"] == SCHEMA and marker["seconds"] == 1.235
    assert current_info(path, "abc") == {"dice": 0.5}
    assert current_info(path, "other inputs") is None  # work done for other inputs does not count
    assert read_marker(tmp_path / "missing.json") is None
    (tmp_path / "broken.json").write_text("{half")  # a torn file is unfinished work, not an error
    assert read_marker(tmp_path / "broken.json") is None
    with pytest.raises(ValueError, match="kind"):
        write_marker(path, "done", "x", {})


def marker_files(run: Path) -> dict[str, list[Path]]:
    """Every marker a run holds, by the kind its location implies."""
    return {
        "stage": sorted(run.rglob("stages/*.json")),
        "shard": sorted(run.rglob(".markers/*.json")),
        "model": sorted(run.rglob("generator/.complete.json"))
        + sorted(run.rglob("segmenter/.complete.json")),
        "source": sorted(run.rglob("source/*/.complete.json")),
        "cap": sorted(run.rglob("caps/*/cap.json")),
        "unit": sorted((run / "downstream" / "units").rglob("*.json")),
    }


@pytest.mark.slow
def test_every_marker_of_a_run_has_the_one_schema(tmp_path):
    from synthecho.stages.build import build

    run = tmp_path / "run"
    build(load_recipe("demo", TINY), run, progress=False)
    found = marker_files(run)
    assert set(found) == set(KINDS)
    for kind, paths in found.items():
        assert paths, f"no {kind} marker in the run"
        for path in paths:
            marker = read_marker(path)
            assert marker is not None, path
            assert set(marker) == {
                "schema",
                "kind",
                "name",
                "input_hash",
                "seconds",
                "finished_at",
                "info",
            }, path
            assert marker["schema"] == SCHEMA and marker["kind"] == kind, path
    stages = {read_marker(path)["name"] for path in found["stage"] if path.parent.parent == run}
    assert stages == {"prepare", "train", "generate", "filter", "evaluate", "card"}
    # The capped sub-run is a run of its own, with its own stage markers.
    assert {read_marker(p)["name"] for p in found["stage"] if "caps" in p.parts} >= {"train", "filter"}
    # No other "finished" idiom is left anywhere in the run.
    leftovers = [
        p for p in run.rglob("*") if p.name.endswith((".hash", ".done.json")) or p.name == ".complete"
    ]
    assert leftovers == []


def test_train_force_retrains_from_step_zero(tmp_path):
    """`--force` redoes the training: the old checkpoints go with the markers (they would be resumed)."""
    from synthecho.manifest import read_manifest
    from synthecho.stages import run_stage

    recipe, run = load_recipe("demo", TINY), tmp_path / "run"
    run_stage("prepare", recipe, run, progress=False)
    run_stage("train", recipe, run, progress=False)
    assert (run / "generator" / "checkpoints" / "step-2").is_dir()
    run_stage("train", recipe, run, force=True, progress=False)
    assert read_manifest(run)["generator"]["train"]["start_step"] == 0
