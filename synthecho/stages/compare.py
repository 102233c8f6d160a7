"""`synthecho compare`: the four generators' corpora side by side, as DiffEcho compared them.

`synthecho compare phantom` builds each member recipe (`COMPARISONS`) with the comparison's shared
settings (`SHARED_SETTINGS`: the same downstream study, warp controls included, for every member) into
`runs/<comparison>/<member>/` — a member already built is skipped stage by stage, as `build` does — and
then, once `synthecho.comparison.check_fair` has found every shared part identical:

1. realism: the classifier two-sample test (`synthecho.quality.realism`) of each member's generated
   train rows against the real train frames, its real-vs-real reference and its positive control;
2. the grid: the same validation conditioning maps (rows) through every generator (columns);
3. the sampler sweep: every generator at 5 / 10 / 20 / 50 solver steps on the same validation maps
   (mask Dice, view / phase agreement by the filter's judge, realism, images/s), and the SDM with
   1000-step DDPM ancestral sampling on a few of them;
4. the comparison manifest (`comparison.json`, copying what the table shows from each member's
   manifest), its card (`README.md`) and the charts, in `runs/<comparison>/`.

`--commit` copies the manifest to `manifests/<comparison>/<version>.json` and the card and PNGs to
`cards/<comparison>/`, which `card --check` then re-renders from the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError


@dataclass(frozen=True)
class ComparisonSpec:
    name: str
    version: str
    members: tuple[str, ...]  # recipe names, one per generator
    description: str
    settings: tuple[str, ...] = ()  # --set overrides every member gets, besides SHARED_SETTINGS


COMPARISONS = {
    "phantom": ComparisonSpec(
        "phantom-comparison",
        "0.1.0",
        ("demo", "ddpm-phantom", "sd-phantom", "controlnet-phantom"),
        "The four generators of DiffEcho and Echo from noise (SDM on the label map, class-conditional DDPM "
        "with joint masks, text-guided latent diffusion, ControlNet on map + text), each trained on the "
        "same 30-patient phantom with CPU-sized recipes, filtered by the same segmenter and classifiers, "
        "and judged by the same downstream study.",
    ),
    "9k": ComparisonSpec(
        "camus-comparison",
        "0.1.0",
        ("sdm-9k", "ddpm-9k", "sd-9k", "controlnet-9k"),
        "The four generators trained on CAMUS with their GPU recipes, compared on the same source, "
        "filter and downstream study. ddpm-9k runs at 256 px here like the others (its own recipe uses "
        "DiffEcho's 128 px): about 4x its GPU time per step.",
        settings=(  # one resolution for every member, so one segmenter and one downstream U-Net
            "prepare.resolution=256",
            "evaluate.segmentation.channels=[2, 4, 8, 16, 32, 64, 128, 256]",
            "evaluate.segmentation.strides=[2, 2, 2, 2, 2, 2, 2]",
        ),
    ),
}

# Applied to every member: one downstream study, with the warp controls that isolate what the generator
# adds beyond the perturbed label maps. Everything else the member recipes already share (checked).
SHARED_SETTINGS = (
    "evaluate.enabled=true",
    "evaluate.strategies=[real, synthetic, warped, pretrain_finetune, warped_pretrain_finetune]",
)


@dataclass(frozen=True)
class CompareSettings:
    """How much work the comparison's own measurements get (the tests shrink it)."""

    sweep_steps: tuple[int, ...] = (5, 10, 20, 50)
    sweep_rows: int = 32  # validation maps per sweep setting, spread over patients and views
    ancestral_steps: int = 1000  # the SDM's DDPM sampling as Echo from noise ran it ...
    ancestral_rows: int = 8  # ... on a few maps: 1000 network calls per row
    grid_rows: int = 6
    realism_steps: int = 150  # synthecho.quality.realism.STEPS


def member_run_dirs(spec: ComparisonSpec, root: Path) -> dict[str, Path]:
    return {name: Path(root) / name for name in spec.members}


def _generated_train_frames(run_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Every generated train row (before filtering) and its source patient."""
    import pyarrow.parquet as pq

    from synthecho.layout import RunLayout
    from synthecho.real import decode_png

    images, patients = [], []
    for path in sorted(RunLayout.of(run_dir).raw_shards.glob("train-*.parquet")):
        table = pq.read_table(path, columns=["image", "source_patient"]).to_pydict()
        images += [decode_png(cell["bytes"]) for cell in table["image"]]
        patients += table["source_patient"]
    if not images:
        raise SynthechoError(f"{run_dir}: no generated train shards; build the member first")
    return np.stack(images), patients


def _spread(rows: list, count: int) -> list:
    """`count` rows spread over the list (so over patients and views), in plan order."""
    if len(rows) <= count:
        return list(rows)
    return [rows[int(i)] for i in np.linspace(0, len(rows) - 1, count).round()]


def _sample(sampler, segmenter, rows, real, *, name: str, steps: int, guidance: float, batch_size: int = 8):
    """(images, the masks the rows carry, seconds) for plan rows, as `generate` makes them: conditioning
    masks, the generator's own masks, or the segmenter's labels of its frames (`mask_source`)."""
    from synthecho.generators.base import as_uint8, row_masks
    from synthecho.plan import conditioning, row_attributes

    images, masks, started = [], [], time.perf_counter()
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        cond_masks, labels = conditioning(batch, real)
        result = sampler.sample(labels, [row.prompt for row in batch], [row.seed for row in batch],
                                sampler=name, steps=steps, guidance_scale=guidance,
                                attributes=row_attributes(batch))  # fmt: skip
        frames = as_uint8(result.images, 255)
        images.append(frames)
        masks.append(row_masks(sampler, result, frames, cond_masks, segmenter))
    return np.concatenate(images), np.concatenate(masks), time.perf_counter() - started


def _proportion(hits: np.ndarray) -> dict:
    from synthecho.quality.attributes import proportion

    return proportion(int(np.sum(hits)), len(hits))


def _point(label, images, masks, seconds, rows, sampler, segmenter, judge, real_train, seed, steps) -> dict:
    from synthecho.quality.realism import two_sample_auc
    from synthecho.quality.scores import mask_dice

    predicted = judge.predict(images, [row.source_patient for row in rows])
    point = {
        "label": label,
        "rows": len(images),
        "images_per_second": len(images) / seconds,
        "view": _proportion(predicted["view"] == np.array([row.view for row in rows])),
        "phase": _proportion(predicted["phase"] == np.array([row.phase for row in rows])),
        "mask_dice": None,
        "realism": None,
    }
    if sampler.mask_source != "segmenter":
        found = mask_dice(segmenter.predict(images), masks)
        point["mask_dice"] = {structure: float(np.mean(values)) for structure, values in found.items()}
    if len(images) >= 16:
        point["realism"] = two_sample_auc(real_train.images, [r["patient"] for r in real_train.records],
                                          images, [row.source_patient for row in rows], seed=seed,
                                          steps=steps)  # fmt: skip
    return point


def run(spec: ComparisonSpec, members: dict, out_dir: Path, *, command: str,
        settings: CompareSettings = CompareSettings(), progress: bool = True) -> dict:  # fmt: skip
    """Compare built member runs (`members`: name -> (recipe, run_dir)); returns the comparison manifest."""
    from tqdm.auto import tqdm

    from synthecho.comparison import COMPARISON_KIND, SHARED_PARTS, check_fair, member_summary
    from synthecho.generators import get_generator
    from synthecho.io import write_json_atomic
    from synthecho.layout import RunLayout
    from synthecho.manifest import environment_info, read_manifest
    from synthecho.plan import build_plan
    from synthecho.quality.folds import fit_judge, pooled
    from synthecho.quality.realism import positive_control, two_sample_auc
    from synthecho.real import load_real
    from synthecho.segmenter import load_segmenter

    started = time.time()
    out_dir = Path(out_dir)
    manifests = {name: read_manifest(run_dir) for name, (_, run_dir) in members.items()}
    check_fair(manifests)
    first_recipe, first_run = next(iter(members.values()))
    real = {split: load_real(first_run, split) for split in ("train", "validation")}
    patients = [record["patient"] for record in real["train"].records]
    seed = first_recipe.seed

    steps = settings.realism_steps
    realism = {"positive_control": positive_control(real["train"].images, patients, seed=seed, steps=steps)}
    realism["reference"] = realism["positive_control"]["reference"]
    realism["members"] = {}
    for name, (_, run_dir) in tqdm(members.items(), desc="realism", disable=not progress):
        generated, sources = _generated_train_frames(run_dir)
        realism["members"][name] = two_sample_auc(
            real["train"].images, patients, generated, sources, seed=seed, steps=steps
        )

    segmenter = load_segmenter(RunLayout.of(first_run).segmenter)
    # The filter's judge, re-fitted exactly as the filter fits it (seconds of work).
    judge, _ = fit_judge(first_recipe, pooled(real["train"], real["validation"]), progress=progress)
    samplers = {
        name: get_generator(recipe.generator.kind).load(RunLayout.of(run_dir).generator, device="cpu")
        for name, (recipe, run_dir) in members.items()
    }
    plans = {name: [row for row in build_plan(recipe, real) if row.split == "validation"]
             for name, (recipe, _) in members.items()}  # fmt: skip

    grid_rows = {name: _spread(plan, settings.grid_rows) for name, plan in plans.items()}
    guidance = {name: recipe.generate.guidance_scale for name, (recipe, _) in members.items()}
    grid = {}
    for name, sampler in samplers.items():  # each generator as its corpus was sampled
        generate = members[name][0].generate
        images, _, _ = _sample(sampler, segmenter, grid_rows[name], real, name=generate.sampler,
                               steps=generate.steps, guidance=guidance[name])  # fmt: skip
        grid[name] = images

    sweep = {"sampler": "dpmsolver++", "rows": settings.sweep_rows, "members": {}}
    for name, sampler in tqdm(samplers.items(), desc="sampler sweep", disable=not progress):
        rows = _spread(plans[name], settings.sweep_rows)
        points = []
        for solver_steps in settings.sweep_steps:
            images, masks, seconds = _sample(sampler, segmenter, rows, real, name="dpmsolver++",
                                             steps=solver_steps, guidance=guidance[name])  # fmt: skip
            points.append(_point(str(solver_steps), images, masks, seconds, rows, sampler, segmenter, judge,
                                 real["train"], seed, steps))  # fmt: skip
        if sampler.kind == "sdm":
            few = rows[: settings.ancestral_rows]
            images, masks, seconds = _sample(
                sampler,
                segmenter,
                few,
                real,
                name="ddpm",
                steps=settings.ancestral_steps,
                guidance=guidance[name],
            )
            points.append(_point(f"{settings.ancestral_steps} (DDPM)", images, masks, seconds, few, sampler,
                                 segmenter, judge, real["train"], seed, steps))  # fmt: skip
        sweep["members"][name] = points

    manifest = {
        "kind": COMPARISON_KIND,
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "command": command,
        "shared_parts": list(SHARED_PARTS),
        "shared_settings": [*SHARED_SETTINGS, *spec.settings],
        "order": list(members),
        "members": {name: member_summary(manifest) for name, manifest in manifests.items()},
        "tasks": list(first_recipe.evaluate.tasks),
        "downstream_cap": min(first_recipe.evaluate.real_caps),
        "realism": realism,
        "sweep": sweep,
        "environment": environment_info(),
    }
    environment = manifest["environment"]
    manifest["machine"] = (
        f"{environment.get('cpu_model')} ({environment.get('cpu_capability')}, "
        f"{environment.get('torch_threads')} threads)"
    )
    # The members' build time (every stage, as recorded in their manifests) and the comparison's own.
    built = sum(stage.get("seconds", 0) for m in manifests.values() for stage in m.get("stages", {}).values())
    manifest["seconds"] = round(built + time.time() - started, 1)
    manifest["grid_columns"] = ["real frame", "conditioning map"] + [
        name + ("" if samplers[name].mask_source == "conditioning" else " (no map)") for name in samplers
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_figures(out_dir, manifest, grid, grid_rows, real)
    write_json_atomic(out_dir / "comparison.json", manifest)
    from synthecho.comparison import render_comparison
    from synthecho.io import write_text_atomic

    write_text_atomic(out_dir / "README.md", render_comparison(manifest))
    return manifest


def write_figures(out_dir: Path, manifest: dict, grid: dict, grid_rows: dict, real: dict) -> None:
    """The grid (columns `manifest["grid_columns"]`), the sampler sweep chart and the effects chart."""
    from synthecho.grids import colorize_condition, save_grid
    from synthecho.plan import conditioning

    names = list(grid)
    reference_rows = grid_rows[names[0]]
    _, labels = conditioning(reference_rows, real)
    rows = []
    for i, row in enumerate(reference_rows):
        source = real[row.split].images[row.source_index]
        rows.append([source, colorize_condition(labels[i]), *(grid[name][i] for name in names)])
    save_grid(rows, out_dir / "comparison_grid.png", labels=manifest["grid_columns"])
    _sweep_chart(manifest["sweep"], manifest["order"], out_dir / "sampler_sweep.png")
    _effects_chart(manifest, out_dir / "downstream_effects.png")


def _sweep_chart(sweep: dict, order: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        (
            "mean mask Dice",
            lambda p: float(np.mean(list(p["mask_dice"].values()))) if p["mask_dice"] else None,
        ),
        ("view agreement", lambda p: p["view"]["rate"]),
        ("realism AUC (0.5 = real)", lambda p: p["realism"]["auc"] if p["realism"] else None),
    )
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    try:
        for axis, (title, read) in zip(axes, panels, strict=True):
            for name in order:
                points = sweep["members"][name]
                kept = [(p["images_per_second"], read(p), p["label"]) for p in points if read(p) is not None]
                if not kept:
                    continue
                axis.plot([k[0] for k in kept], [k[1] for k in kept], marker="o", label=name)
                for x, y, label in kept:
                    axis.annotate(
                        label.split()[0], (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3)
                    )
            axis.set_xscale("log")
            axis.set_xlabel("images/s (log)")
            axis.set_title(title)
        axes[0].legend(fontsize=7)
        figure.suptitle("sampler sweep: labels are solver steps")
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def _effects_chart(manifest: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthecho.comparison import EFFECT_COLUMNS
    from synthecho.layout import cap_label

    cap_key = cap_label(float(manifest["downstream_cap"]))
    members = {name: manifest["members"][name] for name in manifest["order"]}
    tasks = manifest["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), dpi=100, squeeze=False)
    try:
        width = 0.8 / len(EFFECT_COLUMNS)
        for axis, task in zip(axes[0], tasks, strict=True):
            for j, (label, a, b) in enumerate(EFFECT_COLUMNS):
                means, errors = [], [[], []]
                for member in members.values():
                    effect = member["downstream_effects"].get(f"{cap_key}/{task}/{a}-vs-{b}") or {}
                    mean = effect.get("mean_difference")
                    if mean is None or effect.get("ci_low") is None:
                        means.append(np.nan)
                        errors[0].append(0)
                        errors[1].append(0)
                        continue
                    means.append(100 * mean)
                    errors[0].append(100 * (mean - effect["ci_low"]))
                    errors[1].append(100 * (effect["ci_high"] - mean))
                x = np.arange(len(members)) + (j - (len(EFFECT_COLUMNS) - 1) / 2) * width
                axis.bar(x, means, width, yerr=errors, capsize=2, label=label)
            axis.axhline(0, color="0.3", linewidth=0.8)
            axis.set_xticks(np.arange(len(members)), list(members), rotation=20, fontsize=8)
            axis.set_title(task)
            axis.set_ylabel("points (95 % interval)")
        axes[0][0].legend(fontsize=6)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
