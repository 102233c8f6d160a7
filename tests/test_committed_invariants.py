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


# Published versions that are known to miss floors (issue 16 is open for them): listed word for word, so
# any further regression fails, and so does a fix until its entry is removed. Never add to this silently:
# a new entry needs a CHANGELOG line saying which floor the version misses.
KNOWN_SHORTFALLS = {
    ("demo", "0.2.0"): [
        "view agreement 0.861 < 0.95",
        "attribute_mismatch rejected 24 of 208 generated rows (> 5%)",
        "copy check flagged 6 of 416 null pairs (need <= 0.01 on >= 300)",
    ],
    ("phantom-study", "0.2.0"): [  # its generator has no view x phase class embedding (the demo's has)
        "view agreement 0.605 < 0.95",
        "view agreement 0.605 < warped-real 0.848 - 0.03",
        "attribute_mismatch rejected 204 of 560 generated rows (> 5%)",
    ],
    ("phantom-study", "0.3.0"): [  # the demo's class embedding: view 0.605 -> 0.964, mismatch 204 -> 43
        "attribute_mismatch rejected 43 of 560 generated rows (> 5%)",
    ],
    ("demo", "0.3.0"): [  # 0.2.0's rows, byte for byte: the same three
        "view agreement 0.861 < 0.95",
        "attribute_mismatch rejected 24 of 208 generated rows (> 5%)",
        "copy check flagged 6 of 416 null pairs (need <= 0.01 on >= 300)",
    ],
    ("controlnet-phantom", "0.2.0"): [  # the demo's phantom and copy null: the same three floors
        "view agreement 0.788 < 0.95",
        "attribute_mismatch rejected 35 of 208 generated rows (> 5%)",
        "copy check flagged 6 of 416 null pairs (need <= 0.01 on >= 300)",
    ],
    ("controlnet-phantom", "0.3.0"): [  # the stronger judge: the view is below its warped-real ceiling
        "view agreement 0.817 < 0.95",
        "view agreement 0.817 < warped-real 0.918 - 0.03",
        "attribute_mismatch rejected 30 of 208 generated rows (> 5%)",
    ],
    ("ddpm-phantom", "0.1.0"): [  # a class alone does not fix the view as a label map does
        "view agreement 0.745 < 0.95",
        "view agreement 0.745 < warped-real 0.788 - 0.03",
        "attribute_mismatch rejected 55 of 208 generated rows (> 5%)",
        "copy check flagged 6 of 416 null pairs (need <= 0.01 on >= 300)",
    ],
    ("demo", "0.4.0"): [  # 0.3.0's generated rows; the judge confirms the view of 195 of 208
        "view agreement 0.938 < 0.95",
    ],
    ("ddpm-phantom", "0.2.0"): [  # the stronger judge: a class alone draws the wrong view in 1 row of 3
        "view agreement 0.683 < 0.95",
        "view agreement 0.683 < warped-real 0.918 - 0.03",
        "attribute_mismatch rejected 71 of 208 generated rows (> 5%)",
    ],
    ("ddpm-phantom", "0.3.0"): [  # guidance on the class: 0.683 -> 0.938, above warped-real - 0.03
        "view agreement 0.938 < 0.95",
    ],
    ("sd-phantom", "0.3.0"): [  # guidance fixes the view (0.981), not the phase: the model never learnt it
        "phase agreement 0.543 < warped-real 0.630 - 0.05",
    ],
    ("sd-phantom", "0.2.0"): [  # demo 0.4.0's filter; still chance on phase
        "view agreement 0.909 < 0.95",
        "phase agreement 0.534 < warped-real 0.630 - 0.05",
        "attribute_mismatch rejected 18 of 208 generated rows (> 5%)",
    ],
    ("sd-phantom", "0.1.0"): [  # prompt + class: the view is drawn, the phase is not (chance)
        "view agreement 0.851 < 0.95",
        "phase agreement 0.519 < warped-real 0.639 - 0.05",
        "attribute_mismatch rejected 17 of 208 generated rows (> 5%)",
        "copy check flagged 6 of 416 null pairs (need <= 0.01 on >= 300)",
    ],
}


@pytest.mark.parametrize("corpus", sorted(newest_manifests(MANIFESTS)))
def test_newest_committed_version_meets_the_floors(corpus):
    path = newest_manifests(MANIFESTS)[corpus]
    broken = floor_violations(json.loads(path.read_text()))
    if broken is None:
        pytest.skip(f"{corpus} {path.stem} predates the attribute audit, copy null and phase policy: exempt")
    known = KNOWN_SHORTFALLS.get((corpus, path.stem), [])
    assert broken == known, f"{path.relative_to(MANIFESTS.parent)} breaks: " + "; ".join(broken)


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
    "view agreement": lambda m: m["attribute_fidelity"]["independent"]["generated"].update(
        view={"k": 188, "n": 200, "rate": 0.94}),
    "warped-real": lambda m: m["attribute_fidelity"]["independent"]["generated"].update(
        phase={"k": 160, "n": 200, "rate": 0.8}),
    "phase geometry": lambda m: m["phase_geometry"]["by_policy"]["preserve"].update(
        ratio={"k": 180, "n": 200, "rate": 0.9}),
    "planted copies": lambda m: m["copy_check"]["planted"]["stated"].update(
        caught={"k": 80, "n": 80, "rate": 1.0}),
    "null pairs": lambda m: m["copy_check"]["calibration"].update(
        false_positive={"k": 9, "n": 416, "rate": 9 / 416}),
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
    newest_controlnet = newest_manifests(root)["controlnet-phantom"].stem  # another corpus is left as it was
    assert committed_violations(root)["controlnet-phantom"] == KNOWN_SHORTFALLS.get(
        ("controlnet-phantom", newest_controlnet), []
    )


# --- the downstream study's statistics (synthecho.downstream.effects.statistics_violations) ------------

ALL_MANIFESTS = sorted(MANIFESTS.glob("*/*.json"))
# Corpora only: a comparison (`"kind": "comparison"`) has no study of its own (its members' are theirs).
CORPUS_MANIFESTS = [
    path for path in ALL_MANIFESTS if json.loads(path.read_text()).get("kind") != "comparison"
]
# The demo's study runs on a CPU budget that ends before these runs stop improving (issue 17 is open for
# it): listed word for word, like KNOWN_SHORTFALLS, so a regression or a fix fails until this is updated.
KNOWN_STUDY_SHORTFALLS = {
    ("demo", "0.2.0"): [
        "cap-1/phase/pretrain_finetune: not converged (seeds [0])",
        "cap-1/phase/real: not converged (seeds [0, 1])",
        "cap-1/phase/real_plus_synthetic: not converged (seeds [0, 1, 2])",
        "cap-1/phase/synthetic: not converged (seeds [1])",
        "cap-1/segmentation/pretrain_finetune: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real_plus_synthetic: not converged (seeds [1, 2])",
        "cap-1/segmentation/synthetic: not converged (seeds [0, 1, 2])",
        "cap-1/view/real: not converged (seeds [1, 2])",
        "cap-1/view/real_plus_synthetic: not converged (seeds [1, 2])",
    ],
    ("phantom-study", "0.2.0"): [
        "cap-0.25/phase/warped: not converged (seeds [1])",
        "cap-0.25/phase/warped_pretrain_finetune: not converged (seeds [0])",
        "cap-0.25/segmentation/real: not converged (seeds [0])",
        "cap-0.25/segmentation/real_plus_warped: not converged (seeds [2])",
        "cap-0.25/segmentation/synthetic: not converged (seeds [0])",
        "cap-0.25/segmentation/warped: not converged (seeds [0, 1, 2])",
        "cap-1/phase/warped: not converged (seeds [0])",
        "cap-1/phase/warped_pretrain_finetune: not converged (seeds [2])",
        "cap-1/segmentation/pretrain_finetune: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real_plus_warped: not converged (seeds [1])",
        "cap-1/segmentation/synthetic: not converged (seeds [2])",
        "cap-1/segmentation/warped: not converged (seeds [2])",
        "cap-1/segmentation/warped_pretrain_finetune: not converged (seeds [0])",
        "cap-1/view/pretrain_finetune: not converged (seeds [1])",
    ],
    ("demo", "0.3.0"): [  # the small classifiers converge more often; the 150-step U-Nets still do not
        "cap-1/phase/pretrain_finetune: not converged (seeds [0])",
        "cap-1/phase/real_plus_synthetic: not converged (seeds [0])",
        "cap-1/segmentation/pretrain_finetune: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real_plus_synthetic: not converged (seeds [1, 2])",
        "cap-1/segmentation/synthetic: not converged (seeds [0, 1, 2])",
        "cap-1/view/pretrain_finetune: not converged (seeds [1])",
        "cap-1/view/synthetic: not converged (seeds [0])",
    ],
    ("demo", "0.5.0"): [  # guidance: the 150-step U-Nets and some classifier runs still stop at the budget
        "cap-1/phase/synthetic: not converged (seeds [1])",
        "cap-1/segmentation/pretrain_finetune: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real_plus_synthetic: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/synthetic: not converged (seeds [0, 1, 2])",
        "cap-1/view/pretrain_finetune: not converged (seeds [0, 1, 2])",
        "cap-1/view/real_plus_synthetic: not converged (seeds [0])",
    ],
    ("phantom-study", "0.3.0"): [  # the class-conditioned generator; 300-step U-Nets still stop at the budget
        "cap-0.25/phase/warped_pretrain_finetune: not converged (seeds [0])",
        "cap-0.25/segmentation/pretrain_finetune: not converged (seeds [0, 2])",
        "cap-0.25/segmentation/real_plus_synthetic: not converged (seeds [0])",
        "cap-0.25/segmentation/synthetic: not converged (seeds [1])",
        "cap-0.25/segmentation/warped: not converged (seeds [2])",
        "cap-0.25/segmentation/warped_pretrain_finetune: not converged (seeds [0])",
        "cap-1/phase/synthetic: not converged (seeds [2])",
        "cap-1/segmentation/pretrain_finetune: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real_plus_warped: not converged (seeds [0, 2])",
        "cap-1/segmentation/synthetic: not converged (seeds [2])",
        "cap-1/segmentation/warped: not converged (seeds [1])",
        "cap-1/segmentation/warped_pretrain_finetune: not converged (seeds [0, 2])",
        "cap-1/view/warped: not converged (seeds [0])",
        "cap-1/view/warped_pretrain_finetune: not converged (seeds [2])",
    ],
    ("demo", "0.4.0"): [  # 0.3.0's generator, more rows kept (189 of 208): the same unconverged U-Nets
        "cap-1/phase/pretrain_finetune: not converged (seeds [0])",
        "cap-1/segmentation/pretrain_finetune: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/real_plus_synthetic: not converged (seeds [0, 1, 2])",
        "cap-1/segmentation/synthetic: not converged (seeds [0, 1, 2])",
        "cap-1/view/pretrain_finetune: not converged (seeds [1, 2])",
        "cap-1/view/real_plus_synthetic: not converged (seeds [0])",
        "cap-1/view/synthetic: not converged (seeds [1])",
    ],
}


@pytest.mark.parametrize("path", CORPUS_MANIFESTS, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_every_committed_study_reports_only_attainable_p_values_and_converged_runs(path):
    """In every committed manifest (every version, not only the newest): no p-value below the exact
    minimum for its n (2 / 2^n), none with fewer than 6 patients, no run that did not converge."""
    from synthecho.downstream.effects import statistics_violations

    broken = statistics_violations(json.loads(path.read_text()))
    if broken is None:
        pytest.skip(
            f"{path.parent.name} {path.stem} has no patient-level study (evaluate off, or from before it: "
            "per-image Wilcoxon p-values, no convergence record): exempt"
        )
    known = KNOWN_STUDY_SHORTFALLS.get((path.parent.name, path.stem), [])
    assert broken == known, f"{path.relative_to(MANIFESTS.parent)} breaks: " + "; ".join(broken)


def a_study(p: float | None, n: int, converged: list[bool]) -> dict:
    """A manifest's downstream section as the evaluate stage writes it, reduced to what the check reads."""
    family = {"tests": [{"task": "segmentation", "metric": "dice_foreground", "n": n, "p": p, "p_holm": p}]}
    strategy = {
        "seeds": list(range(len(converged))),
        "converged": converged,
        "best_step": [1] * len(converged),
    }
    task = {"strategies": {"real": strategy}, "effects": [{"n": n, "p": None, "metric": "dice_foreground"}]}
    return {"downstream": {"statistics": {"unit": "patient"}, "confirmatory": family,
                           "caps": {"cap-0.25": {"tasks": {"segmentation": task}}}}}  # fmt: skip


def test_the_statistics_check_fires_on_doctored_studies():
    from synthecho.downstream.effects import statistics_violations

    assert statistics_violations(a_study(2 / 64, 6, [True, True])) == []  # the exact minimum itself
    assert statistics_violations(a_study(None, 4, [True])) == []  # no p below 6 patients: fine
    low = statistics_violations(a_study(0.02, 6, [True]))  # below 2/2^6 = 0.031
    assert len(low) == 1 and "below the exact minimum" in low[0]
    small = statistics_violations(a_study(0.0625, 5, [True]))  # 2/2^5, but n = 5
    assert len(small) == 1 and "n = 5 < 6" in small[0]
    unconverged = statistics_violations(a_study(0.5, 30, [True, False]))
    assert len(unconverged) == 1 and "not converged (seeds [1])" in unconverged[0]
    # The demo's 0.1.0 manifest: p = 0.038 with n = 5 in its Wilcoxon tables, and best step = last
    # everywhere; it predates the study's statistics, so the committed-manifest test skips it.
    demo = json.loads((MANIFESTS / "demo" / "0.1.0.json").read_text())
    assert statistics_violations(demo) is None
    assert statistics_violations({**demo, "downstream": {**demo["downstream"], "statistics": {}}})


# --- committed comparisons (`synthecho compare`, manifests with "kind": "comparison") ------------------

COMPARISONS = [path for path in ALL_MANIFESTS if json.loads(path.read_text()).get("kind") == "comparison"]


def test_committed_comparisons_exist():
    assert COMPARISONS, "no committed comparison: `synthecho compare phantom --commit` makes one"


@pytest.mark.parametrize("path", COMPARISONS, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_every_committed_comparison_shows_its_realism_measure_firing(path):
    """The realism measure's positive control: every degradation's AUC rises with its strength, and the
    strongest of each lies above the real-vs-real reference's interval."""
    control = json.loads(path.read_text())["realism"]["positive_control"]
    reference = control["reference"]
    assert all(control["monotone"].values()), control["monotone"]
    for kind in control["monotone"]:
        assert control[kind][-1]["auc"] > reference["ci95"][1], kind


@pytest.mark.parametrize("path", COMPARISONS, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_every_committed_comparison_names_members_that_are_committed(path):
    """Each member's rows are a committed corpus version's, byte for byte (the members are built with the
    comparison's downstream settings, which change no row), unless that version was built on another CPU
    model (floating point then moves the trained weights); either way a reader can open that version."""
    comparison = json.loads(path.read_text())
    here = comparison["environment"]["cpu_model"]
    assert list(comparison["members"]) == sorted(comparison["order"])
    for name, member in comparison["members"].items():
        corpus = MANIFESTS / member["dataset"] / f"{member['version']}.json"
        assert corpus.is_file(), f"{name}: {corpus.relative_to(MANIFESTS.parent)} is not committed"
        published = json.loads(corpus.read_text())
        hashes = [shard["content_hash"] for shard in published["shards"]["data"]]
        if published["environment"]["cpu_model"] == here:
            assert member["data_content_hashes"] == hashes, f"{name}: rows differ from {corpus.name}"
