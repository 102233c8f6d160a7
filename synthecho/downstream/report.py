"""The downstream study as people read it: `reports/downstream.md` and `reports/downstream.png`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthecho.downstream import STRATEGIES
from synthecho.formatting import STRATEGY_TITLES, p_value, plus_minus
from synthecho.io import atomic_path

REPORT_MD, REPORT_PNG = "downstream.md", "downstream.png"

REPORT_MD, REPORT_PNG = "downstream.md", "downstream.png"


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
    if noise := test.get("labels_vs_truth_dice"):
        cells = ", ".join(f"{STRUCTURE_TITLES[name]} {noise[name] * 100:.1f} %" for name in STRUCTURE_TITLES)
        lines += [
            f"The test labels are an expert-like observer's contours; against the phantom's rendering truth "
            f'they score Dice {cells}. Columns "vs truth" score the models against that truth instead: '
            f"model error without label noise.",
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
                if any(
                    "truth_dice_lv_endo" in entry.get("metrics", {}) for entry in task["strategies"].values()
                ):
                    header += [f"{STRUCTURE_TITLES[n]} Dice vs truth %" for n in names]
                    keys += [(f"truth_dice_{n}", 100.0, 1) for n in names]
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
