"""The conditioning plan: what every generated row will be, decided before any pixel is sampled.

`build_plan(recipe, real_splits)` is a pure function of the recipe and the prepared real records. For
each split in `recipe.generate.splits` it takes the real records (sorted by id, optionally capped), makes
`variants` rows per record, and fixes for every row its global index and id, its source record, its
perturbation parameters, its prompt and attributes, its noise seed, and the batch and shard it belongs to.

Batch boundaries are part of the plan (each shard holds whole batches), so a row's pixels never depend on
how shards are spread over processes or machines: any rank that generates shard i samples exactly the
same batches with exactly the same seeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import groupby

import numpy as np

from synthecho.errors import SynthechoError

# Seeds are stored in an int64 column and fed to torch/numpy generators: keep them non-negative int63.
SEED_MASK = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """A stable seed from `parts` (sha256 of their text, not Python's salted `hash()`)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") & SEED_MASK


@dataclass(frozen=True)
class PlanRow:
    """One planned output row."""

    index: int  # global plan index (over all splits): the published `index` column
    id: str  # f"{recipe}/{split}/{index}"
    split: str
    shard: int  # shard number within the split: shards/raw/{split}-{shard:05d}.parquet
    batch: int  # batch number within the split (a batch never straddles two shards)
    source_index: int  # position of the source record in RealSplit.records (to fetch its mask/sector)
    source_id: str
    source_patient: str
    source_split: str
    variant: int  # 0 .. variants-1
    seed: int  # noise seed of this row (the sampler draws its initial noise from it alone)
    mask_transform: dict = field(hash=False)  # synthecho.perturb.sample_transform parameters
    prompt: str  # image-level prompt of the source record (its attributes are the row's attributes)
    view: str
    phase: str
    sex: str
    age: int
    image_quality: str
    spacing_row_mm: float
    spacing_col_mm: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShardPlan:
    """One output shard: whole batches of consecutive rows of one split."""

    split: str
    number: int  # within the split (file name)
    ordinal: int  # position among all shards of the plan (work is split across processes by this)
    rows: tuple[PlanRow, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.number:05d}"

    @property
    def batches(self) -> list[list[PlanRow]]:
        return [list(rows) for _, rows in groupby(self.rows, key=lambda row: row.batch)]

    def key(self, settings: Mapping | None = None) -> str:
        """Hash of everything that decides this shard's content: its rows plus generation `settings`.

        Stored in the shard's completion marker; a marker whose key differs (recipe or generator changed)
        does not count as done.
        """
        from synthecho.io import sha256_json

        return sha256_json({"rows": [row.to_dict() for row in self.rows], "settings": dict(settings or {})})


def select_records(records: Sequence[dict], cap: int | None) -> list[int]:
    """Indices of the source records: sorted by id, and at most `cap` of them spread evenly over the list.

    An even spread (not the first N) keeps a capped demo representative of all patients, views and phases.
    """
    order = sorted(range(len(records)), key=lambda i: records[i]["id"])
    if cap is None or cap >= len(order):
        return order
    if cap < 1:
        raise SynthechoError(f"generate.max_records_per_split must be >= 1 or null, got {cap}")
    return [order[(k * len(order)) // cap] for k in range(cap)]


def _perturb_config(recipe):
    from synthecho.perturb import PerturbConfig

    return PerturbConfig(**recipe.generate.perturb.model_dump())


def build_plan(recipe, real_splits: Mapping[str, object]) -> list[PlanRow]:
    """Every planned row, in order (a pure function of the recipe and the real records).

    `real_splits` maps split name -> RealSplit (only `.records` is read, so lightweight stand-ins work).
    """
    from synthecho.perturb import sample_transform

    config = recipe.generate
    perturb = _perturb_config(recipe)
    rows: list[PlanRow] = []
    for split in config.splits:
        if split not in real_splits:
            raise SynthechoError(
                f"generate.splits lists {split!r} but no real {split} split was given: "
                f"run `synthecho prepare` (it writes real/{split}.parquet) or remove it from generate.splits."
            )
        records = real_splits[split].records
        selected = select_records(records, config.max_records_per_split)
        if not selected:
            raise SynthechoError(f"real {split} split has no records to condition on (real/{split}.parquet)")
        rows_per_shard = config.batch_size * config.batches_per_shard
        for position, (source_index, variant) in enumerate(
            (i, v) for i in selected for v in range(config.variants)
        ):
            record = records[source_index]
            index = len(rows)
            rows.append(
                PlanRow(
                    index=index,
                    id=f"{recipe.name}/{split}/{index}",
                    split=split,
                    shard=position // rows_per_shard,
                    batch=position // config.batch_size,
                    source_index=source_index,
                    source_id=record["id"],
                    source_patient=record["patient"],
                    source_split=record.get("split") or split,
                    variant=variant,
                    # Separate streams for noise and mask perturbation, so neither correlates with the other.
                    seed=derive_seed("noise", config.seed, index),
                    mask_transform=sample_transform(derive_seed("mask", config.seed, index), perturb),
                    prompt=record["prompt"],
                    view=record["view"],
                    phase=record["phase"],
                    sex=record["sex"],
                    age=int(record["age"]),
                    image_quality=record["image_quality"],
                    spacing_row_mm=float(record["spacing_row_mm"]),
                    spacing_col_mm=float(record["spacing_col_mm"]),
                )
            )
    return rows


def shards_of(plan: Sequence[PlanRow]) -> list[ShardPlan]:
    """Group plan rows into shards, in plan order (ordinal = position in this list)."""
    shards = []
    for (split, number), rows in groupby(plan, key=lambda row: (row.split, row.shard)):
        shards.append(ShardPlan(split=split, number=number, ordinal=len(shards), rows=tuple(rows)))
    return shards


def rows_per_split(plan: Sequence[PlanRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in plan:
        counts[row.split] = counts.get(row.split, 0) + 1
    return counts


def my_shards(shards: Sequence[ShardPlan], shard_index: int, num_shards: int) -> list[ShardPlan]:
    """The shards process `shard_index` of `num_shards` generates: ordinal % num_shards == shard_index."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise SynthechoError(
            f"--shard-index {shard_index} / --num-shards {num_shards}: need num_shards >= 1 and "
            f"0 <= shard_index < num_shards"
        )
    return [shard for shard in shards if shard.ordinal % num_shards == shard_index]


# --- what the sampler is given for a batch of planned rows (generate, regenerate) ---------------------


def conditioning(batch, real) -> tuple[np.ndarray, np.ndarray]:
    """(perturbed masks 0..3, 5-class conditioning maps) of a batch, each (B, H, W) uint8."""
    from synthecho.labels import to_condition_labels
    from synthecho.perturb import apply_transform

    masks, labels = [], []
    for row in batch:
        split = real[row.split]
        sector = split.sectors[row.source_index]
        mask = apply_transform(split.masks[row.source_index], sector, row.mask_transform)
        masks.append(mask)
        labels.append(to_condition_labels(mask, sector))
    return np.stack(masks), np.stack(labels)


ROW_ATTRIBUTES = ("view", "phase", "sex", "age", "image_quality")  # what a class-conditioned sampler gets


def row_attributes(batch) -> list[dict]:
    """The attributes each planned row claims (what a class-conditioned generator is given)."""
    return [{name: getattr(row, name) for name in ROW_ATTRIBUTES} for row in batch]
