"""`synthecho build` and `synthecho check`: every stage in order, each skipped when its inputs are unchanged.

Generators are trained once: rerunning `build` after an interruption finds `prepare` and `train`
current and resumes `generate` at the first shard without a completion marker. `--force` redoes every
stage; `--from STAGE` redoes that stage and the ones after it.

Before any work, `build` asks every pending stage for the outside inputs it needs (the CAMUS root, base
weights) and refuses to start, with one line per missing input naming the recipe key and the fix: a
build that prepares CAMUS for minutes and then stops because the Stable Diffusion weights are absent has
wasted the minutes, and one that reports missing inputs one at a time wastes a rerun per input. Stages
already done need nothing: a trained generator can go on generating without the base weights or CAMUS.
Optional weights (Inception for FID, CLIPSeg for the downstream study) are not inputs: their absence is
reported in the outputs, not refused.
"""

from __future__ import annotations

import time
from pathlib import Path

from synthecho.errors import SynthechoError
from synthecho.layout import RunLayout
from synthecho.stages import BUILD_ORDER, BY_NAME, invalidate, is_current, missing_inputs, run_stage


def stages_to_run(recipe) -> list[str]:
    return [stage for stage in BUILD_ORDER if BY_NAME[stage].in_build(recipe)]


def pending_stages(recipe, run_dir: Path, *, force: bool = False, redo: list[str] = ()) -> list[str]:
    """The stages `build` would run: all with --force, else those not current plus `redo`."""
    return [s for s in stages_to_run(recipe) if force or s in redo or not is_current(recipe, run_dir, s)]


def check(recipe, pending: set[str]) -> None:
    """Raise one SynthechoError listing every missing outside input (nothing has been written yet)."""
    problems = missing_inputs(recipe, pending)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise SynthechoError(
            f"recipe {recipe.name!r} needs inputs this machine does not have; nothing was started:\n{listed}"
        )


def build(
    recipe, run_dir: Path, *, force: bool = False, from_stage: str | None = None, progress: bool = True
) -> str:
    """Run the whole pipeline; returns a plain-text summary."""
    run_dir = Path(run_dir)
    stages = stages_to_run(recipe)
    if from_stage is not None and from_stage not in stages:
        raise SynthechoError(f"--from {from_stage!r}: expected one of {', '.join(stages)}")
    redo = stages[stages.index(from_stage) :] if from_stage is not None else []
    # Everything this build will run must find its inputs before anything starts (or is invalidated).
    check(recipe, set(pending_stages(recipe, run_dir, force=force, redo=redo)))
    for stage in redo:
        invalidate(run_dir, stage)
    started = time.time()
    results = {stage: run_stage(stage, recipe, run_dir, force=force, progress=progress) for stage in stages}
    return summarize(recipe, run_dir, results, time.time() - started)


def summarize(recipe, run_dir: Path, results: dict, seconds: float) -> str:
    from synthecho.manifest import read_manifest

    layout = RunLayout.of(run_dir)
    manifest = read_manifest(run_dir)
    lines = [f"synthecho build {recipe.name} {recipe.version}: {seconds:.1f} s in all, run dir {run_dir}"]
    for stage, result in results.items():
        status = "skipped (up to date)" if result.get("skipped") else f"{result.get('seconds', 0):.1f} s"
        lines.append(f"  {stage:9s} {status}")
    generation = manifest.get("generation", {})
    if generation.get("images_per_second"):
        lines.append(
            f"  generation: {generation['images_per_second']:.2f} images/s on {generation.get('device')}"
        )
    counts = manifest.get("counts", {})
    if "passed" in counts:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(counts.get("rejected", {}).items())) or "none"
        lines.append(f"  rows: {counts['passed']} kept of {counts.get('generated')} (rejected: {rejected})")
    domain = manifest.get("metrics", {}).get("domain", {})
    for split, values in sorted(domain.items()):
        if isinstance(values, dict) and "kid_mean" in values:
            lines.append(
                f"  domain KID {split}: {values['kid_mean']:.4f} ± {values.get('kid_std', 0):.4f}, FID "
                f"{values.get('fid', float('nan')):.2f}"
            )
    lines.append(
        f"  outputs: {layout.data} (corpus), {layout.card} (card), {layout.manifest}, {layout.reports}"
    )
    return "\n".join(lines)
