"""The filtering segmenter: training selects on validation Dice, saving round-trips, features are stable.

The data are tiny synthetic frames where each structure is visible in the pixels (dark LV disc inside a
bright myocardial ring, dark LA ellipse below), so a short training run must beat chance clearly.
"""

import json

import numpy as np
import pytest
import torch

from synthecho.errors import SynthechoError
from synthecho.real import RealSplit
from synthecho.recipe import SegmenterConfig
from synthecho.segmenter import build_unet, encoder_blocks, load_segmenter, train_segmenter

SIZE = 32
TINY = dict(channels=[4, 8, 16], strides=[2, 2], num_res_units=1, batch_size=8, learning_rate=1e-2)


def synthetic_split(name: str, count: int, seed: int) -> RealSplit:
    """Noisy frames with a dark LV disc, a bright MYO ring around it and a dark LA ellipse below."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    images = np.zeros((count, SIZE, SIZE), np.uint8)
    masks = np.zeros((count, SIZE, SIZE), np.uint8)
    for i in range(count):
        cy, cx = 11 + rng.uniform(-2, 2), 16 + rng.uniform(-2, 2)
        radius, wall = rng.uniform(4.5, 6.5), rng.uniform(2.0, 3.0)
        distance = np.hypot(rows - cy, cols - cx)
        la = ((rows - (cy + radius + wall + 4)) / 3.5) ** 2 + ((cols - cx) / 5.0) ** 2 <= 1.0
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[la] = 3
        mask[distance <= radius + wall] = 2
        mask[distance <= radius] = 1
        intensity = np.choose(mask, [110.0, 30.0, 210.0, 40.0])
        images[i] = np.clip(intensity + rng.normal(0, 25, size=mask.shape), 0, 255).astype(np.uint8)
        masks[i] = mask
    records = [{"id": f"{name}/{i}"} for i in range(count)]
    return RealSplit(name, records, images, masks, np.ones_like(masks, dtype=bool))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("segmenter")
    config = SegmenterConfig(steps=60, validate_every=15, **TINY)
    metrics = train_segmenter(
        config, synthetic_split("train", 48, 0), synthetic_split("validation", 16, 1), out_dir, progress=False
    )
    return out_dir, metrics


def test_training_beats_chance_and_records_selection(trained):
    out_dir, metrics = trained
    dice = metrics["validation_dice"]
    assert set(dice) == {"lv", "myo", "la", "mean"}
    assert dice["mean"] > 0.8, dice  # an untrained net scores ~0.1-0.15 here; training reaches ~0.95
    assert min(dice["lv"], dice["myo"], dice["la"]) > 0.6, dice
    # Selection: the recorded Dice is the best validation score, at the recorded step.
    history = metrics["history"]
    assert [entry["step"] for entry in history] == [15, 30, 45, 60]
    best = max(history, key=lambda entry: entry["mean"])
    assert metrics["best_step"] == best["step"]
    assert dice["mean"] == pytest.approx(best["mean"])
    assert best["mean"] > history[0]["mean"] + 0.05  # it kept improving after the first validation
    on_disk = json.loads((out_dir / "metrics.json").read_text())
    assert on_disk["validation_dice"] == pytest.approx(dice)
    assert on_disk["steps"] == 60 and on_disk["seconds"] > 0 and on_disk["seconds_per_step"] > 0
    config = json.loads((out_dir / "config.json").read_text())
    assert config["resolution"] == SIZE and config["architecture"]["channels"] == [4, 8, 16]
    assert (out_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_saved_weights_are_the_best_and_reload_identically(trained):
    out_dir, metrics = trained
    validation = synthetic_split("validation", 16, 1)
    first, second = load_segmenter(out_dir), load_segmenter(out_dir)
    assert first.resolution == SIZE
    labels = first.predict(validation.images, batch_size=5)  # batch size that does not divide N
    assert labels.shape == validation.images.shape and labels.dtype == np.uint8 and labels.max() <= 3
    np.testing.assert_array_equal(labels, second.predict(validation.images))
    # The reloaded weights reproduce the recorded best validation Dice exactly.
    from synthecho.metrics import dice_per_image

    per_image = dice_per_image(labels, validation.masks)
    assert np.mean([per_image[k].mean() for k in ("lv", "myo", "la")]) == pytest.approx(
        metrics["validation_dice"]["mean"]
    )
    probabilities = first.probabilities(validation.images[:3])
    assert probabilities.shape == (3, 4, SIZE, SIZE) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), labels[:3])


def test_features_shape_determinism_and_contrast(trained):
    out_dir, _ = trained
    segmenter = load_segmenter(out_dir)
    structured = synthetic_split("validation", 12, 2).images
    noise = np.random.default_rng(3).integers(0, 256, size=(12, SIZE, SIZE)).astype(np.uint8)
    features = segmenter.features(structured, dims=8, batch_size=5)
    assert features.shape == (12, 8) and features.dtype == np.float64
    np.testing.assert_array_equal(features, load_segmenter(out_dir).features(structured, dims=8))
    assert segmenter.features(structured, dims=64).shape == (12, 16)  # never more dims than channels
    # Noise and anatomy are far apart compared with the spread among anatomical frames.
    noise_features = segmenter.features(noise, dims=8)
    between = np.linalg.norm(features.mean(axis=0) - noise_features.mean(axis=0))
    within = np.linalg.norm(features - features.mean(axis=0), axis=1).mean()
    assert between > within, (between, within)
    with pytest.raises(SynthechoError):
        segmenter.features(structured[:, :16, :16])  # features only at the training resolution


def test_encoder_path_equals_the_bottom_activation_of_a_full_forward():
    torch.manual_seed(0)
    for channels, strides, res_units in [([4, 8, 16], [2, 2], 1), ([4, 8, 8, 16], [2, 2, 2], 0)]:
        unet = build_unet({"channels": channels, "strides": strides, "num_res_units": res_units}).eval()
        blocks = encoder_blocks(unet)
        assert len(blocks) == len(channels)
        captured = {}
        handle = blocks[-1].register_forward_hook(
            lambda module, args, output, store=captured: store.update(out=output)
        )
        x = torch.rand(2, 1, SIZE, SIZE)
        with torch.no_grad():
            unet(x)
            activation = x
            for block in blocks:
                activation = block(activation)
        handle.remove()
        assert activation.shape == (
            2,
            channels[-1],
            SIZE // int(np.prod(strides)),
            SIZE // int(np.prod(strides)),
        )
        torch.testing.assert_close(activation, captured["out"])


def test_training_is_deterministic_and_leaves_global_rng_alone(tmp_path):
    config = SegmenterConfig(steps=3, validate_every=3, **TINY)
    train, validation = synthetic_split("train", 8, 0), synthetic_split("validation", 4, 1)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_segmenter(config, train, validation, tmp_path / "a", seed=7, progress=False)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the caller's RNG stream is not consumed by model initialisation
    second = train_segmenter(config, train, validation, tmp_path / "b", seed=7, progress=False)
    assert (
        first["validation_dice"] == second["validation_dice"] and first["final_loss"] == second["final_loss"]
    )
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()


def test_bad_inputs_raise_clear_errors(tmp_path):
    train = synthetic_split("train", 4, 0)
    empty = RealSplit("validation")
    with pytest.raises(SynthechoError, match="validation split is empty"):
        train_segmenter(SegmenterConfig(steps=1, **TINY), train, empty, tmp_path, progress=False)
    with pytest.raises(SynthechoError, match="one more entry"):
        bad = SegmenterConfig(steps=1, **{**TINY, "strides": [2]})
        train_segmenter(bad, train, train, tmp_path, progress=False)
    with pytest.raises(SynthechoError, match="not a trained segmenter"):
        load_segmenter(tmp_path / "missing")
