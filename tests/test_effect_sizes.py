"""Patient-level statistics of the downstream study, on cases with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from synthecho.downstream.stats import (
    MIN_N_FOR_P,
    bootstrap_interval,
    exact_minimum_p,
    holm,
    minimum_detectable_difference,
    paired_effect,
    per_patient,
    sign_flip_p,
)


def test_five_patients_all_improved_give_the_exact_minimum():
    # 2^5 = 32 sign patterns; only all-positive and all-negative are as extreme: p = 2/32 = 0.0625.
    p, exact = sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5])
    assert exact and p == pytest.approx(0.0625) == exact_minimum_p(5)


def test_ties_and_zeros_are_handled_exactly():
    # Differences (1, 1, 0): patterns of the two ones: ++ mean 2/3, +- and -+ mean 0, -- mean -2/3; the
    # zero flips to itself (each pattern counted twice). |mean| >= 2/3 in 4 of 8 patterns: p = 0.5.
    p, _ = sign_flip_p([1.0, 1.0, 0.0])
    assert p == pytest.approx(0.5)
    # All zeros: every pattern ties the observed mean: p = 1.
    assert sign_flip_p([0.0, 0.0, 0.0, 0.0])[0] == pytest.approx(1.0)
    # (4, 1, 1, 1), sum 7: |4 s1 + s2 + s3 + s4| >= 7 only with all signs equal: 2 of 16 = 0.125.
    assert sign_flip_p([4.0, 1.0, 1.0, 1.0])[0] == pytest.approx(0.125)
    # (3, -1, 1, 1), sum 4: with s1 = +, -s2 + s3 + s4 >= 1 holds for 4 of the 8 patterns; mirrored: 8/16.
    assert sign_flip_p([3.0, -1.0, 1.0, 1.0])[0] == pytest.approx(0.5)


def test_no_p_value_below_six_patients_and_k_of_n():
    effect = paired_effect([0.9, 0.8, 0.85, 0.7, 0.6], [0.8, 0.8, 0.8, 0.6, 0.65])
    assert effect["n"] == 5 < MIN_N_FOR_P and effect["p"] is None
    assert (effect["improved"], effect["worse"]) == (3, 1)
    assert effect["mean_difference"] == pytest.approx(0.04)
    six = paired_effect(np.arange(1, 7) * 0.1, np.zeros(6))
    assert six["p"] == pytest.approx(2 / 64) and six["p_exact"] and six["p_minimum"] == pytest.approx(2 / 64)
    assert six["ci_low"] <= six["mean_difference"] <= six["ci_high"]


def test_holm_on_a_known_vector():
    # Sorted 0.01, 0.02, 0.03, 0.5 with m = 4: 0.04, 0.06, max(0.06, 0.06) = 0.06, max(0.06, 0.5) = 0.5.
    adjusted = holm({"a": 0.03, "b": 0.01, "c": 0.5, "d": 0.02})
    assert adjusted == pytest.approx({"a": 0.06, "b": 0.04, "c": 0.5, "d": 0.06})
    assert holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})  # capped at 1


def test_frames_are_averaged_per_patient_first():
    ids, means = per_patient([1.0, 3.0, 10.0, 0.5, 0.5], ["p2", "p2", "p1", "p3", "p3"])
    assert ids == ["p1", "p2", "p3"] and means.tolist() == [10.0, 2.0, 0.5]
    with pytest.raises(ValueError):
        per_patient([1.0], ["a", "b"])


def test_interval_coverage_over_simulated_studies():
    """The BCa interval of the mean per-patient difference covers a known effect >= 90 % of the time."""
    rng = np.random.default_rng(0)
    effect, studies, covered = 0.02, 200, 0
    for seed in range(studies):
        differences = rng.normal(effect, 0.05, size=30)
        low, high = bootstrap_interval(differences, seed=seed)
        covered += low <= effect <= high
    assert covered / studies >= 0.90


def test_minimum_detectable_difference_scales_with_root_n():
    assert minimum_detectable_difference(0.05, 30) == pytest.approx(2.8016 * 0.05 / np.sqrt(30), rel=1e-3)
    assert minimum_detectable_difference(0.05, 120) == pytest.approx(
        minimum_detectable_difference(0.05, 30) / 2
    )
