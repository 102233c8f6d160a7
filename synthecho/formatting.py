"""Single values as text for the dataset card and the reports: numbers, mean ± std, p-values, table cells.

Every function is deterministic (the committed cards are compared byte for byte with a re-rendering) and
formats one value; sentences around the values belong to the templates and report writers.
"""

from __future__ import annotations

from typing import Any

# Titles of the downstream training strategies (synthecho.downstream.STRATEGIES), in the card and reports.
STRATEGY_TITLES = {
    "real": "real only",
    "synthetic": "synthetic only",
    "pretrain_finetune": "synthetic → real fine-tune",
    "real_plus_synthetic": "real + synthetic",
    # the row-paired controls: each synthetic row replaced by its source frame warped like its mask
    "warped": "warped real only",
    "warped_pretrain_finetune": "warped real → real fine-tune",
    "real_plus_warped": "real + warped real",
}


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def number(value: Any, digits: int = 3) -> str:
    """A manifest value: ints with thousands separators, floats with `digits` decimals, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return cell(value)


def significant(value: float | None, digits: int = 2) -> str:
    """Significant digits, not decimals: domain-feature KIDs are ~1e-4, Inception FIDs ~10-100."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def plus_minus(metric: dict | None, scale: float = 100.0, digits: int = 1, missing: str = "—") -> str:
    """`{"mean", "std"}` (fractions by default, shown as percentages) as `mean ± std`."""
    if not metric:
        return missing
    return f"{metric['mean'] * scale:.{digits}f} ± {metric['std'] * scale:.{digits}f}"


def percent(fraction: float, digits: int = 0) -> str:
    return f"{fraction:.{digits}%}"


def p_value(value: float) -> str:
    """Two significant digits, in scientific notation below 0.001."""
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def effect_interval(effect: dict, scale: float = 100.0, digits: int = 1) -> str:
    """A paired effect (`mean_difference`, `ci_low`, `ci_high`; fractions shown as points) as
    `+1.2 [−0.4, +2.9]`."""
    values = [effect["mean_difference"], effect["ci_low"], effect["ci_high"]]
    # a value that rounds to zero has no sign (no "−0.0")
    text = [f"{v * scale:+.{digits}f}" if round(v * scale, digits) else f"{0:.{digits}f}" for v in values]
    mean, low, high = (t.replace("-", "−") for t in text)
    return f"{mean} [{low}, {high}]"


def short_hash(digest: Any) -> str:
    return str(digest)[:12] if digest else "n/a"


def proportion_values(found: dict | None) -> dict | None:
    """A proportion record ({"k", "n", "rate", "ci95"}, Clopper-Pearson bounds) as formatted parts."""
    if not found or found.get("rate") is None:
        return None
    low, high = found["ci95"]
    parts = {"rate": found["rate"], "low": low, "high": high, "k": found["k"], "n": found["n"]}
    return {key: number(value) for key, value in parts.items()}
