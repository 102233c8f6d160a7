"""The dataset card's values of the filter's newer checks, read from a manifest: the independent attribute
audit, the copy check (its null, its planted copies) and the phase geometry of the conditioning masks.

Part of `card_context` (kept apart so each module reads in one sitting): pure functions of the manifest's
`metrics`, every value formatted; None for manifests from before the check, which the template then
leaves out (committed cards of older versions stay byte for byte as they were).
"""

from __future__ import annotations

from synthecho.formatting import number, proportion_values
from synthecho.manifest import manifest_get


def attribute_audit_values(metrics: dict) -> dict | None:
    """The independent attribute judge (all generated rows, their warped-real counterparts, real frames)
    and the filter classifier's cross-validated accuracy; None for manifests from before the audit."""
    fidelity = metrics.get("attribute_fidelity") or {}
    audit = fidelity.get("independent")
    if not audit:
        return None
    judge, cv = audit["judge"], manifest_get(fidelity, "classifier.cross_validation", {})
    thresholds = fidelity.get("attribute_threshold") or {}
    return {
        "view": proportion_values(audit["generated"]["view"]),
        "phase": proportion_values(audit["generated"]["phase"]),
        "warped_view": proportion_values(audit["warped_real"]["view"]),
        "warped_phase": proportion_values(audit["warped_real"]["phase"]),
        "judge_view": proportion_values(judge["real"]["view"]),
        "judge_phase": proportion_values(judge["real"]["phase"]),
        "judge_model": str(judge["model"]),
        "folds": number(judge["real"]["folds"]),
        "patients": number(judge["real"]["patients"]),
        "filter_view": proportion_values(cv.get("view")),
        "filter_phase": proportion_values(cv.get("phase")),
        "thresholds": [
            {"attribute": name, "threshold": number(value, 2)}
            for name, value in thresholds.items()
            if value is not None
        ],
    }


def copy_check_values(metrics: dict, rejected: int | None = None) -> dict | None:
    """The copy check: threshold and its null, the planted copies, rows rejected; None before the check."""
    check = metrics.get("copy_check")
    if not check:
        return None
    calibration, planted = check["calibration"], check["planted"]
    return {
        "threshold": number(check["threshold"]),
        "from_recipe": calibration.get("source") == "recipe filter.copy_threshold",
        "quantile": number(calibration.get("quantile")),
        "null_pairs": number(calibration.get("pairs")),
        "null_patients": number(calibration.get("patients")),
        "null_kinds": ", ".join(kind.replace("_", " ") for kind in calibration.get("kinds", [])),
        "false_positive": proportion_values(calibration.get("false_positive")),
        **_strength(planted["stated"]),
        "sweep": [_strength(row) for row in planted.get("sweep", [])],
        "rejected": number(check.get("rejected", rejected)),
    }


def _strength(row: dict) -> dict:
    return {
        "gain": number(row["gain"], 2),
        "blur": number(row["blur_px"], 1),
        "noise": number(row["noise"], 0),
        "caught": proportion_values(row["caught"]),
    }


def phase_geometry_values(metrics: dict) -> dict | None:
    """Phase geometry of the conditioning masks under the policy used and the other; None before it."""
    geometry = metrics.get("phase_geometry")
    if not geometry:
        return None
    used = geometry["policy"]
    rows = [
        {
            "policy": policy.replace("_", " "),
            "used": policy == used,
            "ratio": proportion_values(values["ratio"]),
            "area": proportion_values(values["cavity_area"]),
        }
        for policy, values in geometry["by_policy"].items()
    ]
    return {"policy": used.replace("_", " "), "rows": sorted(rows, key=lambda row: not row["used"])}
