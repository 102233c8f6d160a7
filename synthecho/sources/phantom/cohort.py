"""Who the phantom's patients are: what their cfg files say, and which split each one belongs to.

Every draw comes from a numpy Generator seeded from (seed, patient, stream), so a patient's attributes
do not depend on the cohort size, and the same seed gives the same patients in both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from synthecho.errors import SynthechoError

VIEWS = ("2CH", "4CH")
QUALITIES = ("Good", "Medium", "Poor")
# CAMUS grades image quality per view. Counts of Good / Medium / Poor among its 500 patients, from the
# `ImageQuality` of the release's Info_{2CH,4CH}.cfg files (Leclerc et al., CAMUS): the 2CH is poorer.
CAMUS_QUALITY_COUNTS = {"2CH": (217, 214, 69), "4CH": (288, 165, 47)}
# One acoustic window serves both views, so their grades go together; CAMUS publishes no joint table,
# so this latent correlation (Gaussian copula over the per-view frequencies above) is an assumption.
QUALITY_VIEW_CORRELATION = 0.6


@dataclass(frozen=True)
class PatientAttributes:
    """What the cfg files say about a patient; image quality is graded per view, as in CAMUS."""

    sex: str  # "M" / "F"
    age: int  # years, 18..88
    ef: int  # ejection fraction, percent, 20..75
    qualities: tuple[str, str]  # "Good" / "Medium" / "Poor" of the 2CH and the 4CH view (VIEWS order)

    def quality(self, view: str) -> str:
        return self.qualities[VIEWS.index(view)]


def quality_thresholds(view: str) -> tuple[float, float]:
    """Latent N(0, 1) cut points that reproduce the view's CAMUS Good / Medium / Poor frequencies."""
    counts = np.array(CAMUS_QUALITY_COUNTS[view], dtype=np.float64)
    good, medium = counts[:2] / counts.sum()
    normal = NormalDist()
    return normal.inv_cdf(good), normal.inv_cdf(good + medium)


def sample_patient(seed: int, patient_number: int) -> PatientAttributes:
    """Attributes of 2023 patient `patient_number` (1-based); independent of the cohort size."""
    rng = np.random.default_rng([seed, patient_number, 0])
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(np.clip(round(rng.normal(62.0, 15.0)), 18, 88))
    # Mixed EF: most patients normal (50-65), the rest reduced down to 20, a few hyperdynamic.
    if rng.random() < 0.62:
        ef = rng.normal(58.0, 5.0)
    else:
        ef = rng.uniform(20.0, 50.0)
    window = rng.standard_normal()  # how good this patient's acoustic window is (shared by the views)
    rho = QUALITY_VIEW_CORRELATION
    qualities = []
    for view in VIEWS:
        latent = np.sqrt(rho) * window + np.sqrt(1.0 - rho) * rng.standard_normal()
        good_cut, medium_cut = quality_thresholds(view)
        qualities.append(
            QUALITIES[0] if latent < good_cut else QUALITIES[1] if latent < medium_cut else QUALITIES[2]
        )
    return PatientAttributes(sex=sex, age=age, ef=int(np.clip(round(ef), 20, 75)), qualities=tuple(qualities))


def patient_id(number: int) -> str:
    return f"patient{number:04d}"


def split_sizes(patients: int, test_patients: int | None = None) -> tuple[int, int]:
    """(validation, test) patient counts: ~15% each, or `test_patients` for the test split."""
    if patients < 3:
        raise SynthechoError(f"phantom needs at least 3 patients (one per split), got patients={patients}")
    n_val = max(1, round(0.15 * patients))
    n_test = max(1, round(0.15 * patients)) if test_patients is None else int(test_patients)
    if n_test < 1 or n_val + n_test > patients - 1:
        raise SynthechoError(
            f"phantom test_patients={test_patients} does not fit {patients} patients: the test split needs "
            f"1..{patients - 1 - n_val} patients ({n_val} go to validation, at least one to training); "
            "lower source.phantom.test_patients or raise source.phantom.patients."
        )
    return n_val, n_test


def phantom_splits(patients: int, seed: int, test_patients: int | None = None) -> dict[str, list[str]]:
    """The 2023 split of a phantom cohort: ~70/15/15 (or `test_patients` test), shuffled, sorted by id.

    Ids are shuffled with the seed so no split of two or more patients is a contiguous id range (real
    CAMUS split files are not contiguous either, and readers must not assume they are).
    """
    n_val, n_test = split_sizes(patients, test_patients)
    rng = np.random.default_rng([seed, 1_000_003])
    for _ in range(1000):
        order = rng.permutation(np.arange(1, patients + 1))
        parts = {
            "training": sorted(order[n_val + n_test :].tolist()),
            "validation": sorted(order[:n_val].tolist()),
            "testing": sorted(order[n_val : n_val + n_test].tolist()),
        }
        if not any(len(ids) >= 2 and ids[-1] - ids[0] == len(ids) - 1 for ids in parts.values()):
            break
    return {name: [patient_id(i) for i in ids] for name, ids in parts.items()}


def phantom_id_map(patients: int, seed: int, test_patients: int | None = None) -> dict[str, str]:
    """2019 id (``"training/patient0003"``, ``"testing/patient0001"``) -> the 2023 id of the same patient.

    2023 training+validation patients become 2019 ``training/`` in 2023 id order, renumbered from 0001;
    2023 testing patients become 2019 ``testing/``, renumbered from 0001.
    """
    splits = phantom_splits(patients, seed, test_patients)
    training = sorted(splits["training"] + splits["validation"])
    mapping = {f"training/{patient_id(i + 1)}": pid for i, pid in enumerate(training)}
    mapping.update({f"testing/{patient_id(i + 1)}": pid for i, pid in enumerate(splits["testing"])})
    return mapping


def reversed_patients(patients: int, seed: int) -> set[int]:
    """Patients whose 4CH half sequence runs ES -> ED (ED = NbFrame, ES = 1), as a few real ones do."""
    reversed_ids = {p for p in range(1, patients + 1) if np.random.default_rng([seed, p, 9]).random() < 0.02}
    if not reversed_ids:  # guarantee one, so every phantom exercises the readers' handling of the case
        reversed_ids = {int(np.random.default_rng([seed, 1_000_009]).integers(1, patients + 1))}
    return reversed_ids
