"""Stage `generate`: plan -> sampler -> raw shards; determinism, datasets decoding, resume after a real kill.

Most tests use `SeededSampler`, a deterministic test double of the Sampler protocol (pixels from the row's
seed and label map), so the plan/writer/resume logic is exercised in seconds; one test runs a tiny trained
SDM end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from synthecho.generators.base import SampleBatch
from synthecho.io import read_json
from synthecho.labels import LA, LV, MYO
from synthecho.manifest import read_manifest
from synthecho.perturb import PARAM_KEYS
from synthecho.plan import build_plan
from synthecho.real import SPLITS, decode_png, encode_png, load_real
from synthecho.recipe import recipe_from_dict
from synthecho.schema import MASK_TRANSFORM_FIELDS, corpus_features
from synthecho.shards import content_hash, marker_path, read_marker, read_shard, verify_shard
from synthecho.stages import generate, invalidate, is_current, run_stage

RES = 16
TESTS_DIR = Path(__file__).resolve().parent


class SeededSampler:
    """Test double of the Sampler protocol: each row's pixels depend only on its seed and label map."""

    kind = "sdm"
    mask_source = "conditioning"
    uses_prompt = True
    conditioned_on = ("label_map", "view", "phase")

    def __init__(self, resolution: int = RES, delay: float = 0.0, nan: bool = False, masks: bool = False):
        self.resolution = resolution
        self.delay = delay  # seconds per batch: makes a run slow enough to kill mid-way
        self.nan = nan  # return float frames with NaNs, as a diverged model would
        self.masks = masks  # also return masks (a "generated" mask source)
        if masks:
            self.mask_source = "generated"
        self.calls = []

    def sample(
        self, labels, prompts, seeds, *, sampler="dpmsolver++", steps=20, guidance_scale=1.0, attributes=None
    ):
        assert attributes is not None and len(attributes) == len(seeds)  # generate passes the plan's
        self.calls.append((len(seeds), sampler, steps, guidance_scale))
        time.sleep(self.delay)
        frames = []
        for label_map, seed in zip(labels, seeds, strict=True):
            noise = np.random.default_rng(seed).integers(0, 40, label_map.shape)
            frames.append(np.where(label_map > 0, 30 * label_map + noise, 0))
        images = np.stack(frames).astype(np.float32 if self.nan else np.uint8)
        if self.nan:
            images[:, 0, :] = np.nan
        masks = (
            np.stack([(np.asarray(lab) >= 2) * 1 for lab in labels]).astype(np.uint8) if self.masks else None
        )
        return SampleBatch(images=images, masks=masks)


# --- tiny prepared real data ------------------------------------------------------------------------------


def frame(patient: int, view: str, phase: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 16 px apical sketch: fan sector, LV ellipse in a myocardium ring, LA below; ES is smaller."""
    rows, cols = np.mgrid[0:RES, 0:RES]
    sector = (rows >= 1) & (np.abs(cols - RES / 2 + 0.5) <= rows * 0.7 + 1)
    shrink = 0.8 if phase == "ES" else 1.0
    cy, cx = RES * 0.4 + patient % 2, RES / 2 + (1 if view == "4CH" else -1)
    distance = ((rows - cy) / (RES * 0.28 * shrink)) ** 2 + ((cols - cx) / (RES * 0.18 * shrink)) ** 2
    mask = np.zeros((RES, RES), np.uint8)
    mask[distance < 1.7] = MYO
    mask[distance < 1] = LV
    mask[rows > RES * 0.8] = LA
    mask[~sector] = 0
    image = np.random.default_rng(patient).integers(60, 200, (RES, RES))
    image[mask == LV] = 10
    return np.where(sector, image, 0).astype(np.uint8), mask, sector


def write_real(run_dir: Path, patients: dict[str, int]) -> None:
    """real/{train,validation,test}.parquet as `prepare` writes them (4 records per patient)."""
    from synthecho.real import write_split

    first = 0
    for split in SPLITS:
        rows = []
        for patient in range(first, first + patients.get(split, 1)):
            for view in ("2CH", "4CH"):
                for phase in ("ED", "ES"):
                    image, mask, sector = frame(patient, view, phase)
                    rows.append(
                        {
                            "id": f"phantom2023/patient{patient:04d}_{view}_{phase}",
                            "patient": f"patient{patient:04d}",
                            "split": split,
                            "view": view,
                            "phase": phase,
                            "sex": "MF"[patient % 2],
                            "age": 30 + patient,
                            "image_quality": ("Good", "Medium", "Poor")[patient % 3],
                            "ef": 55.0,
                            "spacing_row_mm": 9.5,
                            "spacing_col_mm": 8.25,
                            "shape_lv": "oval",
                            "shape_myo": "oval",
                            "shape_la": "rectangle",
                            "prompt": f"apical {view} view in {phase} of patient {patient}",
                            "source_file": f"patient{patient:04d}_{view}_{phase}.nii.gz",
                            "image": encode_png(image),
                            "mask": encode_png(mask, palette=True),
                            "sector": encode_png(sector.astype(np.uint8)),
                        }
                    )
        first += patients.get(split, 1)
        write_split(rows, run_dir / "real" / f"{split}.parquet")


def tiny_recipe(name: str = "tiny", **generate_options):
    options = {"variants": 2, "batch_size": 4, "batches_per_shard": 2, "steps": 2, **generate_options}
    return recipe_from_dict({"name": name, "prepare": {"resolution": RES}, "generate": options})


@pytest.fixture
def real_run(tmp_path):
    run_dir = tmp_path / "run"
    write_real(run_dir, {"train": 3, "validation": 1})
    return run_dir


def all_ids(run_dir: Path) -> list[str]:
    ids = []
    for path in sorted((run_dir / "shards" / "raw").glob("*.parquet")):
        ids += read_shard(path).column("id").to_pylist()
    return ids


def planned_ids(recipe, run_dir: Path) -> list[str]:
    real = {split: load_real(run_dir, split) for split in recipe.generate.splits}
    return [row.id for row in build_plan(recipe, real)]


# --- tests -----------------------------------------------------------------------------------------------


def test_generate_writes_the_planned_rows_and_manifest(real_run):
    recipe = tiny_recipe()
    sampler = SeededSampler()
    info = run_stage("generate", recipe, real_run, sampler=sampler, progress=False)
    assert info["complete"] and info["rows_planned"] == 32 and info["rows_generated"] == 32
    # 12 train records x 2 variants = 24 rows = 3 shards of 2 batches of 4; validation 8 rows = 1 shard.
    names = sorted(p.name for p in (real_run / "shards" / "raw").glob("*.parquet"))
    assert names == [
        "train-00000.parquet",
        "train-00001.parquet",
        "train-00002.parquet",
        "validation-00000.parquet",
    ]
    assert sorted(all_ids(real_run)) == sorted(planned_ids(recipe, real_run))
    assert all(call == (4, "dpmsolver++", 2, 1.0) for call in sampler.calls)

    table = read_shard(real_run / "shards" / "raw" / "train-00000.parquet").to_pylist()
    row = table[0]
    assert row["prompt"].startswith("apical") and row["generator"] == "sdm/concat"
    assert row["mask_source"] == "conditioning" and row["steps"] == 2 and row["batch_size"] == 4
    assert row["spacing_mm"] == {"row": 9.5, "col": 8.25} and row["source_split"] == "train"
    # Every perturbation parameter is stored, so the conditioning mask can be rebuilt from the row alone.
    assert set(row["mask_transform"]) == set(MASK_TRANSFORM_FIELDS) == set(PARAM_KEYS)
    assert row["dice_lv"] is None and row["shape_lv"] in {"oval", "circle", "triangle", "rectangle", "square"}

    manifest = read_manifest(real_run)
    assert (
        manifest["counts"] == {"planned": 32, "generated": 32}
        and manifest["stages"]["generate"]["seconds"] > 0
    )
    assert manifest["generation"]["rows_planned"] == {"train": 24, "validation": 8}
    assert manifest["generation"]["precision"] == "fp32" and manifest["generation"]["device"] == "cpu"
    assert [entry["path"] for entry in manifest["shards"]["raw"]] == [
        f"shards/raw/{n}" for n in names[:3]
    ] + ["shards/raw/validation-00000.parquet"]
    for entry in manifest["shards"]["raw"]:
        marker = read_marker(real_run / entry["path"])
        assert entry["content_hash"] == marker["content_hash"] and entry["sha256"] == marker["sha256"]
    assert manifest["environment"]["pyarrow"] and manifest["recipe_sha256"] == recipe.content_hash()
    assert is_current(recipe, real_run, "generate")
    assert run_stage("generate", recipe, real_run, sampler=sampler, progress=False)["skipped"]


def test_same_recipe_and_seed_give_identical_content_and_datasets_loads_it(tmp_path):
    from datasets import ClassLabel, load_dataset
    from PIL import Image

    hashes = []
    for attempt in ("a", "b"):
        run_dir = tmp_path / attempt
        write_real(run_dir, {"train": 2, "validation": 1})
        run_stage("generate", tiny_recipe(), run_dir, sampler=SeededSampler(), progress=False)
        hashes.append([entry["content_hash"] for entry in read_manifest(run_dir)["shards"]["raw"]])
    assert hashes[0] == hashes[1] and len(set(hashes[0])) == len(hashes[0])

    files = sorted(str(p) for p in (tmp_path / "a" / "shards" / "raw").glob("train-*.parquet"))
    dataset = load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.features == corpus_features()
    assert all(isinstance(dataset.features[n], ClassLabel) for n in ("view", "phase", "sex", "image_quality"))
    row = dataset[5]
    assert isinstance(row["image"], Image.Image) and isinstance(row["mask"], Image.Image)
    assert row["image"].size == (RES, RES) and set(np.unique(np.asarray(row["mask"]))) <= {0, 1, 2, 3}
    assert isinstance(row["mask_transform"]["angle"], float) and isinstance(row["spacing_mm"]["row"], float)

    other = tmp_path / "c"
    write_real(other, {"train": 2, "validation": 1})
    run_stage("generate", tiny_recipe(seed=1), other, sampler=SeededSampler(), progress=False)
    assert [e["content_hash"] for e in read_manifest(other)["shards"]["raw"]] != hashes[0]


def test_shards_split_over_workers_match_a_single_worker(tmp_path):
    single, split = tmp_path / "single", tmp_path / "split"
    for run_dir in (single, split):
        write_real(run_dir, {"train": 3, "validation": 1})
    run_stage("generate", tiny_recipe(), single, sampler=SeededSampler(), progress=False)

    first = run_stage(
        "generate", tiny_recipe(), split, sampler=SeededSampler(), progress=False, shard_index=1, num_shards=3
    )
    assert not first["complete"] and first["shards_written"] == 1 and read_manifest(split) == {}
    for index in (0, 2):
        last = run_stage(
            "generate",
            tiny_recipe(),
            split,
            sampler=SeededSampler(),
            progress=False,
            shard_index=index,
            num_shards=3,
        )
    assert last["complete"]
    assert read_manifest(split)["shards"]["raw"] == read_manifest(single)["shards"]["raw"]


def test_resume_redoes_only_damaged_or_unmarked_shards(real_run):
    recipe = tiny_recipe()
    run_stage("generate", recipe, real_run, sampler=SeededSampler(), progress=False)
    raw = real_run / "shards" / "raw"
    before = {p.name: p.stat().st_mtime_ns for p in raw.glob("*.parquet")}
    marker_path(raw / "train-00001.parquet").unlink()  # crashed before its marker
    damaged = raw / "validation-00000.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-10])  # truncated file, marker intact
    invalidate(real_run, "generate")

    info = run_stage("generate", recipe, real_run, sampler=SeededSampler(), progress=False)
    assert info["shards_written"] == 2 and info["shards_already_done"] == 2 and info["complete"]
    after = {p.name: p.stat().st_mtime_ns for p in raw.glob("*.parquet")}
    assert after["train-00000.parquet"] == before["train-00000.parquet"]
    assert after["train-00001.parquet"] != before["train-00001.parquet"]
    assert all(verify_shard(p) for p in raw.glob("*.parquet"))

    # A changed generation setting changes every shard's key: nothing stale is reused.
    changed = run_stage("generate", tiny_recipe(steps=3), real_run, sampler=SeededSampler(), progress=False)
    assert changed["shards_written"] == 4


def test_killed_run_resumes_to_exactly_the_planned_rows(tmp_path):
    run_dir = tmp_path / "run"
    write_real(run_dir, {"train": 3, "validation": 1})
    script = tmp_path / "generate_slowly.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(TESTS_DIR)!r})
            from pathlib import Path
            from test_generate import SeededSampler, tiny_recipe
            from synthecho.stages import run_stage
            run_stage("generate", tiny_recipe(), Path({str(run_dir)!r}), sampler=SeededSampler(delay=0.4), progress=False)
            """  # noqa: E501
        )
    )
    process = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "TQDM_DISABLE": "1"})
    raw = run_dir / "shards" / "raw"
    deadline = time.time() + 120
    while not list(raw.glob(".markers/*.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "generate finished (or crashed) before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    markers = list(raw.glob(".markers/*.json"))
    assert 1 <= len(markers) < 4 and not (run_dir / "manifest.json").exists()

    info = run_stage("generate", tiny_recipe(), run_dir, sampler=SeededSampler(), progress=False)
    assert info["complete"] and info["shards_already_done"] == len(markers)
    ids = all_ids(run_dir)
    assert Counter(ids) == Counter(planned_ids(tiny_recipe(), run_dir))  # none missing, none twice
    shards = sorted(raw.glob("*.parquet"))
    assert all(verify_shard(p) for p in shards)
    assert not list(raw.glob(".*.tmp"))  # the killed writer's temp file was cleared

    clean = tmp_path / "clean"
    write_real(clean, {"train": 3, "validation": 1})
    run_stage("generate", tiny_recipe(), clean, sampler=SeededSampler(), progress=False)
    assert [content_hash(read_shard(p)) for p in shards] == [
        e["content_hash"] for e in read_manifest(clean)["shards"]["raw"]
    ]


def test_degenerate_outputs_are_written_and_generated_masks_used(tmp_path):
    run_dir = tmp_path / "nan"
    write_real(run_dir, {"train": 1, "validation": 1})
    recipe = tiny_recipe(splits=["train"], variants=1)
    run_stage("generate", recipe, run_dir, sampler=SeededSampler(nan=True, masks=True), progress=False)
    table = read_shard(run_dir / "shards" / "raw" / "train-00000.parquet")
    image = decode_png(table.column("image")[0].as_py()["bytes"])
    mask = decode_png(table.column("mask")[0].as_py()["bytes"])
    assert (image[0] == 0).all()  # NaN row -> 0, not a crash
    assert set(np.unique(mask)) <= {0, 1} and table.column("mask_source")[0].as_py() == "generated"


def test_worker_slot_and_precision():
    assert generate.worker_slot(2, 5)[:2] == (2, 5)
    with pytest.raises(Exception, match="both"):
        generate.worker_slot(1, None)
    assert generate.resolve_precision("auto", "cpu")[0] == "fp32"
    assert generate.resolve_precision("auto", "cuda:0")[0] == "bf16"
    assert generate.as_uint8(np.array([np.nan, -5.0, 300.0, 7.4]), 255).tolist() == [0, 0, 255, 7]


def test_tiny_trained_sdm_end_to_end(real_run):
    """The real generator: a tiny SDM trained for 2 steps, loaded from <run>/generator by `generate`."""
    import torch

    from synthecho.generators import sdm
    from synthecho.io import sha256_model_folder

    torch.set_num_threads(2)
    recipe = recipe_from_dict(
        {
            "name": "tiny-sdm",
            "prepare": {"resolution": RES},
            "generator": {
                "kind": "sdm",
                "channels": [8, 16],
                "attention": [False, True],
                "num_head_channels": 8,
            },
            "train": {"steps": 2, "batch_size": 2, "grid_sampler_steps": 1},
            "generate": {
                "variants": 1,
                "batch_size": 4,
                "batches_per_shard": 2,
                "steps": 2,
                "max_records_per_split": 4,
            },
        }
    )
    sdm.train(recipe, load_real(real_run, "train"), real_run / "generator", progress=False)
    info = run_stage("generate", recipe, real_run, progress=False)
    assert info["complete"] and info["rows_generated"] == 8
    rows = read_shard(real_run / "shards" / "raw" / "train-00000.parquet").to_pylist()
    assert rows[0]["prompt"] == ""  # the SDM sees only the label map
    assert rows[0]["generator"] == "sdm/concat"
    assert rows[0]["generator_sha256"] == sha256_model_folder(real_run / "generator")
    assert read_json(real_run / "stages" / "generate.json")["info"]["rows_generated"] == 8


def test_segmenter_supplies_masks_when_the_generator_makes_none(real_run):
    from synthecho.recipe import SegmenterConfig
    from synthecho.segmenter import load_segmenter, train_segmenter

    config = SegmenterConfig(channels=[4, 8], strides=[2], steps=2, batch_size=2, validate_every=1)
    train_segmenter(
        config,
        load_real(real_run, "train"),
        load_real(real_run, "validation"),
        real_run / "segmenter",
        progress=False,
    )
    sampler = SeededSampler()
    sampler.mask_source = "segmenter"
    recipe = tiny_recipe(splits=["train"], variants=1, max_records_per_split=4)
    run_stage("generate", recipe, real_run, sampler=sampler, progress=False)
    table = read_shard(real_run / "shards" / "raw" / "train-00000.parquet")
    images = np.stack([decode_png(cell["bytes"]) for cell in table.column("image").to_pylist()])
    masks = np.stack([decode_png(cell["bytes"]) for cell in table.column("mask").to_pylist()])
    assert np.array_equal(masks, load_segmenter(real_run / "segmenter").predict(images))
    assert set(table.column("mask_source").to_pylist()) == {"segmenter"}


def test_launcher_ranks_split_the_shards(tmp_path):
    """Under `accelerate launch` / torchrun each rank takes its own shards (here 2 CPU ranks, gloo)."""
    run_dir = tmp_path / "run"
    write_real(run_dir, {"train": 3, "validation": 1})
    script = tmp_path / "rank.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            sys.path.insert(0, {str(TESTS_DIR)!r})
            from pathlib import Path
            from test_generate import SeededSampler, tiny_recipe
            from synthecho.stages import run_stage
            info = run_stage("generate", tiny_recipe(), Path({str(run_dir)!r}), sampler=SeededSampler(), progress=False)
            print("INFO " + json.dumps(info), flush=True)
            """  # noqa: E501
        )
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    infos = [json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("INFO ")]
    assert sorted((info["shard_index"], info["num_shards"]) for info in infos) == [(0, 2), (1, 2)]
    assert sum(info["shards_written"] for info in infos) == 4  # every shard once, none twice
    assert read_manifest(run_dir)["generation"]["workers"] == 2
    assert Counter(all_ids(run_dir)) == Counter(planned_ids(tiny_recipe(), run_dir))
