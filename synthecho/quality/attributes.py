"""Attribute fidelity: does a generated frame show the view and phase its row claims?

Two kinds of small CNN, each with two heads (2CH/4CH and ED/ES), trained on real frames:

- the filter's classifier (`ARCHITECTURES["filter"]`), trained on real train + validation, gives every
  row `view_score` / `phase_score` (the probability of the claimed value) and the `attribute_mismatch`
  verdict. Its real accuracy is estimated by patient-grouped K-fold cross-validation of the same
  training on the same frames (`cross_validate`), not on a handful of validation frames.
- the judge (`AttributeJudge`, `ARCHITECTURES["judge"]`: another architecture, another seed, another fold
  assignment) measures fidelity. The filter's classifier cannot: rows it rejected are gone, and the rows
  it kept agree with it by selection. The judge is K fold models; every frame of a patient is judged by
  the model whose training folds did not hold that patient, generated rows by their source patient's. So
  its accuracy on real frames, on the warped-real counterparts of the rows (each row's source frame
  moved by its `mask_transform`, `perturb.warp_frame`) and its agreement with the generated rows are all
  out-of-patient figures, comparable with each other. The warped-real accuracy is the ceiling: a
  generator that drew exactly its (perturbed) source cannot agree more.

Both are trained with rotated, shifted and sheared copies of the real frames (`phase_free`): generated
rows come from perturbed masks, and a tilted heart must not read as another view; scale and the elastic
field are left out because they move the phase cues themselves. With `filter.attribute_view_perturbation:
recipe`, the view head also learns from copies under the whole perturbation (their phase target is
ignored), since a scaled or elastically moved heart keeps its view. The fits run in worker processes, one
per core, with the weights they would have in this process; the folds, the judge and those fits are in
`quality.folds`.

Why CNNs of their own rather than the segmenter's pooled features: view is a matter of where things are
(4CH shows the right heart beside the left), which global pooling discards; separate networks also keep
the filter from grading images with the model that drew their masks. Frames are area-averaged to a few
dozen pixels (view and phase are coarse attributes), so a training run takes seconds on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from synthecho.parallel import one_thread
from synthecho.real import RealSplit
from synthecho.schema import PHASES, VIEWS

INPUT_SIZE = 32  # the filter's classifier: frames larger than this are area-averaged down to it
FOLDS = 5
AUGMENT_COPIES = 3  # perturbed copies of each real frame in a classifier's training set (default)
AUGMENT_SIZE = 64  # frames larger than this are reduced (strided) before they are perturbed


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    input_size: int


ARCHITECTURES = {
    "filter": Architecture(
        "filter", "CNN 3x(conv s2 + GroupNorm + SiLU) -> 4x4 pool -> linear, two heads", INPUT_SIZE
    ),
    "judge": Architecture(
        "judge", "CNN 3x(conv 3x3 + GroupNorm + ReLU + max-pool 2) -> 3x3 pool -> linear, two heads", 32
    ),
}


def _build_network(architecture: Architecture):
    import torch.nn as nn

    heads = len(VIEWS) + len(PHASES)
    if architecture.name == "filter":

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()]

        return nn.Sequential(
            *block(1, 8),
            *block(8, 16),
            *block(16, 32),
            nn.AdaptiveAvgPool2d(4),  # keeps a coarse 4x4 layout: left/right and up/down matter for the view
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(32 * 16, heads),
        )

    def pooled_block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *pooled_block(1, 8),
        *pooled_block(8, 16),
        *pooled_block(16, 24),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(24 * 9, heads),
    )


def _to_input(images: np.ndarray, size: int = INPUT_SIZE):
    """(N, H, W) uint8 -> (N, 1, h, w) float32 tensor in [0, 1], area-averaged to <= `size`."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)[:, None]
    if max(tensor.shape[-2:]) > size:
        tensor = F.interpolate(tensor, size=(size, size), mode="area")
    return tensor


class AttributeClassifier:
    """View and phase predictions for (N, H, W) uint8 frames."""

    def __init__(self, network, architecture: Architecture = ARCHITECTURES["filter"]):
        self.network = network.eval()
        self.architecture = architecture

    def logits(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = _to_input(images[start : start + batch_size], self.architecture.input_size)
                out.append(self.network(batch).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(VIEWS) + len(PHASES)), np.float32)

    def probabilities(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{"view": (N, 2) softmax over VIEWS, "phase": (N, 2) softmax over PHASES}."""
        logits = self.logits(images).astype(np.float64)
        out = {}
        for name, part in (("view", logits[:, : len(VIEWS)]), ("phase", logits[:, len(VIEWS) :])):
            shifted = np.exp(part - part.max(axis=1, keepdims=True))
            out[name] = shifted / shifted.sum(axis=1, keepdims=True)
        return out

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{"view": (N,) str array of 2CH/4CH, "phase": (N,) str array of ED/ES}."""
        probabilities = self.probabilities(images)
        return {
            "view": np.array(VIEWS)[probabilities["view"].argmax(axis=1)],
            "phase": np.array(PHASES)[probabilities["phase"].argmax(axis=1)],
        }

    def scores(self, images: np.ndarray, views, phases) -> dict[str, np.ndarray]:
        """Probability of each row's claimed view and phase: {"view": (N,), "phase": (N,)}."""
        probabilities = self.probabilities(images)
        view_index = np.array([VIEWS.index(v) for v in views], dtype=np.int64)
        phase_index = np.array([PHASES.index(p) for p in phases], dtype=np.int64)
        rows = np.arange(len(images))
        return {
            "view": probabilities["view"][rows, view_index],
            "phase": probabilities["phase"][rows, phase_index],
        }

    def sha256(self) -> str:
        """Hash of the weights (what scored shards were judged with)."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.network.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()


IGNORED = -100  # cross_entropy's ignore_index: a view-only training copy has no phase target


def class_targets(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    views = np.array([VIEWS.index(r["view"]) for r in records], dtype=np.int64)
    phases = np.array([PHASES.index(r["phase"]) if r["phase"] else IGNORED for r in records], dtype=np.int64)
    return views, phases


def agreement(predicted: dict[str, np.ndarray], views, phases) -> dict[str, float | None]:
    """Fraction of rows whose predicted view / phase equals the claimed one (None for no rows)."""
    if len(views) == 0:
        return {"view_agreement": None, "phase_agreement": None}
    return {
        "view_agreement": float(np.mean(predicted["view"] == np.asarray(views))),
        "phase_agreement": float(np.mean(predicted["phase"] == np.asarray(phases))),
    }


def proportion(successes: int, trials: int) -> dict:
    """{"k", "n", "rate", "ci95": [low, high]}: Clopper-Pearson (exact) 95 % interval, scipy's binomtest."""
    from scipy.stats import binomtest

    if trials == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": [None, None]}
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=0.95, method="exact")
    return {
        "k": int(successes),
        "n": int(trials),
        "rate": successes / trials,
        "ci95": [float(interval.low), float(interval.high)],
    }


class _Training:
    """A classifier's training as a `synthecho.fitting.Task`: two cross entropies (view, phase) on random
    batches with gain jitter. No validation: a fixed budget (the filter's accuracy is cross-validated)."""

    def __init__(self, records: list[dict]):
        import torch

        self.views, self.phases = (torch.from_numpy(targets) for targets in class_targets(records))

    def batch_loss(self, network, inputs, indices, rng):
        import torch
        import torch.nn.functional as F

        index = torch.from_numpy(indices)
        # Brightness jitter (gain): attributes must not be read off the overall grey level.
        gain = torch.from_numpy(rng.uniform(0.8, 1.2, size=(len(index), 1, 1, 1)).astype(np.float32))
        logits = network((inputs[index] * gain).clamp(0, 1))
        loss = F.cross_entropy(logits[:, : len(VIEWS)], self.views[index])
        phases = self.phases[index]
        if bool((phases != IGNORED).any()):  # (a batch of view-only copies alone has no phase loss)
            loss = loss + F.cross_entropy(logits[:, len(VIEWS) :], phases, ignore_index=IGNORED)
        return loss

    def validate(self, network) -> float:  # never called: the budget does not validate
        raise NotImplementedError


def _fit(network, architecture, images, records, steps, batch_size, learning_rate, seed, progress):
    """The shared training loop (`synthecho.fitting`): AdamW with a cosine schedule, batches drawn with
    replacement, `steps` steps."""
    from synthecho.fitting import Budget, fit

    budget = Budget(steps, batch_size, learning_rate, optimizer="adamw", weight_decay=1e-4, cosine=True,
                    sampling="uniform")  # fmt: skip
    inputs = _to_input(images, architecture.input_size)  # small after pooling: the whole split at once
    fit(network, _Training(records), inputs, budget, seed=seed, progress=progress,
        desc=f"attribute classifier ({architecture.name})", profile="attributes")  # fmt: skip


def phase_free(config):
    """The recipe's perturbation without what moves the phase cues (scale: cavity size; the elastic
    field: wall thickness): rotation, shifts and shear, which no real heart's view or phase depends on.

    The classifiers are trained on these, so a rotated or sheared heart is not taken for another view; they
    are not trained to ignore a shrunken cavity, so a row whose perturbation made an ED mask look like ES
    is read as ES (which is what the audit must see, and what `generate.perturb.phase_policy` prevents).
    """
    from dataclasses import replace

    return replace(config, scale=(1.0, 1.0), elastic_max_displacement=0.0)


def perturbed_copies(split: RealSplit, config, copies: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """`split`'s frames plus `copies` warped copies of each (`perturb.warp_frame` with transforms drawn
    from `config`, the recipe's perturbation): (images, records), at <= AUGMENT_SIZE px.

    Generated rows are drawn from perturbed masks, so a classifier that reads them, and their warped-real
    counterparts, must not take a rotated, sheared or elastically moved heart for another view or phase.
    Frames are warped after a strided reduction to AUGMENT_SIZE (the warp is resolution-free and the
    classifiers see 32 px), so augmenting a 256 px CAMUS split costs seconds.
    """
    from synthecho.perturb import sample_transform, warp_frame

    step = max(1, split.images.shape[1] // AUGMENT_SIZE) if len(split) else 1
    images, masks, sectors = (a[:, ::step, ::step] for a in (split.images, split.masks, split.sectors))
    if step > 1 and split.images.shape[1] % step == 0 and split.images.shape[2] % step == 0:
        n, h, w = split.images.shape  # images by block averaging (as the classifiers' area pooling does)
        blocks = split.images.reshape(n, h // step, step, w // step, step).astype(np.float32)
        images = np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)
    out, records = [images], list(split.records)
    rng = np.random.default_rng([seed, 7])
    for _ in range(copies):
        seeds = rng.integers(0, 2**63 - 1, size=len(images))
        out.append(
            np.stack(
                [
                    warp_frame(i, m, s, sample_transform(int(k), config))[0]
                    for i, m, s, k in zip(images, masks, sectors, seeds, strict=True)
                ]
            )
        )
        records += split.records
    return np.concatenate(out), records


def fit_classifier(
    split: RealSplit,
    *,
    architecture: Architecture = ARCHITECTURES["filter"],
    augment=None,
    view_augment=None,
    copies: int = AUGMENT_COPIES,
    steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> AttributeClassifier:
    """One classifier trained on `split`'s frames and their view/phase; with `augment` (a
    `perturb.PerturbConfig`), also on `copies` perturbed copies of each frame; with `view_augment`,
    on as many more under it that teach the view head alone.

    Seeded: initialisation and dropout draw from a torch RNG seeded here (inside `fork_rng`, so the result
    does not depend on what ran before and the caller's RNG is left as it was), batches from numpy.
    """
    import torch

    if augment is None:
        if view_augment is not None:  # the view-only copies are made at the augmented copies' size
            raise ValueError("fit_classifier: view_augment needs augment")
        images, records = split.images, split.records
    else:
        images, records = perturbed_copies(split, augment, copies, seed)
    if view_augment is not None:  # more copies that teach the view head alone (their phase is ignored)
        extra, extra_records = perturbed_copies(split, view_augment, copies, seed + 1)
        images = np.concatenate([images, extra[len(split) :]])
        records = list(records) + [dict(r, phase=None) for r in extra_records[len(split) :]]

    # One thread: the layers are so small that thread synchronisation costs more than it saves (measured
    # 5 ms vs 60 ms per step on a busy 2-core machine).
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _build_network(architecture)
        _fit(network, architecture, images, records, steps, batch_size, learning_rate, seed, progress)
    return AttributeClassifier(network, architecture)


def split_accuracy(classifier: AttributeClassifier, split: RealSplit) -> dict:
    if len(split) == 0:
        return {"view_accuracy": None, "phase_accuracy": None}
    views, phases = class_targets(split.records)
    found = agreement(classifier.predict(split.images), np.array(VIEWS)[views], np.array(PHASES)[phases])
    return {"view_accuracy": found["view_agreement"], "phase_accuracy": found["phase_agreement"]}


def train_attribute_classifier(
    train: RealSplit,
    validation: RealSplit,
    *,
    steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    **options,
) -> tuple[AttributeClassifier, dict]:
    """Train on real train frames; return the classifier and {"validation": {view_accuracy,
    phase_accuracy}, "train": {...}, "model", "steps", "seconds", "n_train", "n_validation"}."""
    started = time.perf_counter()
    classifier = fit_classifier(train, steps=steps, seed=seed, progress=progress, **options)
    return classifier, {
        "model": classifier.architecture.description,
        "input_size": int(min(classifier.architecture.input_size, train.images.shape[1])),
        "train": split_accuracy(classifier, train),
        "validation": split_accuracy(classifier, validation),
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 3),
        "n_train": len(train),
        "n_validation": len(validation),
    }
