"""Stage `evaluate`: downstream baselines on the real test split, with the statistics a claim needs.

For every real-data cap, task, strategy and seed a model is trained (selected on real validation) and
tested on the real test split; the per-image results are kept so strategies can be compared image by
image.

1. Tasks: `segmentation` (MONAI U-Net), `phase` and `view` (ResNet-18), `clipseg` (one task per prompt
   level, skipped with a stated reason when no local CLIPSeg weights are configured).
2. Real-data caps. A cap p < 1 keeps round(p x train patients) patients (at least one), drawn once with
   `recipe.seed` (patient level, the same subset for every evaluation seed). The synthetic rows of a
   capped row must not have seen the held-back patients — neither through the generator nor through
   the filter's segmenter — so each cap gets a sub-run `<run>/caps/cap-{p}/` whose `real/train.parquet`
   is the capped subset (validation and test are copied unchanged), and the existing stages
   train -> generate -> filter run there (its `prepare` marker is written here: `prepare` itself would
   rebuild the full split). A changed subset deletes the sub-run and rebuilds it. Cap 1.0 is the run itself.
3. Strategies (synthecho.downstream): real, synthetic, pretrain_finetune (the synthetic model of the same
   seed fine-tuned on real), real_plus_synthetic; real-only and real+synthetic train as many steps as
   pretrain+fine-tune together (`training_steps`). Each finished (cap, task, strategy, seed) is cached in
   `<run>/downstream/units/` with the hash of its inputs, so an interrupted study resumes.
4. Statistics: mean ± sample std over seeds of each test metric; per-image metrics averaged over seeds,
   then a paired two-sided Wilcoxon signed-rank test between every pair of strategies, per structure
   (segmentation Dice) or on per-image correctness (classification: the fraction of seeds that classify
   the image correctly — a Wilcoxon on paired accuracies, chosen over McNemar because it uses every seed).
5. Outputs: `<run>/downstream/results.json` (everything, per-image included), manifest section
   `downstream` (summaries and p-values), `reports/downstream.md` (tables), `reports/downstream.png`.
"""

from __future__ import annotations

import importlib
import shutil
import time
from pathlib import Path

import numpy as np

from synthecho.downstream import STRATEGIES, concat_splits, corpus_files, corpus_split
from synthecho.downstream.stats import mean_std, pairwise_wilcoxon
from synthecho.errors import SynthechoError
from synthecho.formatting import STRATEGY_TITLES, p_value, plus_minus
from synthecho.io import (
    atomic_path,
    read_json,
    sha256_file,
    sha256_json,
    write_json_atomic,
    write_text_atomic,
)
from synthecho.real import SPLITS, RealSplit, load_real, real_dir
from synthecho.stages import invalidate, is_current, mark_done, read_marker

SYNTHETIC_STRATEGIES = ("synthetic", "pretrain_finetune", "real_plus_synthetic")
CAP_STAGES = ("train", "generate", "filter")
CAP_STAGE_MODULES = {
    "train": "synthecho.train",
    "generate": "synthecho.generate",
    "filter": "synthecho.quality.filter",
}
REPORT_MD, REPORT_PNG = "downstream.md", "downstream.png"


# --- real-data caps ----------------------------------------------------------------------------------


def cap_label(cap: float) -> str:
    """Folder / key name of a cap: cap-0.25, cap-1."""
    return f"cap-{cap:g}"


def capped_patients(patients: list[str], cap: float, seed: int) -> list[str]:
    """round(cap x len(patients)) patients (>= 1), drawn without replacement with `seed`, sorted."""
    patients = sorted(set(patients))
    if cap >= 1:
        return patients
    count = max(1, int(round(cap * len(patients))))
    chosen = np.random.default_rng(seed).choice(len(patients), size=count, replace=False)
    return sorted(patients[i] for i in chosen)


def prepare_cap_run(recipe, run_dir: Path, cap: float, *, force: bool = False, progress: bool = True) -> Path:
    """Build (or resume) `<run>/caps/cap-{p}/` whose real train split holds only the capped patients.

    1. Select the patients; compare with the selection recorded in `cap.json` — a different subset (or a
       re-prepared parent) deletes the sub-run: its generator and segmenter saw the wrong patients.
    2. Write `real/train.parquet` (capped rows), copy validation/test, record `cap.json`.
    3. Write the sub-run's `prepare` marker and manifest sections (the parent's, with capped counts).
    4. Run train -> generate -> filter there through the ordinary stage functions (each skips when current).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synthecho.manifest import read_manifest, update_manifest

    started = time.time()
    parent_real, sub = real_dir(run_dir), Path(run_dir) / "caps" / cap_label(cap)
    table = pq.read_table(parent_real / "train.parquet")
    chosen = capped_patients(table.column("patient").to_pylist(), cap, recipe.seed)
    selection = {
        "cap": cap,
        "seed": recipe.seed,
        "patients": chosen,
        "parent_real_sha256": {split: sha256_file(parent_real / f"{split}.parquet") for split in SPLITS},
    }
    if (sub / "cap.json").is_file() and read_json(sub / "cap.json") != selection:
        shutil.rmtree(sub)
    if not (sub / "cap.json").is_file():
        capped = table.filter(pc.is_in(table.column("patient"), value_set=_string_array(chosen)))
        with atomic_path(real_dir(sub) / "train.parquet") as tmp:
            pq.write_table(capped, tmp, compression="zstd")
        for split in ("validation", "test"):
            with atomic_path(real_dir(sub) / f"{split}.parquet") as tmp:
                shutil.copyfile(parent_real / f"{split}.parquet", tmp)
        write_json_atomic(sub / "cap.json", selection)  # last: marks the sub-run's real/ as complete

    if force or not is_current(recipe, sub, "prepare"):
        parent = read_manifest(run_dir)
        counts = {split: pq.read_metadata(real_dir(sub) / f"{split}.parquet").num_rows for split in SPLITS}
        patients = dict(parent.get("source", {}).get("patients", {}), train=len(chosen))
        note = (
            f"real-data cap {cap:g}: train split limited to {len(chosen)} of {len(set(table.column('patient').to_pylist()))} "
            f"patients (seed {recipe.seed}); generator and segmenter trained on this subset only."
        )
        source = {**parent.get("source", {}), "records": counts, "patients": patients, "note": note}
        update_manifest(sub, dataset=parent.get("dataset", {}), source=source)
        info = {"records": counts, "patients": patients, "cap": cap, "capped_from": str(parent_real)}
        mark_done(recipe, sub, "prepare", info, started)
    for stage in CAP_STAGES:
        if force:
            invalidate(sub, stage)
        try:
            module = importlib.import_module(CAP_STAGE_MODULES[stage])
        except ImportError as error:
            raise SynthechoError(
                f"real-data cap {cap:g} needs the `{stage}` stage, which is unavailable: {error}"
            ) from error
        module.run(recipe, sub, force=force, progress=progress)
    return sub


def _string_array(values: list[str]):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


# --- tasks -------------------------------------------------------------------------------------------


def build_tasks(recipe, validation: RealSplit, test: RealSplit) -> tuple[list, dict[str, str]]:
    """Task objects in recipe order, and {task: reason} for tasks that cannot run here."""
    from synthecho.downstream.classification import ClassificationTask
    from synthecho.downstream.segmentation import SegmentationTask

    config = recipe.evaluate
    tasks, skipped = [], {}
    for name in dict.fromkeys(config.tasks):
        if name == "segmentation":
            tasks.append(SegmentationTask(config, validation, test))
        elif name in ("phase", "view"):
            tasks.append(ClassificationTask(name, config, validation, test))
        elif name == "clipseg":
            from synthecho.downstream.clipseg import ClipSegTask, resolve_weights

            weights, reason = resolve_weights(config.clipseg)
            if weights is None:
                skipped["clipseg"] = reason
                continue
            tasks.extend(
                ClipSegTask(level, config, validation, test, weights) for level in config.clipseg.levels
            )
    return tasks, skipped


def _corpus_fingerprint(run: Path, limit: int | None) -> dict:
    return {"files": {p.name: sha256_file(p) for p in corpus_files(run, "train")}, "limit": limit}


def training_steps(task, strategy: str) -> int:
    """Optimizer steps of one strategy's model: the same total for every strategy that sees real data.

    pretrain_finetune is the synthetic model (`steps`) fine-tuned on real (`finetune_steps`), so real-only
    and real+synthetic get `steps + finetune_steps` too: a fine-tune gain is then not just extra training.
    Synthetic-only keeps `steps` (it is the pretrained model); real-only training longer only makes the
    synthetic-vs-real comparisons conservative.
    """
    return task.steps if strategy in ("synthetic", "pretrain_finetune") else task.steps + task.finetune_steps


def _unit_hash(task, strategy: str, seed: int, real_train: RealSplit, fingerprint: dict | None) -> str:
    return sha256_json(
        {
            "task": task.name,
            "settings": task.settings,
            "steps": training_steps(task, strategy),
            "strategy": strategy,
            "seed": seed,
            "real_train": real_train.ids,
            "validation": task.validation.ids,
            "test": task.test.ids,
            "synthetic": fingerprint if strategy in SYNTHETIC_STRATEGIES else None,
        }
    )


def run_task(
    task,
    strategies: list[str],
    seeds: list[int],
    real_train: RealSplit,
    synthetic: RealSplit | None,
    fingerprint: dict | None,
    unit_dir: Path,
    *,
    progress: bool = True,
) -> list[dict]:
    """Every (strategy, seed) unit of one task at one cap; cached units are read back, not retrained.

    pretrain_finetune starts from the weights of the `synthetic` unit of the same seed (trained here
    when only the fine-tuned strategy was asked for), so the pretraining is never paid twice.
    """
    from safetensors.torch import load_model, save_model

    units = []
    for seed in seeds:
        synthetic_model = None
        for strategy in strategies:
            input_hash = _unit_hash(task, strategy, seed, real_train, fingerprint)
            path = unit_dir / f"{strategy}-seed{seed}.json"
            if path.is_file() and read_json(path).get("input_hash") == input_hash:
                units.append(read_json(path))
                continue
            if strategy in SYNTHETIC_STRATEGIES and (synthetic is None or len(synthetic) == 0):
                units.append({"task": task.name, "strategy": strategy, "seed": seed,
                              "skipped": "no synthetic train rows passed the filter"})  # fmt: skip
                continue
            desc = f"{task.name} {strategy} s{seed}"
            model = task.new_model(seed)
            steps = training_steps(task, strategy)
            if strategy == "real":
                training = task.fit(model, real_train, steps=steps, seed=seed, progress=progress, desc=desc)
            elif strategy == "synthetic":
                training = task.fit(model, synthetic, steps=steps, seed=seed, progress=progress, desc=desc)
            elif strategy == "real_plus_synthetic":
                both = concat_splits(real_train, synthetic, "real+synthetic")
                training = task.fit(model, both, steps=steps, seed=seed, progress=progress, desc=desc)
            else:  # pretrain_finetune
                weights = unit_dir / f"synthetic-seed{seed}.safetensors"
                pretrain_hash = _unit_hash(task, "synthetic", seed, real_train, fingerprint)
                if synthetic_model is None:
                    synthetic_model = task.new_model(seed)
                    recorded = unit_dir / f"synthetic-seed{seed}.hash"
                    if weights.is_file() and recorded.is_file() and recorded.read_text() == pretrain_hash:
                        load_model(synthetic_model, str(weights), device=str(task.device))
                    else:
                        task.fit(synthetic_model, synthetic, steps=task.steps, seed=seed, progress=progress,
                                 desc=f"{task.name} pretrain s{seed}")  # fmt: skip
                model.load_state_dict(synthetic_model.state_dict())
                training = task.fit(model, real_train, steps=task.finetune_steps, seed=seed,
                                    validate_at_start=True, progress=progress, desc=desc)  # fmt: skip
            result = task.evaluate(model)
            if strategy == "synthetic":
                synthetic_model = model
                if "pretrain_finetune" in strategies:
                    unit_dir.mkdir(parents=True, exist_ok=True)
                    with atomic_path(unit_dir / f"synthetic-seed{seed}.safetensors") as tmp:
                        save_model(model, str(tmp))
                    write_text_atomic(unit_dir / f"synthetic-seed{seed}.hash", input_hash)
            unit = {
                "task": task.name,
                "strategy": strategy,
                "seed": seed,
                "input_hash": input_hash,
                "n_real": len(real_train) if strategy != "synthetic" else 0,
                "n_synthetic": len(synthetic) if strategy in SYNTHETIC_STRATEGIES else 0,
                "training": training,
                **result,
            }
            write_json_atomic(path, unit)
            units.append(unit)
    return units


# --- aggregation -------------------------------------------------------------------------------------


def aggregate(task, units: list[dict], strategies: list[str]) -> dict:
    """Mean ± std over seeds per strategy and metric; pairwise Wilcoxon on seed-averaged per-image values."""
    result: dict = {"strategies": {}, "wilcoxon": {}, "per_image": {}}
    per_image: dict[str, dict[str, np.ndarray]] = {metric: {} for metric in task.paired_metrics}
    for strategy in strategies:
        done = [unit for unit in units if unit["strategy"] == strategy and "skipped" not in unit]
        if not done:
            skipped = [
                unit["skipped"] for unit in units if unit["strategy"] == strategy and "skipped" in unit
            ]
            result["strategies"][strategy] = {"skipped": skipped[0] if skipped else "not run"}
            continue
        metrics = {}
        for key, value in done[0]["summary"].items():
            if isinstance(value, int | float):
                values = [unit["summary"][key] for unit in done]
                mean, std = mean_std(values)
                metrics[key] = {"mean": mean, "std": std, "per_seed": values}
        result["strategies"][strategy] = {
            "seeds": [unit["seed"] for unit in done],
            "n_real": done[0]["n_real"],
            "n_synthetic": done[0]["n_synthetic"],
            "best_step": [unit["training"]["best_step"] for unit in done],
            "train_seconds": float(np.sum([unit["training"]["seconds"] for unit in done])),
            "metrics": metrics,
        }
        for metric in task.paired_metrics:
            per_image[metric][strategy] = np.mean([unit["per_image"][metric] for unit in done], axis=0)
    for metric, by_strategy in per_image.items():
        result["wilcoxon"][metric] = pairwise_wilcoxon(by_strategy) if len(by_strategy) > 1 else []
        result["per_image"][metric] = {strategy: values.tolist() for strategy, values in by_strategy.items()}
    return result


# --- reports -----------------------------------------------------------------------------------------


def _task_title(name: str) -> str:
    from synthecho.downstream.classification import TASK_TITLES

    if name == "segmentation":
        return "Segmentation (MONAI 2-D U-Net)"
    if name.startswith("clipseg-P"):
        return f"CLIPSeg, prompt {name.removeprefix('clipseg-')}"
    return f"{TASK_TITLES[name]} (ResNet-18)"


def _ordered_caps(study: dict) -> list[dict]:
    """Caps largest first (JSON round-trips sort keys alphabetically, so order explicitly)."""
    return sorted(study["caps"].values(), key=lambda cap: -cap["cap"])


def _ordered(keys, order) -> list[str]:
    """`keys` in the order of `order` (recipe task order, STRATEGIES)."""
    return [key for key in order if key in keys]


def render_markdown(recipe, study: dict) -> str:
    """`reports/downstream.md`: one section per cap, one table of means and one of p-values per task."""
    from synthecho.downstream.segmentation import STRUCTURE_TITLES

    test = study["test"]
    lines = [
        f"# Downstream baselines — {recipe.name} {recipe.version}",
        "",
        f"Test: the real test split ({test['frames']} frames, {test['patients']} patients); model selection on "
        f"the real validation split ({study['validation']['frames']} frames). Seeds {study['seeds']}: cells are "
        f"mean ± sample std (ddof=1) over seeds. p: two-sided paired Wilcoxon signed-rank test over test images "
        f"of the per-image value averaged over seeds (segmentation: Dice per structure; classification: "
        f"fraction of seeds classifying the image correctly); Δ = mean difference (first − second).",
        "",
    ]
    for name in study["tasks"]:
        settings = study["settings"][name]
        # The training budget belongs next to the numbers: a --set override changes what they mean.
        steps = (
            f"{settings['steps']} steps (synthetic only; pretrain→finetune adds {settings['finetune_steps']} "
            f"fine-tune steps; real only and real + synthetic train the same total, "
            f"{settings['steps'] + settings['finetune_steps']})"
        )
        lines.append(
            f"- {_task_title(name)}: {steps}, batch {settings['batch_size']}, "
            f"lr {settings['learning_rate']:g}, selection every {settings['validate_every']} steps"
        )
    lines.append("")
    for reason in study["skipped_tasks"].values():
        lines += [f"> Skipped: {reason}", ""]
    for cap in _ordered_caps(study):
        lines += [
            f"## Real data: {cap['cap'] * 100:g}% of train patients ({cap['real_train_patients']} patients, "
            f"{cap['real_train_frames']} frames; {cap['synthetic_train_rows']} synthetic train rows from "
            f"`{cap['run']}`)",
            "",
        ]
        for task_name in _ordered(cap["tasks"], study["tasks"]):
            task = cap["tasks"][task_name]
            segmentation_like = task_name == "segmentation" or task_name.startswith("clipseg")
            lines += [f"### {_task_title(task_name)}", ""]
            if segmentation_like:
                names = list(STRUCTURE_TITLES)
                header = [f"{STRUCTURE_TITLES[n]} Dice %" for n in names] + [
                    f"{STRUCTURE_TITLES[n]} HD95 mm" for n in names
                ]
                keys = [(f"dice_{n}", 100.0, 1) for n in names] + [(f"hd95_{n}", 1.0, 2) for n in names]
            else:
                header = ["accuracy %", "macro precision %", "macro recall %", "macro F1 %"]
                keys = [(k, 100.0, 1) for k in ("accuracy", "precision", "recall", "f1")]
            lines.append("| strategy | real frames | synthetic rows | " + " | ".join(header) + " |")
            lines.append("|" + "---|" * (3 + len(header)))
            for strategy in _ordered(task["strategies"], STRATEGIES):
                entry = task["strategies"][strategy]
                title = STRATEGY_TITLES[strategy]
                if "skipped" in entry:
                    lines.append(
                        f"| {title} | — | — | skipped: {entry['skipped']} |" + " |" * (len(header) - 1)
                    )
                    continue
                cells = [plus_minus(entry["metrics"].get(key), scale, digits) for key, scale, digits in keys]
                lines.append(
                    f"| {title} | {entry['n_real']} | {entry['n_synthetic']} | " + " | ".join(cells) + " |"
                )
            lines.append("")
            tests = task["wilcoxon"]
            if any(tests.values()):
                metrics = _ordered(tests, [f"dice_{n}" for n in STRUCTURE_TITLES] + ["correct"])
                titles = [
                    STRUCTURE_TITLES.get(m.removeprefix("dice_"), m) + " Dice"
                    if m.startswith("dice_")
                    else "correct"
                    for m in metrics
                ]
                lines.append("| comparison | " + " | ".join(f"{t}: p (Δ)" for t in titles) + " |")
                lines.append("|" + "---|" * (1 + len(metrics)))
                for index, pair in enumerate(tests[metrics[0]]):
                    cells = []
                    for metric in metrics:
                        entry = tests[metric][index]
                        cells.append(f"{p_value(entry['p'])} ({entry['mean_difference'] * 100:+.1f})")
                    lines.append(
                        f"| {STRATEGY_TITLES[pair['a']]} vs {STRATEGY_TITLES[pair['b']]} | "
                        + " | ".join(cells)
                        + " |"
                    )
                lines.append("")
    lines += [
        f"Reproduce: `synthecho evaluate --recipe {recipe.name}` with the settings above (recipe "
        f"sha256 {recipe.content_hash()[:12]}; cached units are reused, `--force` redoes them).",
        "",
    ]
    return "\n".join(lines)


def render_chart(study: dict, path: Path) -> None:
    """`reports/downstream.png`: one row per cap; Dice per structure and accuracy/F1 per task, ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthecho.downstream.segmentation import STRUCTURE_TITLES

    caps = _ordered_caps(study)
    task_names = [name for name in study["tasks"] if any(name in cap["tasks"] for cap in caps)]
    if not task_names:
        return
    figure, axes = plt.subplots(
        len(caps), len(task_names), figsize=(3.6 * len(task_names) + 1, 3.2 * len(caps)), squeeze=False
    )
    for row, cap in enumerate(caps):
        for col, task_name in enumerate(task_names):
            axis = axes[row][col]
            task = cap["tasks"].get(task_name)
            if task is None:
                axis.axis("off")
                continue
            if task_name == "segmentation" or task_name.startswith("clipseg"):
                keys = [f"dice_{n}" for n in STRUCTURE_TITLES]
                labels = [STRUCTURE_TITLES[n] for n in STRUCTURE_TITLES]
                ylabel = "test Dice"
            else:
                keys, labels, ylabel = ["accuracy", "f1"], ["accuracy", "macro F1"], "test score"
            strategies = [
                s for s in _ordered(task["strategies"], STRATEGIES) if "skipped" not in task["strategies"][s]
            ]
            width = 0.8 / max(1, len(strategies))
            for index, strategy in enumerate(strategies):
                metrics = task["strategies"][strategy]["metrics"]
                x = np.arange(len(keys)) + (index - (len(strategies) - 1) / 2) * width
                axis.bar(
                    x,
                    [metrics[k]["mean"] for k in keys],
                    width,
                    yerr=[metrics[k]["std"] for k in keys],
                    capsize=2,
                    color=f"C{STRATEGIES.index(strategy)}",
                    label=STRATEGY_TITLES[strategy],
                )
            axis.set_xticks(np.arange(len(keys)), labels)
            axis.set_ylim(0, 1.05)
            axis.set_ylabel(ylabel)
            axis.set_title(f"{_task_title(task_name)}\n{cap['cap'] * 100:g}% real", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for axis in row:
            if axis.get_legend_handles_labels()[0]:
                handles, labels = axis.get_legend_handles_labels()
                break
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _strip_per_image(study: dict) -> dict:
    """The manifest copy: summaries and p-values only (per-image arrays stay in results.json)."""
    caps = {}
    for key, cap in study["caps"].items():
        tasks = {
            name: {k: v for k, v in task.items() if k != "per_image"} for name, task in cap["tasks"].items()
        }
        caps[key] = {**cap, "tasks": tasks}
    return {**study, "caps": caps}


# --- the stage ---------------------------------------------------------------------------------------


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    """Train and test every (cap, task, strategy, seed); write results, report, chart and manifest."""
    from tqdm.auto import tqdm

    from synthecho.manifest import environment_info, update_manifest

    run_dir = Path(run_dir)
    if not force and is_current(recipe, run_dir, "evaluate"):
        return {"skipped": True, **read_marker(run_dir, "evaluate")["info"]}
    started = time.time()
    config = recipe.evaluate
    if not config.seeds or not config.strategies or not config.tasks:
        raise SynthechoError(
            "evaluate.tasks, evaluate.strategies and evaluate.seeds must each list at least one entry"
        )
    strategies = [s for s in STRATEGIES if s in config.strategies]  # fixed order: synthetic before fine-tune
    units_root = run_dir / "downstream" / "units"
    if force and units_root.exists():
        shutil.rmtree(units_root)

    # 1. Real validation and test (shared by every cap), and the tasks.
    validation, test = load_real(run_dir, "validation"), load_real(run_dir, "test")
    if len(test) == 0 or len(validation) == 0:
        raise SynthechoError(f"{real_dir(run_dir)}: the real validation and test splits must not be empty")
    tasks, skipped_tasks = build_tasks(recipe, validation, test)
    needs_synthetic = any(s in SYNTHETIC_STRATEGIES for s in strategies)

    # 2-3. Caps, largest first (the run's own corpus), then each task's strategies and seeds.
    study = {
        "tasks": [task.name for task in tasks],
        "settings": {task.name: task.settings for task in tasks},
        "strategies": strategies,
        "seeds": list(config.seeds),
        "skipped_tasks": skipped_tasks,
        "test": {"frames": len(test), "patients": len({r["patient"] for r in test.records}), "ids": test.ids},
        "validation": {
            "frames": len(validation),
            "patients": len({r["patient"] for r in validation.records}),
        },
        "caps": {},
    }
    # No runnable task (e.g. only clipseg without weights): nothing to train, so no capped sub-run either.
    for cap in sorted(set(config.real_caps), reverse=True) if tasks else []:
        cap_run = (
            run_dir if cap >= 1 else prepare_cap_run(recipe, run_dir, cap, force=force, progress=progress)
        )
        real_train = load_real(cap_run, "train")
        synthetic, fingerprint = None, None
        if needs_synthetic and tasks:
            synthetic = corpus_split(cap_run, "train", limit=config.max_synthetic)
            fingerprint = _corpus_fingerprint(cap_run, config.max_synthetic)
        entry = {
            "cap": cap,
            "run": cap_run.relative_to(run_dir).as_posix() or ".",
            "real_train_patients": len({r["patient"] for r in real_train.records}),
            "real_train_frames": len(real_train),
            "synthetic_train_rows": len(synthetic) if synthetic is not None else 0,
            "tasks": {},
        }
        for task in tqdm(tasks, desc=f"evaluate {cap_label(cap)}", disable=not progress, leave=False):
            units = run_task(
                task, strategies, list(config.seeds), real_train, synthetic, fingerprint,
                units_root / cap_label(cap) / task.name, progress=progress,
            )  # fmt: skip
            entry["tasks"][task.name] = aggregate(task, units, strategies)
        study["caps"][cap_label(cap)] = entry

    # 4-5. Results, report, chart, manifest, marker.
    write_json_atomic(run_dir / "downstream" / "results.json", study)
    reports = run_dir / "reports"
    write_text_atomic(reports / REPORT_MD, render_markdown(recipe, study))
    (reports / REPORT_PNG).unlink(missing_ok=True)  # a chart from an earlier study must not outlive it
    render_chart(study, reports / REPORT_PNG)
    summary = _strip_per_image(study)
    summary["test"] = {k: v for k, v in study["test"].items() if k != "ids"}
    summary["files"] = {
        "results": "downstream/results.json",
        "report": f"reports/{REPORT_MD}",
        "figure": f"reports/{REPORT_PNG}" if (reports / REPORT_PNG).is_file() else None,
    }
    update_manifest(
        run_dir,
        recipe=recipe.model_dump(mode="json"),
        recipe_sha256=recipe.content_hash(),
        environment=environment_info(),
        downstream=summary,
    )
    info = {
        "caps": [entry["cap"] for entry in study["caps"].values()],
        "tasks": study["tasks"],
        "skipped_tasks": skipped_tasks,
        "report": f"reports/{REPORT_MD}",
    }
    marker = mark_done(recipe, run_dir, "evaluate", info, started)
    return {"skipped": False, "seconds": marker["seconds"], **info}
