"""The downstream study's engine: tasks, real-data caps, training units, and their aggregation.

A *unit* is one trained and tested model: (cap, task, strategy, seed). `run_task` trains every unit of
one task at one cap, or reads it back from its completion marker when its inputs are unchanged (an
interrupted study resumes); `aggregate` turns units into per-strategy summaries and paired tests.
Strategies (`synthecho.downstream`): real, synthetic, pretrain_finetune (the synthetic model of the same
seed fine-tuned on real), real_plus_synthetic; real-only and real+synthetic train as many steps as
pretrain+fine-tune together (`training_steps`).

Statistics: mean ± sample std over seeds of each test metric; per-image metrics averaged over seeds,
then a paired two-sided Wilcoxon signed-rank test between every pair of strategies, per structure
(segmentation Dice) or on per-image correctness (classification: the fraction of seeds that classify
the image correctly — a Wilcoxon on paired accuracies, chosen over McNemar because it uses every seed).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from synthecho import profiling
from synthecho.downstream import concat_splits
from synthecho.downstream.stats import mean_std, pairwise_wilcoxon
from synthecho.io import atomic_path, sha256_file, sha256_json
from synthecho.layout import RunLayout
from synthecho.markers import current_info, write_marker
from synthecho.real import RealSplit

SYNTHETIC_STRATEGIES = ("synthetic", "pretrain_finetune", "real_plus_synthetic")


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


def corpus_fingerprint(run: Path, limit: int | None) -> dict:
    """What a synthetic strategy's unit was trained on: the published train shards and the row cap."""
    return {"files": {p.name: sha256_file(p) for p in RunLayout.of(run).data_files("train")}, "limit": limit}


def training_steps(task, strategy: str) -> int:
    """Optimizer steps of one strategy's model: the same total for every strategy that sees real data.

    pretrain_finetune is the synthetic model (`steps`) fine-tuned on real (`finetune_steps`), so real-only
    and real+synthetic get `steps + finetune_steps` too: a fine-tune gain is then not just extra training.
    Synthetic-only keeps `steps` (it is the pretrained model); real-only training longer only makes the
    synthetic-vs-real comparisons conservative.
    """
    return task.steps if strategy in ("synthetic", "pretrain_finetune") else task.steps + task.finetune_steps


def unit_hash(task, strategy: str, seed: int, real_train: RealSplit, fingerprint: dict | None) -> str:
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
            # the phantom's truth adds metrics; runs without it keep their unit hashes
            **({"test_truth": True} if task.test.truth is not None else {}),
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
            input_hash = unit_hash(task, strategy, seed, real_train, fingerprint)
            path = unit_dir / f"{strategy}-seed{seed}.json"
            if (cached := current_info(path, input_hash)) is not None:
                units.append(cached)
                continue
            if strategy in SYNTHETIC_STRATEGIES and (synthetic is None or len(synthetic) == 0):
                units.append({"task": task.name, "strategy": strategy, "seed": seed,
                              "skipped": "no synthetic train rows passed the filter"})  # fmt: skip
                continue
            started = time.perf_counter()
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
                pretrain_hash = unit_hash(task, "synthetic", seed, real_train, fingerprint)
                if synthetic_model is None:
                    synthetic_model = task.new_model(seed)
                    recorded = unit_dir / f"synthetic-seed{seed}.weights.json"
                    if weights.is_file() and current_info(recorded, pretrain_hash) is not None:
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
                    name = f"synthetic-seed{seed}.safetensors"
                    write_marker(unit_dir / f"synthetic-seed{seed}.weights.json", "unit", name,
                                 {"weights": name}, input_hash=input_hash)  # fmt: skip
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
            write_marker(path, "unit", f"{task.name}/{strategy}/seed{seed}", unit, input_hash=input_hash)
            units.append(unit)
            # training, testing and saving of one unit (pretrain_finetune includes its pretraining if run here)
            profiling.add(f"evaluate/{task.name}/{strategy}", time.perf_counter() - started)
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


def strip_per_image(study: dict) -> dict:
    """The manifest copy: summaries and p-values only (per-image arrays stay in results.json)."""
    caps = {}
    for key, cap in study["caps"].items():
        tasks = {
            name: {k: v for k, v in task.items() if k != "per_image"} for name, task in cap["tasks"].items()
        }
        caps[key] = {**cap, "tasks": tasks}
    return {**study, "caps": caps}
