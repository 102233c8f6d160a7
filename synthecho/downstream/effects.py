"""From trained units to evidence: per-strategy summaries, patient-level effects, the confirmatory family.

The unit of inference is the test patient. A unit's per-image values are averaged over each patient's
frames (a patient's four frames are not four independent observations), then over seeds: one value per
patient and strategy. Effects compare two strategies patient by patient (`stats.paired_effect`: mean
difference, 95 % BCa bootstrap interval over patients, k of n patients improved); the seed-to-seed
spread of the same difference is reported beside it (`seed_sd`: the sample std over seeds of the
per-seed mean difference), as training variance, not as a second sample of patients.

Which comparisons: each synthetic strategy against real-only, its control (`CONTROLS`) against
real-only, and the strategy against its control — what the generator adds beyond warping the real data
its rows were conditioned on. All are descriptive (interval, no p-value). Only the confirmatory family,
fixed in the recipe (`evaluate.confirmatory`), is tested: exact sign-flip p-values over patients, Holm
across the family alone, none below `stats.MIN_N_FOR_P` patients.
"""

from __future__ import annotations

import numpy as np

from synthecho.downstream import CONTROLS
from synthecho.downstream.stats import (
    MIN_N_FOR_P,
    holm,
    mean_std,
    minimum_detectable_difference,
    paired_effect,
    per_patient,
)

# The confirmatory family's measure per task (clipseg levels are not in the family).
CONFIRMATORY_METRICS = {"segmentation": "dice_foreground", "phase": "p_true", "view": "p_true"}
STATISTICS = {
    "unit": "patient (mean over its test frames, then over seeds)",
    "interval": "95 % BCa bootstrap over patients",
    "test": (
        "exact two-sided sign-flip permutation test (Monte Carlo above 16 patients), confirmatory family only"
    ),
    "multiplicity": "Holm across the confirmatory family",
    "min_patients_for_p": MIN_N_FOR_P,
}


def comparisons(strategies) -> list[tuple[str, str]]:
    """(a, b) pairs, a − b reported: each synthetic strategy and its control against real-only, then the
    strategy against its control; only pairs whose two strategies both ran."""
    present, pairs = set(strategies), []
    for strategy, control in CONTROLS.items():
        for pair in ((strategy, "real"), (control, "real"), (strategy, control)):
            if set(pair) <= present:
                pairs.append(pair)
    return pairs


def _training(done: list[dict]) -> dict:
    """Per-seed training facts of one strategy (older units lack the early-stopping fields)."""
    runs = [unit["training"] for unit in done]
    out = {"best_step": [run["best_step"] for run in runs], "steps": [run["steps"] for run in runs]}
    if all("converged" in run for run in runs):
        out["max_steps"] = [run["max_steps"] for run in runs]
        out["converged"] = [run["converged"] for run in runs]
        out["stopped_early"] = [run["stopped_early"] for run in runs]
    return out


def aggregate(task, units: list[dict], strategies: list[str]) -> dict:
    """Per strategy: mean ± std over seeds of every test summary value, training facts per seed; per
    metric and strategy the seed-averaged per-patient values; the descriptive effects."""
    patients = [record["patient"] for record in task.test.records]
    result: dict = {"strategies": {}, "effects": [], "per_image": {}, "per_patient": {}}
    seed_values: dict[str, dict[str, dict[int, np.ndarray]]] = {}  # metric -> strategy -> seed -> patients
    for strategy in strategies:
        done = [unit for unit in units if unit["strategy"] == strategy and "skipped" not in unit]
        if not done:
            skipped = [u["skipped"] for u in units if u["strategy"] == strategy and "skipped" in u]
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
            **_training(done),
            "train_seconds": float(np.sum([unit["training"]["seconds"] for unit in done])),
            "metrics": metrics,
        }
        for metric in task.effect_metrics:
            if metric not in done[0]["per_image"]:
                continue  # e.g. truth Dice without the phantom's truth
            by_seed = {u["seed"]: per_patient(u["per_image"][metric], patients)[1] for u in done}
            seed_values.setdefault(metric, {})[strategy] = by_seed
            result["per_image"].setdefault(metric, {})[strategy] = np.mean(
                [u["per_image"][metric] for u in done], axis=0
            ).tolist()
    result["per_patient"] = {
        "patients": per_patient(np.zeros(len(patients)), patients)[0],
        "values": {
            metric: {
                s: {str(seed): v.tolist() for seed, v in by_seed.items()}
                for s, by_seed in by_strategy.items()
            }
            for metric, by_strategy in seed_values.items()
        },
    }
    for metric, by_strategy in result["per_patient"]["values"].items():
        for a, b in comparisons(by_strategy):
            result["effects"].append(effect(metric, a, b, by_strategy[a], by_strategy[b]))
    return result


def effect(metric: str, a: str, b: str, seeds_a: dict, seeds_b: dict, *, test: bool = False) -> dict:
    """a − b on one metric: the patient-level effect of the seed-averaged values and the seed spread.

    `seeds_a`, `seeds_b`: {seed: per-patient values}; only seeds both strategies ran are used.
    """
    common = sorted(set(seeds_a) & set(seeds_b), key=str)
    a_values = np.array([seeds_a[s] for s in common], dtype=np.float64)
    b_values = np.array([seeds_b[s] for s in common], dtype=np.float64)
    mean_a, mean_b = a_values.mean(axis=0), b_values.mean(axis=0)
    per_seed = (a_values - b_values).mean(axis=1).tolist()
    return {
        "metric": metric,
        "a": a,
        "b": b,
        **paired_effect(mean_a, mean_b, test=test),
        "seeds": len(common),
        "seed_sd": mean_std(per_seed)[1],
    }


def confirmatory_family(study: dict, config) -> dict:
    """The pre-specified tests (`evaluate.confirmatory`), with raw and Holm-adjusted p-values.

    `study` is the in-memory study (its tasks still hold `per_patient`). A test whose strategies did not
    run is listed as missing; with fewer than MIN_N_FOR_P patients it has no p-value and no Holm entry.
    The minimum detectable difference (`mdd`) is the per-patient mean difference a test of this size
    detects with 80 % power at Holm's first-step level (alpha / family size), given the observed spread of
    the per-patient differences.
    """
    from synthecho.layout import cap_label

    family: dict = {
        "cap": config.cap,
        "strategy": config.strategy,
        "versus": list(config.versus),
        "alpha": config.alpha,
        "tests": [],
        "missing": [],
    }
    cap = study["caps"].get(cap_label(config.cap))
    for task_name, metric in CONFIRMATORY_METRICS.items():
        for versus in config.versus:
            key = f"{task_name}: {config.strategy} vs {versus} ({metric})"
            task = (cap or {}).get("tasks", {}).get(task_name)
            values = (task or {}).get("per_patient", {}).get("values", {}).get(metric, {})
            if config.strategy not in values or versus not in values:
                if task_name in study["tasks"]:
                    family["missing"].append(key)
                continue
            found = effect(
                metric, config.strategy, versus, values[config.strategy], values[versus], test=True
            )
            family["tests"].append({"task": task_name, **found})
    size = len(family["tests"])
    for entry in family["tests"]:
        entry["mdd"] = minimum_detectable_difference(
            entry["sd"], entry["n"], alpha=config.alpha / max(1, size)
        )
    tested = {index: entry["p"] for index, entry in enumerate(family["tests"]) if entry["p"] is not None}
    for index, adjusted in holm(tested).items():
        family["tests"][index]["p_holm"] = adjusted
        family["tests"][index]["reject"] = adjusted < config.alpha
    return family


# --- what a committed study must satisfy (tests/test_committed_invariants.py) -------------------------


def statistics_violations(manifest: dict) -> list[str] | None:
    """What a manifest's downstream study breaks: a p-value below the exact minimum for its n (2 / 2^n),
    a p-value with fewer than MIN_N_FOR_P patients, a run that did not converge. None for a manifest
    without a patient-level study (no `downstream.statistics`: from before these rules, or no study)."""
    from synthecho.downstream.stats import exact_minimum_p

    downstream = manifest.get("downstream") or {}
    if "statistics" not in downstream:
        return None
    broken = []

    def walk(value, where: str) -> None:
        if isinstance(value, dict):
            if value.get("p") is not None and "n" in value:
                n, p = int(value["n"]), float(value["p"])
                if n < MIN_N_FOR_P:
                    broken.append(f"{where}: a p-value ({p:.3g}) with n = {n} < {MIN_N_FOR_P} patients")
                elif p < exact_minimum_p(n) * (1 - 1e-9):
                    broken.append(f"{where}: p = {p:.3g} below the exact minimum 2/2^{n} for n = {n}")
            for key, inner in value.items():
                walk(inner, f"{where}/{key}")
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(inner, f"{where}[{index}]")

    walk(downstream, "downstream")
    for cap_key, cap in downstream.get("caps", {}).items():
        for task_name, task in cap.get("tasks", {}).items():
            for strategy, entry in task.get("strategies", {}).items():
                if "skipped" in entry:
                    continue
                flags = entry.get("converged")
                if flags is None:
                    broken.append(f"{cap_key}/{task_name}/{strategy}: convergence not recorded")
                elif not all(flags):
                    seeds = [s for s, ok in zip(entry["seeds"], flags, strict=True) if not ok]
                    broken.append(f"{cap_key}/{task_name}/{strategy}: not converged (seeds {seeds})")
    return broken
