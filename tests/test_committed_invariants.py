"""The floors every newest committed corpus must meet (`synthecho.quality.floors`), so that a later change
cannot silently undo them; and the check itself, shown to fail on a doctored manifest.

Manifests from before the attribute audit, the copy check's null and the phase policy carry none of the
metrics the floors read: they are exempt, and the test says so (skipped with the version named) rather
than passing them silently.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from synthecho.quality.floors import committed_violations, floor_violations, newest_manifests

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


@pytest.mark.parametrize("corpus", sorted(newest_manifests(MANIFESTS)))
def test_newest_committed_version_meets_the_floors(corpus):
    path = newest_manifests(MANIFESTS)[corpus]
    broken = floor_violations(json.loads(path.read_text()))
    if broken is None:
        pytest.skip(f"{corpus} {path.stem} predates the attribute audit, copy null and phase policy: exempt")
    assert broken == [], f"{path.relative_to(MANIFESTS.parent)} breaks: " + "; ".join(broken)


def passing_metrics() -> dict:
    """The new metrics at values that meet every floor (shape as the filter writes them)."""

    def found(k: int, n: int) -> dict:
        return {"k": k, "n": n, "rate": k / n, "ci95": [0.0, 1.0]}

    return {
        "attribute_fidelity": {
            "independent": {
                "generated": {"view": found(198, 200), "phase": found(180, 200)},
                "warped_real": {"view": found(192, 200), "phase": found(184, 200)},
            }
        },
        "phase_geometry": {
            "policy": "preserve",
            "by_policy": {
                "preserve": {"ratio": found(200, 200), "cavity_area": found(200, 200)},
                "echo_from_noise": {"ratio": found(180, 200), "cavity_area": found(140, 200)},
            },
        },
        "copy_check": {
            "planted": {"stated": {"caught": found(198, 200)}},
            "calibration": {"false_positive": found(2, 416)},
        },
    }


DOCTORINGS = {
    "view agreement": lambda m: m["attribute_fidelity"]["independent"]["generated"].update(view={"k": 188, "n": 200, "rate": 0.94}),
    "warped-real": lambda m: m["attribute_fidelity"]["independent"]["generated"].update(phase={"k": 160, "n": 200, "rate": 0.8}),
    "phase geometry": lambda m: m["phase_geometry"]["by_policy"]["preserve"].update(ratio={"k": 180, "n": 200, "rate": 0.9}),
    "planted copies": lambda m: m["copy_check"]["planted"]["stated"].update(caught={"k": 80, "n": 80, "rate": 1.0}),
    "null pairs": lambda m: m["copy_check"]["calibration"].update(false_positive={"k": 9, "n": 416, "rate": 9 / 416}),
}  # fmt: skip


@pytest.mark.parametrize("floor", sorted(DOCTORINGS) + ["attribute_mismatch"])
def test_a_doctored_newest_manifest_fails_the_check(tmp_path, floor):
    """A copy of the committed manifests in tmp, with a newer version of the demo that carries the new
    metrics: it passes as made, and fails, naming the floor, once that floor is broken."""
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, root)
    manifest = json.loads((MANIFESTS / "demo" / "0.1.0.json").read_text())
    manifest["metrics"] = {**manifest["metrics"], **passing_metrics()}
    manifest["counts"] = {**manifest["counts"], "generated": 200}
    manifest["counts"]["rejected"] = {**manifest["counts"]["rejected"], "attribute_mismatch": 4}
    newer = root / "demo" / "10.0.0.json"  # 10.0.0 > 9.9.9 > 0.1.0: versions sort as versions, not text
    newer.write_text(json.dumps(manifest))
    (root / "demo" / "9.9.9.json").write_text(json.dumps({"metrics": {}}))
    assert newest_manifests(root)["demo"] == newer
    assert committed_violations(root)["demo"] == []

    doctored = copy.deepcopy(manifest)
    if floor == "attribute_mismatch":
        doctored["counts"]["rejected"]["attribute_mismatch"] = 11  # 5.5 % of 200
    else:
        DOCTORINGS[floor](doctored["metrics"])
    newer.write_text(json.dumps(doctored))
    broken = committed_violations(root)["demo"]
    assert len(broken) == 1 and floor in broken[0], broken
    assert committed_violations(root)["controlnet-phantom"] is None  # committed 0.1.0: exempt
