"""Downstream baselines: does the synthetic corpus help the models researchers train on echo?

One training loop and one data container serve every task (segmentation U-Net, ResNet-18 classifiers,
CLIPSeg), so the strategies differ only in the data they see:

- `real`: the real train split (capped when the study caps real data);
- `synthetic`: the passed synthetic train rows only;
- `pretrain_finetune`: the `synthetic` model of the same seed, fine-tuned on real train;
- `real_plus_synthetic`: both, sampled uniformly from their union (DiffEcho's "Real + synthetic").

Model selection is always on the real validation split and evaluation always on the real test split.
Heavy imports (torch, pyarrow) stay inside functions so `synthecho --help` stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from synthecho import profiling
from synthecho.errors import SynthechoError
from synthecho.layout import RunLayout
from synthecho.real import RealSplit

STRATEGIES = ("real", "synthetic", "pretrain_finetune", "real_plus_synthetic")

# Intensity augmentation (gain / TGC changes). Geometry is left alone: apical views have a fixed layout.
GAMMA_LOG_RANGE = 0.25
CONTRAST_RANGE = (0.85, 1.15)


# --- the synthetic corpus ----------------------------------------------------------------------------


def load_corpus(
    run_dir: str | Path, split: str, *, filtered: bool = False
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Decode the passed synthetic rows of `<run>/data/{split}-*-of-*.parquet`.

    No shard at all is an error unless `filtered` says the filter stage has finished (then it kept no
    row: empty arrays).

    Returns (images (N,H,W) uint8, masks (N,H,W) uint8 0..3, records). Records use the same keys as
    `synthecho.real` records (view/phase/sex/image_quality as CAMUS strings, age, shape words, spacing,
    prompt; `patient` is the source patient) so every task reads real and synthetic rows alike.
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
            f"no synthetic {split} rows under {RunLayout.of(run_dir).data} (expected {split}-*-of-*.parquet): "
            f"run `synthecho filter --recipe ...` first, or drop the synthetic strategies from evaluate.strategies."
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
            f"cannot mix frames of size {first.images.shape[1:]} and {second.images.shape[1:]}: the corpus and "
            f"the real data must share prepare.resolution."
        )
    return RealSplit(
        name,
        first.records + second.records,
        np.concatenate([first.images, second.images]),
        np.concatenate([first.masks, second.masks]),
        np.concatenate([first.sectors, second.sectors]),
    )


# --- shared training loop ----------------------------------------------------------------------------


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def jitter_intensity(images: np.ndarray, rng: np.random.Generator, gamma_range=None) -> np.ndarray:
    """Gamma and contrast jitter of float frames in [0, 1] (B, H, W); black stays black (multiplicative).

    Gamma is log-uniform in `gamma_range` (low, high), by default e^+-GAMMA_LOG_RANGE.
    """
    count = len(images)
    low, high = (-GAMMA_LOG_RANGE, GAMMA_LOG_RANGE) if gamma_range is None else np.log(gamma_range)
    gamma = np.exp(rng.uniform(low, high, size=(count, 1, 1)))
    contrast = rng.uniform(*CONTRAST_RANGE, size=(count, 1, 1))
    return np.clip(images**gamma * contrast, 0.0, 1.0).astype(np.float32)


def augment(images: np.ndarray, masks: np.ndarray | None, rng: np.random.Generator, config):
    """(frames, label maps) of one training batch under `evaluate.augmentation` (`config`).

    Intensity jitter first (`jitter_intensity`, gamma range from the config), then, when the config asks
    for geometry, one random rotation / shift / zoom per frame about its centre, applied to the frame
    (linear) and its label map (nearest) alike (`synthecho.perturb.affine_warp`). The default config
    draws nothing beyond the jitter: it is exactly the CPU study's augmentation.
    """
    from synthecho.perturb import affine_warp

    images = jitter_intensity(images, rng, config.gamma)
    if not (config.rotation_degrees or config.translate or tuple(config.scale) != (1.0, 1.0)):
        return images, masks
    images, masks = images.copy(), None if masks is None else masks.copy()
    for i in range(len(images)):
        params = {
            "angle": rng.uniform(-config.rotation_degrees, config.rotation_degrees),
            "translate_row": rng.uniform(-config.translate, config.translate),
            "translate_col": rng.uniform(-config.translate, config.translate),
            "scale": rng.uniform(*config.scale),
            "shear": 0.0,
        }
        images[i] = affine_warp(images[i], params, order=1)
        if masks is not None:
            masks[i] = affine_warp(masks[i], params, order=0)
    return images, masks


def epoch_steps(epochs: int | None, rows: int, batch_size: int, steps: int) -> int:
    """Optimizer steps of one fit: `steps`, or with `evaluate.epochs` set, that many passes over `rows`."""
    return steps if epochs is None else epochs * -(-rows // batch_size)


def budget_settings(evaluate_config) -> dict:
    """The settings a task records for `evaluate.epochs` / `evaluate.augmentation` when they are not the
    defaults (so default studies keep their unit hashes and manifests)."""
    settings = {}
    if evaluate_config.epochs is not None:
        settings["epochs"] = evaluate_config.epochs
    if evaluate_config.augmentation != type(evaluate_config.augmentation)():
        settings["augmentation"] = evaluate_config.augmentation.model_dump(mode="json")
    return settings


class EpochSampler:
    """Batches of indices; every item is seen once per epoch, in a fresh seeded order each epoch."""

    def __init__(self, size: int, batch_size: int, rng: np.random.Generator):
        if size == 0:
            raise SynthechoError("cannot train on an empty set of frames")
        self.size, self.batch_size, self.rng = size, batch_size, rng
        self.order, self.cursor = rng.permutation(size), 0

    def next(self) -> np.ndarray:
        batch: list[int] = []
        while len(batch) < self.batch_size:
            if self.cursor == self.size:
                self.order, self.cursor = self.rng.permutation(self.size), 0
            take = self.order[self.cursor : self.cursor + self.batch_size - len(batch)]
            batch.extend(take.tolist())
            self.cursor += len(take)
        return np.asarray(batch)


def fit(
    model,
    *,
    size: int,
    step_loss: Callable,
    score: Callable,
    steps: int,
    batch_size: int,
    learning_rate: float,
    validate_every: int,
    seed: int,
    optimizer: str = "adam",
    validate_at_start: bool = False,
    progress: bool = True,
    desc: str = "train",
) -> dict:
    """Train `model` and keep the weights with the best validation score (higher is better).

    `step_loss(model, indices, rng)` returns the loss tensor of one batch of item indices in [0, size);
    `score(model)` returns the real-validation score, evaluated every `validate_every` steps and at the end
    (and before the first step when `validate_at_start`: fine-tuning then can never end below where the
    pretrained model started). The best weights are loaded back into `model` before returning.
    """
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    sampler = EpochSampler(size, batch_size, rng)
    if optimizer == "adamw":  # Synthetic Boost's CLIPSeg recipe: AdamW, weight decay 1e-3
        opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    history: list[dict] = []
    best_score, best_step, best_state = -float("inf"), 0, None

    def validate(step: int) -> None:
        nonlocal best_score, best_step, best_state
        with profiling.section("downstream/validation"):
            model.eval()
            value = float(score(model))
            history.append({"step": step, "score": value})
            if value > best_score:
                best_score, best_step = value, step
                best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    started = time.perf_counter()
    if validate_at_start:
        validate(0)
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        model.train()
        with profiling.section("downstream/data"):
            indices = sampler.next()
        # The task's step_loss assembles (and jitters) the batch as well: that is counted as forward.
        with profiling.section("downstream/forward"):
            loss = step_loss(model, indices, rng)
        with profiling.section("downstream/backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
        if step % validate_every == 0 or step == steps:
            validate(step)
            bar.set_postfix(
                loss=f"{losses[-1]:.3f}", val=f"{history[-1]['score']:.3f}", best=f"{best_score:.3f}"
            )
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - started
    return {
        "steps": steps,
        "best_step": best_step,
        "validation_score": best_score,
        "final_loss": losses[-1] if losses else None,
        "seconds": round(seconds, 3),
        "history": history,
    }


def seeded_init(build: Callable, seed: int):
    """Build a model with torch's RNG seeded, leaving the caller's global RNG untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
