"""Downstream baselines: does the synthetic corpus help the models researchers train on echo?

One training loop (`synthecho.fitting`), one augmentation policy (`synthecho.downstream.augment`) and one
data container serve every task (segmentation U-Net, ResNet-18 classifiers, CLIPSeg), so the strategies
differ only in the data they see:

- `real`: the real train split (capped when the study caps real data);
- `synthetic`: the passed synthetic train rows only;
- `pretrain_finetune`: the `synthetic` model of the same seed, fine-tuned on real train;
- `real_plus_synthetic`: both, sampled uniformly from their union (DiffEcho's "Real + synthetic");
- the controls `warped`, `warped_pretrain_finetune` and `real_plus_warped`: the same, with every
  synthetic row replaced by its source real frame and mask warped by that row's `mask_transform`
  (`warped_split`). The rows are paired one to one, so a synthetic strategy minus its control is what
  the generator adds beyond warping the real data it was conditioned on.

Model selection is always on the real validation split and evaluation always on the real test split.
Heavy imports (torch, pyarrow) stay inside functions so `synthecho --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import get_args

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.layout import RunLayout
from synthecho.real import RealSplit
from synthecho.recipe_sections import Strategy

# Report order (the recipe's `Strategy` names, in order): each synthetic strategy beside its control; a
# pretrained model's base trains first.
STRATEGIES: tuple[str, ...] = get_args(Strategy)
CONTROLS = {"synthetic": "warped", "pretrain_finetune": "warped_pretrain_finetune",
            "real_plus_synthetic": "real_plus_warped"}  # fmt: skip
PRETRAINED_ON = {"pretrain_finetune": "synthetic", "warped_pretrain_finetune": "warped"}  # fine-tuned on real
# The corpora each strategy trains on (a fine-tuned strategy: those of its last fit, real).
TRAINED_ON = {
    "real": ("real",),
    "synthetic": ("synthetic",),
    "warped": ("warped",),
    "pretrain_finetune": ("real",),
    "warped_pretrain_finetune": ("real",),
    "real_plus_synthetic": ("real", "synthetic"),
    "real_plus_warped": ("real", "warped"),
}


def corpora_of(strategy: str) -> tuple[str, ...]:
    """Every corpus a strategy's model has seen, pretraining included."""
    return TRAINED_ON[strategy] + ((PRETRAINED_ON[strategy],) if strategy in PRETRAINED_ON else ())


# --- the synthetic corpus ----------------------------------------------------------------------------


def load_corpus(
    run_dir: str | Path, split: str, *, filtered: bool = False
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Decode the passed synthetic rows of `<run>/data/{split}-*-of-*.parquet`.

    No shard at all is an error unless `filtered` says the filter stage has finished (then it kept no
    row: empty arrays).

    Returns (images (N,H,W) uint8, masks (N,H,W) uint8 0..3, records). Records use the same keys as
    `synthecho.real` records (view/phase/sex/image_quality as CAMUS strings, age, shape words, spacing,
    prompt; `patient` is the source patient) so every task reads real and synthetic rows alike, plus the
    provenance `source_id`, `mask_transform` and `mask_source`.
    """
    import pyarrow.parquet as pq

    from synthecho.real import decode_png
    from synthecho.schema import PHASES, QUALITIES, SEXES, VIEWS

    files = RunLayout.of(run_dir).data_files(split)
    if not files and filtered:
        # The filter ran and kept no row of this split: an empty corpus, not a missing one.
        return np.zeros((0, 0, 0), np.uint8), np.zeros((0, 0, 0), np.uint8), []
    if not files:
        raise SynthechoError(
            f"no synthetic {split} rows under {RunLayout.of(run_dir).data} (expected "
            f"{split}-*-of-*.parquet): run `synthecho filter --recipe ...` first, or drop the synthetic "
            f"strategies from evaluate.strategies."
        )
    images, masks, records = [], [], []
    for path in files:
        table = pq.read_table(path)
        for row in table.to_pylist():
            images.append(decode_png(row["image"]["bytes"]))
            masks.append(decode_png(row["mask"]["bytes"]))
            spacing = row.get("spacing_mm") or {}
            records.append(
                {
                    "id": row["id"],
                    "patient": row.get("source_patient"),
                    "view": VIEWS[row["view"]],
                    "phase": PHASES[row["phase"]],
                    "sex": SEXES[row["sex"]],
                    "age": int(row["age"]),
                    "image_quality": QUALITIES[row["image_quality"]],
                    "shape_lv": row.get("shape_lv"),
                    "shape_myo": row.get("shape_myo"),
                    "shape_la": row.get("shape_la"),
                    "spacing_row_mm": float(spacing.get("row") or 1.0),
                    "spacing_col_mm": float(spacing.get("col") or 1.0),
                    "prompt": row.get("prompt", ""),
                    # provenance: what the row's control (`warped_split`) is made from
                    "source_id": row.get("source_id"),
                    "mask_transform": row.get("mask_transform"),
                    "mask_source": row.get("mask_source"),
                }
            )
    if not records:
        return np.zeros((0, 0, 0), np.uint8), np.zeros((0, 0, 0), np.uint8), []
    return np.stack(images), np.stack(masks).astype(np.uint8), records


def corpus_split(
    run_dir: str | Path, split: str, limit: int | None = None, *, filtered: bool = False
) -> RealSplit:
    """`load_corpus` as a RealSplit (sector = non-zero pixels), optionally the first `limit` rows."""
    images, masks, records = load_corpus(run_dir, split, filtered=filtered)
    if limit is not None:
        images, masks, records = images[:limit], masks[:limit], records[:limit]
    return RealSplit(f"synthetic-{split}", records, images, masks, images > 0)


def concat_splits(first: RealSplit, second: RealSplit, name: str) -> RealSplit:
    """Rows of both splits in one container (frames must have the same size)."""
    if first.images.shape[1:] != second.images.shape[1:]:
        raise SynthechoError(
            f"cannot mix frames of size {first.images.shape[1:]} and {second.images.shape[1:]}: the corpus "
            f"and the real data must share prepare.resolution."
        )
    return RealSplit(
        name,
        first.records + second.records,
        np.concatenate([first.images, second.images]),
        np.concatenate([first.masks, second.masks]),
        np.concatenate([first.sectors, second.sectors]),
    )


def warped_split(corpus: RealSplit, real: RealSplit, grid_keys: dict | None = None) -> tuple[RealSplit, dict]:
    """The row-paired control of `corpus`: each row's source frame and mask in `real` (by `source_id`)
    moved together by the row's `mask_transform` (`synthecho.perturb.warp_frame`), the row's record kept.

    `grid_keys`: what the rows do not record of their perturbation (the column count of a non-square
    elastic grid, `PerturbConfig.grid_keys`). Returns (split, pairing): pairing counts the rows whose
    mask came from the conditioning and how many of those the warped mask reproduces pixel for pixel
    (it should be all: the row's mask *is* its source mask under its transform).
    """
    from synthecho.perturb import warp_frame

    where = {record_id: index for index, record_id in enumerate(real.ids)}
    missing = sorted({r["source_id"] for r in corpus.records if r.get("source_id") not in where}, key=str)
    if missing:
        raise SynthechoError(
            f"{len(missing)} synthetic rows name a source_id outside the real {real.split} split (e.g. "
            f"{missing[0]!r}): the warped control needs each row's source frame; evaluate the corpus in the "
            f"run (or cap sub-run) that generated it."
        )
    extra = {k: v for k, v in (grid_keys or {}).items() if k != "elastic_control_points"}
    images, masks, conditioned, reproduced = [], [], 0, 0
    for record, row_mask in zip(corpus.records, corpus.masks, strict=True):
        i = where[record["source_id"]]
        image, mask = warp_frame(
            real.images[i], real.masks[i], real.sectors[i], {**record["mask_transform"], **extra}
        )
        images.append(image)
        masks.append(mask)
        if record.get("mask_source") == "conditioning":
            conditioned += 1
            reproduced += bool(np.array_equal(mask, row_mask))
    records = [{**record, "id": f"warped:{record['id']}"} for record in corpus.records]
    if not records:
        return RealSplit("warped-train"), {"rows": 0, "conditioning_rows": 0, "masks_reproduced": 0}
    sources = [where[r["source_id"]] for r in corpus.records]
    split = RealSplit("warped-train", records, np.stack(images), np.stack(masks), real.sectors[sources])
    return split, {"rows": len(records), "conditioning_rows": conditioned, "masks_reproduced": reproduced}


# --- shared pieces of the tasks --------------------------------------------------------------------


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def epoch_steps(epochs: int | None, rows: int, batch_size: int, steps: int) -> int:
    """Optimizer steps of one fit: `steps`, or with `evaluate.epochs` set, that many passes over `rows`."""
    return steps if epochs is None else epochs * -(-rows // batch_size)


class DownstreamTask:
    """What every downstream task shares: its training budget and the augmentation policy.

    Budgets come from `evaluate.*`, overridden per task (`evaluate.segmentation.steps`, ...). A task adds
    `name`, `new_model(seed)`, `evaluate(model)` and the `synthecho.fitting.Task` protocol
    (`batch_loss`, `validate`); `items(data)` is how many training items a split holds.
    """

    optimizer, weight_decay = "adam", 0.0

    def __init__(self, evaluate_config, task_config, validation: RealSplit, test: RealSplit, device=None):
        from synthecho.downstream.augment import Augmentation

        self.steps = task_config.steps or evaluate_config.steps
        self.finetune_steps = task_config.finetune_steps or evaluate_config.steps
        self.batch_size = task_config.batch_size or evaluate_config.batch_size
        self.learning_rate = task_config.learning_rate or evaluate_config.learning_rate
        self.validate_every = task_config.validate_every or evaluate_config.validate_every
        self.patience = evaluate_config.patience  # in validations: with the task's validate_every
        self.epochs = evaluate_config.epochs
        self.augmentation = Augmentation(evaluate_config.augmentation)
        self.validation, self.test = validation, test
        self.device = device or pick_device()

    def items(self, data: RealSplit) -> int:
        return len(data)

    def budget(self, steps: int, data: RealSplit):
        """The budget of one fit of at most `steps` optimizer steps (or `evaluate.epochs` over `data`)."""
        from synthecho.fitting import Budget

        return Budget(
            max_steps=epoch_steps(self.epochs, self.items(data), self.batch_size, steps),
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            validate_every=self.validate_every,
            patience=self.patience,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
        )

    def budget_settings(self) -> dict:
        """The settings a unit's hash and the report hold about training (every task's own come beside)."""
        return {
            "steps": self.steps,
            "finetune_steps": self.finetune_steps,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "validate_every": self.validate_every,
            "patience": self.patience,
            **({"epochs": self.epochs} if self.epochs is not None else {}),
            "augmentation": self.augmentation.describe(),
        }


def seeded_init(build: Callable, seed: int):
    """Build a model with torch's RNG seeded, leaving the caller's global RNG untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
