"""The dataset card's downstream section, as values: the strategy tables (mean ± std over seeds, and in
patient-level studies how many seeds converged), the per-patient effects of each synthetic strategy and its
warped control, and the confirmatory family. Pure functions of the manifest's `downstream` section; the
prose is in templates/dataset_card.md. Manifests from before the patient-level study (no
`downstream.statistics`) get exactly the tables they always had.
"""

from __future__ import annotations

from synthecho.formatting import STRATEGY_TITLES, effect_interval, p_value, percent, plus_minus

# Below this many validation patients the card says that model selection is largely noise.
NOISY_SELECTION_PATIENTS = 10
# Downstream tables: (metric keys shown, column titles) per task; metrics are fractions shown as percentages.
DOWNSTREAM_COLUMNS = {
    "segmentation": (
        ("dice_lv_endo", "dice_lv_epi", "dice_la"),
        ("LV endo Dice %", "LV epi Dice %", "LA Dice %"),
    ),
    "phase": (("accuracy", "f1"), ("ED/ES accuracy %", "ED/ES macro F1 %")),
    "view": (("accuracy", "f1"), ("2CH/4CH accuracy %", "2CH/4CH macro F1 %")),
}


def _converged(entry: dict) -> str | None:
    """ "k/n" seeds whose best validation came before their last step (None: not recorded)."""
    flags = entry.get("converged")
    if flags is None:
        return None
    return f"{sum(flag is True for flag in flags)}/{len(flags)}"


def task_model(settings: dict) -> str | None:
    """The network a task trained, as its settings record it (studies before 0.3.0 name no classifier)."""
    if "model" in settings:
        return settings["model"]
    architecture = settings.get("architecture")
    return f"MONAI UNet, channels {architecture['channels']}" if architecture else None


def downstream_tables(downstream: dict) -> list[dict]:
    """One table per (real-data cap, task): strategy rows, mean ± std over seeds of the headline metrics
    (and, in studies that record it, how many seeds converged)."""
    tables = []
    for cap_key in sorted(downstream.get("caps", {})):
        cap = downstream["caps"][cap_key]
        for task, (keys, titles) in DOWNSTREAM_COLUMNS.items():
            strategies = cap.get("tasks", {}).get(task, {}).get("strategies", {})
            rows = []
            for name in downstream.get("strategies", list(strategies)):
                if name not in strategies:
                    continue
                entry = strategies[name]
                metrics = entry.get("metrics", {})  # none when the strategy had nothing to train on
                cells = [plus_minus(metrics.get(key), missing="–") for key in keys]
                rows.append(
                    {
                        "strategy": STRATEGY_TITLES.get(name, name),
                        "cells": cells,
                        "skipped": entry.get("skipped"),
                        "converged": _converged(entry) or "–",
                    }
                )
            if rows:
                tables.append(
                    {
                        "task": task,
                        "model": task_model(downstream.get("settings", {}).get(task, {})),
                        "cap": percent(float(cap.get("cap", 1.0))),
                        "columns": titles,
                        "rows": rows,
                        "converged": any("converged" in entry for entry in strategies.values()),
                    }
                )
    return tables


# The headline effect per task (the confirmatory family's measure): metric key and column title.
EFFECT_COLUMNS = {
    "segmentation": (
        ("dice_foreground", "foreground Dice"),
        ("truth_dice_foreground", "foreground Dice vs truth"),
    ),
    "phase": (("p_true", "ED/ES p(true class)"),),
    "view": (("p_true", "2CH/4CH p(true class)"),),
}


def _effect_cell(effect: dict | None) -> str:
    return "–" if effect is None else f"{effect_interval(effect)} ({effect['improved']}/{effect['n']})"


def _comparison(a: str, b: str) -> str:
    return STRATEGY_TITLES.get(a, a) + " − " + STRATEGY_TITLES.get(b, b)


def _downstream_effects(downstream: dict) -> list[dict]:
    """Per real-data cap: one row per comparison, the headline effect of each task (Δ [95 % CI] (k/n))."""
    tables = []
    for cap_key in sorted(downstream.get("caps", {})):
        cap = downstream["caps"][cap_key]
        columns, found, pairs = [], {}, {}
        for task, metrics in EFFECT_COLUMNS.items():
            effects = (cap.get("tasks", {}).get(task) or {}).get("effects", [])
            for metric, title in metrics:
                chosen = [e for e in effects if e["metric"] == metric]
                if not chosen:
                    continue
                columns.append(title)
                for e in chosen:
                    pairs.setdefault((e["a"], e["b"]), e["n"])
                    found[(e["a"], e["b"], title)] = e
        rows = [
            {
                "comparison": _comparison(a, b),
                "n": n,
                "cells": [_effect_cell(found.get((a, b, t))) for t in columns],
            }
            for (a, b), n in pairs.items()
        ]
        if rows:
            tables.append({"cap": percent(float(cap.get("cap", 1.0))), "columns": columns, "rows": rows})
    return tables


def _downstream_family(downstream: dict) -> dict | None:
    """The confirmatory family as rows (raw and Holm p), or None when the study records none."""
    family = downstream.get("confirmatory")
    if not family:
        return None
    rows = []
    for test in family["tests"]:
        rows.append(
            {
                "task": test["task"],
                "comparison": _comparison(test["a"], test["b"]),
                "n": test["n"],
                "effect": effect_interval(test),
                "improved": f"{test['improved']}/{test['n']}",
                "p": "–" if test["p"] is None else p_value(test["p"]),
                "holm": "–" if test.get("p_holm") is None else p_value(test["p_holm"]),
                "mdd": f"{test['mdd'] * 100:.1f}",
            }
        )
    return {
        "cap": percent(float(family["cap"])),
        "size": len(family["tests"]),
        "alpha": f"{family['alpha']:g}",
        "rows": rows,
        "missing": family.get("missing", []),
    }


def downstream_study(downstream: dict, phantom: bool) -> dict | None:
    """Facts of a patient-level study (None for manifests from before it: their card stays as it was)."""
    if "statistics" not in downstream:
        return None
    flags = [
        flag
        for cap in downstream.get("caps", {}).values()
        for task in cap.get("tasks", {}).values()
        for entry in task.get("strategies", {}).values()
        for flag in entry.get("converged", [])
    ]
    test, validation = downstream.get("test", {}), downstream.get("validation", {})
    return {
        "test_patients": test.get("patients"),
        "validation_patients": validation.get("patients"),
        "noisy_selection": (validation.get("patients") or 0) < NOISY_SELECTION_PATIENTS,
        "runs": len(flags),
        "unconverged": sum(flag is False for flag in flags),
        "phantom": phantom,
        "effects": _downstream_effects(downstream),
        "family": _downstream_family(downstream),
    }
