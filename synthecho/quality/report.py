"""What the filter shows people: `reports/filter_examples.png` and `reports/quality.md`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthecho.quality.corpus import EXAMPLES_PER_GROUP, Collected
from synthecho.quality.scores import REJECT_REASONS


def write_examples_png(path: Path, collected: Collected) -> None:
    """Kept vs rejected frames, each with its mask outlined and the reason / scores above it."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import binary_erosion

    from synthecho.grids import MASK_COLOURS
    from synthecho.io import write_bytes_atomic

    # Rejected frames taken in turn from each reason, so every reason that occurred is shown.
    by_reason = [collected.examples.get(reason, []) for reason in REJECT_REASONS]
    rejected = [group[i] for i in range(EXAMPLES_PER_GROUP) for group in by_reason if i < len(group)]
    groups = [("kept", collected.examples.get("kept", [])), ("rejected", rejected[:EXAMPLES_PER_GROUP])]
    columns = max(1, *(len(examples) for _, examples in groups))
    figure, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 5.4), squeeze=False)
    try:
        for r, (label, examples) in enumerate(groups):
            for c in range(columns):
                axis = axes[r][c]
                axis.axis("off")
                if c >= len(examples):
                    if c == 0:
                        axis.text(0.5, 0.5, f"no {label} rows", ha="center", va="center")
                    continue
                image, mask, title = examples[c]
                rgb = np.repeat(image[:, :, None], 3, axis=2).copy()
                for value in (1, 2, 3):  # outline each structure in its CAMUS colour
                    region = mask == value
                    rgb[region & ~binary_erosion(region)] = MASK_COLOURS[value]
                axis.imshow(rgb, interpolation="nearest")
                axis.set_title(title, fontsize=7, color="black" if r == 0 else "darkred")
            axes[r][0].text(
                -0.08,
                0.5,
                label,
                transform=axes[r][0].transAxes,
                rotation=90,
                ha="right",
                va="center",
                fontsize=11,
            )
        figure.suptitle("filter: kept rows (top) and rejected rows with their reasons (bottom)", fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def _fraction(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt(value, digits: int = 3) -> str:
    """Significant digits, not decimals: domain-feature KIDs are ~1e-4, Inception FIDs ~10-100."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def quality_markdown(recipe, counts: dict, metrics: dict) -> str:
    """`reports/quality.md`: counts by reason, dataset metrics by feature space, thresholds, fidelity."""
    lines = [f"# Quality of {recipe.name} {recipe.version}", "", "## Rows", ""]
    lines += [
        "| split | generated | passed | " + " | ".join(REJECT_REASONS) + " |",
        "|---" * (3 + len(REJECT_REASONS)) + "|",
    ]
    for split, values in counts["by_split"].items():
        reasons = " | ".join(str(values["rejected_by_reason"].get(reason, 0)) for reason in REJECT_REASONS)
        lines.append(f"| {split} | {values['generated']} | {values['passed']} | {reasons} |")
    overall = " | ".join(str(counts["rejected"][reason]) for reason in REJECT_REASONS)
    lines.append(f"| all | {counts['generated']} | {counts['passed']} | {overall} |")
    lines += [
        "",
        "## Dataset metrics",
        "",
        "KID is the headline at small N (unbiased); FID is biased upwards when N is small.",
        "",
    ]
    lines += [
        "| feature space | comparison | n real | n synthetic | KID (mean ± std) | FID |",
        "|---|---|---|---|---|---|",
    ]
    spaces = [("domain (segmenter encoder)", metrics["domain"], metrics["real_reference"]["domain"])]
    if metrics["inception"] is not None:
        spaces.append(("inception (clean-fid)", metrics["inception"], metrics["real_reference"]["inception"]))
    for space, per_split, reference in spaces:
        rows = [(f"synthetic {split} vs real", values) for split, values in per_split.items()]
        rows.append(("real train vs real validation (reference)", reference))
        for label, values in rows:
            kid = (
                f"{_fmt(values.get('kid_mean'))} ± {_fmt(values.get('kid_std'))}"
                if values.get("kid_mean") is not None
                else values.get("note", "–")
            )
            lines.append(
                f"| {space} | {label} | {values['n_real']} | {values['n_synthetic']} | {kid} | {_fmt(values.get('fid'))} |"
            )
    lines += ["", f"Inception: {metrics['inception_note']}", "", "## Thresholds", ""]
    calibration = metrics["copy_calibration"]
    lines.append(
        f"- near copy: NCC (after removing the mean training frame) to the closest real training frame above "
        f"**{metrics['copy_threshold']:.4f}** ({calibration['source']}"
        + (
            f"; max over {calibration['pairs']} real ED-vs-ES pairs, median {calibration['quantiles']['0.5']:.3f}"
            if calibration.get("pairs")
            else ""
        )
        + ")"
    )
    lines.append(
        "- mask consistency (segmenter vs row mask, Dice): "
        + ", ".join(f"{k} ≥ {v}" for k, v in metrics["dice_threshold"].items())
    )
    limits = metrics["anatomy_limits"]
    ranges = ", ".join(
        f"{name} in [{limits['area_min'][name]:.3f}, {limits['area_max'][name]:.3f}]"
        for name in limits["area_min"]
    )
    lines.append(f"- anatomy (segmenter-drawn masks): area fraction {ranges}; LA centroid below LV centroid")
    from synthecho.card import mask_fidelity_sentence

    lines += ["", "## Mask fidelity", "", mask_fidelity_sentence(metrics.get("mask_fidelity"))]
    fidelity = metrics["attribute_fidelity"]
    validation = fidelity["classifier"]["validation"]
    lines += ["", "## Attribute fidelity", ""]
    lines.append(
        f"Classifiers trained on real train; on real validation they reach view accuracy "
        f"{_fraction(validation['view_accuracy'])} and phase accuracy {_fraction(validation['phase_accuracy'])} "
        f"(the ceiling for the agreement below)."
    )
    lines += ["", "| split | view agreement | phase agreement |", "|---|---|---|"]
    for split, values in fidelity["by_split"].items():
        lines.append(
            f"| {split} | {_fraction(values['view_agreement'])} | {_fraction(values['phase_agreement'])} |"
        )
    lines.append(
        f"| overall | {_fraction(fidelity['view_agreement'])} | {_fraction(fidelity['phase_agreement'])} |"
    )
    return "\n".join(lines) + "\n"
