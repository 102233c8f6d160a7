"""Realism that sees texture: a classifier two-sample test (C2ST) between real and generated frames.

The corpus' other realism number, the domain KID/FID (`synthecho.quality.metrics`), pools the filter
segmenter's deepest encoder level: it is dominated by anatomy and sits near 1e-4 for every corpus, so it
cannot rank generators. Here a small CNN learns to tell the two sets apart at full resolution and is
scored on held-out patients: the ROC AUC of its out-of-fold scores is the measure (0.5: the network
cannot tell them apart; 1.0: it always can).

- **Texture, not anatomy.** The network ends in a global average pool, so it sees statistics of local
  patterns (speckle grain, edge sharpness, noise) but not where the structures are: a generator is not
  penalised because its rows come from perturbed label maps.
- **Patients as the unit.** Folds are drawn over patients (a generated row counts as its source
  patient's), so no fold is scored by a network that trained on the same patient's frames; the
  interval is a percentile bootstrap over patients (`scipy.stats.bootstrap`).
- **Its own reference and positive control.** `positive_control` splits the real frames into two halves
  by patient: their AUC is what a perfect generator would get at these sample sizes (near 0.5).
  `degrade` makes the positive control (blur, speckle shuffle, added noise at rising strength), which
  must rank below real, monotonically in the strength.

Frames outside the imaging sector are zero in real and generated frames alike; the test sees both.
"""

from __future__ import annotations

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.parallel import one_thread

FOLDS = 3
STEPS = 150  # per fold: ~4 s on one core for ~60 frames of 64 px
BATCH = 32  # half real, half other in every batch: the AUC does not depend on the set sizes' ratio
LEARNING_RATE = 2e-3
DEGRADATIONS = {  # kind -> strengths, weakest first (the positive control's axis)
    "blur": (0.5, 1.0, 2.0),  # Gaussian sigma, pixels
    "noise": (4.0, 8.0, 16.0),  # additive Gaussian noise, grey levels
    "shuffle": (2, 3, 4),  # pixels permuted within non-overlapping k x k blocks: speckle grain destroyed
}


def _network():
    import torch.nn as nn

    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()]

    return nn.Sequential(
        *block(1, 8, 1),  # full resolution first: the speckle grain is 1-3 px
        *block(8, 16, 2),
        *block(16, 32, 2),
        *block(32, 32, 2),
        nn.AdaptiveAvgPool2d(1),  # texture statistics only: where the anatomy is does not survive
        nn.Flatten(),
        nn.Linear(32, 1),
    )


def _fit_and_score(train_a, train_b, test, seed: int, steps: int) -> np.ndarray:
    """Train on sets a (label 0) and b (label 1), balanced per batch; the logits of `test` frames."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng([seed, 31])
    # small layers: one thread beats two on a busy 2-core machine
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _network()
        optimizer = torch.optim.AdamW(network.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        a, b = (torch.from_numpy(x.astype(np.float32) / 255.0)[:, None] for x in (train_a, train_b))
        targets = torch.cat([torch.zeros(BATCH // 2), torch.ones(BATCH // 2)])[:, None]
        network.train()
        for _ in range(steps):
            pick_a = rng.integers(0, len(a), BATCH // 2)
            pick_b = rng.integers(0, len(b), BATCH // 2)
            batch = torch.cat([a[pick_a], b[pick_b]])
            if rng.random() < 0.5:  # left-right flips: texture has no side
                batch = batch.flip(-1)
            loss = F.binary_cross_entropy_with_logits(network(batch), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        network.eval()
        with torch.inference_mode():
            frames = torch.from_numpy(test.astype(np.float32) / 255.0)[:, None]
            return torch.cat([network(frames[i : i + 128]) for i in range(0, len(frames), 128)])[:, 0].numpy()


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC = the Mann-Whitney U of the positive scores over n_pos * n_neg (ties count a half)."""
    from scipy.stats import mannwhitneyu

    positive, negative = scores[labels == 1], scores[labels == 0]
    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def two_sample_auc(
    real: np.ndarray,
    real_patients: list[str],
    other: np.ndarray,
    other_patients: list[str],
    *,
    seed: int = 0,
    folds: int = FOLDS,
    steps: int = STEPS,
) -> dict:
    """How well a small CNN tells `other` (N, H, W uint8) from `real`, on held-out patients.

    Returns {"auc", "ci95", "real_frames", "other_frames", "patients", "folds", "steps"}. Every patient
    (real frames and rows generated from it alike) is in one fold; each fold's frames are scored by the
    network trained on the other folds.
    """
    if real.shape[1:] != other.shape[1:]:
        raise SynthechoError(f"realism: real frames are {real.shape[1:]}, the others {other.shape[1:]}")
    patients = sorted(set(real_patients) | set(other_patients))
    if len(patients) < folds:
        raise SynthechoError(f"realism: {len(patients)} patients cannot make {folds} folds")
    order = np.random.default_rng([seed, 17]).permutation(len(patients))
    fold_of = {patients[i]: rank % folds for rank, i in enumerate(order)}
    real_fold = np.array([fold_of[p] for p in real_patients])
    other_fold = np.array([fold_of[p] for p in other_patients])
    scores = np.concatenate([np.zeros(len(real)), np.zeros(len(other))])
    for fold in range(folds):
        train_a, train_b = real[real_fold != fold], other[other_fold != fold]
        test = np.concatenate([real[real_fold == fold], other[other_fold == fold]])
        if len(train_a) == 0 or len(train_b) == 0 or len(test) == 0:
            raise SynthechoError(f"realism: fold {fold} lacks real or generated frames; use more patients")
        held = _fit_and_score(train_a, train_b, test, seed + fold, steps)
        n_real = int((real_fold == fold).sum())
        scores[np.flatnonzero(real_fold == fold)] = held[:n_real]
        scores[len(real) + np.flatnonzero(other_fold == fold)] = held[n_real:]
    labels = np.concatenate([np.zeros(len(real), int), np.ones(len(other), int)])
    groups = np.array([patients.index(p) for p in list(real_patients) + list(other_patients)])
    return {
        "auc": _auc(scores, labels),
        "ci95": _patient_interval(scores, labels, groups, seed),
        "real_frames": int(len(real)),
        "other_frames": int(len(other)),
        "patients": len(patients),
        "folds": folds,
        "steps": steps,
    }


def _patient_interval(scores, labels, groups, seed: int) -> list[float | None]:
    """95 % percentile bootstrap of the AUC over patients (whole patients resampled)."""
    from scipy.stats import bootstrap

    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]

    def statistic(chosen):
        rows = np.concatenate([members[int(i)] for i in chosen])
        if labels[rows].min() == labels[rows].max():
            return 0.5  # a resample with one class only: no information either way
        return _auc(scores[rows], labels[rows])

    result = bootstrap((np.arange(len(members)),), statistic, vectorized=False, n_resamples=999,
                       method="percentile", random_state=np.random.default_rng([seed, 5]))  # fmt: skip
    low, high = result.confidence_interval
    return [float(low), float(high)]


def degrade(images: np.ndarray, kind: str, strength: float, seed: int = 0) -> np.ndarray:
    """Real frames made less real in a known direction: the positive control of the realism measure."""
    from scipy.ndimage import gaussian_filter

    frames = images.astype(np.float32)
    rng = np.random.default_rng([seed, 11])
    if kind == "blur":
        frames = np.stack([gaussian_filter(f, strength) for f in frames])
    elif kind == "noise":
        frames = frames + rng.normal(0.0, strength, frames.shape)
    elif kind == "shuffle":
        k = int(strength)
        n, h, w = frames.shape
        hk, wk = h - h % k, w - w % k
        blocks = frames[:, :hk, :wk].reshape(n, hk // k, k, wk // k, k).transpose(0, 1, 3, 2, 4)
        blocks = blocks.reshape(n, hk // k, wk // k, k * k)
        blocks = np.take_along_axis(blocks, rng.random(blocks.shape).argsort(axis=-1), axis=-1)
        frames = frames.copy()
        frames[:, :hk, :wk] = (
            blocks.reshape(n, hk // k, wk // k, k, k).transpose(0, 1, 3, 2, 4).reshape(n, hk, wk)
        )
    else:
        raise SynthechoError(f"degradation {kind!r} is not one of {sorted(DEGRADATIONS)}")
    out = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return np.where(images > 0, out, 0).astype(np.uint8) if kind != "blur" else out


def _halves(patients: list[str], seed: int) -> tuple[set[str], set[str]]:
    unique = sorted(set(patients))
    order = np.random.default_rng([seed, 23]).permutation(len(unique))
    first = {unique[i] for i in order[: len(unique) // 2]}
    return first, set(unique) - first


def positive_control(real: np.ndarray, patients: list[str], *, seed: int = 0, steps: int = STEPS) -> dict:
    """Real half against the other half degraded, every kind at every strength of DEGRADATIONS.

    Returns {"reference": the undegraded AUC, kind: [{"strength", "auc", "ci95"}, ...], "monotone":
    {kind: bool}}: an AUC that does not rise with the strength means the measure does not see that flaw.
    """
    first, _ = _halves(patients, seed)
    in_first = np.array([p in first for p in patients])
    names = np.array(patients)
    clean = two_sample_auc(real[in_first], list(names[in_first]), real[~in_first], list(names[~in_first]),
                           seed=seed, steps=steps)  # fmt: skip
    out: dict = {"reference": clean, "monotone": {}}
    for kind, strengths in DEGRADATIONS.items():
        curve = []
        for strength in strengths:
            degraded = degrade(real[~in_first], kind, strength, seed)
            found = two_sample_auc(real[in_first], list(names[in_first]), degraded, list(names[~in_first]),
                                   seed=seed, steps=steps)  # fmt: skip
            curve.append({"strength": strength, "auc": found["auc"], "ci95": found["ci95"]})
        out[kind] = curve
        aucs = [clean["auc"]] + [point["auc"] for point in curve]
        out["monotone"][kind] = bool(
            all(later >= earlier for earlier, later in zip(aucs, aucs[1:], strict=False))
        )
    return out
