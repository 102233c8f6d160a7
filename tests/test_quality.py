"""Quality filters and metrics on phantom data: degenerate frames, mask consistency, plausibility, near
copies, FID/KID on domain features, and the `filter` stage end to end (fabricated raw shards)."""

from __future__ import annotations

import numpy as np
import pytest

from synthecho.quality.metrics import compare, kid, resolve_inception_weights
from synthecho.quality.scores import (
    AnatomyLimits,
    CopyIndex,
    degenerate_reason,
    implausibility,
    is_degenerate,
)

RESOLUTION = 64


# --- shared phantom run: prepared frames + a small segmenter (module scope: built once) -------------


def _recipe(run_dir, **filter_options):
    from synthecho.recipe import recipe_from_dict

    return recipe_from_dict(
        {
            "name": "quality-test",
            "run_dir": str(run_dir),
            "source": {"kind": "phantom", "phantom": {"patients": 12, "seed": 0}},
            "prepare": {"resolution": RESOLUTION},
            "segmenter": {"channels": [8, 16, 32], "strides": [2, 2], "steps": 100, "batch_size": 8,
                          "learning_rate": 3e-3, "validate_every": 50},
            # Plan: 6 source records per split, 1 variant, one shard of one batch per split.
            "generate": {"variants": 1, "max_records_per_split": 6, "batch_size": 6, "batches_per_shard": 1},
            "filter": {"kid_subsets": 20, **filter_options},
        }
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks at 64 px: one thread beats two (thread sync dominates; ~9x on a busy 2-core box)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory, one_torch_thread):
    from synthecho.real import load_real
    from synthecho.segmenter import load_segmenter, train_segmenter
    from synthecho.stages import run_stage

    run_dir = tmp_path_factory.mktemp("quality-run")
    recipe = _recipe(run_dir)
    run_stage("prepare", recipe, run_dir, progress=False)
    real = {split: load_real(run_dir, split) for split in ("train", "validation", "test")}
    train_segmenter(
        recipe.segmenter, real["train"], real["validation"], run_dir / "segmenter", progress=False
    )
    return {
        "run_dir": run_dir,
        "recipe": recipe,
        "real": real,
        "segmenter": load_segmenter(run_dir / "segmenter"),
    }


def _context(phantom):
    from synthecho.quality.scoring import ScoringContext

    train = phantom["real"]["train"]
    copies = CopyIndex(train.images, train.ids)
    threshold = copies.calibrate(train.records)["threshold"]
    limits = AnatomyLimits.from_masks(train.masks)
    return ScoringContext(phantom["segmenter"], copies, limits, {"lv": 0.5, "myo": 0.3, "la": 0.4}, threshold)


def speckle_sigma(images: np.ndarray, sectors: np.ndarray) -> float:
    """The phantom's speckle level: std of what a 3x3 local mean leaves, inside the fan."""
    from scipy.ndimage import uniform_filter

    values = images.astype(np.float64)
    return float((values - uniform_filter(values, size=(1, 3, 3)))[sectors].std())


# --- degenerate frames ------------------------------------------------------------------------------


def test_degenerate_frames_are_detected():
    rng = np.random.default_rng(0)
    frame = np.zeros((32, 32), np.uint8)
    frame[4:28, 6:26] = rng.integers(20, 230, size=(24, 20))
    assert not is_degenerate(frame)
    assert not is_degenerate(frame.astype(np.float32) / 255.0)  # [0, 1] floats read on the same scale

    with_nan = frame.astype(np.float32)
    with_nan[3, 3] = np.nan
    assert is_degenerate(with_nan)
    assert is_degenerate(np.full((32, 32), np.nan, np.float32))
    assert is_degenerate(np.full((32, 32), 117, np.uint8))  # constant
    assert is_degenerate(np.full((32, 32), 0.4, np.float64))
    empty = np.zeros((32, 32), np.uint8)
    empty[10, 10:14] = 200  # a few lit pixels, no sector
    assert is_degenerate(empty)
    binary = np.where(frame > 120, 255, 0).astype(np.uint8)  # a diverged sampler: black and white only
    assert "saturated" in degenerate_reason(binary)
    clipped = np.where(frame > 60, 255, frame).astype(np.uint8)  # many levels, but most of the fan at 255
    assert "saturated" in degenerate_reason(clipped)


# --- KID / FID ---------------------------------------------------------------------------------------


def test_kid_is_seeded_matches_clean_fid_and_leaves_global_rng_alone():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(1)
    real, synthetic = rng.normal(size=(40, 16)), rng.normal(0.3, 1.0, size=(30, 16))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first, second = (
        kid(real, synthetic, subsets=25, subset_size=20, seed=7),
        kid(real, synthetic, subsets=25, subset_size=20, seed=7),
    )
    assert first == second
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.seed(7)  # clean-fid's own number with the same subsets
    assert first[0] == pytest.approx(
        kernel_distance(real, synthetic, num_subsets=25, max_subset_size=20), rel=1e-9
    )
    assert first[1] > 0
    assert kid(real, synthetic, subsets=25, subset_size=20, seed=8) != first


def test_domain_fid_and_kid_separate_real_from_noise_and_shuffled_pixels(phantom):
    train, validation = phantom["real"]["train"], phantom["real"]["validation"]
    rng = np.random.default_rng(0)
    noise = (rng.integers(0, 256, validation.images.shape) * validation.sectors).astype(np.uint8)
    shuffled = np.stack([rng.permutation(image.ravel()).reshape(image.shape) for image in validation.images])
    features = lambda images: phantom["segmenter"].features(images, dims=64)  # noqa: E731
    real = features(train.images)
    results = {name: compare(real, features(images), subsets=50, seed=0)
               for name, images in (("validation", validation.images), ("noise", noise), ("shuffled", shuffled))}  # fmt: skip
    for other in ("noise", "shuffled"):
        assert results["validation"]["kid_mean"] * 5 < results[other]["kid_mean"], results
        assert results["validation"]["fid"] * 3 < results[other]["fid"], results


def test_inception_absence_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHECHO_TEST_INCEPTION", raising=False)
    path, note = resolve_inception_weights(None, "SYNTHECHO_TEST_INCEPTION")
    assert path is None and "not computed" in note and "SYNTHECHO_TEST_INCEPTION" in note
    monkeypatch.setenv("SYNTHECHO_TEST_INCEPTION", str(tmp_path / "missing.pt"))
    path, note = resolve_inception_weights(None, "SYNTHECHO_TEST_INCEPTION")
    assert path is None and "missing.pt" in note and "does not exist" in note


def test_inception_features_load_a_local_torchscript_file(tmp_path):
    """The Inception path's plumbing (any file name, clean-fid's model class and resizer, grey -> RGB),
    checked with a stand-in torchscript file of the same interface, since the real weights cannot be
    downloaded here: features are the mean of clean-fid's normalised 299 px input."""
    import torch

    from synthecho.quality.metrics import InceptionFeatures

    class Layers(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 1).repeat(1, 683, 1, 1)[:, :2048]

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    weights = tmp_path / "my-inception-copy.pt"
    torch.jit.script(StandIn()).save(str(weights))
    path, note = resolve_inception_weights(str(weights), "UNUSED_ENV")
    assert path == weights and "my-inception-copy.pt" in note
    images = np.stack([np.full((32, 32), 40, np.uint8), np.full((32, 32), 200, np.uint8)])
    images[:, :8] = 0
    features = InceptionFeatures(path)(images)
    assert features.shape == (2, 2048) and features.dtype == np.float64
    expected = (images.astype(np.float64).mean(axis=(1, 2)) - 128) / 128  # bicubic keeps the mean ~exactly
    assert np.allclose(features[:, 0], expected, atol=0.02) and np.all(features[:, 1] == features[:, 0])


# --- per-row checks on phantom frames -----------------------------------------------------------------


def test_near_copies_are_rejected_and_other_patients_are_not(phantom):
    from synthecho.quality.scoring import score_rows

    context = _context(phantom)
    train, validation = phantom["real"]["train"], phantom["real"]["validation"]
    sigma = speckle_sigma(train.images, train.sectors)
    rng = np.random.default_rng(3)
    picks = [0, 5, 11]
    noisy = np.clip(train.images[picks] + rng.normal(0, sigma, size=train.images[picks].shape), 0, 255)
    noisy = (noisy * train.sectors[picks]).round().astype(np.uint8)  # fresh speckle-level noise, fan kept
    copies = score_rows(train.images[picks], train.masks[picks], ["conditioning"] * 3, context)
    noisy_copies = score_rows(noisy, train.masks[picks], ["conditioning"] * 3, context)
    assert copies["reject_reason"] == ["near_copy"] * 3
    assert copies["nearest_train"] == picks and min(copies["copy_similarity"]) > 0.999
    assert noisy_copies["reject_reason"] == ["near_copy"] * 3, noisy_copies
    # Frames of other patients (the validation split) are not copies of any training frame.
    others = score_rows(validation.images, validation.masks, ["conditioning"] * len(validation), context)
    assert "near_copy" not in others["reject_reason"]
    assert max(others["copy_similarity"]) < context.copy_threshold


def test_swapped_masks_are_inconsistent(phantom):
    from synthecho.quality.scoring import score_rows

    context = _context(phantom)
    validation = phantom["real"]["validation"]
    views = [record["view"] for record in validation.records]
    swap = [next(j for j in range(len(views)) if views[j] != views[i]) for i in range(len(views))]
    own = score_rows(validation.images, validation.masks, ["conditioning"] * len(views), context)
    swapped = score_rows(validation.images, validation.masks[swap], ["generated"] * len(views), context)
    assert own["reject_reason"] == [None] * len(views), own
    assert swapped["reject_reason"] == ["mask_inconsistent"] * len(views), swapped
    assert all(value is not None and value < 0.5 for value in swapped["dice_myo"])


def test_segmenter_masks_get_plausibility_not_dice(phantom):
    from synthecho.quality.scoring import score_rows

    context = _context(phantom)
    validation = phantom["real"]["validation"]
    mask = validation.masks[0]
    assert implausibility(mask, context.limits) is None
    assert implausibility(mask[::-1], context.limits) == "la not below lv"  # upside down: LA above LV
    assert implausibility(np.where(mask == 3, 0, mask), context.limits) == "la missing"
    huge_lv = np.where(mask > 0, 1, mask)
    huge_lv[: RESOLUTION // 2] = 1
    assert "lv area" in implausibility(np.where(mask == 3, 3, huge_lv), context.limits)

    result = score_rows(validation.images[:2], np.stack([mask, mask[::-1]]), ["segmenter"] * 2, context)
    assert result["dice_lv"] == [None, None] and result["reject_reason"] == [None, "implausible_anatomy"]


def test_attribute_classifier_learns_view_and_is_seeded(phantom):
    import torch

    from synthecho.quality.attributes import train_attribute_classifier

    train, validation = phantom["real"]["train"], phantom["real"]["validation"]
    torch.manual_seed(1)  # the caller's RNG state must not matter
    first, metrics = train_attribute_classifier(train, validation, steps=200, progress=False)
    torch.manual_seed(2)
    second, _ = train_attribute_classifier(train, validation, steps=200, progress=False)
    assert np.array_equal(first.logits(validation.images), second.logits(validation.images))
    assert metrics["validation"]["view_accuracy"] >= 0.75, metrics
    assert metrics["train"]["view_accuracy"] >= 0.9 and metrics["train"]["phase_accuracy"] >= 0.75, metrics


# --- the stage ---------------------------------------------------------------------------------------


def _fabricate_raw_shards(recipe, run_dir, real):
    """Raw shards named and sized as the plan says, holding known-good and known-bad rows.

    Good rows show frames of held-out test patients with their own masks; the bad ones are a constant
    frame, a mask from another view, an exact copy of a training frame and an upside-down segmenter mask.
    """
    from synthecho.plan import build_plan, shards_of
    from synthecho.prompts import shapes_of
    from synthecho.schema import corpus_features
    from synthecho.shards import write_shard
    from synthecho.stages.generate import batch_rows, shard_path

    test, train = real["test"], real["train"]
    expected = {}
    for shard in shards_of(build_plan(recipe, {s: real[s] for s in ("train", "validation")})):
        count = len(shard.rows)
        images, masks = (
            test.images[np.arange(count) % len(test)].copy(),
            test.masks[np.arange(count) % len(test)].copy(),
        )
        reasons, sources = [None] * count, ["conditioning"] * count
        if shard.split == "train":
            images[0] = 90  # constant
            other = next(j for j in range(len(test)) if test.records[j]["view"] != test.records[1]["view"])
            masks[1] = test.masks[other]
            images[2], masks[2] = train.images[4], train.masks[4]
            reasons[:3] = ["degenerate", "mask_inconsistent", "near_copy"]
        else:
            masks[0], sources[0], reasons[0] = masks[0][::-1], "segmenter", "implausible_anatomy"
        rows = batch_rows(list(shard.rows), images, masks, {
            "generator": "test/fabricated", "generator_sha256": "", "sampler": "ddim", "steps": 1,
            "guidance_scale": 1.0, "batch_size": count, "mask_source": "conditioning"}, True)  # fmt: skip
        for row, source, mask, reason in zip(rows, sources, masks, reasons, strict=True):
            row["mask_source"] = source
            row.update({f"shape_{k}": v for k, v in shapes_of(mask).items()})
            expected[row["id"]] = reason
        write_shard(shard_path(run_dir, shard), rows, corpus_features(), extra={"split": shard.split})
    return expected


def test_filter_stage_end_to_end(phantom):
    import pyarrow.parquet as pq

    from synthecho.errors import SynthechoError
    from synthecho.manifest import read_manifest
    from synthecho.schema import arrow_schema, corpus_features
    from synthecho.shards import read_shard
    from synthecho.stages import invalidate, run_stage

    run_dir, recipe, real = phantom["run_dir"], phantom["recipe"], phantom["real"]
    with pytest.raises(SynthechoError, match="generate is incomplete"):
        run_stage("filter", recipe, run_dir, progress=False)
    expected = _fabricate_raw_shards(recipe, run_dir, real)

    result = run_stage("filter", recipe, run_dir, progress=False)
    assert not result["skipped"]

    # Scored shards: every row, with the expected verdicts.
    scored = {}
    for path in sorted((run_dir / "shards" / "scored").glob("*.parquet")):
        for row in pq.read_table(
            path, columns=["id", "passed", "reject_reason", "dice_lv", "copy_similarity"]
        ).to_pylist():
            scored[row["id"]] = row
    assert {row_id: row["reject_reason"] for row_id, row in scored.items()} == expected
    assert all(row["passed"] == (row["reject_reason"] is None) for row in scored.values())
    assert all(row["copy_similarity"] is not None for row in scored.values())

    # Publishable splits: only passed rows, the corpus schema, the -of- naming.
    data = sorted(p.name for p in (run_dir / "data").glob("*.parquet"))
    assert data == ["train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    kept_ids = set()
    for name in data:
        table = pq.read_table(run_dir / "data" / name)
        assert table.schema.equals(arrow_schema(corpus_features()), check_metadata=False)
        kept_ids |= set(table.column("id").to_pylist())
    assert kept_ids == {row_id for row_id, reason in expected.items() if reason is None}

    # Manifest, reports.
    manifest = read_manifest(run_dir)
    counts = manifest["counts"]
    assert counts["passed"] == len(kept_ids)
    assert counts["rejected"] == {
        "degenerate": 1,
        "mask_inconsistent": 1,
        "implausible_anatomy": 1,
        "near_copy": 1,
    }
    metrics = manifest["metrics"]
    assert metrics["inception"] is None and "Inception features not computed" in metrics["inception_note"]
    assert set(metrics["domain"]) == {"train", "validation", "overall"}
    assert metrics["real_reference"]["domain"]["kid_mean"] is not None
    assert 0 <= metrics["attribute_fidelity"]["view_agreement"] <= 1
    assert [entry["path"] for entry in manifest["shards"]["data"]] == [f"data/{name}" for name in data]
    # The prompts config publish will build from these shards: its size is known to the card already.
    from synthecho.prompts import prompts_table

    published_prompts = prompts_table([run_dir / "data" / name for name in data])
    assert manifest["shards"]["prompts"] == {
        "rows": 48 * len(kept_ids),
        "arrow_bytes": published_prompts.nbytes,
    }
    # Mask fidelity: every judged row, passed or not, against the segmenter's Dice on real validation.
    scored_rows = [
        row
        for path in sorted((run_dir / "shards" / "scored").glob("*.parquet"))
        for row in read_shard(path).to_pylist()
    ]
    judged = [row for row in scored_rows if row["dice_lv"] is not None]
    fidelity = metrics["mask_fidelity"]
    assert fidelity["rows"] == len(judged) < len(scored_rows)
    assert fidelity["mean_dice"]["myo"] == pytest.approx(np.mean([row["dice_myo"] for row in judged]))
    assert fidelity["ceiling_split"] == "validation" and 0 < fidelity["ceiling_dice"]["lv"] <= 1
    quality = (run_dir / "reports" / "quality.md").read_text()
    assert "Inception features not computed" in quality and "near_copy" in quality
    assert f"all {len(judged)} judged rows, before filtering" in quality
    assert (run_dir / "reports" / "filter_examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Up to date: skipped. Rerun (scored shards reused): the same KID, to the last digit.
    assert run_stage("filter", recipe, run_dir, progress=False)["skipped"]
    invalidate(run_dir, "filter")
    run_stage("filter", recipe, run_dir, progress=False)
    assert read_manifest(run_dir)["metrics"]["domain"] == metrics["domain"]
