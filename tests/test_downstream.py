"""Downstream baselines at tiny size: every task x strategy (controls included), the unit cache, the
warped control, the evaluate stage.

Frames are 16 px drawings where the labels are visible in the pixels (dark LV disc in a bright MYO ring,
dark LA below); the phase changes the LV size and the view adds a bright right-heart blob, so each task
has something to learn. The "synthetic" corpus is made as a mask-conditioned generator's is: each row a
train frame's mask under a sampled perturbation (its `mask_transform`), drawn again with fresh noise.
Models are a few channels wide and train for a handful of steps.
"""

import json
import math

import numpy as np
import pytest

from synthecho.downstream import CONTROLS, PRETRAINED_ON, STRATEGIES, corpus_split, load_corpus, warped_split
from synthecho.downstream.classification import ClassificationTask, labels_of
from synthecho.downstream.clipseg import ClipSegTask, prompt_for, resolve_weights, save_tiny_clipseg
from synthecho.downstream.effects import aggregate, comparisons
from synthecho.downstream.segmentation import SegmentationTask
from synthecho.downstream.study import capped_patients, run_task, run_tasks, train, warped_fingerprint
from synthecho.errors import SynthechoError
from synthecho.layout import RunLayout
from synthecho.metrics import dice_per_image
from synthecho.real import RealSplit, encode_png, load_real, write_truth
from synthecho.recipe import EvaluateConfig, recipe_from_dict

SIZE = 16
TINY_EVALUATE = {
    "steps": 2,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "validate_every": 2,
    "seeds": [0],
    "segmentation": {"channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 0},
}


def draw(mask: np.ndarray, view: str, rng: np.random.Generator) -> np.ndarray:
    """A frame that shows its mask (and, in 4CH, a bright right-heart blob), with fresh noise."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    intensity = np.choose(mask, [110.0, 30.0, 210.0, 40.0])
    if view == "4CH":
        intensity = np.where((cols > 12) & (rows < 8), 250.0, intensity)
    return np.clip(intensity + rng.normal(0, 15, size=mask.shape), 1, 255).astype(np.uint8)


def make_split(name: str, count: int, seed: int, patients: int = 4) -> RealSplit:
    """Frames with visible anatomy and full records (view, phase, prompt attributes, spacing)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    images = np.zeros((count, SIZE, SIZE), np.uint8)
    masks = np.zeros((count, SIZE, SIZE), np.uint8)
    records = []
    for i in range(count):
        view, phase = ("2CH", "4CH")[i % 2], ("ED", "ES")[(i // 2) % 2]
        radius = (3.2 if phase == "ED" else 2.2) + rng.uniform(-0.3, 0.3)
        cy, cx = 6 + rng.uniform(-1, 1), 8 + rng.uniform(-1, 1)
        distance = np.hypot(rows - cy, cols - cx)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[((rows - (cy + radius + 4)) / 2.0) ** 2 + ((cols - cx) / 3.0) ** 2 <= 1.0] = 3
        mask[distance <= radius + 1.5] = 2
        mask[distance <= radius] = 1
        images[i] = draw(mask, view, rng)
        masks[i] = mask
        records.append(
            {
                "id": f"{name}/{i}",
                "patient": f"{name}-patient{i % patients}",
                "split": name,
                "view": view,
                "phase": phase,
                "sex": ("F", "M")[i % 2],
                "age": 40 + i,
                "image_quality": "Good",
                "ef": 55.0,
                "spacing_row_mm": 0.9,
                "spacing_col_mm": 0.6,
                "shape_lv": "oval",
                "shape_myo": "circle",
                "shape_la": "oval",
                "prompt": "",
                "source_file": "",
            }
        )
    return RealSplit(name, records, images, masks, images > 0)


def make_corpus(train: RealSplit, count: int, seed: int) -> RealSplit:
    """Rows as a mask-conditioned generator makes them: train frame k % N's mask under a sampled
    perturbation, drawn afresh; records carry source_id, mask_transform and mask_source."""
    from synthecho.perturb import PerturbConfig, apply_transform, sample_transform

    rng = np.random.default_rng(seed)
    images, masks, records = [], [], []
    for k in range(count):
        source = k % len(train)
        transform = sample_transform(seed * 1000 + k, PerturbConfig(degrees=10, translate=0.1))
        mask = apply_transform(train.masks[source], train.sectors[source], transform)
        record = train.records[source]
        images.append(draw(mask, record["view"], rng))
        masks.append(mask)
        records.append({**record, "id": f"synthetic/{k}", "source_id": record["id"],
                        "mask_transform": transform, "mask_source": "conditioning"})  # fmt: skip
    images = np.stack(images)
    return RealSplit("synthetic", records, images, np.stack(masks), images > 0)


@pytest.fixture(scope="module")
def splits():
    train = make_split("train", 12, 0)
    synthetic = make_corpus(train, 16, 1)
    return {
        "train": train,
        "synthetic": synthetic,
        "warped": warped_split(synthetic, train)[0],
        "validation": make_split("validation", 6, 2),
        "test": make_split("test", 8, 3),
    }


def corpora(splits, synthetic=None) -> dict:
    synthetic = splits["synthetic"] if synthetic is None else synthetic
    return {
        "real": splits["train"],
        "synthetic": synthetic,
        "warped": warped_split(synthetic, splits["train"])[0],
    }


def fingerprints(splits, name=1) -> dict:
    return {"synthetic": {"f": name}, "warped": warped_fingerprint(splits["synthetic"], {})}


def config(**overrides) -> EvaluateConfig:
    return EvaluateConfig(**{**TINY_EVALUATE, **overrides})


def check_units(units, strategies, test_size):
    assert [unit["strategy"] for unit in units] == list(strategies)
    for unit in units:
        assert "skipped" not in unit
        for values in unit["per_image"].values():
            assert len(values) == test_size
        training = unit["training"]
        assert training["best_step"] <= training["steps"] <= training["max_steps"]
        assert training["converged"] == (training["best_step"] < training["steps"])
    by_strategy = {unit["strategy"]: unit for unit in units}
    # Fine-tuning starts from its base model: its first validation is the base model's best.
    for tuned, base in PRETRAINED_ON.items():
        first = by_strategy[tuned]["training"]["history"][0]
        assert first["step"] == 0
        assert first["score"] == pytest.approx(by_strategy[base]["training"]["validation_score"])
    assert by_strategy["real"]["n_synthetic"] == 0 and by_strategy["synthetic"]["n_real"] == 0
    for mixed in ("real_plus_synthetic", "real_plus_warped"):
        assert (by_strategy[mixed]["n_real"], by_strategy[mixed]["n_synthetic"]) == (12, 16)
    return by_strategy


def test_segmentation_every_strategy_and_the_unit_cache(splits, tmp_path):
    task = SegmentationTask(config(), splits["validation"], splits["test"], device="cpu")
    units = run_task(task, list(STRATEGIES), [0], corpora(splits), fingerprints(splits), tmp_path)
    by_strategy = check_units(units, STRATEGIES, 8)
    # Equal budgets: whatever trains on real data from scratch may run as many steps as pretrain + fine-tune.
    budget = {name: by_strategy[name]["training"]["max_steps"] for name in STRATEGIES}
    total = task.steps + task.finetune_steps
    assert budget["real"] == budget["real_plus_synthetic"] == budget["real_plus_warped"] == total
    assert budget["synthetic"] == budget["warped"] == task.steps
    assert budget["pretrain_finetune"] == budget["warped_pretrain_finetune"] == task.finetune_steps
    for unit in units:
        summary = unit["summary"]
        for name in ("lv_endo", "lv_epi", "la"):
            assert 0.0 <= summary[f"dice_{name}"] <= 1.0
            assert 0.0 <= summary[f"hd95_{name}"] <= math.hypot(SIZE * 0.9, SIZE * 0.6) + 1e-9
    # Cached units are read back unchanged, without training.
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    again = run_task(task, list(STRATEGIES), [0], corpora(splits), fingerprints(splits), tmp_path)
    assert again == units
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == stamps
    # A different generator (other shards, same rows kept) invalidates the synthetic strategies only:
    # real-only and the warped control depend on which rows were kept and how they were warped.
    changed = run_task(task, list(STRATEGIES), [0], corpora(splits), fingerprints(splits, 2), tmp_path)
    for old, new in zip(units, changed, strict=True):
        synthetic = "synthetic" in old["strategy"] or old["strategy"] == "pretrain_finetune"
        assert (old["input_hash"] != new["input_hash"]) == synthetic, old["strategy"]
    # No passed synthetic rows: the synthetic strategies and controls are skipped with a reason.
    empty = splits["synthetic"].subset([])
    skipped = run_task(task, ["real", "synthetic", "warped"], [1], corpora(splits, empty),
                       fingerprints(splits, 3), tmp_path / "empty")  # fmt: skip
    assert "skipped" not in skipped[0]
    assert all("no synthetic train rows" in unit["skipped"] for unit in skipped[1:])


def test_the_warped_control_is_row_paired(splits):
    """Each control row is its synthetic row's source frame moved by the row's mask_transform: the same
    mask as the row's, the source's pixels (not the generated ones), the row's record."""
    from synthecho.perturb import warp_frame

    synthetic, train = splits["synthetic"], splits["train"]
    warped, pairing = warped_split(synthetic, train)
    assert pairing == {"rows": 16, "conditioning_rows": 16, "masks_reproduced": 16}
    np.testing.assert_array_equal(warped.masks, synthetic.masks)
    assert not np.array_equal(warped.images, synthetic.images)
    expected = warp_frame(
        train.images[3], train.masks[3], train.sectors[3], synthetic.records[3]["mask_transform"]
    )
    np.testing.assert_array_equal(warped.images[3], expected[0])
    assert [r["view"] for r in warped.records] == [r["view"] for r in synthetic.records]
    assert warped.records[0]["id"] == "warped:synthetic/0"
    # A row whose source is not in the real split cannot be paired: an error naming the fix.
    with pytest.raises(SynthechoError, match="source_id outside"):
        warped_split(synthetic, splits["validation"])
    assert comparisons(STRATEGIES)[:3] == [("synthetic", "real"), ("warped", "real"), ("synthetic", "warped")]
    assert set(CONTROLS) | set(CONTROLS.values()) | {"real"} == set(STRATEGIES)


def test_segmentation_learns_the_visible_anatomy(splits):
    task = SegmentationTask(
        config(steps=40, validate_every=10, learning_rate=2e-2),
        splits["validation"],
        splits["test"],
        device="cpu",
    )
    untrained = task.evaluate(task.new_model(0))["summary"]["dice_mean"]
    model = task.new_model(0)
    training = train(task, model, splits["train"], 40, seed=0, progress=False, desc="")
    trained = task.evaluate(model)["summary"]["dice_mean"]
    assert training["best_step"] > 0
    assert trained > max(0.4, untrained + 0.15), (untrained, trained)


def test_classification_every_strategy(splits, tmp_path):
    # ResNet-18 has 11M parameters whatever the frame size: one task here, `view` in the stage test.
    task = ClassificationTask("phase", config(), splits["validation"], splits["test"], device="cpu")
    strategies = ["real", "synthetic", "pretrain_finetune"]
    units = run_task(task, strategies, [0], corpora(splits), fingerprints(splits), tmp_path)
    assert [unit["strategy"] for unit in units] == strategies
    for unit in units:
        summary = unit["summary"]
        assert sum(map(sum, summary["confusion"])) == 8
        assert summary["accuracy"] == pytest.approx(np.mean(unit["per_image"]["correct"]))
        assert 0.0 <= summary["f1"] <= 1.0
        # p(true class) agrees with correctness: above 1/2 exactly where the image is classified right
        p_true = np.asarray(unit["per_image"]["p_true"])
        assert np.array_equal(p_true > 0.5, np.asarray(unit["per_image"]["correct"]) == 1.0)
    assert labels_of(splits["test"], "phase").tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert labels_of(splits["test"], "view").tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_run_tasks_spreads_seeds_over_workers_with_the_same_units(splits, tmp_path, monkeypatch):
    """Two one-thread worker processes train what one process does: the same units, in seed order."""
    small = config(classification={"model": "small", "steps": 10, "learning_rate": 3e-3})
    held_out = splits["validation"], splits["test"]
    tasks = [
        SegmentationTask(config(), *held_out, device="cpu"),
        ClassificationTask("view", small, *held_out, device="cpu"),
    ]
    strategies = ["real", "synthetic", "pretrain_finetune"]
    runs = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("SYNTHECHO_WORKERS", workers)
        runs[workers] = run_tasks(tasks, strategies, [0, 1], corpora(splits), fingerprints(splits),
                                  tmp_path / workers, progress=False)  # fmt: skip
    for task in tasks:
        one, two = runs["1"][task.name], runs["2"][task.name]
        assert [(u["seed"], u["strategy"]) for u in two] == [(s, n) for s in (0, 1) for n in strategies]
        assert [u["per_image"] for u in two] == [u["per_image"] for u in one]
        assert len({json.dumps(u["per_image"]) for u in two}) > 1  # seeds and strategies differ
        assert sorted(p.name for p in (tmp_path / "2" / task.name).glob("*.json")) == sorted(
            p.name for p in (tmp_path / "1" / task.name).glob("*.json")
        )


def test_small_classifier_learns_the_view(splits):
    """`model: small` (MONAI's Classifier): a different network from ResNet-18, trained by the same loop."""
    settings = config(classification={"model": "small", "steps": 60, "learning_rate": 3e-3})
    task = ClassificationTask("view", settings, splits["validation"], splits["test"], device="cpu")
    assert task.settings["model"].startswith("MONAI Classifier")
    model = task.new_model(0)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    before = task.evaluate(model)["summary"]["accuracy"]
    training = train(task, model, splits["train"], 60, seed=0, progress=False, desc="")
    after = task.evaluate(model)["summary"]["accuracy"]
    assert training["best_step"] > 0 and after >= max(before, 0.75), (before, after)


def test_classification_model_and_weights_must_agree():
    with pytest.raises(ValueError, match="set model to resnet18"):
        config(classification={"model": "small", "pretrained": True})
    with pytest.raises(ValueError, match="the same length"):
        config(classification={"model": "small", "channels": [8, 16], "strides": [2]})


def test_clipseg_prompt_levels_run_end_to_end(splits, tmp_path):
    weights = save_tiny_clipseg(tmp_path / "tiny-clipseg", image_size=32)
    settings = config(clipseg={"weights": str(weights), "levels": [7]})  # P7: the longest prompts
    assert resolve_weights(settings.clipseg) == (weights, "")
    record = splits["test"].records[0]
    assert prompt_for(record, "lv", 7, "A").startswith(
        "Left ventricular cavity of oval shape in two-chamber view"
    )
    assert prompt_for(record, "la", 0, "B") == ""
    for level in settings.clipseg.levels:
        task = ClipSegTask(level, settings, splits["validation"], splits["test"], weights, device="cpu")
        strategies = ["real", "synthetic", "warped", "pretrain_finetune", "warped_pretrain_finetune"]
        units = run_task(task, strategies, [0], corpora(splits), fingerprints(splits), tmp_path / task.name)
        summary = aggregate(task, units, strategies)
        assert {e["metric"] for e in summary["effects"]} == {
            "dice_foreground",
            "dice_lv_endo",
            "dice_lv_epi",
            "dice_la",
        }
        pairs = {(e["a"], e["b"]) for e in summary["effects"]}
        assert ("pretrain_finetune", "warped_pretrain_finetune") in pairs and len(pairs) == 6


def test_clipseg_weights_missing_or_wrong(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHECHO_CLIPSEG_WEIGHTS", raising=False)
    folder, reason = resolve_weights(config().clipseg)
    assert folder is None and "cannot be downloaded" in reason
    with pytest.raises(SynthechoError, match="no config.json"):
        resolve_weights(config(clipseg={"weights": str(tmp_path)}).clipseg)


def test_capped_patients_are_deterministic_fractions():
    patients = [f"p{i:02d}" for i in range(20)] * 4  # 4 frames per patient
    quarter = capped_patients(patients, 0.25, seed=0)
    assert len(quarter) == 5 and quarter == sorted(set(quarter))
    assert capped_patients(patients, 0.25, seed=0) == quarter
    assert capped_patients(patients, 0.25, seed=1) != quarter
    assert capped_patients(patients, 0.01, seed=0) and len(capped_patients(patients, 1.0, seed=0)) == 20


def test_recipe_rejects_bad_caps_and_levels():
    with pytest.raises(SynthechoError, match="real_caps"):
        recipe_from_dict({"name": "x", "evaluate": {"real_caps": [0.0]}})
    with pytest.raises(SynthechoError, match="levels"):
        recipe_from_dict({"name": "x", "evaluate": {"clipseg": {"levels": [8]}}})


# --- the corpus loader and the stage -----------------------------------------------------------------


def write_real(run_dir, split: RealSplit) -> None:
    from synthecho.real import write_split

    rows = []
    for record, image, mask, sector in zip(
        split.records, split.images, split.masks, split.sectors, strict=True
    ):
        rows.append(
            {
                **record,
                "image": encode_png(image),
                "mask": encode_png(mask, palette=True),
                "sector": encode_png(sector.astype(np.uint8)),
            }
        )
    write_split(rows, run_dir / "real" / f"{split.split}.parquet")


def phantom_like_truth(masks: np.ndarray) -> np.ndarray:
    """A stand-in for the phantom's truth: the labels with the LV cavity grown by one pixel into the wall."""
    from scipy.ndimage import binary_dilation

    truth = masks.copy()
    for index, mask in enumerate(masks):
        truth[index][binary_dilation(mask == 1) & (mask == 2)] = 1
    return truth


def write_corpus(run_dir, split_name: str, split: RealSplit) -> None:
    """Passed rows in the published schema (corpus_features), one shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthecho.schema import (
        MASK_TRANSFORM_FIELDS,
        PHASES,
        QUALITIES,
        SEXES,
        VIEWS,
        arrow_schema,
        corpus_features,
    )

    rows = []
    for index, (record, image, mask) in enumerate(zip(split.records, split.images, split.masks, strict=True)):
        rows.append(
            {
                "id": f"tiny/{split_name}/{index}", "index": index,
                "image": {"bytes": encode_png(image), "path": None},
                "mask": {"bytes": encode_png(mask, palette=True), "path": None},
                "prompt": "", "shape_lv": "oval", "shape_myo": "circle", "shape_la": "oval",
                "view": VIEWS.index(record["view"]), "phase": PHASES.index(record["phase"]),
                "sex": SEXES.index(record["sex"]), "image_quality": QUALITIES.index(record["image_quality"]),
                "age": record["age"], "generator": "test", "generator_sha256": "0", "sampler": "ddim",
                "steps": 1, "guidance_scale": 1.0, "seed": 0, "batch_size": 1,
                "source_id": record["source_id"], "source_patient": record["patient"],
                "source_split": "train", "variant": 0,
                "mask_transform": {name: record["mask_transform"][name] for name in MASK_TRANSFORM_FIELDS},
                "spacing_mm": {"row": 0.9, "col": 0.6}, "mask_source": "conditioning",
                "dice_lv": 1.0, "dice_myo": 1.0, "dice_la": 1.0, "copy_similarity": 0.1,
            }
        )  # fmt: skip
    schema = arrow_schema(corpus_features())
    path = run_dir / "data" / f"{split_name}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_load_corpus_round_trips_the_published_schema(splits, tmp_path):
    write_corpus(tmp_path, "train", splits["synthetic"])
    images, masks, records = load_corpus(tmp_path, "train")
    assert np.array_equal(images, splits["synthetic"].images)
    assert np.array_equal(masks, splits["synthetic"].masks)
    original = splits["synthetic"].records
    assert [r["view"] for r in records] == [r["view"] for r in original]
    assert [r["phase"] for r in records] == [r["phase"] for r in original]
    assert (
        records[0]["spacing_row_mm"] == pytest.approx(0.9) and records[0]["patient"] == original[0]["patient"]
    )
    assert len(corpus_split(tmp_path, "train", limit=5)) == 5
    with pytest.raises(SynthechoError, match="run `synthecho filter"):
        load_corpus(tmp_path, "validation")


def test_evaluate_stage_writes_table_chart_manifest(splits, tmp_path, monkeypatch):
    from synthecho.downstream.report import STRATEGY_TITLES
    from synthecho.downstream.stats import exact_minimum_p
    from synthecho.manifest import read_manifest
    from synthecho.stages import run_stage

    monkeypatch.delenv("SYNTHECHO_CLIPSEG_WEIGHTS", raising=False)

    run_dir = tmp_path / "run"
    test = make_split("test", 12, 3, patients=6)  # 6 patients: the fewest that get a p-value
    for split in (splits["train"], splits["validation"], test):
        write_real(run_dir, split)
    write_corpus(run_dir, "train", splits["synthetic"])
    # A phantom's run also holds the clean truth of its test frames (here: the labels, LV one pixel larger).
    truth = phantom_like_truth(test.masks)
    write_truth([{"id": i, "mask": m} for i, m in zip(test.ids, truth, strict=True)], truth_file(run_dir))
    recipe = recipe_from_dict(
        {
            "name": "tiny",
            "evaluate": {
                **TINY_EVALUATE,
                "enabled": True,
                "seeds": [0, 1],
                "tasks": ["segmentation", "view", "clipseg"],
                "confirmatory": {"cap": 1.0},
            },
        }
    )
    result = run_stage("evaluate", recipe, run_dir, progress=False)
    assert result["tasks"] == ["segmentation", "view"]
    assert "clipseg" in result["skipped_tasks"]  # no local weights configured

    report = (run_dir / "reports" / "downstream.md").read_text()
    for title in STRATEGY_TITLES.values():
        assert f"| {title} |" in report  # every strategy has a row
    assert "| synthetic only − warped real only | 6 |" in report  # each strategy beside its control
    assert "## Confirmatory family (100 % real data" in report and "Holm" in report
    assert "Skipped: no local CLIPSeg weights" in report
    assert "Model selection uses only 4 validation patients" in report
    png = (run_dir / "reports" / "downstream.png").read_bytes()
    assert png.startswith(b"\x89PNG")

    downstream = read_manifest(run_dir)["downstream"]
    assert downstream["statistics"]["unit"].startswith("patient")
    cap = downstream["caps"]["cap-1"]
    assert cap["warped_pairing"]["masks_reproduced"] == cap["warped_pairing"]["conditioning_rows"] == 16
    segmentation = cap["tasks"]["segmentation"]
    real = segmentation["strategies"]["real"]
    dice = real["metrics"]["dice_lv_endo"]
    assert len(dice["per_seed"]) == 2 and dice["mean"] == pytest.approx(np.mean(dice["per_seed"]))
    assert len(real["converged"]) == 2 and len(real["best_step"]) == 2
    assert "per_image" not in segmentation and "per_patient" not in segmentation  # in results.json
    # Descriptive effects: every comparison, n = 6 patients, an interval, no p-value.
    effects = {(e["a"], e["b"], e["metric"]): e for e in segmentation["effects"]}
    assert len({(a, b) for a, b, _ in effects}) == 9
    foreground = effects[("pretrain_finetune", "warped_pretrain_finetune", "dice_foreground")]
    assert foreground["n"] == 6 and foreground["p"] is None and foreground["seeds"] == 2
    assert foreground["ci_low"] <= foreground["mean_difference"] <= foreground["ci_high"]
    assert ("real_plus_synthetic", "real_plus_warped", "truth_dice_foreground") in effects
    # The confirmatory family: 2 comparisons x (segmentation, view), raw and Holm p, none below 2/2^6.
    family = downstream["confirmatory"]
    assert [(t["task"], t["b"]) for t in family["tests"]] == [
        ("segmentation", "real"), ("segmentation", "warped_pretrain_finetune"),
        ("view", "real"), ("view", "warped_pretrain_finetune"),
    ]  # fmt: skip
    assert family["missing"] == []
    for entry in family["tests"]:
        assert entry["n"] == 6 and entry["p"] >= exact_minimum_p(6) and entry["p_holm"] >= entry["p"]
        assert entry["metric"] == ("dice_foreground" if entry["task"] == "segmentation" else "p_true")
    # Dice against the truth beside Dice against the labels, and the labels' own Dice to the truth.
    assert "truth_dice_lv_endo" in real["metrics"]
    assert "LV endo Dice vs truth %" in report and "against the phantom's rendering truth" in report
    assert "Against the phantom's truth:" in report
    noise = downstream["test"]["labels_vs_truth_dice"]
    assert 0.0 < noise["lv_endo"] < 1.0 and noise["la"] == 1.0
    results = json.loads((run_dir / "downstream" / "results.json").read_text())
    values = results["caps"]["cap-1"]["tasks"]["segmentation"]["per_patient"]["values"]
    assert len(values["dice_foreground"]["real"]["0"]) == 6  # one value per patient and seed
    assert run_stage("evaluate", recipe, run_dir, progress=False)["skipped"] is True


def test_evaluate_with_only_skipped_tasks_reports_why(splits, tmp_path, monkeypatch):
    from synthecho.stages import run_stage

    monkeypatch.delenv("SYNTHECHO_CLIPSEG_WEIGHTS", raising=False)
    run_dir = tmp_path / "run"
    for name in ("train", "validation", "test"):
        write_real(run_dir, splits[name])
    recipe = recipe_from_dict({"name": "tiny", "evaluate": {"tasks": ["clipseg"], "real_caps": [0.5, 1.0]}})
    result = run_stage("evaluate", recipe, run_dir, progress=False)
    assert result["tasks"] == [] and result["caps"] == []
    assert not (run_dir / "caps").exists()  # nothing to train: no capped generator either
    assert "Skipped: no local CLIPSeg weights" in (run_dir / "reports" / "downstream.md").read_text()


def test_test_truth_is_attached_to_the_test_split_and_scored(splits, tmp_path):
    from synthecho.downstream.segmentation import label_noise_dice, segmentation_metrics

    test = splits["test"]
    write_real(tmp_path, test)
    assert load_real(tmp_path, "test").truth is None  # CAMUS: no truth, no truth metrics
    assert "truth_dice_lv_endo" not in segmentation_metrics(test.masks, test)["summary"]
    truth = phantom_like_truth(test.masks)
    write_truth([{"id": i, "mask": m} for i, m in zip(test.ids, truth, strict=True)], truth_file(tmp_path))
    loaded = load_real(tmp_path, "test")
    np.testing.assert_array_equal(loaded.truth, truth)
    np.testing.assert_array_equal(loaded.subset([2, 0]).truth, truth[[2, 0]])
    # A model that predicts the truth scores 1 against it and the labels' own Dice against the labels.
    summary = segmentation_metrics(truth, loaded)["summary"]
    assert summary["truth_dice_lv_endo"] == summary["truth_dice_mean"] == 1.0
    assert summary["dice_lv_endo"] == pytest.approx(dice_per_image(truth, test.masks)["lv"].mean())
    assert label_noise_dice(loaded)["lv_endo"] == pytest.approx(summary["dice_lv_endo"])
    # Truth of other frames than the test split is refused, naming the fix.
    write_truth(
        [{"id": i, "mask": m} for i, m in zip(test.ids[::-1], truth, strict=True)], truth_file(tmp_path)
    )
    with pytest.raises(SynthechoError, match="prepare"):
        load_real(tmp_path, "test")


def truth_file(run_dir):
    return RunLayout.of(run_dir).test_truth
