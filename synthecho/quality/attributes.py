"""Attribute fidelity: does a generated frame show the view and phase its row claims?

A small CNN with two heads (2CH/4CH and ED/ES) is trained on the real train split, its accuracy measured
on the real validation split, and then it predicts the view and phase of generated rows; agreement with
the rows' attributes is the fidelity figure. The real validation accuracy is the ceiling to read it
against: a generated set cannot agree with a classifier more than real frames do.

Why a CNN of its own rather than the segmenter's pooled features: view is a matter of where things are
(4CH shows the right heart beside the left), which global pooling discards; a separate network also keeps
the filter from grading images with the same model that drew their masks. Frames are area-averaged to at
most 64 px (view and phase are coarse attributes), so training takes seconds on a CPU.
"""

from __future__ import annotations

import time

import numpy as np

from synthecho import profiling
from synthecho.real import RealSplit
from synthecho.schema import PHASES, VIEWS

INPUT_SIZE = 32  # frames larger than this are area-averaged down to it


def _build_network():
    import torch.nn as nn

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()]

    return nn.Sequential(
        *block(1, 8),
        *block(8, 16),
        *block(16, 32),
        nn.AdaptiveAvgPool2d(4),  # keeps a coarse 4x4 layout: left/right and up/down matter for the view
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32 * 16, len(VIEWS) + len(PHASES)),
    )


def _to_input(images: np.ndarray):
    """(N, H, W) uint8 -> (N, 1, h, w) float32 tensor in [0, 1], area-averaged to <= INPUT_SIZE."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)[:, None]
    if max(tensor.shape[-2:]) > INPUT_SIZE:
        tensor = F.interpolate(tensor, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return tensor


class AttributeClassifier:
    """View and phase predictions for (N, H, W) uint8 frames."""

    def __init__(self, network):
        self.network = network.eval()

    def logits(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                out.append(self.network(_to_input(images[start : start + batch_size])).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(VIEWS) + len(PHASES)), np.float32)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{"view": (N,) str array of 2CH/4CH, "phase": (N,) str array of ED/ES}."""
        logits = self.logits(images)
        return {
            "view": np.array(VIEWS)[logits[:, : len(VIEWS)].argmax(axis=1)],
            "phase": np.array(PHASES)[logits[:, len(VIEWS) :].argmax(axis=1)],
        }


def _targets(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    views = np.array([VIEWS.index(r["view"]) for r in records], dtype=np.int64)
    phases = np.array([PHASES.index(r["phase"]) for r in records], dtype=np.int64)
    return views, phases


def agreement(predicted: dict[str, np.ndarray], views, phases) -> dict[str, float | None]:
    """Fraction of rows whose predicted view / phase equals the claimed one (None for no rows)."""
    if len(views) == 0:
        return {"view_agreement": None, "phase_agreement": None}
    return {
        "view_agreement": float(np.mean(predicted["view"] == np.asarray(views))),
        "phase_agreement": float(np.mean(predicted["phase"] == np.asarray(phases))),
    }


def _fit(network, images: np.ndarray, records: list[dict], steps, batch_size, learning_rate, seed, progress):
    """The training loop: AdamW with a cosine schedule, random batches with gain jitter."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    views, phases = (torch.from_numpy(targets) for targets in _targets(records))
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    rng = np.random.default_rng(seed)
    inputs = _to_input(images)  # small after pooling: keep the whole split as one tensor
    network.train()
    for _ in tqdm(range(steps), desc="attribute classifier", disable=not progress, leave=False):
        with profiling.section("attributes/data"):
            index = torch.from_numpy(rng.integers(0, len(inputs), size=min(batch_size, len(inputs))))
            # Brightness jitter (gain): attributes must not be read off the overall grey level.
            gain = torch.from_numpy(rng.uniform(0.8, 1.2, size=(len(index), 1, 1, 1)).astype(np.float32))
            batch = (inputs[index] * gain).clamp(0, 1)
        with profiling.section("attributes/forward"):
            logits = network(batch)
            loss = F.cross_entropy(logits[:, : len(VIEWS)], views[index])
            loss = loss + F.cross_entropy(logits[:, len(VIEWS) :], phases[index])
        with profiling.section("attributes/backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    network.eval()


def train_attribute_classifier(
    train: RealSplit,
    validation: RealSplit,
    *,
    steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[AttributeClassifier, dict]:
    """Train on real train frames; return the classifier and {"validation": {view_accuracy,
    phase_accuracy}, "train": {...}, "steps", "seconds", "n_train", "n_validation"}.

    Seeded: initialisation and dropout draw from a torch RNG seeded here (inside `fork_rng`, so the result
    does not depend on what ran before and the caller's RNG is left as it was), batches from numpy.
    """
    import torch

    started = time.perf_counter()
    # One thread: the layers are so small that thread synchronisation costs more than it saves (measured
    # 5 ms vs 60 ms per step on a busy 2-core machine). The caller's setting is restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = _build_network()
            _fit(network, train.images, train.records, steps, batch_size, learning_rate, seed, progress)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started

    classifier = AttributeClassifier(network)

    def accuracy(split: RealSplit) -> dict:
        if len(split) == 0:
            return {"view_accuracy": None, "phase_accuracy": None}
        split_views, split_phases = _targets(split.records)
        found = agreement(
            classifier.predict(split.images), np.array(VIEWS)[split_views], np.array(PHASES)[split_phases]
        )
        return {"view_accuracy": found["view_agreement"], "phase_accuracy": found["phase_agreement"]}

    metrics = {
        "model": "CNN 3x(conv s2 + GroupNorm + SiLU) -> 4x4 pool -> linear, two heads",
        "input_size": int(min(INPUT_SIZE, train.images.shape[1])),
        "train": accuracy(train),
        "validation": accuracy(validation),
        "steps": steps,
        "seconds": round(seconds, 3),
        "n_train": len(train),
        "n_validation": len(validation),
    }
    return classifier, metrics
