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


def short_hash(digest: Any) -> str:
    return str(digest)[:12] if digest else "n/a"
