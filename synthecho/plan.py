"""The conditioning plan: what every generated row will be, decided before any pixel is sampled.

`build_plan(recipe, real_splits)` is a pure function of the recipe and the prepared real records. For
each split in `recipe.generate.splits` it takes the real records (sorted by id, optionally capped), makes
`variants` rows per record, and fixes for every row its global index and id, its source record, its
perturbation parameters, its prompt and attributes, its noise seed, and the batch and shard it belongs to.
The perturbation is drawn under the recipe's `generate.perturb.phase_policy` (`PhasePreserver`: under
`preserve` a row's conditioning mask keeps the phase cues of the phase it claims).

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
    # generate.perturb.phase_policy the mask_transform was drawn under (PHASE_POLICIES).
    phase_policy: str = "echo_from_noise"

    def to_dict(self) -> dict:
        # Echo from noise's policy is left out, so a plan drawn under it hashes as every plan did before
        # the policy existed (the committed corpora's plan_sha256 still matches).
        values = asdict(self)
        if values["phase_policy"] == "echo_from_noise":
            del values["phase_policy"]
        return values


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


def perturb_config(recipe):
    """The recipe's perturbation ranges (generate.perturb without the phase policy)."""
    from synthecho.perturb import PerturbConfig

    return PerturbConfig(**recipe.generate.perturb.model_dump(exclude={"phase_policy"}))


# --- the phase policy: conditioning masks that still show the phase their row claims -----------------

PHASE_POLICIES = ("preserve", "echo_from_noise")
# Under `preserve` the cavity area may move this fraction of the way from the claimed phase's value towards
# the other phase's (0.5 would be the midpoint): the rest is left for what the elastic field and the
# sector clip add to the scale's change.
PHASE_AREA_MARGIN = 0.35
PHASE_REDRAWS = 8  # fresh draws of a row's perturbation before its elastic field is dropped
# Masks larger than this are checked on a strided copy: the warp is resolution-free (fractions of the
# side) and a 64 px check costs ~2 ms a row, so a 9k plan stays a matter of seconds.
PHASE_CHECK_SIZE = 64


def phase_cues(mask: np.ndarray) -> tuple[float, float]:
    """(LV cavity area fraction, LV cavity / LV epicardium area ratio) of a 0..3 mask; the ratio is
    NaN without LV. The ratio does not change with scale: it measures the wall against the cavity."""
    from synthecho.labels import LV, MYO

    cavity, wall = int(np.count_nonzero(mask == LV)), int(np.count_nonzero(mask == MYO))
    return cavity / mask.size, (cavity / (cavity + wall) if cavity + wall else float("nan"))


def closer_to_claimed(value: float, claimed: float, other: float) -> bool:
    """True when `value` is strictly closer to the claimed phase's value than to the other phase's."""
    return bool(abs(value - claimed) < abs(value - other))


def other_phase_index(records: Sequence[dict]) -> list[int | None]:
    """Per record, the index of the same patient's and view's record at the other phase (None if absent)."""
    by_key = {(r["patient"], r["view"], r["phase"]): i for i, r in enumerate(records)}
    flip = {"ED": "ES", "ES": "ED"}
    return [by_key.get((r["patient"], r["view"], flip.get(r["phase"]))) for r in records]


class PhasePreserver:
    """`mask_transform` draws of one real split's records under the `preserve` phase policy.

    Why: Echo from noise's scale range (0.8-1.05) changes the LV cavity area as much as ED -> ES does, and
    its elastic field (30 px at 256 px) thickens or thins the wall as much as the cycle does, so an ED mask
    can come out looking like an ES one, which a generator then draws (and a reader reads) as ES. Under
    `preserve` a row keeps the seed's ranges except where they would cross to the other phase:

    1. its scale is drawn in the seed's range intersected with the interval that keeps the cavity area
       (which scales with scale**2) short of PHASE_AREA_MARGIN of the way to the source patient's own
       area at the other phase (same patient and view, both in the real split);
    2. the perturbed mask is checked: its cavity area and its cavity / epicardium ratio must each be closer
       to the source patient's own value at the claimed phase than at the other phase. A failing draw is
       redrawn (mask seed ("mask", seed, index, attempt)) up to PHASE_REDRAWS times; then the last draw
       is kept without its elastic field (affine only).

    The first draw is Echo from noise's, so a row that passes at once differs from it in the scale alone.
    A record whose other phase is not in the split keeps Echo from noise's draw.
    """

    def __init__(self, split, config, name: str):
        masks, sectors = getattr(split, "masks", None), getattr(split, "sectors", None)
        if masks is None or sectors is None or len(masks) != len(split.records):
            raise SynthechoError(
                f"generate.perturb.phase_policy 'preserve' reads the masks of real/{name}.parquet, but the "
                f"split given has none: pass a loaded RealSplit, or set phase_policy: echo_from_noise."
            )
        self.config = config
        step = max(1, masks.shape[1] // PHASE_CHECK_SIZE) if masks.ndim == 3 else 1
        self.masks, self.sectors = masks[:, ::step, ::step], sectors[:, ::step, ::step]
        self.cues = [phase_cues(mask) for mask in self.masks]
        self.other = other_phase_index(split.records)

    def _draw(self, seed: int, index: int, attempt: int) -> dict:
        from synthecho.perturb import sample_transform

        parts = ("mask", seed, index) if attempt == 0 else ("mask", seed, index, attempt)
        return sample_transform(derive_seed(*parts), self.config)

    def scale_bounds(self, claimed_area: float, other_area: float) -> tuple[float, float]:
        """Scales that keep scale**2 x the claimed cavity area on the claimed side of the margin."""
        if claimed_area <= 0 or claimed_area == other_area:
            return 0.0, float("inf")
        limit = float(
            np.sqrt((claimed_area + PHASE_AREA_MARGIN * (other_area - claimed_area)) / claimed_area)
        )
        return (limit, float("inf")) if other_area < claimed_area else (0.0, limit)

    def keeps_phase(self, params: dict, source_index: int) -> bool:
        from synthecho.perturb import apply_transform

        claimed, other = self.cues[source_index], self.cues[self.other[source_index]]
        area, ratio = phase_cues(
            apply_transform(self.masks[source_index], self.sectors[source_index], params)
        )
        return closer_to_claimed(area, claimed[0], other[0]) and closer_to_claimed(
            ratio, claimed[1], other[1]
        )

    def transform(self, source_index: int, seed: int, index: int) -> dict:
        from synthecho.perturb import restrict_scale

        if self.other[source_index] is None:
            return self._draw(seed, index, 0)
        low, high = self.scale_bounds(self.cues[source_index][0], self.cues[self.other[source_index]][0])
        for attempt in range(PHASE_REDRAWS + 1):
            params = restrict_scale(self._draw(seed, index, attempt), self.config, low, high)
            if self.keeps_phase(params, source_index):
                return params
        return {**params, "elastic_max_displacement": 0.0}


def build_plan(recipe, real_splits: Mapping[str, object], phase_policy: str | None = None) -> list[PlanRow]:
    """Every planned row, in order (a pure function of the recipe and the real records).

    `real_splits` maps split name -> RealSplit. Under `echo_from_noise` only `.records` is read, so
    lightweight stand-ins work; `preserve` also reads `.masks` and `.sectors` (`PhasePreserver`).
    `phase_policy` overrides generate.perturb.phase_policy (the filter measures the other policy's plan).
    """
    from synthecho.perturb import sample_transform

    config = recipe.generate
    perturb = perturb_config(recipe)
    policy = phase_policy or config.perturb.phase_policy
    if policy not in PHASE_POLICIES:
        raise SynthechoError(f"generate.perturb.phase_policy must be one of {PHASE_POLICIES}, got {policy!r}")
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
        preserver = PhasePreserver(real_splits[split], perturb, split) if policy == "preserve" else None
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
                    mask_transform=(
                        sample_transform(derive_seed("mask", config.seed, index), perturb)
                        if preserver is None
                        else preserver.transform(source_index, config.seed, index)
                    ),
                    prompt=record["prompt"],
                    view=record["view"],
                    phase=record["phase"],
                    sex=record["sex"],
                    age=int(record["age"]),
                    image_quality=record["image_quality"],
                    spacing_row_mm=float(record["spacing_row_mm"]),
                    spacing_col_mm=float(record["spacing_col_mm"]),
                    phase_policy=policy,
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
