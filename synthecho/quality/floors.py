"""Floors a published corpus must meet, read from its manifest (tests/test_committed_invariants.py checks
the newest committed version of every corpus, so a later change cannot silently undo them).

- attributes, measured by the independent judge on every generated row before any attribute filter:
  view agreement >= VIEW_AGREEMENT and >= the warped-real view accuracy - VIEW_GAP; phase agreement >=
  the warped-real phase accuracy - PHASE_GAP; rows rejected as `attribute_mismatch` <= MISMATCH_SHARE of
  the generated rows (the filter is the safety net, not the fix);
- phase geometry: the conditioning masks of the policy used keep the claimed phase's LV cavity /
  epicardium ratio for >= PHASE_GEOMETRY of the rows;
- copy check: >= PLANTED_MIN planted copies, caught at >= CATCH_RATE; >= NULL_MIN null pairs, flagged at
  <= FALSE_POSITIVE_RATE.

Manifests from before these metrics existed are exempt (`floor_violations` returns None for them).
"""

from __future__ import annotations

import json
from pathlib import Path

VIEW_AGREEMENT = 0.95
VIEW_GAP = 0.03
PHASE_GAP = 0.05
MISMATCH_SHARE = 0.05
PHASE_GEOMETRY = 0.95
PLANTED_MIN, CATCH_RATE = 100, 0.95
NULL_MIN, FALSE_POSITIVE_RATE = 300, 0.01


def floor_violations(manifest: dict) -> list[str] | None:
    """The floors `manifest` breaks (each named, with its numbers); None when it predates the metrics."""
    metrics = manifest.get("metrics") or {}
    audit = (metrics.get("attribute_fidelity") or {}).get("independent")
    check, geometry = metrics.get("copy_check"), metrics.get("phase_geometry")
    if not (audit and check and geometry):
        return None
    broken = []

    def rate(found: dict) -> float:
        return float("nan") if found.get("rate") is None else float(found["rate"])

    view, warped_view = rate(audit["generated"]["view"]), rate(audit["warped_real"]["view"])
    phase, warped_phase = rate(audit["generated"]["phase"]), rate(audit["warped_real"]["phase"])
    if not view >= VIEW_AGREEMENT:
        broken.append(f"view agreement {view:.3f} < {VIEW_AGREEMENT}")
    if not view >= warped_view - VIEW_GAP:
        broken.append(f"view agreement {view:.3f} < warped-real {warped_view:.3f} - {VIEW_GAP}")
    if not phase >= warped_phase - PHASE_GAP:
        broken.append(f"phase agreement {phase:.3f} < warped-real {warped_phase:.3f} - {PHASE_GAP}")
    counts = manifest.get("counts") or {}
    generated = counts.get("generated") or 0
    mismatch = (counts.get("rejected") or {}).get("attribute_mismatch", 0)
    if not generated or mismatch / generated > MISMATCH_SHARE:
        broken.append(
            f"attribute_mismatch rejected {mismatch} of {generated} generated rows (> {MISMATCH_SHARE:.0%})"
        )
    used = geometry["by_policy"][geometry["policy"]]["ratio"]
    if not rate(used) >= PHASE_GEOMETRY:
        broken.append(f"phase geometry ({geometry['policy']}) {rate(used):.3f} < {PHASE_GEOMETRY}")
    caught = check["planted"]["stated"]["caught"]
    if caught["n"] < PLANTED_MIN or not rate(caught) >= CATCH_RATE:
        broken.append(
            f"copy check caught {caught['k']} of {caught['n']} planted copies (need >= {CATCH_RATE} of >= "
            f"{PLANTED_MIN})"
        )
    false_positive = check["calibration"]["false_positive"]
    if false_positive["n"] < NULL_MIN or not rate(false_positive) <= FALSE_POSITIVE_RATE:
        broken.append(
            f"copy check flagged {false_positive['k']} of {false_positive['n']} null pairs "
            f"(need <= {FALSE_POSITIVE_RATE} on >= {NULL_MIN})"
        )
    return broken


def newest_manifests(root: Path) -> dict[str, Path]:
    """Corpus name -> its newest committed manifest (`<root>/<name>/<version>.json`, semantic versions).
    Comparisons (`synthecho compare`, `"kind": "comparison"`) publish no rows and are left out."""
    from packaging.version import Version

    newest = {}
    for folder in sorted(path for path in Path(root).iterdir() if path.is_dir()):
        versions = sorted(folder.glob("*.json"), key=lambda path: Version(path.stem))
        if versions and json.loads(versions[-1].read_text()).get("kind") != "comparison":
            newest[folder.name] = versions[-1]
    return newest


def committed_violations(root: Path) -> dict[str, list[str] | None]:
    """Per corpus (newest version): the floors it breaks, or None when it is exempt."""
    return {
        name: floor_violations(json.loads(path.read_text())) for name, path in newest_manifests(root).items()
    }
