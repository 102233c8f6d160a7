"""The memorisation check: is a generated row a copy of a real frame?

A mask-conditioned row *should* resemble its source's anatomy, so anatomy is not what a copy is judged
on. What a copy keeps and a faithful row cannot is the source frame's speckle: the fine grain of one
acquisition, which a generator that learnt the anatomy draws afresh. So frames are compared in a speckle
representation (`speckle`: the frame minus its Gaussian blur at SPECKLE_SIGMA px, inside the sector
eroded by SUPPORT_EROSION px, zero mean and unit norm), by normalised cross-correlation, against:

1. the row's own source frame warped by the row's `mask_transform` (`perturb.warp_frame`): what a
   memorising mask-conditioned generator emits;
2. the record's other phase (same patient and view), warped the same way;
3. every real train frame as it is (the global nearest neighbour): copies of other patients, and of the
   source itself unwarped.

The row's `copy_similarity` is the highest of these. The threshold is a stated high quantile
(filter.copy_null_quantile) of a null of legitimate same-anatomy pairs written by `prepare`
(real/copy_null.parquet: on the phantom, the record's geometry re-rendered with fresh speckle seeds; on
CAMUS, ED vs ES and neighbouring half-sequence frames of one recording), each null frame warped by a
row-like transform and scored exactly as a generated row of its record is. The false-positive rate is
measured on the same null by leaving one patient out (each pair judged against a threshold calibrated
on the other patients), and the positive control plants copies (`planted_copies`): rows'
warped sources with gain, blur and noise, scored exactly as generated rows are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPECKLE_SIGMA = 2.0  # px at the working resolution: keeps the band that blur and noise leave of speckle
SUPPORT_EROSION = 3  # px: the fan's edge is the strongest structure in any frame; leave it out
CHUNK = 256
# The planted copies: a memorising generator's output, a little brighter, softer and noisier than its
# source (gain x, Gaussian blur sigma px, additive Gaussian noise sigma in grey levels of 0..255).
PLANTED_STRENGTH = {"gain": 1.2, "blur_px": 0.6, "noise": 8.0}
PLANTED_SWEEP = (  # the same copies at other strengths, reported beside the stated one
    {"gain": 1.2, "blur_px": 0.3, "noise": 4.0},
    {"gain": 1.2, "blur_px": 1.0, "noise": 12.0},
    {"gain": 1.2, "blur_px": 1.5, "noise": 16.0},
)
PLANTED_MAX = 300  # planted copies, spread evenly over the plan


def speckle(images: np.ndarray, sectors: np.ndarray) -> np.ndarray:
    """(N, H, W) frames and their sectors -> (N, H*W) float32 unit rows of the speckle representation."""
    from scipy.ndimage import binary_erosion, gaussian_filter

    values = np.asarray(images, dtype=np.float64)
    residual = values - gaussian_filter(values, sigma=(0, SPECKLE_SIGMA, SPECKLE_SIGMA))
    rows = np.zeros((len(values), values[0].size if len(values) else 0), np.float32)
    for i, (frame, sector) in enumerate(zip(residual, np.asarray(sectors, bool), strict=True)):
        support = binary_erosion(sector, iterations=SUPPORT_EROSION)
        inside = frame[support]
        if inside.size < 2:
            continue  # nothing to compare: a zero row correlates with nothing
        z = np.zeros_like(frame)
        z[support] = inside - inside.mean()
        norm = np.linalg.norm(z)
        if norm > 1e-9:
            rows[i] = (z / norm).ravel()
    return rows


@dataclass
class Source:
    """Where a scored frame comes from: its real record and the transform its row applied."""

    split: str  # real split of the source record
    index: int  # position in that split
    transform: dict  # the row's mask_transform
    other_phase: bool = True  # compare with the record's other phase (False: the frame *is* that phase)
    exclude_train: int = -1  # a train frame not to compare with (the frame a null image was made from)


class CopyCheck:
    """Speckle similarity of frames to their own warped sources, their other phase and real train."""

    def __init__(self, real: dict, threshold: float | None = None):
        from synthecho.plan import other_phase_index

        self.real = real
        train = real["train"]
        self.train_ids = train.ids
        self.reference = np.concatenate(
            [
                speckle(train.images[s : s + CHUNK], train.sectors[s : s + CHUNK])
                for s in range(0, len(train), CHUNK)
            ]
        )
        self.other = {name: other_phase_index(split.records) for name, split in real.items()}
        self.threshold = threshold

    def references(self, sources: list[Source]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(own warped source frames, other-phase frames warped alike (zeros when none), sectors)."""
        from synthecho.perturb import warp_frame

        own, other, sectors = [], [], []
        for source in sources:
            split = self.real[source.split]
            i = source.index
            own.append(warp_frame(split.images[i], split.masks[i], split.sectors[i], source.transform)[0])
            j = self.other[source.split][i] if source.other_phase else None
            if j is None:
                other.append(np.zeros_like(own[-1]))
            else:
                other.append(
                    warp_frame(split.images[j], split.masks[i], split.sectors[i], source.transform)[0]
                )
            sectors.append(split.sectors[i])
        return np.stack(own), np.stack(other), np.stack(sectors)

    def compare(self, images: np.ndarray, sources: list[Source], references=None) -> dict[str, np.ndarray]:
        """Per frame: {"own", "other_phase" (NaN when not compared), "train" (best train frame),
        "train_index", "similarity" (the highest), "nearest" ("source" | "other phase" | "train")}.
        `references`: what `references(sources)` returned, when the caller has it already."""
        own_frames, other_frames, sectors = references if references is not None else self.references(sources)
        rows = speckle(images, sectors)
        own = np.einsum("nd,nd->n", rows, speckle(own_frames, sectors))
        other = np.einsum("nd,nd->n", rows, speckle(other_frames, sectors))
        has_other = np.array([other_frames[i].any() for i in range(len(sources))])
        other = np.where(has_other, other, np.nan)
        similarity = rows @ self.reference.T  # (N, N_train): all pairs in one product
        for i, source in enumerate(sources):
            if source.exclude_train >= 0:
                similarity[i, source.exclude_train] = -np.inf
        train_index = similarity.argmax(axis=1)
        train = similarity[np.arange(len(rows)), train_index]
        stacked = np.stack([own, np.nan_to_num(other, nan=-np.inf), train])
        return {
            "own": own,
            "other_phase": other,
            "train": train,
            "train_index": train_index,
            "similarity": stacked.max(axis=0),
            "nearest": np.array(["source", "other phase", "train"])[stacked.argmax(axis=0)],
        }

    def similarity(self, images: np.ndarray, sources: list[Source]) -> np.ndarray:
        """The rows' copy similarity (chunked)."""
        out = [
            self.compare(images[s : s + CHUNK], sources[s : s + CHUNK])["similarity"]
            for s in range(0, len(images), CHUNK)
        ]
        return np.concatenate(out) if out else np.zeros(0)


# --- the null and the threshold ------------------------------------------------------------------------


def null_sources(null, real: dict, config, seed: int) -> tuple[np.ndarray, list[Source], list[str]]:
    """The null frames warped as rows of their records would be, their `Source`s and patients.

    Each null pair gets a transform drawn as a row's is (the recipe's perturbation, its own seed); the
    null frame is moved by it and scored against its record exactly as a generated row of that record.
    """
    from synthecho.perturb import sample_transform, warp_frame
    from synthecho.plan import derive_seed

    index = {name: {rid: i for i, rid in enumerate(split.ids)} for name, split in real.items()}
    train_index = index.get("train", {})
    images, sources, patients = [], [], []
    for k, pair in enumerate(null.pairs):
        split = real[pair["split"]]
        i = index[pair["split"]][pair["record_id"]]
        transform = sample_transform(derive_seed("copy-null", seed, k), config)
        images.append(warp_frame(null.images[k], split.masks[i], split.sectors[i], transform)[0])
        made_from = pair.get("made_from") or ""
        sources.append(
            Source(
                pair["split"],
                i,
                transform,
                other_phase=pair["kind"] != "other_phase",
                exclude_train=train_index.get(made_from, -1) if pair["split"] == "train" else -1,
            )
        )
        patients.append(split.records[i]["patient"])
    return np.stack(images), sources, patients


def calibrate(scores: np.ndarray, patients: list[str], quantile: float) -> dict:
    """Threshold = `quantile` of the null scores; false-positive rate by leaving one patient out.

    Each patient's pairs are judged against the quantile of every other patient's pairs, so no pair is
    judged by a threshold it helped set, and the threshold it is judged by is nearly the final one (a
    patient effect: some hearts' re-renderings resemble each other more than others'). Returns
    {"threshold", "quantile", "pairs", "patients", "false_positive": proportion(...), "null_quantiles"}.
    """
    from synthecho.quality.attributes import proportion

    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) < 2:
        raise ValueError(f"the copy null has {len(scores)} pairs; it needs at least 2")
    patients = np.asarray(patients)
    unique = sorted(set(patients.tolist()))
    false_positives = judged = 0
    for patient in unique if len(unique) > 1 else []:
        own = patients == patient
        false_positives += int(np.sum(scores[own] > np.quantile(scores[~own], quantile)))
        judged += int(own.sum())
    return {
        "threshold": float(np.quantile(scores, quantile)),
        "quantile": quantile,
        "pairs": len(scores),
        "patients": len(unique),
        "false_positive": proportion(false_positives, judged),
        "null_quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.9", "0.99", "1.0")},
    }


# --- the positive control ------------------------------------------------------------------------------


def degrade(image: np.ndarray, sector: np.ndarray, strength: dict, rng: np.random.Generator) -> np.ndarray:
    """A copy as a memorising generator might emit it: gain, Gaussian blur and noise, inside the sector."""
    from scipy.ndimage import gaussian_filter

    values = gaussian_filter(image.astype(np.float64), strength["blur_px"]) * strength["gain"]
    values = values + rng.normal(0.0, strength["noise"], size=values.shape)
    return np.where(sector, np.clip(np.rint(values), 0, 255), 0).astype(np.uint8)


def planted_copies(check: CopyCheck, plan_rows: list, threshold: float, seed: int) -> dict:
    """Plant copies (each sampled row's source frame warped by its transform, then `degrade`d) and score
    them exactly as generated rows are. Returns {"stated": {..., "caught": proportion}, "sweep": [...]}."""
    from synthecho.quality.attributes import proportion

    count = min(PLANTED_MAX, len(plan_rows))
    picked = [plan_rows[(k * len(plan_rows)) // count] for k in range(count)] if count else []
    sources = [Source(row.split, row.source_index, row.mask_transform) for row in picked]
    strengths = (PLANTED_STRENGTH, *PLANTED_SWEEP)
    scores: list[list[np.ndarray]] = [[] for _ in strengths]
    rngs = [np.random.default_rng([seed, number]) for number in range(len(strengths))]
    for start in range(0, len(sources), CHUNK):  # the warps once per chunk, for every strength
        chunk = sources[start : start + CHUNK]
        references = check.references(chunk)
        own, _, sectors = references
        for number, strength in enumerate(strengths):
            planted = np.stack(
                [degrade(f, s, strength, rngs[number]) for f, s in zip(own, sectors, strict=True)]
            )
            scores[number].append(check.compare(planted, chunk, references)["similarity"])
    results = []
    for strength, parts in zip(strengths, scores, strict=True):
        values = np.concatenate(parts) if parts else np.zeros(0)
        results.append(
            {
                **strength,
                "caught": proportion(int(np.sum(values > threshold)), len(values)),
                "median_similarity": float(np.median(values)) if len(values) else None,
            }
        )
    return {"stated": results[0], "sweep": results[1:]}
