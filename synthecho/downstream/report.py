"""The downstream study as people read it: `reports/downstream.md` and `reports/downstream.png`.

Effect sizes with intervals lead; p-values appear only in the confirmatory family. Every interval and
p-value has its n beside it. Each synthetic strategy's row sits beside its control's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthecho.downstream import STRATEGIES
from synthecho.formatting import STRATEGY_TITLES, effect_interval, p_value, plus_minus
from synthecho.io import atomic_path

REPORT_MD, REPORT_PNG = "downstream.md", "downstream.png"
# Below this many validation patients, which validation step scores best is mostly chance.
NOISY_SELECTION_PATIENTS = 10
METRIC_TITLES = {
    "dice_foreground": "foreground Dice",
    "dice_lv_endo": "LV endo Dice",
    "dice_lv_epi": "LV epi Dice",
    "dice_la": "LA Dice",
    "p_true": "p(true class)",
    "correct": "accuracy",
}
PHANTOM_SCOPE = (
    "On the phantom this study can show whether, on simulated hearts whose truth is known, a model gains "
    "from the generator's frames beyond what warping the same patients' real frames by the same "
    "transforms gives (the warped controls), and by how much, with intervals over {patients} test "
    "patients; it cannot show that such a gain carries over to real CAMUS patients or to clinical "
    "images, because the phantom's anatomy, speckle and label noise are simulated."
)


def _task_title(name: str, study: dict) -> str:
    from synthecho.downstream.classification import TASK_TITLES

    if name == "segmentation":
        return "Segmentation (MONAI 2-D U-Net)"
    if name.startswith("clipseg-P"):
        return f"CLIPSeg, prompt {name.removeprefix('clipseg-')}"
    model = study.get("settings", {}).get(name, {}).get("model", "")
    return f"{TASK_TITLES[name]} ({'small CNN' if model.startswith('MONAI') else 'ResNet-18'})"


def metric_title(metric: str) -> str:
    if metric.startswith("truth_"):
        return METRIC_TITLES[metric.removeprefix("truth_")] + " vs truth"
    return METRIC_TITLES.get(metric, metric)


def _ordered_caps(study: dict) -> list[dict]:
    """Caps largest first (JSON round-trips sort keys alphabetically, so order explicitly)."""
    return sorted(study["caps"].values(), key=lambda cap: -cap["cap"])


def _ordered(keys, order) -> list[str]:
    """`keys` in the order of `order` (recipe task order, STRATEGIES)."""
    return [key for key in order if key in keys]


def convergence_cell(entry: dict) -> str:
    """Best step / steps run per seed; a run whose best validation is its last is marked not converged."""
    if "converged" not in entry:
        return ", ".join(str(step) for step in entry["best_step"])
    cells = [
        f"{best}/{steps}" + ("" if converged else " ⚠ not converged")
        for best, steps, converged in zip(entry["best_step"], entry["steps"], entry["converged"], strict=True)
    ]
    return ", ".join(cells)


def _header(recipe, study: dict) -> list[str]:
    from synthecho.downstream.segmentation import STRUCTURE_TITLES

    test, validation = study["test"], study["validation"]
    lines = [
        f"# Downstream baselines — {recipe.name} {recipe.version}",
        "",
        f"Test: the real test split ({test['frames']} frames, {test['patients']} patients); model selection "
        f"on the real validation split ({validation['frames']} frames, {validation['patients']} patients). "
        f"Seeds {study['seeds']}. Strategy tables: mean ± sample std (ddof=1) over seeds — the seed-to-seed "
        f"spread, training variance. Effects: the unit is the test patient (mean over its frames, then over "
        f"seeds); Δ = first − second in points, with its 95 % BCa bootstrap interval over patients, n "
        f"patients and k of n improved; seed sd = sample std over seeds of the per-seed mean difference. "
        f"Effects are descriptive; only the confirmatory family below is tested.",
        "",
    ]
    if validation["patients"] < NOISY_SELECTION_PATIENTS:
        lines += [
            f"> Model selection uses only {validation['patients']} validation patients: which step scores "
            f"best is then largely noise, and best steps (and early stopping) should be read as such.",
            "",
        ]
    if recipe.source.kind == "phantom":
        lines += [PHANTOM_SCOPE.format(patients=test["patients"]), ""]
    if noise := test.get("labels_vs_truth_dice"):
        cells = ", ".join(f"{STRUCTURE_TITLES[name]} {noise[name] * 100:.1f} %" for name in STRUCTURE_TITLES)
        lines += [
            f"The test labels are an expert-like observer's contours; against the phantom's rendering truth "
            f'they score Dice {cells}. Columns and effects "vs truth" score the models against that truth '
            f"instead: model error without label noise.",
            "",
        ]
    augmentation = next(iter(study["settings"].values()), {}).get("augmentation")
    if augmentation:
        lines += [
            f"Augmentation, the same for every strategy: rotation ±{augmentation['rotation_degrees']:g}°, "
            f"translation ±{augmentation['translate'] * 100:g} %, scale {augmentation['scale']}, gamma "
            f"{augmentation['gamma']}, gain {augmentation['gain']}, Gaussian noise std ≤ "
            f"{augmentation['noise_std']:g}, no flips (MONAI).",
            "",
        ]
    for name in study["tasks"]:
        settings = study["settings"][name]
        # The training budget belongs next to the numbers: a --set override changes what they mean.
        stop = (
            f", early stopping after {settings['patience']} validations without gain"
            if settings.get("patience")
            else ""
        )
        lines.append(
            f"- {_task_title(name, study)}: at most {settings['steps']} steps (synthetic or warped only; "
            f"fine-tuning adds at most {settings['finetune_steps']}; what trains on real data from scratch "
            f"gets the same total, {settings['steps'] + settings['finetune_steps']}), batch "
            f"{settings['batch_size']}, lr {settings['learning_rate']:g}, selection every "
            f"{settings['validate_every']} steps{stop}"
        )
    lines.append("")
    return lines


def _confirmatory(family: dict | None) -> list[str]:
    if not family:
        return []
    versus = " and vs ".join(STRATEGY_TITLES[name] for name in family["versus"])
    lines = [
        f"## Confirmatory family ({family['cap'] * 100:g} % real data: {STRATEGY_TITLES[family['strategy']]} "
        f"vs {versus})",
        "",
        f"Pre-specified in the recipe (`evaluate.confirmatory`): per-patient mean foreground Dice "
        f"(segmentation) and per-patient mean probability of the true class (classification). Exact "
        f"two-sided sign-flip test over patients (Monte Carlo above 16), Holm across these "
        f"{len(family['tests'])} tests only, α = {family['alpha']:g}; no p-value below 6 patients. MDD: the "
        f"difference this test detects with 80 % power at Holm's first-step level, given the observed spread "
        f"of per-patient differences.",
        "",
    ]
    if family["tests"]:
        lines += [
            "| task | measure | comparison | n | Δ [95 % CI] | improved | p | Holm p | MDD |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for test in family["tests"]:
            p = "—" if test["p"] is None else p_value(test["p"])
            holm = "—" if test.get("p_holm") is None else p_value(test["p_holm"])
            lines.append(
                f"| {test['task']} | {metric_title(test['metric'])} | {STRATEGY_TITLES[test['a']]} vs "
                f"{STRATEGY_TITLES[test['b']]} | {test['n']} | {effect_interval(test)} | "
                f"{test['improved']}/{test['n']} | {p} | {holm} | {test['mdd'] * 100:.1f} |"
            )
        lines.append("")
    for key in family["missing"]:
        lines += [f"> Not run: {key}.", ""]
    if not family["tests"] and not family["missing"]:
        lines += [f"> The {family['cap'] * 100:g} % cap is not in this study (`evaluate.real_caps`).", ""]
    return lines


def _strategy_table(task_name: str, task: dict) -> list[str]:
    from synthecho.downstream.segmentation import STRUCTURE_TITLES

    if task_name == "segmentation" or task_name.startswith("clipseg"):
        names = list(STRUCTURE_TITLES)
        header = [f"{STRUCTURE_TITLES[n]} Dice %" for n in names] + [
            f"{STRUCTURE_TITLES[n]} HD95 mm" for n in names
        ]
        keys = [(f"dice_{n}", 100.0, 1) for n in names] + [(f"hd95_{n}", 1.0, 2) for n in names]
        if any("truth_dice_lv_endo" in entry.get("metrics", {}) for entry in task["strategies"].values()):
            header += [f"{STRUCTURE_TITLES[n]} Dice vs truth %" for n in names]
            keys += [(f"truth_dice_{n}", 100.0, 1) for n in names]
    else:
        header = ["accuracy %", "macro precision %", "macro recall %", "macro F1 %", "p(true) %"]
        keys = [(k, 100.0, 1) for k in ("accuracy", "precision", "recall", "f1", "p_true")]
    header.append("best step / steps, per seed")
    lines = ["| strategy | real frames | synthetic rows | " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * (3 + len(header)))
    for strategy in _ordered(task["strategies"], STRATEGIES):
        entry = task["strategies"][strategy]
        title = STRATEGY_TITLES[strategy]
        if "skipped" in entry:
            lines.append(f"| {title} | — | — | skipped: {entry['skipped']} |" + " |" * (len(header) - 1))
            continue
        cells = [plus_minus(entry["metrics"].get(key), scale, digits) for key, scale, digits in keys]
        cells.append(convergence_cell(entry))
        lines.append(f"| {title} | {entry['n_real']} | {entry['n_synthetic']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _effects_table(effects: list[dict], metrics: list[str]) -> list[str]:
    """One row per comparison, one column per metric: Δ [CI] (k/n improved), n and the seed sd."""
    pairs = list(dict.fromkeys((e["a"], e["b"]) for e in effects if e["metric"] in metrics))
    if not pairs:
        return []
    found = {(e["a"], e["b"], e["metric"]): e for e in effects}
    first = metrics[0]
    lines = [
        "| comparison (first − second) | n | "
        + " | ".join(f"{metric_title(m)} Δ [95 % CI] (improved)" for m in metrics)
        + f" | seed sd ({metric_title(first)}) |",
        "|" + "---|" * (3 + len(metrics)),
    ]
    for a, b in pairs:
        cells = []
        for metric in metrics:
            e = found.get((a, b, metric))
            cells.append("—" if e is None else f"{effect_interval(e)} ({e['improved']}/{e['n']})")
        head = found.get((a, b, first)) or next(e for e in effects if (e["a"], e["b"]) == (a, b))
        lines.append(
            f"| {STRATEGY_TITLES[a]} − {STRATEGY_TITLES[b]} | {head['n']} | "
            + " | ".join(cells)
            + f" | {head['seed_sd'] * 100:.1f} |"
        )
    return [*lines, ""]


def _task_sections(task_name: str, task: dict, study: dict) -> list[str]:
    lines = [f"### {_task_title(task_name, study)}", "", *_strategy_table(task_name, task)]
    effects = task.get("effects", [])
    metrics = list(dict.fromkeys(e["metric"] for e in effects))
    plain = [m for m in metrics if not m.startswith("truth_")]
    truth = [m for m in metrics if m.startswith("truth_")]
    if effects:
        lines += ["Effects over test patients (points):", "", *_effects_table(effects, plain)]
    if truth:
        lines += ["Against the phantom's truth:", "", *_effects_table(effects, truth)]
    return lines


def unconverged_runs(study: dict) -> list[str]:
    """'cap / task / strategy / seed' of every run whose best validation was its last."""
    out = []
    for cap_key, cap in study["caps"].items():
        for task_name, task in cap["tasks"].items():
            for strategy, entry in task["strategies"].items():
                for seed, converged in zip(entry.get("seeds", []), entry.get("converged", []), strict=True):
                    if converged is False:
                        out.append(f"{cap_key} / {task_name} / {strategy} / seed {seed}")
    return out


def render_markdown(recipe, study: dict) -> str:
    """`reports/downstream.md`: the confirmatory family, then per cap and task the strategy table (with
    convergence) and the effects of each synthetic strategy and its control."""
    lines = _header(recipe, study)
    for reason in study["skipped_tasks"].values():
        lines += [f"> Skipped: {reason}", ""]
    lines += _confirmatory(study.get("confirmatory"))
    if unconverged := unconverged_runs(study):
        lines += [
            f"> Not converged (best validation at the last step, the budget ended while it improved): "
            f"{len(unconverged)} runs — {'; '.join(unconverged)}.",
            "",
        ]
    for cap in _ordered_caps(study):
        lines += [
            f"## Real data: {cap['cap'] * 100:g}% of train patients ({cap['real_train_patients']} patients, "
            f"{cap['real_train_frames']} frames; {cap['synthetic_train_rows']} synthetic train rows from "
            f"`{cap['run']}`)",
            "",
        ]
        if pairing := cap.get("warped_pairing"):
            lines += [
                f"Warped control: {pairing['rows']} rows, one per synthetic row; of the "
                f"{pairing['conditioning_rows']} rows whose mask is their conditioning mask, the warped mask "
                f"reproduces {pairing['masks_reproduced']} pixel for pixel.",
                "",
            ]
        for task_name in _ordered(cap["tasks"], study["tasks"]):
            lines += _task_sections(task_name, cap["tasks"][task_name], study)
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
                    hatch="//" if strategy.startswith("warped") or strategy.endswith("warped") else None,
                    label=STRATEGY_TITLES[strategy],
                )
            axis.set_xticks(np.arange(len(keys)), labels)
            axis.set_ylim(0, 1.05)
            axis.set_ylabel(ylabel)
            axis.set_title(f"{_task_title(task_name, study)}\n{cap['cap'] * 100:g}% real", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for axis in row:
            if axis.get_legend_handles_labels()[0]:
                handles, labels = axis.get_legend_handles_labels()
                break
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.tight_layout(rect=(0, 0.09, 1, 1))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
