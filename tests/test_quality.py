"""Quality filters and metrics on phantom data: degenerate frames, mask consistency, plausibility, the copy
check (planted copies caught, the null passed), attribute mismatch, warped-real counterparts, the phase
policy, FID/KID on domain features, and the `filter` stage end to end (fabricated raw shards)."""

from __future__ import annotations

import numpy as np
import pytest

from synthecho.quality.metrics import compare, kid, resolve_inception_weights
from synthecho.quality.scores import (
    AnatomyLimits,
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
            "prepare": {"resolution": RESOLUTION, "copy_null_renders": 2},
            "segmenter": {"channels": [8, 16, 32], "strides": [2, 2], "steps": 100, "batch_size": 8,
                          "learning_rate": 3e-3, "validate_every": 50},
            # Plan: 6 source records per split, 1 variant, one shard of one batch per split.
            "generate": {"variants": 1, "max_records_per_split": 6, "batch_size": 6, "batches_per_shard": 1},
            "filter": {"kid_subsets": 20,
                       "attribute_steps": 400,  # 150 misjudged 2 clean rows on the new phantom
                       **filter_options},
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


@pytest.fixture(scope="module")
def references(phantom):
    """The copy check calibrated on the prepared null, and the filter's attribute classifier."""
    from synthecho.plan import perturb_config
    from synthecho.quality.attributes import fit_classifier, phase_free
    from synthecho.quality.copies import CopyCheck, calibrate, null_sources
    from synthecho.quality.folds import pooled
    from synthecho.real import load_copy_null

    real = {split: phantom["real"][split] for split in ("train", "validation")}
    check = CopyCheck(real)
    null = load_copy_null(phantom["run_dir"])
    images, sources, patients = null_sources(null, real, perturb_config(phantom["recipe"]), 0)
    scores = check.similarity(images, sources)
    calibration = calibrate(scores, patients, 0.995)
    classifier = fit_classifier(
        pooled(real["train"], real["validation"]),
        steps=150,
        augment=phase_free(perturb_config(phantom["recipe"])),
        progress=False,
    )
    return {"check": check, "null_scores": scores, "calibration": calibration, "classifier": classifier}


def _context(phantom, references, attribute_threshold=None, copy_threshold=None):
    from synthecho.quality.scoring import ScoringContext

    train = phantom["real"]["train"]
    limits = AnatomyLimits.from_masks(train.masks)
    return ScoringContext(
        phantom["segmenter"],
        references["check"],
        limits,
        {"lv": 0.5, "myo": 0.3, "la": 0.4},
        references["calibration"]["threshold"] if copy_threshold is None else copy_threshold,
        references["classifier"],
        attribute_threshold or {"view": None, "phase": None},
    )


def _score(context, split, images, masks, mask_sources, claims=None):
    """score_rows for rows that claim to be `split`'s records themselves (identity transforms)."""
    from synthecho.perturb import identity_transform
    from synthecho.quality.copies import Source
    from synthecho.quality.scoring import score_rows

    sources = [Source(split.split, i, identity_transform()) for i in range(len(images))]
    claims = claims or [
        {"view": r["view"], "phase": r["phase"], "patient": r["patient"]}
        for r in split.records[: len(images)]
    ]
    return score_rows(images, masks, mask_sources, context, sources, claims)


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
               for name, images in (("validation", validation.images), ("noise", noise),
                                    ("shuffled", shuffled))}  # fmt: skip
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


def test_warp_frame_reproduces_the_conditioning_masks(phantom):
    """A row's source frame and mask moved by its mask_transform: the mask is exactly the conditioning
    mask the generator was given (one coordinate map for both), the image lies in the sector."""
    from synthecho.perturb import identity_transform, warp_frame
    from synthecho.plan import build_plan, conditioning

    real = {split: phantom["real"][split] for split in ("train", "validation")}
    plan = build_plan(phantom["recipe"], real)
    masks, _ = conditioning(plan, real)
    for row, mask in zip(plan, masks, strict=True):
        split = real[row.split]
        image, warped = warp_frame(
            split.images[row.source_index],
            split.masks[row.source_index],
            split.sectors[row.source_index],
            row.mask_transform,
        )
        assert np.array_equal(warped, mask), row.id
        assert image.dtype == np.uint8 and not image[~split.sectors[row.source_index]].any()
    first = real["train"]
    same, _ = warp_frame(first.images[0], first.masks[0], first.sectors[0], identity_transform())
    assert np.array_equal(same, np.where(first.sectors[0], first.images[0], 0))


def test_copy_check_catches_planted_copies_and_passes_the_null(phantom, references):
    """The positive control (planted copies, scored as rows are) and the null (fresh-speckle re-renders
    of the same anatomy), at small n; copies of other patients and of the other phase are caught too."""
    from synthecho.perturb import sample_transform, warp_frame
    from synthecho.plan import build_plan, perturb_config
    from synthecho.quality.copies import Source, planted_copies

    check, calibration = references["check"], references["calibration"]
    threshold = calibration["threshold"]
    real = {split: phantom["real"][split] for split in ("train", "validation")}
    plan = build_plan(phantom["recipe"], real)
    planted = planted_copies(check, plan, threshold, seed=0)
    assert planted["stated"]["caught"]["n"] == len(plan) and planted["stated"]["caught"]["rate"] >= 0.9, (
        planted
    )
    assert planted["sweep"][0]["caught"]["rate"] == 1.0  # milder copies: all caught
    false_positive = calibration["false_positive"]
    assert false_positive["n"] == len(references["null_scores"]) and false_positive["rate"] <= 0.05, (
        calibration
    )
    assert np.sum(references["null_scores"] > threshold) <= 1  # the 0.995 quantile of 80 pairs

    # A train frame of another patient, unwarped, generated for a validation record: the global search.
    train, validation = real["train"], real["validation"]
    transform = sample_transform(5, perturb_config(phantom["recipe"]))
    found = check.compare(train.images[[3]], [Source("validation", 0, transform)])
    assert found["nearest"][0] == "train" and found["train_index"][0] == 3 and found["similarity"][0] > 0.99
    # The record's other phase, warped as the row: the other-phase comparison.
    other = next(i for i, r in enumerate(train.records) if r["patient"] == train.records[0]["patient"]
                 and r["view"] == train.records[0]["view"] and i != 0)  # fmt: skip
    copy, _ = warp_frame(train.images[other], train.masks[0], train.sectors[0], transform)
    found = check.compare(copy[None], [Source("train", 0, transform)])
    assert found["nearest"][0] == "other phase" and found["similarity"][0] > threshold
    # Real frames of other patients as rows of train records: anatomy alike, speckle not.
    found = check.compare(validation.images[:4], [Source("train", i, transform) for i in range(4)])
    assert np.all(found["similarity"] < threshold), found


def test_camus_null_pairs_come_from_one_recording(tmp_path):
    """On CAMUS (here the phantom's tree read as CAMUS) the null is the recording's other labelled phase
    (the frame that pair is made from is named, so it is not compared with itself) and the frame next to
    the record's in the half sequence."""
    from synthecho.real import load_copy_null, load_real
    from synthecho.recipe import recipe_from_dict
    from synthecho.sources.phantom import write_phantom
    from synthecho.stages import run_stage

    root = write_phantom(tmp_path / "tree", patients=5, seed=3, size=(48, 40), preview=False)
    recipe = recipe_from_dict(
        {"name": "camus-null", "source": {"kind": "camus", "root": str(root)}, "prepare": {"resolution": 32}}
    )
    run_dir = tmp_path / "run"
    run_stage("prepare", recipe, run_dir, progress=False)
    null = load_copy_null(run_dir)
    real = {split: load_real(run_dir, split) for split in ("train", "validation")}
    records = {r["id"]: (split, i) for split in real for i, r in enumerate(real[split].records)}
    kinds = [pair["kind"] for pair in null.pairs]
    assert kinds.count("other_phase") == kinds.count("neighbour_frame") == len(records)
    for pair, image in zip(null.pairs, null.images, strict=True):
        split, i = records[pair["record_id"]]
        if pair["kind"] == "other_phase":  # the other phase's prepared frame itself
            other_split, j = records[pair["made_from"]]
            assert other_split == split and np.array_equal(image, real[split].images[j])
        else:
            assert pair["made_from"] == "" and not np.array_equal(image, real[split].images[i])


def test_attribute_mismatch_rejects_a_row_whose_view_contradicts_its_image(phantom, references):
    # Rows are real frames claimed as themselves (identity transforms): the copy check is set aside.
    context = _context(phantom, references, {"view": 0.5, "phase": None}, copy_threshold=2.0)
    validation = phantom["real"]["validation"]
    flip = {"2CH": "4CH", "4CH": "2CH"}
    true = [{"view": r["view"], "phase": r["phase"], "patient": r["patient"]} for r in validation.records]
    wrong = [{**claim, "view": flip[claim["view"]]} for claim in true]
    masks, sources = validation.masks, ["conditioning"] * len(validation)
    honest = _score(context, validation, validation.images, masks, sources, true)
    lying = _score(context, validation, validation.images, masks, sources, wrong)
    assert "attribute_mismatch" not in honest["reject_reason"], honest
    assert lying["reject_reason"] == ["attribute_mismatch"] * len(validation), lying
    assert all("p(claimed view)" in detail for detail in lying["detail"])
    assert np.allclose(np.add(honest["view_score"], lying["view_score"]), 1.0, atol=1e-6)


def test_phase_policy_keeps_the_claimed_phase_and_records_itself(phantom):
    from synthecho.errors import SynthechoError
    from synthecho.plan import build_plan
    from synthecho.quality.phase import phase_geometry
    from synthecho.real import RealSplit

    recipe = phantom["recipe"]
    real = {split: phantom["real"][split] for split in ("train", "validation")}
    preserve = build_plan(recipe, real)
    echo = build_plan(recipe, real, phase_policy="echo_from_noise")
    geometry = phase_geometry(recipe, real, preserve)
    measured = geometry["by_policy"]
    assert geometry["policy"] == "preserve" == preserve[0].phase_policy
    assert measured["preserve"]["ratio"]["rate"] == 1.0 and measured["preserve"]["cavity_area"]["rate"] == 1.0
    assert measured["echo_from_noise"]["cavity_area"]["rate"] < 1.0, measured
    # The same draws: a row that kept its phase at the first draw differs in the scale alone, inside
    # Echo from noise's range; an Echo-from-noise plan hashes as plans did before the policy existed.
    same = [
        (a, b)
        for a, b in zip(preserve, echo, strict=True)
        if a.mask_transform["elastic_seed"] == b.mask_transform["elastic_seed"]
    ]
    assert same and all(
        {k: v for k, v in a.mask_transform.items() if k != "scale"}
        == {k: v for k, v in b.mask_transform.items() if k != "scale"}
        and 0.8 <= a.mask_transform["scale"] <= 1.05
        for a, b in same
    )
    assert "phase_policy" not in echo[0].to_dict() and preserve[0].to_dict()["phase_policy"] == "preserve"
    records_only = {split: RealSplit(split, real[split].records) for split in real}  # no pixels
    with pytest.raises(SynthechoError, match="phase_policy 'preserve' reads the masks"):
        build_plan(recipe, records_only)
    assert len(build_plan(recipe, records_only, phase_policy="echo_from_noise")) == len(echo)


def test_moved_masks_are_inconsistent(phantom, references):
    context = _context(phantom, references, copy_threshold=2.0)  # real frames as rows: not copies here
    validation = phantom["real"]["validation"]
    views = [record["view"] for record in validation.records]
    # Each frame's own mask moved a quarter of the frame sideways (masks of other hearts can overlap well:
    # the phantom's hearts vary in tilt and size).
    moved = np.roll(validation.masks, RESOLUTION // 4, axis=2)
    own = _score(context, validation, validation.images, validation.masks, ["conditioning"] * len(views))
    swapped = _score(context, validation, validation.images, moved, ["generated"] * len(views))
    assert own["reject_reason"] == [None] * len(views), own
    assert swapped["reject_reason"] == ["mask_inconsistent"] * len(views), swapped
    assert all(value is not None and value < 0.5 for value in swapped["dice_myo"])


def test_segmenter_masks_get_plausibility_not_dice(phantom, references):
    context = _context(phantom, references, copy_threshold=2.0)
    validation = phantom["real"]["validation"]
    mask = validation.masks[0]
    assert implausibility(mask, context.limits) is None
    assert implausibility(mask[::-1], context.limits) == "la not below lv"  # upside down: LA above LV
    assert implausibility(np.where(mask == 3, 0, mask), context.limits) == "la missing"
    huge_lv = np.where(mask > 0, 1, mask)
    huge_lv[: RESOLUTION // 2] = 1
    assert "lv area" in implausibility(np.where(mask == 3, 3, huge_lv), context.limits)

    result = _score(
        context, validation, validation.images[:2], np.stack([mask, mask[::-1]]), ["segmenter"] * 2
    )
    assert result["dice_lv"] == [None, None] and result["reject_reason"] == [None, "implausible_anatomy"]


def test_attribute_classifiers_learn_view_are_seeded_and_cross_validated(phantom):
    import torch

    from synthecho.plan import perturb_config
    from synthecho.quality.attributes import ARCHITECTURES, fit_classifier, phase_free
    from synthecho.quality.folds import cross_validate, pooled

    frames = pooled(phantom["real"]["train"], phantom["real"]["validation"])
    augment = phase_free(perturb_config(phantom["recipe"]))
    torch.manual_seed(1)  # the caller's RNG state must not matter
    first = fit_classifier(frames, steps=60, augment=augment, progress=False)
    torch.manual_seed(2)
    second = fit_classifier(frames, steps=60, augment=augment, progress=False)
    assert np.array_equal(first.logits(frames.images), second.logits(frames.images))
    # Patient-grouped 5-fold cross-validation: every frame predicted by a model that never saw its patient.
    judge, accuracy = cross_validate(
        frames, ARCHITECTURES["judge"], fold_seed=1, seed=1, steps=150, augment=augment, progress=False
    )
    assert accuracy["view"]["n"] == len(frames) and accuracy["patients"] == len(
        {r["patient"] for r in frames.records}
    )
    assert accuracy["view"]["rate"] >= 0.75, accuracy
    assert accuracy["view"]["ci95"][0] < accuracy["view"]["rate"] <= accuracy["view"]["ci95"][1]
    folds = {judge.fold_of[r["patient"]] for r in frames.records}
    assert folds == set(range(5)) and len(judge.models) == 5


def test_view_only_copies_teach_the_view_head_and_leave_the_phase_head_alone(phantom):
    import torch

    from synthecho.quality.attributes import (
        ARCHITECTURES,
        IGNORED,
        _build_network,
        _to_input,
        _Training,
        class_targets,
    )

    frames = phantom["real"]["train"]
    view_only = [dict(record, phase=None) for record in frames.records[:6]]
    assert set(class_targets(view_only)[1]) == {IGNORED}
    torch.manual_seed(0)
    network = _build_network(ARCHITECTURES["filter"])
    loss = _Training(view_only).batch_loss(network, _to_input(frames.images[:6]), np.arange(6),
                                           np.random.default_rng(0))  # fmt: skip
    assert torch.isfinite(loss)  # a batch of view-only copies alone: the view loss, no NaN phase term
    loss.backward()
    head = network[-1].weight.grad  # rows 0-1: the view logits, rows 2-3: the phase logits
    assert head[:2].abs().sum() > 0 and head[2:].abs().sum() == 0


def test_judge_budget_and_whole_perturbation_view_head_follow_the_recipe(phantom):
    from synthecho.plan import perturb_config
    from synthecho.quality.folds import plan_judge, pooled

    recipe = phantom["recipe"]
    frames = pooled(phantom["real"]["train"], phantom["real"]["validation"])
    default = plan_judge(recipe, frames)
    assert default.fits[0].options["steps"] == recipe.filter.attribute_steps  # unset: the filter's budget
    assert default.fits[0].options["view_augment"] is None
    own = recipe.model_copy(
        update={
            "filter": recipe.filter.model_copy(
                update={"judge_steps": 37, "attribute_view_perturbation": "recipe", "attribute_copies": 5}
            )
        }
    )
    plan = plan_judge(own, frames)
    assert {fit.options["steps"] for fit in plan.fits} == {37} and len(plan.fits) == len(default.fits)
    assert {fit.options["copies"] for fit in plan.fits} == {5}
    whole = plan.fits[0].options["view_augment"]
    assert whole == perturb_config(own) and whole.scale != (1.0, 1.0)  # scale moves the phase, not the view


def test_classifier_fits_in_worker_processes_equal_fits_in_this_process(phantom, monkeypatch):
    from synthecho.plan import perturb_config
    from synthecho.quality.attributes import ARCHITECTURES, phase_free
    from synthecho.quality.folds import fit_classifiers, plan_folds, pooled

    frames = pooled(phantom["real"]["train"], phantom["real"]["validation"])
    config = perturb_config(phantom["recipe"])
    plan = plan_folds(frames, ARCHITECTURES["filter"], fold_seed=0, seed=0, steps=20,
                      augment=phase_free(config), view_augment=config)  # fmt: skip
    monkeypatch.setenv("SYNTHECHO_WORKERS", "1")
    serial = fit_classifiers(plan.fits[:2], progress=False)
    monkeypatch.setenv("SYNTHECHO_WORKERS", "2")
    spread = fit_classifiers(plan.fits[:2], progress=False)
    assert [m.sha256() for m in serial] == [m.sha256() for m in spread]
    assert serial[0].sha256() != serial[1].sha256()  # two folds, two models


# --- the stage ---------------------------------------------------------------------------------------


def _fabricate_raw_shards(recipe, run_dir, real):
    """Raw shards named and sized as the plan says, holding known-good and known-bad rows.

    Good rows show frames of held-out test patients with their own masks, of the view and phase the row
    claims; the bad ones are a constant frame, a mask moved off its heart, an exact copy of a training frame,
    an upside-down segmenter mask and a frame of the other view than the row claims.
    """
    from synthecho.plan import build_plan, shards_of
    from synthecho.prompts import shapes_of
    from synthecho.schema import corpus_features
    from synthecho.shards import write_shard
    from synthecho.stages.generate import batch_rows, shard_path

    test, train = real["test"], real["train"]
    expected = {}
    by_claim: dict[tuple, list[int]] = {}
    for i, record in enumerate(test.records):
        by_claim.setdefault((record["view"], record["phase"]), []).append(i)
    for shard in shards_of(build_plan(recipe, {s: real[s] for s in ("train", "validation")})):
        count = len(shard.rows)
        # A test frame of the view and phase the row claims (a faithful row of another patient).
        picks = [
            by_claim[(row.view, row.phase)][k % len(by_claim[(row.view, row.phase)])]
            for k, row in enumerate(shard.rows)
        ]
        images, masks = test.images[picks].copy(), test.masks[picks].copy()
        reasons, sources = [None] * count, ["conditioning"] * count
        if shard.split == "train":
            images[0] = 90  # constant
            masks[1] = np.roll(masks[1], RESOLUTION // 4, axis=1)  # the frame's mask, moved sideways
            images[2], masks[2] = train.images[4], train.masks[4]
            reasons[:3] = ["degenerate", "mask_inconsistent", "near_copy"]
        else:
            masks[0], sources[0], reasons[0] = masks[0][::-1], "segmenter", "implausible_anatomy"
            # A real frame of the other view (validation: another patient than the row's source), with its
            # own mask: not a copy of the row's source, but not the view the row claims.
            row, validation = shard.rows[1], real["validation"]
            flip = {"2CH": "4CH", "4CH": "2CH"}[row.view]
            other = next(
                i
                for i, r in enumerate(validation.records)
                if r["view"] == flip and r["phase"] == row.phase and r["patient"] != row.source_patient
            )
            images[1], masks[1] = validation.images[other], validation.masks[other]
            reasons[1] = "attribute_mismatch"
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
        "attribute_mismatch": 1,
    }
    metrics = manifest["metrics"]
    assert metrics["inception"] is None and "Inception features not computed" in metrics["inception_note"]
    assert set(metrics["domain"]) == {"train", "validation", "overall"}
    assert metrics["real_reference"]["domain"]["kid_mean"] is not None
    assert 0 <= metrics["attribute_fidelity"]["view_agreement"] <= 1
    # The audit: the judge on every generated row (before any verdict) and on its warped-real counterpart.
    audit = metrics["attribute_fidelity"]["independent"]
    assert audit["generated"]["view"]["n"] == audit["warped_real"]["phase"]["n"] == len(expected)
    assert audit["judge"]["real"]["view"]["n"] == len(real["train"]) + len(real["validation"])
    assert (
        audit["generated"]["view"]["ci95"][0]
        <= audit["generated"]["view"]["rate"]
        <= audit["generated"]["view"]["ci95"][1]
    )
    assert metrics["attribute_fidelity"]["classifier"]["cross_validation"]["folds"] == 5
    check = metrics["copy_check"]
    assert check["rejected"] == 1 and check["planted"]["stated"]["caught"]["n"] == len(expected)
    assert check["calibration"]["false_positive"]["n"] == check["calibration"]["pairs"] > 0
    assert metrics["phase_geometry"]["by_policy"]["preserve"]["ratio"]["rate"] == 1.0
    assert set(metrics["phase_geometry"]["by_policy"]) == {"preserve", "echo_from_noise"}
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
    assert "## Copy check" in quality and "planted copies" in quality and "warped-real" in quality
    assert (run_dir / "reports" / "copy_nearest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"all {len(judged)} judged rows, before filtering" in quality
    assert (run_dir / "reports" / "filter_examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Up to date: skipped. Rerun (scored shards reused): the same KID, to the last digit.
    assert run_stage("filter", recipe, run_dir, progress=False)["skipped"]
    invalidate(run_dir, "filter")
    run_stage("filter", recipe, run_dir, progress=False)
    assert read_manifest(run_dir)["metrics"]["domain"] == metrics["domain"]
