"""`synthecho build`: every stage in order, each skipped when its inputs are unchanged.

Generators are trained once: rerunning `build` after an interruption finds `prepare` and `train`
current and resumes `generate` at the first shard without a completion marker. `--force` redoes every
stage; `--from STAGE` redoes that stage and the ones after it.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from synthecho.errors import SynthechoError
from synthecho.stages import STAGES, invalidate, is_current

STAGE_MODULES = {
    "prepare": "synthecho.prepare",
    "train": "synthecho.train",
    "generate": "synthecho.generate",
    "filter": "synthecho.quality.filter",
    "evaluate": "synthecho.downstream.evaluate",
    "card": "synthecho.card",
}


def stages_to_run(recipe) -> list[str]:
    return [stage for stage in STAGES if stage != "evaluate" or recipe.evaluate.enabled]


def pending_stages(recipe, run_dir: Path, *, force: bool = False, redo: list[str] = ()) -> list[str]:
    """The stages `build` would run: all with --force, else those not current plus `redo`."""
    return [s for s in stages_to_run(recipe) if force or s in redo or not is_current(recipe, run_dir, s)]


def build(
    recipe, run_dir: Path, *, force: bool = False, from_stage: str | None = None, progress: bool = True
) -> str:
    """Run the whole pipeline; returns a plain-text summary."""
    from synthecho import preflight

    run_dir = Path(run_dir)
    stages = stages_to_run(recipe)
    if from_stage is not None and from_stage not in stages:
        raise SynthechoError(f"--from {from_stage!r}: expected one of {', '.join(stages)}")
    redo = stages[stages.index(from_stage) :] if from_stage is not None else []
    # Everything this build will run must find its inputs before anything starts (or is invalidated).
    preflight.check(recipe, set(pending_stages(recipe, run_dir, force=force, redo=redo)))
    for stage in redo:
        invalidate(run_dir, stage)
    started = time.time()
    results = {}
    for stage in stages:
        module = importlib.import_module(STAGE_MODULES[stage])
        results[stage] = module.run(recipe, run_dir, force=force, progress=progress)
    return summarize(recipe, run_dir, results, time.time() - started)


def summarize(recipe, run_dir: Path, results: dict, seconds: float) -> str:
    from synthecho.manifest import read_manifest

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
                f"  domain KID {split}: {values['kid_mean']:.4f} ± {values.get('kid_std', 0):.4f}, FID {values.get('fid', float('nan')):.2f}"
            )
    lines.append(
        f"  outputs: {run_dir / 'data'} (corpus), {run_dir / 'README.md'} (card), "
        f"{run_dir / 'manifest.json'}, {run_dir / 'reports'}"
    )
    return "\n".join(lines)
