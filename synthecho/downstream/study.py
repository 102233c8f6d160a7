"""The downstream study's engine: tasks, real-data caps, training units and their cache.

A *unit* is one trained and tested model: (cap, task, strategy, seed). `run_task` trains every unit of
one task at one cap, or reads it back from its completion marker when its inputs are unchanged (an
interrupted study resumes); `run_tasks` spreads the tasks' seeds over one-thread worker processes;
`synthecho.downstream.effects` turns units into summaries and effects.
Strategies and their controls: `synthecho.downstream`. Budgets (`training_steps`) are equal across
strategies: whatever sees real data without pretraining may train as many steps as pretraining and
fine-tuning together, and every fit may stop early (`evaluate.patience`).

Inputs are shared wherever they are identical: a fine-tuned strategy starts from the weights of its
base unit of the same seed (`synthetic` for pretrain_finetune, `warped` for warped_pretrain_finetune),
so no pretraining is paid twice; the real-only unit does not depend on the corpus, and a warped unit
depends only on which rows were kept and how they were warped (not on the generated pixels), so both
are reused when only the generator changes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from synthecho import profiling
from synthecho.downstream import PRETRAINED_ON, TRAINED_ON, concat_splits, corpora_of
from synthecho.io import atomic_path, sha256_file, sha256_json
from synthecho.layout import RunLayout
from synthecho.markers import current_info, write_marker
from synthecho.parallel import one_thread
from synthecho.real import RealSplit

SYNTHETIC_STRATEGIES = tuple(name for name in TRAINED_ON if corpora_of(name) != ("real",))


# --- real-data caps ----------------------------------------------------------------------------------


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


def warped_fingerprint(corpus: RealSplit, grid_keys: dict) -> str:
    """What a warped unit was trained on besides the real train split: each kept row's source and
    transform (the generated pixels play no part)."""
    rows = [[r["id"], r["source_id"], r["mask_transform"]] for r in corpus.records]
    return sha256_json({"rows": rows, "grid": grid_keys})


def training_steps(task, strategy: str) -> int:
    """The most optimizer steps of one strategy's (last) fit: the same total for every strategy.

    A fine-tuned strategy is its base model (`steps`) fine-tuned on real (`finetune_steps`), so whatever
    trains on real data from scratch (real-only, real + synthetic / warped) may take `steps +
    finetune_steps`: a fine-tune gain is then not just extra training. Synthetic- or warped-only keep
    `steps` (they are the pretrained models).
    """
    if strategy in PRETRAINED_ON:
        return task.finetune_steps
    return task.steps + task.finetune_steps if "real" in TRAINED_ON[strategy] else task.steps


def unit_hash(task, strategy: str, seed: int, real_train: RealSplit, fingerprints: dict) -> str:
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
            "corpora": {name: fingerprints.get(name) for name in corpora_of(strategy) if name != "real"},
            # the phantom's truth adds metrics; runs without it keep their unit hashes
            **({"test_truth": True} if task.test.truth is not None else {}),
        }
    )


def train(
    task, model, data: RealSplit, steps: int, seed: int, *, progress: bool, desc: str, start=False
) -> dict:
    """One fit through the shared loop (`synthecho.fitting`): its record, without per-step losses."""
    from synthecho.fitting import fit

    budget = task.budget(steps, data)
    result = fit(model, task, data, budget, seed=seed, size=task.items(data), validate_at_start=start,
                 progress=progress, desc=desc, profile="downstream")  # fmt: skip
    return result.record()


def _training_data(strategy: str, corpora: dict[str, RealSplit | None]) -> RealSplit:
    names = TRAINED_ON[strategy]
    data = corpora[names[0]]
    for name in names[1:]:
        data = concat_splits(data, corpora[name], "+".join(names))
    return data


def _base_model(task, base: str, seed: int, corpora, fingerprints, unit_dir: Path, models: dict, progress):
    """The trained `base` model (synthetic / warped) of `seed`: from this run, from its saved weights, or
    trained here when only the fine-tuned strategy was asked for."""
    from safetensors.torch import load_model

    if base in models:
        return models[base]
    model = task.new_model(seed)
    weights = unit_dir / f"{base}-seed{seed}.safetensors"
    recorded = unit_dir / f"{base}-seed{seed}.weights.json"
    base_hash = unit_hash(task, base, seed, corpora["real"], fingerprints)
    if weights.is_file() and current_info(recorded, base_hash) is not None:
        load_model(model, str(weights), device=str(task.device))
    else:
        train(
            task,
            model,
            corpora[base],
            task.steps,
            seed,
            progress=progress,
            desc=f"{task.name} {base} s{seed}",
        )
        _save_base(model, base, seed, unit_dir, base_hash)
    models[base] = model
    return model


def _save_base(model, base: str, seed: int, unit_dir: Path, input_hash: str) -> None:
    from safetensors.torch import save_model

    unit_dir.mkdir(parents=True, exist_ok=True)
    name = f"{base}-seed{seed}.safetensors"
    with atomic_path(unit_dir / name) as tmp:
        save_model(model, str(tmp))
    write_marker(
        unit_dir / f"{base}-seed{seed}.weights.json", "unit", name, {"weights": name}, input_hash=input_hash
    )


def run_task(
    task,
    strategies: list[str],
    seeds: list[int],
    corpora: dict[str, RealSplit | None],
    fingerprints: dict,
    unit_dir: Path,
    *,
    progress: bool = True,
) -> list[dict]:
    """Every (strategy, seed) unit of one task at one cap; cached units are read back, not retrained.

    `corpora`: "real" (the capped real train split), "synthetic" and "warped" (None when not loaded);
    `fingerprints`: what identifies the synthetic and warped corpora (`corpus_fingerprint`,
    `warped_fingerprint`). `strategies` in `STRATEGIES` order (a base before its fine-tuned strategy).
    """
    units = []
    bases = {PRETRAINED_ON[s] for s in strategies if s in PRETRAINED_ON}
    for seed in seeds:
        models: dict = {}  # base strategy -> its trained model of this seed
        for strategy in strategies:
            input_hash = unit_hash(task, strategy, seed, corpora["real"], fingerprints)
            path = unit_dir / f"{strategy}-seed{seed}.json"
            if (cached := current_info(path, input_hash)) is not None:
                units.append(cached)
                continue
            empty = [
                name for name in corpora_of(strategy) if corpora.get(name) is None or len(corpora[name]) == 0
            ]
            if empty:
                units.append({"task": task.name, "strategy": strategy, "seed": seed,
                              "skipped": "no synthetic train rows passed the filter"})  # fmt: skip
                continue
            started = time.perf_counter()
            desc = f"{task.name} {strategy} s{seed}"
            model = task.new_model(seed)
            if strategy in PRETRAINED_ON:
                base = _base_model(
                    task, PRETRAINED_ON[strategy], seed, corpora, fingerprints, unit_dir, models, progress
                )
                model.load_state_dict(base.state_dict())
                training = train(task, model, corpora["real"], task.finetune_steps, seed, progress=progress,
                                 desc=desc, start=True)  # fmt: skip
            else:
                data = _training_data(strategy, corpora)
                training = train(
                    task, model, data, training_steps(task, strategy), seed, progress=progress, desc=desc
                )
            result = task.evaluate(model)
            if strategy in bases:
                models[strategy] = model
                _save_base(model, strategy, seed, unit_dir, input_hash)
            unit = {
                "task": task.name,
                "strategy": strategy,
                "seed": seed,
                "input_hash": input_hash,
                "n_real": len(corpora["real"]) if "real" in TRAINED_ON[strategy] else 0,
                "n_synthetic": sum(len(corpora[n]) for n in TRAINED_ON[strategy] if n != "real"),
                "training": training,
                **result,
            }
            write_marker(path, "unit", f"{task.name}/{strategy}/seed{seed}", unit, input_hash=input_hash)
            units.append(unit)
            # training, testing and saving of one unit (a fine-tuned one includes its base if trained here)
            profiling.add(f"evaluate/{task.name}/{strategy}", time.perf_counter() - started)
    return units


def _seed_units(task, strategies, seed, corpora, fingerprints, unit_dir) -> list[dict]:
    """One seed's units of one task, on one thread: a worker's share of `run_tasks` (module level, so a
    spawned worker can import it)."""
    with one_thread():
        return run_task(task, strategies, [seed], corpora, fingerprints, unit_dir, progress=False)


def run_tasks(
    tasks: list,
    strategies: list[str],
    seeds: list[int],
    corpora: dict[str, RealSplit | None],
    fingerprints: dict,
    units_dir: Path,
    *,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """{task name: its units in seed order} for every task of one cap, one (task, seed) per worker call.

    Seeds are independent (a fine-tuned strategy needs only its own seed's base), so on a CPU the calls
    run in one-thread worker processes (`synthecho.parallel`): the study's networks are too small for a
    second thread to pay, and the units are those of a one-process run, seed for seed. On a GPU the calls
    run here, one after another: processes sharing one device would only queue on it.
    """
    from tqdm.auto import tqdm

    from synthecho.parallel import ordered_map

    jobs = [(task, seed) for task in tasks for seed in seeds]  # recipe order: the longest task first
    n = len(jobs)
    columns = [[task for task, _ in jobs], [strategies] * n, [seed for _, seed in jobs], [corpora] * n,
               [fingerprints] * n, [units_dir / task.name for task, _ in jobs]]  # fmt: skip
    on_cpu = all(str(task.device) == "cpu" for task in tasks)
    calls = ordered_map(_seed_units, *columns) if on_cpu else map(_seed_units, *columns)
    units: dict[str, list[dict]] = {task.name: [] for task in tasks}
    bar = tqdm(zip(jobs, calls, strict=True), total=n, desc="downstream units", unit="seed",
               disable=not progress)  # fmt: skip
    for (task, _), seed_units in bar:
        units[task.name].extend(seed_units)
    return units


# --- the manifest copy ------------------------------------------------------------------------------


def strip_per_image(study: dict) -> dict:
    """The manifest copy: summaries and effects only (per-image and per-patient arrays stay in
    results.json)."""
    caps = {}
    for key, cap in study["caps"].items():
        tasks = {
            name: {k: v for k, v in task.items() if k not in ("per_image", "per_patient")}
            for name, task in cap["tasks"].items()
        }
        caps[key] = {**cap, "tasks": tasks}
    return {**study, "caps": caps}
