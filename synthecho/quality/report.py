"""What the filter shows people: `reports/filter_examples.png` and `reports/quality.md`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthecho.quality.corpus import EXAMPLES_PER_GROUP, Collected
from synthecho.quality.scores import REJECT_REASONS


def write_examples_png(path: Path, collected: Collected) -> None:
    """Kept vs rejected frames, each with its mask outlined and the reason / scores above it."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import binary_erosion

    from synthecho.grids import MASK_COLOURS

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
    except BaseException:
        plt.close(figure)
        raise
    _save_figure(path, figure, "filter: kept rows (top) and rejected rows with their reasons (bottom)", 10)


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
                f"| {space} | {label} | {values['n_real']} | {values['n_synthetic']} | {kid} | "
                f"{_fmt(values.get('fid'))} |"
            )
    lines += ["", f"Inception: {metrics['inception_note']}", "", "## Thresholds", ""]
    check = metrics["copy_check"]
    calibration = check["calibration"]
    lines.append(
        f"- near copy: speckle similarity (max over the row's warped source, its record's other phase and "
        f"every real train frame) above **{check['threshold']:.4f}** ({calibration['source']}; the "
        f"{calibration['quantile']} quantile of {calibration['pairs']} null pairs, median "
        f"{calibration['null_quantiles']['0.5']:.3f}, max {calibration['null_quantiles']['1.0']:.3f})"
    )
    thresholds = metrics["attribute_fidelity"]["attribute_threshold"]
    judged = [f"p({name}) < {value}" for name, value in thresholds.items() if value is not None]
    lines.append("- attribute mismatch (filter classifier): " + (", ".join(judged) or "not judged"))
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
    lines += _checks_markdown(metrics, counts)
    return "\n".join(lines) + "\n"


def _checks_markdown(metrics: dict, counts: dict) -> list[str]:
    """Mask fidelity, the copy check, phase geometry and attribute fidelity: the card's paragraphs (the
    `common.md` macros) with the tables behind them."""
    from synthecho.card import mask_fidelity_sentence
    from synthecho.card_context import attribute_audit_values, copy_check_values, phase_geometry_values
    from synthecho.templating import macro

    lines = ["", "## Mask fidelity", "", mask_fidelity_sentence(metrics.get("mask_fidelity"))]
    check = metrics["copy_check"]
    lines += ["", "## Copy check", "", macro("common.md", "copy_check")(copy_check_values(metrics)), ""]
    lines += ["| planted copies: gain, blur (px), noise (σ) | caught | 95 % CI | median similarity |"]
    lines += ["|---|---|---|---|"]
    for row in (check["planted"]["stated"], *check["planted"]["sweep"]):
        caught = row["caught"]
        lines.append(
            f"| ×{row['gain']}, {row['blur_px']}, {row['noise']} | {caught['k']}/{caught['n']} | "
            f"{_interval(caught)} | {_fmt(row['median_similarity'])} |"
        )
    lines += ["", "The three generated rows closest to a real frame: `copy_nearest.png`."]
    lines += [
        "",
        "## Phase geometry",
        "",
        macro("common.md", "phase_geometry")(phase_geometry_values(metrics)),
    ]
    fidelity = metrics["attribute_fidelity"]
    audit = fidelity["independent"]
    lines += [
        "",
        "## Attribute fidelity",
        "",
        macro("common.md", "attribute_audit")(attribute_audit_values(metrics)),
    ]
    lines += [
        "",
        (
            "Independent classifier, every generated row before any attribute filter, beside the warped-real "
            "counterparts of the same rows:"
        ),
        "",
    ]
    lines += [
        "| split | view agreement | warped-real view | phase agreement | warped-real phase |",
        "|---|---|---|---|---|",
    ]
    splits = list(audit["generated"]["by_split"])
    for split in [*splits, None]:
        generated = audit["generated"] if split is None else audit["generated"]["by_split"][split]
        warped = audit["warped_real"] if split is None else audit["warped_real"]["by_split"][split]
        cells = [
            _interval(part[name], with_rate=True)
            for name in ("view", "phase")
            for part in (generated, warped)
        ]
        lines.append(f"| {split or 'all'} | " + " | ".join(cells) + " |")
    rejected = counts["rejected"].get("attribute_mismatch", 0)
    lines += [
        "",
        f"Rejected as attribute_mismatch: {rejected} of {counts['generated']} generated rows. The filter's "
        f"classifier on the published rows: view {_fraction(fidelity['view_agreement'])}, phase "
        f"{_fraction(fidelity['phase_agreement'])} (agreement by selection: it is the classifier "
        f"that kept them).",
    ]
    return lines


def _interval(found: dict, with_rate: bool = False) -> str:
    if found.get("rate") is None:
        return "–"
    low, high = found["ci95"]
    text = f"[{low:.3f}, {high:.3f}]"
    return f"{found['rate']:.3f} {text} (n {found['n']})" if with_rate else text


def write_copy_nearest_png(path: Path, entries: list[tuple]) -> None:
    """The generated rows most similar to a real frame, each beside that (warped) frame."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(entries))
    figure, axes = plt.subplots(count, 2, figsize=(4.6, 2.5 * count), squeeze=False)
    try:
        for r in range(count):
            for c in range(2):
                axes[r][c].axis("off")
            if r >= len(entries):
                axes[r][0].text(0.5, 0.5, "no generated rows", ha="center", va="center")
                continue
            image, reference, title = entries[r]
            axes[r][0].imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes[r][1].imshow(reference, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes[r][0].set_title(title, fontsize=6, loc="left")
    except BaseException:
        plt.close(figure)
        raise
    _save_figure(path, figure, "copy check: closest generated rows (left) and the real frame (right)", 8)


def _save_figure(path: Path, figure, title: str, fontsize: int) -> None:
    """Title, lay out and write a figure as PNG (atomically); the figure is closed either way."""
    import io

    import matplotlib.pyplot as plt

    from synthecho.io import write_bytes_atomic

    try:
        figure.suptitle(title, fontsize=fontsize)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
