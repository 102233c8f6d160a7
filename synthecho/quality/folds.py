"""Patient-grouped cross-validation of the attribute classifiers (`quality.attributes`): the folds, the
judge made of the fold models, and the fits run in worker processes.

A fold holds whole patients, so every accuracy measured here is out-of-patient; the filter trains its own
classifier's folds, its final classifier and the judge's folds in one `fit_classifiers` call, so both
cores stay busy to the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.quality.attributes import (
    ARCHITECTURES,
    FOLDS,
    Architecture,
    AttributeClassifier,
    class_targets,
    fit_classifier,
    phase_free,
    proportion,
)
from synthecho.real import RealSplit
from synthecho.schema import PHASES, VIEWS


def pooled(*splits: RealSplit) -> RealSplit:
    """Several real splits as one (train + validation: every frame a row can come from)."""
    return RealSplit(
        "+".join(split.split for split in splits),
        [record for split in splits for record in split.records],
        np.concatenate([split.images for split in splits]),
        np.concatenate([split.masks for split in splits]),
        np.concatenate([split.sectors for split in splits]),
    )


def patient_folds(records: list[dict], folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold (0..folds-1): patients shuffled with `seed`, then dealt out in turn.

    Whole patients go to one fold, so no fold model has seen a frame of a patient it is tested on. Plain
    shuffled groups suffice (no stratification): every CAMUS patient contributes all four view x phase
    frames, so each fold is balanced by construction.
    """
    patients = sorted({record["patient"] for record in records})
    if len(patients) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs >= {folds} patients, got {len(patients)}")
    if folds < 2:
        raise ValueError("cross-validation needs >= 2 folds")
    order = np.random.default_rng(seed).permutation(len(patients))
    return {patients[p]: rank % folds for rank, p in enumerate(order)}


class AttributeJudge:
    """K fold models; a frame is judged by the model that never saw its patient (`predict`)."""

    def __init__(self, models: list[AttributeClassifier], fold_of: dict[str, int]):
        self.models = models
        self.fold_of = fold_of

    def predict(self, images: np.ndarray, patients: list[str]) -> dict[str, np.ndarray]:
        """{"view", "phase"}: (N,) str arrays, each frame predicted by its patient's held-out model."""
        unknown = sorted({p for p in patients if p not in self.fold_of})
        if unknown:
            raise ValueError(f"patients {unknown[:3]} are in no fold of the judge (not train/validation)")
        folds = np.array([self.fold_of[p] for p in patients], dtype=np.int64)
        out = {"view": np.empty(len(images), dtype=object), "phase": np.empty(len(images), dtype=object)}
        for fold, model in enumerate(self.models):
            where = np.flatnonzero(folds == fold)
            if len(where):
                predicted = model.predict(images[where])
                for name in out:
                    out[name][where] = predicted[name]
        return {name: values.astype(str) for name, values in out.items()}

    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256("".join(model.sha256() for model in self.models).encode()).hexdigest()


@dataclass(frozen=True)
class Fit:
    """One `fit_classifier` call, to be run with others (`fit_classifiers`): its frames and options."""

    split: RealSplit
    options: dict


def _run_fit(fit: Fit) -> AttributeClassifier:
    return fit_classifier(fit.split, **{**fit.options, "progress": False})


def fit_classifiers(fits: list[Fit], progress: bool = True) -> list[AttributeClassifier]:
    """Several `fit_classifier` calls, one worker process per core (`synthecho.parallel.ordered_map`).

    Each call is single-threaded and seeded by its own options, so the weights are those of the calls
    made one by one in this process (tested); on 2 cores the filter's 11 fits take ~half the time.
    """
    from tqdm.auto import tqdm

    from synthecho.parallel import ordered_map

    bar = tqdm(ordered_map(_run_fit, fits), total=len(fits), desc="attribute classifiers", unit="model",
               disable=not progress)  # fmt: skip
    return list(bar)


@dataclass(frozen=True)
class FoldPlan:
    """Patient-grouped K-fold cross-validation before training: the folds and a `Fit` per fold model."""

    real: RealSplit
    fold_of: dict[str, int]
    fold_seed: int
    fits: list[Fit]

    def result(self, models: list[AttributeClassifier]) -> tuple[AttributeJudge, dict]:
        """The fold models (as an `AttributeJudge`) and the pooled out-of-fold accuracy on the frames
        ({"view"|"phase": proportion(...), "folds", "patients", "fold_seed", "frames"})."""
        real = self.real
        judge = AttributeJudge(models, self.fold_of)
        predicted = judge.predict(real.images, [record["patient"] for record in real.records])
        views, phases = class_targets(real.records)
        return judge, {
            "view": proportion(int(np.sum(predicted["view"] == np.array(VIEWS)[views])), len(real)),
            "phase": proportion(int(np.sum(predicted["phase"] == np.array(PHASES)[phases])), len(real)),
            "folds": len(models),
            "patients": len(self.fold_of),
            "fold_seed": self.fold_seed,
            "frames": real.split,
        }


def plan_folds(
    real: RealSplit, architecture: Architecture, *, folds: int = FOLDS, fold_seed: int, **options
) -> FoldPlan:
    """The folds of `real` by patient and the fit of each fold model (trained on the other folds, with
    `options` for `fit_classifier`). With fewer patients than `folds`, one fold per patient."""
    patients = len({record["patient"] for record in real.records})
    if patients < 2:
        raise SynthechoError(
            f"the attribute classifiers are cross-validated by patient, but real {real.split} has {patients} "
            f"patient(s): prepare a source with >= 2 train + validation patients."
        )
    folds = min(folds, patients)
    fold_of = patient_folds(real.records, folds, fold_seed)
    record_folds = np.array([fold_of[record["patient"]] for record in real.records])
    fits = [
        Fit(real.subset(np.flatnonzero(record_folds != fold)), {**options, "architecture": architecture})
        for fold in range(folds)
    ]
    return FoldPlan(real, fold_of, fold_seed, fits)


def cross_validate(
    real: RealSplit, architecture: Architecture, *, folds: int = FOLDS, fold_seed: int, **options
) -> tuple[AttributeJudge, dict]:
    """Patient-grouped K-fold cross-validation (`plan_folds`, then its fits): the fold models as an
    `AttributeJudge` and their pooled out-of-fold accuracy on `real`."""
    plan = plan_folds(real, architecture, folds=folds, fold_seed=fold_seed, **options)
    return plan.result(fit_classifiers(plan.fits, progress=options.get("progress", True)))


def judge_steps(recipe) -> int:
    """The judge's training budget: `filter.judge_steps`, or the filter classifier's when unset."""
    return recipe.filter.judge_steps or recipe.filter.attribute_steps


def training_augmentation(recipe) -> dict:
    """fit_classifier's `augment` (the recipe's perturbation, phase-free), `view_augment` (the whole
    perturbation, with filter.attribute_view_perturbation "recipe") and `copies`
    (filter.attribute_copies), and "description", a sentence saying what they are."""
    from synthecho.plan import perturb_config

    config, copies = perturb_config(recipe), recipe.filter.attribute_copies
    whole = recipe.filter.attribute_view_perturbation == "recipe"
    said = f"{copies} copies of each frame under rotation, shift and shear (no scale, no elastic)"
    if whole:
        said += f"; the view head also on {copies} copies under the whole perturbation"
    return {"augment": phase_free(config), "view_augment": config if whole else None, "copies": copies,
            "description": said}  # fmt: skip


def plan_judge(recipe, frames: RealSplit) -> FoldPlan:
    """The independent judge of `recipe`'s rows, before training, on `frames` (real train +
    validation): the judge architecture with seed and fold seed recipe.seed + 1 (the filter's
    classifier has recipe.seed), its own budget (`judge_steps`) and the filter's augmentation."""
    augmentation = training_augmentation(recipe)
    seed = recipe.seed + 1
    return plan_folds(frames, ARCHITECTURES["judge"], folds=FOLDS, fold_seed=seed, seed=seed,
                      steps=judge_steps(recipe), augment=augmentation["augment"],
                      view_augment=augmentation["view_augment"], copies=augmentation["copies"])  # fmt: skip


def fit_judge(recipe, frames: RealSplit, *, progress: bool = True) -> tuple[AttributeJudge, dict]:
    """`plan_judge`'s judge, trained: a comparison re-fits it (the filter trains it beside its own)."""
    plan = plan_judge(recipe, frames)
    return plan.result(fit_classifiers(plan.fits, progress=progress))
