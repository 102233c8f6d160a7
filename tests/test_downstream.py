"""Downstream baselines at tiny size: every task x strategy, the unit cache, the evaluate stage.

Frames are 16 px drawings where the labels are visible in the pixels (dark LV disc in a bright MYO ring,
dark LA below); the phase changes the LV size and the view adds a bright right-heart blob, so each task
has something to learn. Models are a few channels wide and train for a handful of steps.
"""

import math

import numpy as np
import pytest

from synthecho.downstream import STRATEGIES, corpus_split, load_corpus
from synthecho.downstream.classification import ClassificationTask, labels_of
from synthecho.downstream.clipseg import ClipSegTask, prompt_for, resolve_weights, save_tiny_clipseg
from synthecho.downstream.segmentation import SegmentationTask
from synthecho.downstream.study import aggregate, capped_patients, run_task
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
        intensity = np.choose(mask, [110.0, 30.0, 210.0, 40.0])
        if view == "4CH":
            intensity = np.where((cols > 12) & (rows < 8), 250.0, intensity)
        images[i] = np.clip(intensity + rng.normal(0, 15, size=mask.shape), 1, 255).astype(np.uint8)
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


@pytest.fixture(scope="module")
def splits():
    return {
        "train": make_split("train", 12, 0),
        "synthetic": make_split("synthetic", 16, 1),
        "validation": make_split("validation", 6, 2),
        "test": make_split("test", 8, 3),
    }


def config(**overrides) -> EvaluateConfig:
    return EvaluateConfig(**{**TINY_EVALUATE, **overrides})


def check_units(units, strategies, test_size):
    assert [unit["strategy"] for unit in units] == list(strategies)
    for unit in units:
        assert "skipped" not in unit
        for values in unit["per_image"].values():
            assert len(values) == test_size
    by_strategy = {unit["strategy"]: unit for unit in units}
    # Fine-tuning starts from the synthetic model: its first validation is the synthetic model's best.
    first = by_strategy["pretrain_finetune"]["training"]["history"][0]
    assert first["step"] == 0
    assert first["score"] == pytest.approx(by_strategy["synthetic"]["training"]["validation_score"])
    assert by_strategy["real"]["n_synthetic"] == 0 and by_strategy["synthetic"]["n_real"] == 0
    assert by_strategy["real_plus_synthetic"]["n_real"] == 12
    assert by_strategy["real_plus_synthetic"]["n_synthetic"] == 16
    return by_strategy


def test_segmentation_every_strategy_and_the_unit_cache(splits, tmp_path):
    task = SegmentationTask(config(), splits["validation"], splits["test"], device="cpu")
    units = run_task(task, list(STRATEGIES), [0], splits["train"], splits["synthetic"], {"f": 1}, tmp_path)
    by_strategy = check_units(units, STRATEGIES, 8)
    # Equal budgets: whatever trains on real data runs as many steps as pretrain (steps) + fine-tune.
    budget = {name: by_strategy[name]["training"]["steps"] for name in STRATEGIES}
    assert budget["real"] == budget["real_plus_synthetic"] == task.steps + task.finetune_steps
    assert budget["synthetic"] == task.steps and budget["pretrain_finetune"] == task.finetune_steps
    for unit in units:
        summary = unit["summary"]
        for name in ("lv_endo", "lv_epi", "la"):
            assert 0.0 <= summary[f"dice_{name}"] <= 1.0
            assert 0.0 <= summary[f"hd95_{name}"] <= math.hypot(SIZE * 0.9, SIZE * 0.6) + 1e-9
    # Cached units are read back unchanged, without training.
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    again = run_task(task, list(STRATEGIES), [0], splits["train"], splits["synthetic"], {"f": 1}, tmp_path)
    assert again == units
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == stamps
    # A different synthetic corpus invalidates the synthetic strategies only.
    changed = run_task(
        task, ["real", "synthetic"], [0], splits["train"], splits["synthetic"], {"f": 2}, tmp_path
    )
    assert changed[0] == by_strategy["real"]
    assert changed[1]["input_hash"] != by_strategy["synthetic"]["input_hash"]
    # No passed synthetic rows: the synthetic strategies are skipped with a reason, real still runs.
    empty = splits["synthetic"].subset([])
    skipped = run_task(task, ["real", "synthetic"], [1], splits["train"], empty, {"f": 3}, tmp_path / "empty")
    assert "skipped" not in skipped[0] and "no synthetic train rows" in skipped[1]["skipped"]


def test_segmentation_learns_the_visible_anatomy(splits):
    task = SegmentationTask(
        config(steps=40, validate_every=10, learning_rate=2e-2),
        splits["validation"],
        splits["test"],
        device="cpu",
    )
    untrained = task.evaluate(task.new_model(0))["summary"]["dice_mean"]
    model = task.new_model(0)
    training = task.fit(model, splits["train"], steps=40, seed=0, progress=False)
    trained = task.evaluate(model)["summary"]["dice_mean"]
    assert training["best_step"] > 0
    assert trained > max(0.4, untrained + 0.15), (untrained, trained)


def test_classification_every_strategy(splits, tmp_path):
    # ResNet-18 has 11M parameters whatever the frame size: one task here, `view` in the stage test.
    task = ClassificationTask("phase", config(), splits["validation"], splits["test"], device="cpu")
    units = run_task(task, list(STRATEGIES), [0], splits["train"], splits["synthetic"], None, tmp_path)
    check_units(units, STRATEGIES, 8)
    for unit in units:
        summary = unit["summary"]
        assert sum(map(sum, summary["confusion"])) == 8
        assert summary["accuracy"] == pytest.approx(np.mean(unit["per_image"]["correct"]))
        assert 0.0 <= summary["f1"] <= 1.0
    assert labels_of(splits["test"], "phase").tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert labels_of(splits["test"], "view").tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


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
        units = run_task(
            task, list(STRATEGIES), [0], splits["train"], splits["synthetic"], None, tmp_path / task.name
        )
        check_units(units, STRATEGIES, 8)
        summary = aggregate(task, units, list(STRATEGIES))
        assert set(summary["wilcoxon"]) == {"dice_lv_endo", "dice_lv_epi", "dice_la"}
        assert len(summary["wilcoxon"]["dice_la"]) == 6  # every pair of the 4 strategies


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
                "age": record["age"], "generator": "test", "generator_sha256": "0", "sampler": "ddim", "steps": 1,
                "guidance_scale": 1.0, "seed": 0, "batch_size": 1, "source_id": record["id"],
                "source_patient": record["patient"], "source_split": "train", "variant": 0,
                "mask_transform": {name: None for name in MASK_TRANSFORM_FIELDS},
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
    from synthecho.manifest import read_manifest
    from synthecho.stages import run_stage

    monkeypatch.delenv("SYNTHECHO_CLIPSEG_WEIGHTS", raising=False)

    run_dir = tmp_path / "run"
    for name in ("train", "validation", "test"):
        write_real(run_dir, splits[name])
    write_corpus(run_dir, "train", splits["synthetic"])
    # A phantom's run also holds the clean truth of its test frames (here: the labels, LV one pixel larger).
    truth = phantom_like_truth(splits["test"].masks)
    write_truth(
        [{"id": i, "mask": m} for i, m in zip(splits["test"].ids, truth, strict=True)], truth_file(run_dir)
    )
    recipe = recipe_from_dict(
        {
            "name": "tiny",
            "evaluate": {
                **TINY_EVALUATE,
                "enabled": True,
                "seeds": [0, 1],
                "tasks": ["segmentation", "view", "clipseg"],
            },
        }
    )
    result = run_stage("evaluate", recipe, run_dir, progress=False)
    assert result["tasks"] == ["segmentation", "view"]
    assert "clipseg" in result["skipped_tasks"]  # no local weights configured

    report = (run_dir / "reports" / "downstream.md").read_text()
    for title in STRATEGY_TITLES.values():
        assert f"| {title} |" in report  # every strategy has a row
    assert "synthetic only vs real only" not in report and "real only vs synthetic only" in report
    assert "Skipped: no local CLIPSeg weights" in report
    png = (run_dir / "reports" / "downstream.png").read_bytes()
    assert png.startswith(b"\x89PNG")

    downstream = read_manifest(run_dir)["downstream"]
    segmentation = downstream["caps"]["cap-1"]["tasks"]["segmentation"]
    real = segmentation["strategies"]["real"]["metrics"]["dice_lv_endo"]
    assert len(real["per_seed"]) == 2 and real["mean"] == pytest.approx(np.mean(real["per_seed"]))
    assert len(segmentation["wilcoxon"]["dice_la"]) == 6
    assert "per_image" not in segmentation  # per-image arrays stay in downstream/results.json
    # Dice against the truth beside Dice against the labels, and the labels' own Dice to the truth.
    assert "truth_dice_lv_endo" in segmentation["strategies"]["real"]["metrics"]
    assert "LV endo Dice vs truth %" in report and "against the phantom's rendering truth" in report
    noise = downstream["test"]["labels_vs_truth_dice"]
    assert 0.0 < noise["lv_endo"] < 1.0 and noise["la"] == 1.0
    assert (run_dir / "downstream" / "results.json").is_file()
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
