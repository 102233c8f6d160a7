"""Overlap metrics against hand-computed cases."""

import numpy as np
import pytest

from synthecho.metrics import dice, dice_per_image, dice_per_structure, epicardium


def test_dice_hand_computed():
    pred = np.zeros((4, 4), bool)
    target = np.zeros((4, 4), bool)
    pred[0, 0:3] = True  # 3 pixels
    target[0, 1:4] = True  # 3 pixels, 2 shared
    assert dice(pred, target) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(pred, pred) == 1.0
    assert dice(pred, ~pred) == 0.0


def test_dice_empty_conventions():
    empty = np.zeros((3, 3), bool)
    one = empty.copy()
    one[1, 1] = True
    assert dice(empty, empty) == 1.0  # both agree the structure is absent
    assert dice(one, empty) == 0.0
    assert dice(empty, one) == 0.0


def test_dice_shape_mismatch_raises():
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_dice_per_structure_and_epicardium():
    target = np.array([[1, 1, 2, 2], [3, 3, 0, 0]], np.uint8)
    pred = np.array([[1, 2, 2, 2], [3, 0, 0, 3]], np.uint8)
    scores = dice_per_structure(pred, target)
    assert scores["lv"] == pytest.approx(2 * 1 / (1 + 2))  # pred LV {0,0}; target LV {0,0},{0,1}
    assert scores["myo"] == pytest.approx(2 * 2 / (3 + 2))
    assert scores["la"] == pytest.approx(2 * 1 / (2 + 2))
    assert set(scores) == {"lv", "myo", "la"}
    # Epicardium = LV ∪ MYO: both maps have the whole first row.
    assert epicardium(pred).tolist() == [[True] * 4, [False] * 4]
    assert dice(epicardium(pred), epicardium(target)) == 1.0


def test_dice_per_image_matches_scalar_version():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, size=(5, 8, 8)).astype(np.uint8)
    target = rng.integers(0, 4, size=(5, 8, 8)).astype(np.uint8)
    target[2] = 0
    pred[2] = 0  # an image with no structures at all: every Dice is 1.0
    per_image = dice_per_image(pred, target)
    assert set(per_image) == {"lv", "myo", "la", "epi"}
    for i in range(5):
        expected = dice_per_structure(pred[i], target[i])
        for name in ("lv", "myo", "la"):
            assert per_image[name][i] == pytest.approx(expected[name])
        assert per_image["epi"][i] == pytest.approx(dice(epicardium(pred[i]), epicardium(target[i])))
    assert per_image["lv"][2] == 1.0
