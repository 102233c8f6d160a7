"""Metrics and statistics of the downstream study: HD95 in mm, macro P/R/F1, mean ± std over seeds, and
patient-level effect sizes (BCa bootstrap intervals, exact sign-flip tests, Holm).

Dice lives in `synthecho.metrics` (shared with the segmenter and the filter); this module adds what only
the downstream evaluation needs. Everything here is plain numpy/scipy and is tested on hand-computed
cases (tests/test_downstream_metrics.py, tests/test_effect_sizes.py).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

# --- HD95 --------------------------------------------------------------------------------------------


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask: pixels of the mask with a 4-neighbour outside it.

    Pixels on the image border count as boundary (the frame edge is a boundary of what we can see).
    """
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    return mask & ~binary_erosion(mask, border_value=0)  # default structure: the 4-connected cross


def hd95(pred: np.ndarray, target: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two 2-D masks, in mm.

    The distances from every prediction-surface pixel to the nearest target-surface pixel and from every
    target-surface pixel to the nearest prediction-surface pixel are pooled, and their 95th percentile
    (numpy's linear interpolation) is returned — the medpy `hd95` definition. Distances are Euclidean
    with the anisotropic pixel spacing `(row_mm, col_mm)` (scipy's `distance_transform_edt(sampling=...)`).

    Empty masks (a structure absent from one or both):
    - both empty: 0.0 (the two agree that the structure is absent);
    - exactly one empty: the image diagonal in mm, the largest distance the frame allows. A missing or
      hallucinated structure is the worst surface error, and a defined value keeps the image in the
      paired per-image tests instead of silently dropping it (NaN would be dropped by averages).
    """
    from scipy.ndimage import distance_transform_edt

    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"hd95 expects two 2-D masks of the same shape, got {pred.shape} and {target.shape}")
    row_mm, col_mm = float(spacing_mm[0]), float(spacing_mm[1])
    pred_any, target_any = pred.any(), target.any()
    if not pred_any and not target_any:
        return 0.0
    if not pred_any or not target_any:
        return math.hypot(pred.shape[0] * row_mm, pred.shape[1] * col_mm)
    pred_surface, target_surface = surface(pred), surface(target)
    # Distance of every pixel to the nearest surface pixel of the other mask (zeros of the input).
    to_target = distance_transform_edt(~target_surface, sampling=(row_mm, col_mm))
    to_pred = distance_transform_edt(~pred_surface, sampling=(row_mm, col_mm))
    distances = np.concatenate([to_target[pred_surface], to_pred[target_surface]])
    return float(np.percentile(distances, 95))


# --- classification ----------------------------------------------------------------------------------


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} differ in shape")
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_metrics(y_true, y_pred, num_classes: int = 2) -> dict:
    """Accuracy and macro-averaged precision, recall and F1 (each class weighted equally).

    A class that is never predicted has precision 0, and one that never occurs has recall 0
    (scikit-learn's `zero_division=0`): a classifier that always answers "ED" gets no credit for "ES".
    Per-class F1 is the harmonic mean of that class's precision and recall (0 when both are 0).
    """
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(num_classes), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    total = matrix.sum()
    return {
        "accuracy": float(true_positive.sum() / total) if total else float("nan"),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "confusion": matrix.tolist(),
    }


# --- statistics over seeds and images ----------------------------------------------------------------


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) across seeds; std is 0.0 for a single value."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


# --- patient-level effect sizes (the unit of inference is the patient, not the frame) ----------------

MIN_N_FOR_P = 6  # below this an exact two-sided test cannot reach p < 0.05 (its minimum is 2 / 2^n)
BOOTSTRAP_RESAMPLES = 9999
EXACT_UP_TO = 16  # patients: 2^16 sign patterns enumerated; more are sampled (seeded)
MONTE_CARLO_RESAMPLES = 99_999


def per_patient(values, patients) -> tuple[list[str], np.ndarray]:
    """Mean of per-frame `values` over each patient's frames: (sorted patient ids, means)."""
    values = np.asarray(values, dtype=np.float64)
    patients = np.asarray(patients)
    if values.shape != patients.shape:
        raise ValueError(f"{values.shape[0]} values for {patients.shape[0]} patient ids")
    ids = sorted(set(patients.tolist()))
    return ids, np.array([values[patients == pid].mean() for pid in ids])


def exact_minimum_p(n: int) -> float:
    """The smallest two-sided p-value an exact sign-flip (or signed-rank) test can give with n pairs."""
    return min(1.0, 2.0 / 2**n)


def sign_flip_p(differences, seed: int = 0) -> tuple[float, bool]:
    """Two-sided p of a paired sign-flip permutation test on the mean difference: (p, exact).

    Every pattern of signs is equally likely under "no effect", so flipping them gives the exact null
    distribution of the mean; zeros flip to themselves and ties need no correction (unlike Wilcoxon's
    normal approximation, which scipy falls back to with ties). Exact up to EXACT_UP_TO patients, else
    MONTE_CARLO_RESAMPLES seeded sign patterns.
    """
    from scipy.stats import permutation_test

    differences = np.asarray(differences, dtype=np.float64)
    exact = len(differences) <= EXACT_UP_TO
    result = permutation_test(
        (differences,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        n_resamples=np.inf if exact else MONTE_CARLO_RESAMPLES,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    return float(min(1.0, result.pvalue)), exact


def bootstrap_interval(differences, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap interval of the mean per-patient difference (patients resampled; scipy.stats)."""
    from scipy.stats import bootstrap

    differences = np.asarray(differences, dtype=np.float64)
    if len(differences) < 2 or np.ptp(differences) == 0:  # no spread to resample: the value itself
        value = float(differences.mean()) if len(differences) else float("nan")
        return value, value
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # BCa is undefined when nearly every resample ties (scipy warns and answers NaN): percentile then.
            warnings.simplefilter("ignore")
            result = bootstrap(
                (differences,),
                np.mean,
                confidence_level=confidence,
                n_resamples=BOOTSTRAP_RESAMPLES,
                method=method,
                random_state=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            break
    return low, high


def paired_effect(a, b, *, seed: int = 0, test: bool = True) -> dict:
    """Effect of a over b on paired per-patient values: the mean difference with its 95 % BCa interval,
    "k of n patients improved", and (with `test`: the confirmatory comparisons only) an exact sign-flip
    p-value — None below MIN_N_FOR_P patients, where no result could be significant and a p-value would
    only invite misreading.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired per-patient values differ in length: {a.shape} vs {b.shape}")
    differences = a - b
    n = int(len(differences))
    low, high = bootstrap_interval(differences, seed=seed)
    p, exact = sign_flip_p(differences, seed=seed) if test and n >= MIN_N_FOR_P else (None, None)
    return {
        "n": n,
        "mean_difference": float(differences.mean()) if n else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "improved": int(np.sum(differences > 0)),
        "worse": int(np.sum(differences < 0)),
        "p": p,
        "p_exact": exact,
        "p_minimum": exact_minimum_p(n) if test and n else None,
        "sd": float(differences.std(ddof=1)) if n > 1 else float("nan"),  # of the per-patient differences
    }


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjustment of a family of p-values ({key: p} -> {key: adjusted p}).

    Hand-written because scipy offers only Benjamini-Hochberg (`false_discovery_control`), which controls
    the false discovery rate, not the family-wise error a confirmatory family needs.
    """
    keys = sorted(pvalues, key=lambda key: pvalues[key])
    m, adjusted, running = len(keys), {}, 0.0
    for rank, key in enumerate(keys):
        running = max(running, min(1.0, (m - rank) * pvalues[key]))
        adjusted[key] = running
    return {key: adjusted[key] for key in pvalues}


def minimum_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The mean per-patient difference a two-sided test at `alpha` detects with `power`, given the
    standard deviation of per-patient differences (normal approximation:
    (z_{1-a/2} + z_power) sd / sqrt n)."""
    from scipy.stats import norm

    if n < 2:
        return float("inf")
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd / np.sqrt(n))
