"""Downstream metrics against hand-computed cases: Dice, HD95 with spacing, macro P/R/F1, mean ± std, and
why the study tests with exact sign flips rather than scipy's default Wilcoxon."""

import math

import numpy as np
import pytest

from synthecho.downstream.segmentation import segmentation_metrics
from synthecho.downstream.stats import (
    classification_metrics,
    hd95,
    mean_std,
    sign_flip_p,
    surface,
)
from synthecho.real import RealSplit

# --- Dice of known masks (through the downstream per-image metrics) ----------------------------------


def test_segmentation_metrics_dice_of_known_label_maps():
    target = np.zeros((1, 6, 6), np.uint8)
    target[0, 1:3, 1:3] = 1  # LV: 4 pixels
    target[0, 1:3, 3] = 2  # MYO: 2 pixels -> epicardium = 6 pixels
    target[0, 4, 0:4] = 3  # LA: 4 pixels
    pred = np.zeros_like(target)
    pred[0, 1, 1:5] = 1  # LV: 4 pixels, 2 of them inside the true LV -> Dice 2*2/(4+4) = 0.5
    # Epicardium pred = 7 pixels; overlap with the true epi: (1,1) (1,2) (1,3) (2,1) (2,2) (2,3) = 6.
    pred[0, 2, 1:4] = 2
    # LA empty in the prediction -> Dice 0 and HD95 = image diagonal in mm.
    records = [{"spacing_row_mm": 2.0, "spacing_col_mm": 0.5}]
    split = RealSplit("test", records, np.zeros_like(target), target, np.ones(target.shape, bool))
    result = segmentation_metrics(pred, split)
    per_image = result["per_image"]
    assert per_image["dice_lv_endo"] == [pytest.approx(0.5)]
    assert per_image["dice_lv_epi"] == [pytest.approx(2 * 6 / (7 + 6))]
    assert per_image["dice_la"] == [0.0]
    assert per_image["hd95_la"] == [pytest.approx(math.hypot(6 * 2.0, 6 * 0.5))]
    assert result["summary"]["dice_mean"] == pytest.approx((0.5 + 12 / 13 + 0.0) / 3)
    # Foreground Dice: the mean over the labelled classes LV (0.5), MYO (pred 3 px, target 2 px, overlap
    # (2, 3): 2/5) and LA (0).
    assert per_image["dice_foreground"] == [pytest.approx((0.5 + 0.4 + 0.0) / 3)]


# --- HD95 --------------------------------------------------------------------------------------------


def test_hd95_single_pixels_with_anisotropic_spacing():
    pred = np.zeros((8, 8), bool)
    target = np.zeros((8, 8), bool)
    pred[0, 0] = True
    target[3, 4] = True
    # 3 rows x 2.0 mm and 4 cols x 0.5 mm: sqrt(6^2 + 2^2) = sqrt(40), in both directions.
    assert hd95(pred, target, (2.0, 0.5)) == pytest.approx(math.sqrt(40))


def test_hd95_parallel_lines_use_the_row_spacing():
    pred = np.zeros((10, 10), bool)
    target = np.zeros((10, 10), bool)
    target[5, 2:9] = True
    pred[7, 2:9] = True  # every surface pixel is 2 rows (x 1.5 mm) from the other line
    assert hd95(pred, target, (1.5, 1.0)) == pytest.approx(3.0)


def test_hd95_is_the_95th_percentile_of_pooled_surface_distances():
    target = np.zeros((12, 6), bool)
    target[0, 0:4] = True
    pred = target.copy()
    pred[10, 0] = True  # one outlier 10 mm from the nearest target pixel (0, 0)
    # Pooled distances: 5 from pred (four 0, one 10) + 4 from target (all 0) = eight 0 and one 10.
    # numpy's linear 95th percentile: position 0.95 * 8 = 7.6 -> 0 + 0.6 * (10 - 0) = 6.0.
    assert hd95(pred, target) == pytest.approx(6.0)
    assert hd95(target, pred) == pytest.approx(6.0)  # symmetric


def test_hd95_identical_masks_and_empty_masks():
    square = np.zeros((12, 6), bool)
    square[2:7, 1:5] = True
    assert hd95(square, square, (0.3, 0.7)) == 0.0
    empty = np.zeros_like(square)
    assert hd95(empty, empty) == 0.0  # both agree the structure is absent
    diagonal = math.hypot(12 * 2.0, 6 * 0.5)
    assert hd95(square, empty, (2.0, 0.5)) == pytest.approx(diagonal)  # missing structure: worst case
    assert hd95(empty, square, (2.0, 0.5)) == pytest.approx(diagonal)


def test_surface_of_a_filled_square_is_its_ring():
    square = np.zeros((7, 7), bool)
    square[1:6, 1:6] = True  # 5x5 -> 25 pixels, interior 3x3 = 9, ring 16
    ring = surface(square)
    assert ring.sum() == 16
    assert not ring[2:5, 2:5].any()


def test_hd95_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        hd95(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


# --- classification ----------------------------------------------------------------------------------


def test_macro_metrics_of_a_known_confusion():
    # Confusion (rows true, columns predicted): [[5, 1], [2, 2]].
    y_true = [0] * 6 + [1] * 4
    y_pred = [0] * 5 + [1] + [0] * 2 + [1] * 2
    metrics = classification_metrics(y_true, y_pred)
    assert metrics["confusion"] == [[5, 1], [2, 2]]
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    # class 0: P = 5/7, R = 5/6, F1 = 10/13; class 1: P = 2/3, R = 1/2, F1 = 4/7.
    assert metrics["precision"] == pytest.approx((5 / 7 + 2 / 3) / 2)
    assert metrics["recall"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert metrics["f1"] == pytest.approx((10 / 13 + 4 / 7) / 2)


def test_never_predicted_class_scores_zero():
    metrics = classification_metrics([0, 0, 1, 1], [0, 0, 0, 0])
    assert metrics["precision"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["recall"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["f1"] == pytest.approx((2 / 3 + 0.0) / 2)


# --- statistics --------------------------------------------------------------------------------------


def test_five_pairs_exact_minimum_and_the_old_normal_approximation():
    """n = 5, all differences positive: 2 of the 2^5 sign patterns are as extreme, exact p = 0.0625.
    The normal approximation, which scipy's Wilcoxon fell back to with ties (and still uses when told
    to), reports less than any exact test allows: the demo manifest's p = 0.038 for 5 pairs."""
    from scipy.stats import wilcoxon

    distinct = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert wilcoxon(distinct, method="exact").pvalue == pytest.approx(0.0625)
    assert sign_flip_p(distinct)[0] == pytest.approx(0.0625)
    tied = np.array([0.1, 0.1, 0.2, 0.2, 0.3])
    assert wilcoxon(tied, method="approx").pvalue < 0.0625  # below the exact minimum for n = 5
    assert sign_flip_p(tied)[0] == pytest.approx(0.0625)  # exact with ties


def test_mean_std_uses_the_sample_std():
    mean, std = mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(0.1)
    assert mean_std([0.7]) == (0.7, 0.0)
