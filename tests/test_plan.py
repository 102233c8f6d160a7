"""The conditioning plan: arithmetic of the 9k recipes, purity, batch/shard boundaries, work split."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from synthecho.errors import SynthechoError
from synthecho.perturb import PerturbConfig, sample_transform
from synthecho.plan import build_plan, derive_seed, my_shards, rows_per_split, select_records, shards_of
from synthecho.real import RealSplit
from synthecho.recipe import recipe_from_dict


def fake_split(split: str, patients: int, first_patient: int = 0) -> RealSplit:
    """Records only (no pixels): 4 per patient (2CH/4CH x ED/ES), as CAMUS."""
    records = []
    for p in range(first_patient, first_patient + patients):
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                records.append(
                    {
                        "id": f"camus2023/patient{p:04d}_{view}_{phase}",
                        "patient": f"patient{p:04d}",
                        "split": split,
                        "view": view,
                        "phase": phase,
                        "sex": "F" if p % 2 else "M",
                        "age": 40 + p % 50,
                        "image_quality": ("Good", "Medium", "Poor")[p % 3],
                        "spacing_row_mm": 0.6,
                        "spacing_col_mm": 0.7,
                        "prompt": f"{view} {phase} prompt of patient {p}",
                    }
                )
    return RealSplit(split, records)


def recipe(**generate):
    # Records-only stand-ins (no pixels): Echo from noise's policy; `preserve` reads masks (test_quality).
    generate.setdefault("perturb", {"phase_policy": "echo_from_noise"})
    return recipe_from_dict({"name": "camus-synth-9k", "generate": generate})


REAL_9K = {"train": fake_split("train", 400), "validation": fake_split("validation", 50, first_patient=400)}


def test_9k_recipe_arithmetic_and_boundaries():
    plan = build_plan(recipe(variants=5, batch_size=8, batches_per_shard=12), REAL_9K)
    assert rows_per_split(plan) == {"train": 8000, "validation": 1000}
    assert [row.index for row in plan] == list(range(9000))
    assert len({row.id for row in plan}) == 9000
    assert plan[0].id == "camus-synth-9k/train/0" and plan[8000].id == "camus-synth-9k/validation/8000"
    # Every real mask gives exactly 5 variants, 0..4.
    variants = Counter((row.source_id, row.variant) for row in plan)
    assert set(variants.values()) == {1}
    assert Counter(row.source_id for row in plan).most_common()[-1][1] == 5

    shards = shards_of(plan)
    assert sum(len(shard.rows) for shard in shards) == 9000
    for shard in shards:
        batches = shard.batches
        assert {row.split for row in shard.rows} == {shard.split}
        assert all(len(batch) == 8 for batch in batches[:-1])
        # A batch never straddles shards: each batch number lives in exactly one shard.
    batch_homes = Counter((row.split, row.batch, row.shard) for row in plan)
    assert len({(split, batch) for split, batch, _ in batch_homes}) == len(batch_homes)
    train_shards = [shard for shard in shards if shard.split == "train"]
    assert len(train_shards) == -(-8000 // 96) and len(train_shards[0].rows) == 96
    assert [shard.number for shard in train_shards] == list(range(len(train_shards)))
    assert [shard.ordinal for shard in shards] == list(range(len(shards)))


def test_plan_is_a_pure_function_of_recipe_and_records():
    shuffled = {}
    for split, real in REAL_9K.items():
        records = list(real.records)
        random.Random(1).shuffle(records)
        shuffled[split] = RealSplit(split, records)
    first = build_plan(recipe(max_records_per_split=50), REAL_9K)
    again = build_plan(recipe(max_records_per_split=50), REAL_9K)
    reordered = build_plan(recipe(max_records_per_split=50), shuffled)
    assert first == again
    # Input order does not matter: records are sorted by id (only the positions in the input differ).
    strip = lambda rows: [{**row.to_dict(), "source_index": None} for row in rows]  # noqa: E731
    assert strip(first) == strip(reordered)
    other_seed = build_plan(recipe(max_records_per_split=50, seed=1), REAL_9K)
    assert [row.seed for row in other_seed] != [row.seed for row in first]


def test_row_provenance_seeds_and_perturbation():
    plan = build_plan(recipe(max_records_per_split=20, variants=3), REAL_9K)
    # Stable across interpreters (no salted hash()): a regression value.
    assert derive_seed("noise", 0, 0) == plan[0].seed == 1622396166914357206
    assert len({row.seed for row in plan}) == len(plan)
    row = plan[7]
    params = sample_transform(derive_seed("mask", 0, row.index), PerturbConfig())
    assert row.mask_transform == params and not params["identity"]
    assert row.mask_transform != plan[6].mask_transform  # variants of one mask differ
    source = next(r for r in REAL_9K[row.split].records if r["id"] == row.source_id)
    assert (row.prompt, row.view, row.phase, row.sex, row.age) == (
        source["prompt"],
        source["view"],
        source["phase"],
        source["sex"],
        source["age"],
    )
    assert row.source_patient == source["patient"] and row.source_split == "train"


def test_capped_records_spread_over_patients():
    records = REAL_9K["train"].records
    chosen = select_records(records, 10)
    assert len(chosen) == len(set(chosen)) == 10
    assert len({records[i]["patient"] for i in chosen}) == 10  # not the first 10 records (3 patients)
    assert select_records(records, None) == sorted(range(len(records)), key=lambda i: records[i]["id"])
    with pytest.raises(SynthechoError):
        select_records(records, 0)


def test_work_split_covers_every_shard_once():
    shards = shards_of(build_plan(recipe(max_records_per_split=40, batches_per_shard=2), REAL_9K))
    for workers in (1, 3, 4):
        taken = [shard.ordinal for index in range(workers) for shard in my_shards(shards, index, workers)]
        assert sorted(taken) == list(range(len(shards)))
    with pytest.raises(SynthechoError):
        my_shards(shards, 2, 2)


def test_missing_real_split_is_a_clear_error():
    with pytest.raises(SynthechoError, match="validation"):
        build_plan(recipe(), {"train": REAL_9K["train"]})
