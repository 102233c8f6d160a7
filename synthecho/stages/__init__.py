"""The pipeline: one table of stages and one runner that skips, times and marks every one of them.

    prepare -> train -> generate -> filter -> (evaluate) -> card        (`synthecho build`)
    publish                                                              (its own command)

Each stage is a module of this package with `run(recipe, run_dir, *, force, progress, **options) -> dict`
that does the work and returns what it measured. `run_stage` wraps it: a stage whose inputs (the recipe
sections it reads plus the input hashes of the stages it consumes) are unchanged since its completion
marker was written is skipped ("train generators once"); otherwise it runs, is timed, and its marker is
written last, so an interrupted stage is redone (or resumes its own finished pieces) next time.

A stage module never imports another stage module; library code never imports this package. Work that
needs several stages (`build`, the capped sub-runs of `evaluate`) goes through `run_stage`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthecho.io import sha256_json
from synthecho.layout import RunLayout
from synthecho.markers import read_marker, remove_marker, write_marker


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # recipe sections whose change invalidates the stage
    upstream: tuple[str, ...]  # stages whose outputs it consumes (their input hashes are part of its own)
    requires: str  # outside inputs it needs; its module's `missing_inputs(recipe)` checks them
    in_build: Callable[[Any], bool] = lambda recipe: True  # does `build` run it for this recipe?
    marked: bool = True  # False: run every time (publish pushes whenever asked)

    @property
    def module(self) -> str:
        return f"synthecho.stages.{self.name}"


STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare", ("source", "prepare"), (), "the CAMUS root (source.root), unless the source is the phantom"
    ),
    Stage(
        "train",
        ("generator", "train", "segmenter", "seed"),
        ("prepare",),
        "pretrained base weights and text encoder when the recipe names them (generator.base_model)",
    ),
    Stage("generate", ("generate",), ("train", "prepare"), "nothing outside the run"),
    Stage(
        "filter",
        ("filter",),
        ("generate", "train", "prepare"),
        "nothing outside the run (Inception weights are optional)",
    ),
    Stage(
        "evaluate",
        ("evaluate",),
        ("filter", "prepare"),
        "ImageNet ResNet-18 weights when evaluate.classification.pretrained (CLIPSeg weights are optional)",
        in_build=lambda recipe: recipe.evaluate.enabled,
    ),
    Stage("card", ("name", "version", "description", "license", "publish"), ("filter",), "nothing"),
    Stage(
        "publish",
        ("publish",),
        ("card",),
        "a Hub token for --repo-id",
        in_build=lambda r: False,
        marked=False,
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}
BUILD_ORDER = tuple(stage.name for stage in STAGES if stage.marked)


def stage_module(name: str):
    return importlib.import_module(BY_NAME[name].module)


# --- markers ----------------------------------------------------------------------------------------


def read_stage_marker(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    return read_marker(RunLayout.of(run_dir).stage_marker(stage))


def stage_input_hash(recipe, run_dir: str | Path, stage: str) -> str:
    """Hash of what the stage reads: its recipe sections and its upstream stages' input hashes."""
    dumped = recipe.model_dump(mode="json")
    upstream = {}
    for name in BY_NAME[stage].upstream:
        marker = read_stage_marker(run_dir, name)
        upstream[name] = marker["input_hash"] if marker else None
    return sha256_json(
        {"sections": {key: dumped[key] for key in BY_NAME[stage].sections}, "upstream": upstream}
    )


def is_current(recipe, run_dir: str | Path, stage: str) -> bool:
    marker = read_stage_marker(run_dir, stage)
    return marker is not None and marker["input_hash"] == stage_input_hash(recipe, run_dir, stage)


def mark_done(recipe, run_dir: str | Path, stage: str, info: dict[str, Any], started: float) -> dict:
    """Record that `stage` finished: its timing in the manifest, then its marker (last)."""
    from synthecho.manifest import merge_section

    seconds = round(time.time() - started, 3)
    marker_path = RunLayout.of(run_dir).stage_marker(stage)
    finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    merge_section(run_dir, "stages", **{stage: {"seconds": seconds, "finished_at": finished_at}})
    input_hash = stage_input_hash(recipe, run_dir, stage)
    return write_marker(marker_path, "stage", stage, info, input_hash=input_hash, seconds=seconds)


def invalidate(run_dir: str | Path, stage: str) -> None:
    """Forget that `stage` finished (--force, --from): the next run redoes it."""
    remove_marker(RunLayout.of(run_dir).stage_marker(stage))


# --- the runner -------------------------------------------------------------------------------------


def run_stage(
    name: str, recipe, run_dir: str | Path, *, force: bool = False, progress: bool = True, **options
):
    """Run one stage unless it is current; returns {"skipped", "seconds", **what the stage measured}.

    A stage that finishes only part of its work (one rank of a multi-process `generate` or `train`) returns
    `complete: False`: it is not marked, and whichever process completes the last part marks it.
    `recipe.threads` (`--threads`), when set, is torch's CPU thread count for the stage.
    """
    stage, run_dir = BY_NAME[name], Path(run_dir)
    module = stage_module(name)
    if stage.marked and not force and is_current(recipe, run_dir, name):
        still_fresh = getattr(module, "outputs_current", None)
        if still_fresh is None or still_fresh(recipe, run_dir):
            return {"skipped": True, **read_stage_marker(run_dir, name)["info"]}
    if recipe.threads is not None:  # None: torch's own default, as every run before the key existed
        import torch

        torch.set_num_threads(recipe.threads)
    started = time.time()
    try:
        info = module.run(recipe, run_dir, force=force, progress=progress, **options)
        seconds = round(time.time() - started, 3)
        if stage.marked and info.get("complete", True):
            seconds = mark_done(recipe, run_dir, name, info, started)["seconds"]
    except OSError as error:  # a full disk is the user's to fix: one line naming the folder and the need
        from synthecho.diskspace import disk_full_error, is_disk_full

        if not is_disk_full(error):
            raise
        raise disk_full_error(name, recipe, run_dir, error, folder=options.get("to")) from error
    return {"skipped": False, "seconds": seconds, **info}


def missing_inputs(recipe, pending: set[str]) -> list[str]:
    """One message per outside input that a stage in `pending` needs and this machine lacks."""
    problems = []
    for stage in STAGES:
        check = getattr(stage_module(stage.name), "missing_inputs", None) if stage.name in pending else None
        if check is not None:
            problems += check(recipe)
    return problems
