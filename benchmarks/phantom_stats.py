"""How varied is the phantom, next to what CAMUS shows? A Markdown table of measured statistics.

    python benchmarks/phantom_stats.py                          # 60 patients, seed 0, 192 x 160
    python benchmarks/phantom_stats.py --patients 20 --seed 3
    python benchmarks/phantom_stats.py --tree /data/CAMUS_public  # any CAMUS tree (no truth rows)
    python benchmarks/phantom_stats.py --learnability           # do the images carry the attributes?

Everything is measured from what a reader gets (`read_camus` records: images, `_gt` masks, cfg values),
so `--tree` measures the real CAMUS the same way; the truth rows need the phantom's truth files (the
phantom is written with every patient but its validation ones and one training patient in its test split).

Statistics (per frame unless said):
  * tilt: the LV cavity's principal axis from the image vertical, in mm (positive: base toward the image
    right): the principal axis nearer the vertical, over frames whose cavity is not round (principal
    sds > 1.3x apart); spread = sample std per view; apex offset = lateral mm of the topmost LV pixel from
    the fan axis.
  * edge: fraction of frames where a labelled structure comes within 2 px of the sector edge.
  * quality: Good / Medium / Poor per view (from the cfg files).
  * area change ED -> ES: LV fractional area change 1 - A_ES / A_ED, LA growth A_ES / A_ED - 1 (labels).
  * EF: single-plane area-length EF of the labels (and of the truth) against the cfg EF.
  * label vs render Dice: the `_gt` masks against the rendering truth, per structure and phase; observer
    vs observer: two independent observers (`observer.Observer`) of the same truth, which is what the
    CAMUS paper's inter-observer Dice measures.
  * speckle ED vs ES: Pearson correlation of band-passed texture (Gaussian 0.7 px minus 3 px) over the
    pixels that are myocardium in both ED and ES labels, at the same position ("fixed") and at the best
    of the integer shifts within +-6 px ("best shift", a rigid registration's upper bound).
  * shape words: `synthecho.prompts.shapes_of` on the masks resized to 64 px as `prepare` does.

`BANDS` holds the range each statistic must stay in; tests/test_phantom_statistics.py checks a small
cohort against them, so a change that undoes the variety fails. `--learnability` prepares a phantom at
64 px, trains the filter segmenter (`synthecho.segmenter.train_segmenter`) and a small 3-class quality
CNN on the real train frames, and prints validation Dice per quality class and the quality accuracy
with its 95 % Clopper-Pearson interval.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESOLUTION = 64
STRUCTURE_SELECT = {
    "LV endo": lambda m: m == 1,
    "LV epi": lambda m: (m == 1) | (m == 2),
    "myocardium": lambda m: m == 2,
    "LA": lambda m: m == 3,
}
OBSERVER_NAMES = {"LV endo": "endo", "LV epi": "epi", "LA": "la"}
SHAPE_KEYS = {"lv": "LV", "myo": "myocardium", "la": "LA"}
# CAMUS counts (or figures) to read the phantom against, with where they come from.
CAMUS_QUALITY = {"2CH": (217, 214, 69), "4CH": (288, 165, 47)}  # cfg ImageQuality, 500 patients
CAMUS_SHAPES = {  # Synthetic Boost's CAMUS VQA answers, counts of 200
    "LV": {"oval": 119, "rectangle": 57},
    "myocardium": {"triangle": 147},
    "LA": {"oval": 87, "square": 74},
}
MAX_WORD_SHARE = 0.80  # no single shape word above this for any structure
# Bands the phantom must stay in (lo, hi); None = unbounded on that side.
BANDS = {
    "tilt_sd_4CH": (4.0, 12.0),
    "tilt_sd_2CH": (4.0, 12.0),
    "tilt_max_abs": (15.0, 35.0),
    "apex_offset_sd_mm": (3.0, 12.0),
    "edge_fraction": (0.25, 0.9),
    "lv_fac_mean": (0.2, 0.5),
    "la_growth_mean": (0.05, 0.6),
    "ef_truth_mae": (None, 5.0),
    "ef_label_mae": (2.0, 9.0),  # the labels carry an observer's noise: their EF is not exact
    # measured label-vs-render minus the target, worst structure and phase: the observer's displacement is
    # in mm, so a cohort's mix of heart sizes moves its mean Dice (+-0.03 at 20 patients, +-0.005 at 60);
    # noise-free labels sit at +0.05 or more
    "dice_margin": (-0.035, 0.035),
    "speckle_fixed": (None, 0.35),
    "speckle_best_shift": (None, 0.6),
    # largest |phantom share - CAMUS share| of a quality class per view; a 20-patient cohort alone puts ~0.1
    # of sampling noise on a share (tests/test_phantom.py holds 2000 patients to +-0.03)
    "quality_share_error": (None, 0.2),
    "max_word_share": (None, MAX_WORD_SHARE),
}


def in_band(name: str, value: float) -> bool:
    low, high = BANDS[name]
    return (low is None or value >= low) and (high is None or value <= high)


# --- per-frame measurements -----------------------------------------------------------------------------


def lv_axis(mask: np.ndarray, spacing: tuple[float, float]) -> float | None:
    """Tilt (degrees) from vertical of the LV cavity's long axis (in mm); + = base to the image right.

    The long axis is the principal axis nearer the vertical (a remodelled LV can be wider than long);
    None for a round cavity (principal standard deviations within 1.3x), whose axis is not defined.
    """
    rows, cols = np.nonzero(mask == 1)
    points = np.stack([cols * spacing[1], rows * spacing[0]], axis=1)
    values, vectors = np.linalg.eigh(np.cov((points - points.mean(axis=0)).T))
    if values[1] < 1.3**2 * values[0]:
        return None
    axis = vectors[:, int(np.argmax(np.abs(vectors[1])))]
    axis = axis if axis[1] > 0 else -axis
    return math.degrees(math.atan2(axis[0], axis[1]))


def touches_edge(image: np.ndarray, mask: np.ndarray) -> bool:
    from scipy.ndimage import binary_dilation

    from synthecho.labels import sector_from_image

    outside = ~sector_from_image(image)
    near = binary_dilation(outside, iterations=2)
    return bool(np.any((mask > 0) & near))


def band_pass(image: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    image = image.astype(np.float64)
    return gaussian_filter(image, 0.7) - gaussian_filter(image, 3.0)


def speckle_correlation(ed, es, max_shift: int = 6) -> tuple[float, float]:
    """(fixed, best-shift) correlation of band-passed myocardium texture between the ED and ES frames."""
    from scipy.ndimage import binary_erosion

    a, b = band_pass(ed.image), band_pass(es.image)
    myo_a, myo_b = binary_erosion(ed.mask == 2), binary_erosion(es.mask == 2)
    best, fixed = -1.0, float("nan")
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            shifted, shifted_myo = np.roll(b, (dy, dx), axis=(0, 1)), np.roll(myo_b, (dy, dx), axis=(0, 1))
            region = myo_a & shifted_myo
            if region.sum() < 50:
                continue
            value = float(np.corrcoef(a[region], shifted[region])[0, 1])
            best = max(best, value)
            if dy == 0 and dx == 0:
                fixed = value
    return fixed, best


def dice(a: np.ndarray, b: np.ndarray) -> float:
    from synthecho.metrics import dice as dice_of

    return dice_of(a, b)


# --- the cohort ---------------------------------------------------------------------------------------------


def write_cohort(out_dir: Path, patients: int, seed: int, size: tuple[int, int]) -> Path:
    """A phantom with all but validation and one training patient in the test split (truth for most)."""
    from synthecho.sources.phantom import write_phantom
    from synthecho.sources.phantom.cohort import split_sizes

    return write_phantom(
        out_dir,
        patients=patients,
        seed=seed,
        size=size,
        preview=False,
        test_patients=patients - split_sizes(patients)[0] - 1,
    )


def measure(root: Path, truth_dir: Path | None = None, seed: int = 0) -> dict:
    """Every statistic of the CAMUS tree at `root` (truth rows when `truth_dir` holds phantom truth)."""
    from synthecho.labels import sector_from_image
    from synthecho.prompts import shapes_of
    from synthecho.real import resize_frame
    from synthecho.sources.camus import read_camus
    from synthecho.sources.phantom import single_plane_volume

    records = read_camus(root, name="phantom")
    stats: dict = {"frames": len(records), "patients": len({r.patient for r in records})}
    tilts, offsets, edges = defaultdict(list), [], []
    words = {name: Counter() for name in SHAPE_KEYS.values()}
    by_view = {(r.patient, r.view, r.phase): r for r in records}
    quality = {view: Counter() for view in ("2CH", "4CH")}
    for record in records:
        if (tilt := lv_axis(record.mask, record.spacing)) is not None:
            tilts[record.view].append(tilt)
        rows, cols = np.nonzero(record.mask == 1)
        top = cols[rows == rows.min()].mean()
        offsets.append((top - (record.mask.shape[1] - 1) / 2) * record.spacing[1])
        edges.append(touches_edge(record.image, record.mask))
        _, small, _ = resize_frame(record.image, record.mask, sector_from_image(record.image), RESOLUTION)
        for key, word in shapes_of(small).items():
            words[SHAPE_KEYS[key]][word] += 1
        if record.phase == "ED":
            quality[record.view][record.image_quality] += 1
    stats["tilt"] = {view: np.array(values) for view, values in tilts.items()}
    stats["apex_offset_sd_mm"] = float(np.std(offsets, ddof=1))
    stats["edge_fraction"] = float(np.mean(edges))
    stats["quality"] = quality
    stats["words"] = words

    # ED/ES pairs: area change, EF, speckle.
    fac, la_growth, speckle, ef_label, ef_truth, ef_cfg = [], [], [], [], [], []
    for (patient, view, phase), ed in by_view.items():
        if phase != "ED":
            continue
        es = by_view[(patient, view, "ES")]
        fac.append(1 - (es.mask == 1).sum() / (ed.mask == 1).sum())
        la_growth.append((es.mask == 3).sum() / max((ed.mask == 3).sum(), 1) - 1)
        ef_label.append(
            100 * (1 - single_plane_volume(es.mask, es.spacing) / single_plane_volume(ed.mask, ed.spacing))
        )
        ef_cfg.append(ed.ef)
        speckle.append(speckle_correlation(ed, es))
        if truth_dir is not None:
            from synthecho.sources.phantom import read_truth

            truth_ed, truth_es = read_truth(truth_dir, ed.id), read_truth(truth_dir, es.id)
            if truth_ed is not None and truth_es is not None:
                ratio = single_plane_volume(truth_es, es.spacing) / single_plane_volume(truth_ed, ed.spacing)
                ef_truth.append((100 * (1 - ratio), ed.ef))
    stats["lv_fac_mean"], stats["la_growth_mean"] = float(np.mean(fac)), float(np.mean(la_growth))
    stats["ef_label_mae"] = float(np.mean(np.abs(np.array(ef_label) - np.array(ef_cfg))))
    stats["ef_label_r"] = float(np.corrcoef(ef_label, ef_cfg)[0, 1])
    speckle = np.array(speckle)
    stats["speckle_fixed"], stats["speckle_best_shift"] = (float(v) for v in np.nanmean(speckle, axis=0))
    if ef_truth:
        measured, stated = np.array(ef_truth).T
        stats["ef_truth_mae"] = float(np.mean(np.abs(measured - stated)))
        stats["ef_truth_r"] = float(np.corrcoef(measured, stated)[0, 1])
    if truth_dir is not None:
        stats["dice"] = label_dice(records, truth_dir, seed)
    return stats


def label_dice(records, truth_dir: Path, seed: int) -> dict:
    """Per (structure, phase): mean Dice of the labels to the truth, and of two fresh observers."""
    from synthecho.sources.phantom import read_truth
    from synthecho.sources.phantom.observer import Observer

    values = defaultdict(list)
    for index, record in enumerate(records):
        truth = read_truth(truth_dir, record.id)
        if truth is None:
            continue
        phase = 0.0 if record.phase == "ED" else 1.0
        sector = record.image > 0
        pair = [
            Observer(np.random.default_rng([seed, index, k]), truth.shape, record.spacing).contour(
                truth, phase, sector
            )
            for k in (1, 2)
        ]
        for name, select in STRUCTURE_SELECT.items():
            values[(name, record.phase, "label")].append(dice(select(record.mask), select(truth)))
            values[(name, record.phase, "observers")].append(dice(select(pair[0]), select(pair[1])))
    return {key: float(np.mean(v)) for key, v in values.items()}


# --- the table ---------------------------------------------------------------------------------------------


def summary(stats: dict) -> dict[str, float]:
    """The banded statistics as one flat dict (what the test checks)."""
    from synthecho.sources.phantom.observer import target_dice

    tilt = stats["tilt"]
    flat = {
        "tilt_sd_4CH": float(np.std(tilt["4CH"], ddof=1)),
        "tilt_sd_2CH": float(np.std(tilt["2CH"], ddof=1)),
        "tilt_max_abs": float(max(np.abs(tilt["4CH"]).max(), np.abs(tilt["2CH"]).max())),
        **{
            key: stats[key] for key in ("apex_offset_sd_mm", "edge_fraction", "lv_fac_mean", "la_growth_mean")
        },
        **{key: stats[key] for key in ("ef_label_mae", "speckle_fixed", "speckle_best_shift")},
    }
    if "ef_truth_mae" in stats:
        flat["ef_truth_mae"] = stats["ef_truth_mae"]
    errors = []
    for view, counter in stats["quality"].items():
        total = sum(counter.values())
        camus = np.array(CAMUS_QUALITY[view]) / sum(CAMUS_QUALITY[view])
        errors += [
            abs(counter[q] / total - c) for q, c in zip(("Good", "Medium", "Poor"), camus, strict=True)
        ]
    flat["quality_share_error"] = float(max(errors))
    flat["max_word_share"] = float(max(max(c.values()) / sum(c.values()) for c in stats["words"].values()))
    if "dice" in stats:
        margins = [
            stats["dice"][(name, phase, "label")] - target_dice(OBSERVER_NAMES[name], phase)
            for name in OBSERVER_NAMES
            for phase in ("ED", "ES")
        ]
        flat["dice_margin"] = float(max(margins, key=abs))
    return flat


def band_text(name: str) -> str:
    low, high = BANDS[name]
    return f"[{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"


def render_table(stats: dict, title: str) -> str:
    from synthecho.sources.phantom.observer import INTER_OBSERVER_DICE, target_dice

    flat = summary(stats)
    tilt = stats["tilt"]
    lines = [
        f"### {title}: {stats['patients']} patients, {stats['frames']} ED/ES frames",
        "",
        "| statistic | phantom | CAMUS | band |",
        "|---|---|---|---|",
    ]

    def row(label: str, value: str, camus: str = "—", band: str | None = None) -> None:
        mark = ""
        if band is not None and band in flat:
            mark = f"{band_text(band)}{'' if in_band(band, flat[band]) else ' **out**'}"
        lines.append(f"| {label} | {value} | {camus} | {mark} |")

    for view in ("4CH", "2CH"):
        values = tilt[view]
        low, high = np.percentile(values, [5, 95])
        row(f"LV tilt {view}, deg: mean ± sd (5-95 %)", f"{values.mean():.1f} ± {values.std(ddof=1):.1f} "
            f"({low:.0f} to {high:.0f})", "0-30 (seen; no published distribution)",
            f"tilt_sd_{view}")  # fmt: skip
    row("largest \\|tilt\\|, deg", f"{flat['tilt_max_abs']:.1f}", "~30", "tilt_max_abs")
    row("apex off the fan axis, sd mm", f"{flat['apex_offset_sd_mm']:.1f}", "—", "apex_offset_sd_mm")
    row("frames with a structure at the sector edge", f"{flat['edge_fraction']:.0%}", "— (LA, walls cut)",
        "edge_fraction")  # fmt: skip
    for view in ("4CH", "2CH"):
        counter = stats["quality"][view]
        total = sum(counter.values())
        phantom = " / ".join(f"{counter[q] / total:.0%}" for q in ("Good", "Medium", "Poor"))
        camus = " / ".join(f"{c / sum(CAMUS_QUALITY[view]):.0%}" for c in CAMUS_QUALITY[view])
        row(f"quality {view} Good / Medium / Poor", f"{phantom} (n={total})", f"{camus} (n=500)",
            "quality_share_error" if view == "4CH" else None)  # fmt: skip
    row("LV fractional area change ED→ES (labels)", f"{flat['lv_fac_mean']:.2f}", "—", "lv_fac_mean")
    row("LA area growth ED→ES (labels)", f"{flat['la_growth_mean']:.2f}", "—", "la_growth_mean")
    row("area-length EF of the labels vs cfg EF: MAE (r)",
        f"{stats['ef_label_mae']:.1f} ({stats['ef_label_r']:.2f})", "—", "ef_label_mae")  # fmt: skip
    if "ef_truth_mae" in stats:
        row("area-length EF of the truth vs cfg EF: MAE (r)",
            f"{stats['ef_truth_mae']:.1f} ({stats['ef_truth_r']:.2f})", "—", "ef_truth_mae")  # fmt: skip
    if "dice" in stats:
        for name in STRUCTURE_SELECT:
            for phase in ("ED", "ES"):
                label, pair = stats["dice"][(name, phase, "label")], stats["dice"][(name, phase, "observers")]
                key = OBSERVER_NAMES.get(name)
                camus = "—"
                if key:
                    camus = (
                        f"target {target_dice(key, phase):.3f}; "
                        f"observers ≈{INTER_OBSERVER_DICE[(key, phase)]:.2f}"
                    )
                row(f"Dice {name} {phase}: label vs render (observer vs observer)",
                    f"{label:.3f} ({pair:.3f})",
                    camus, "dice_margin" if (name, phase) == ("LV endo", "ED") else None)  # fmt: skip
    row("speckle ED vs ES, fixed position", f"{flat['speckle_fixed']:.2f}", "—", "speckle_fixed")
    row("speckle ED vs ES, best shift", f"{flat['speckle_best_shift']:.2f}", "—", "speckle_best_shift")
    for structure, counter in stats["words"].items():
        total = sum(counter.values())
        phantom = ", ".join(f"{word} {count / total:.0%}" for word, count in counter.most_common())
        camus = ", ".join(f"{word} {count / 200:.0%}" for word, count in CAMUS_SHAPES[structure].items())
        row(f"shape words {structure}", phantom, camus, "max_word_share" if structure == "LV" else None)
    lines += ["", "Bands: `BANDS` in benchmarks/phantom_stats.py (dice_margin: label vs render minus target, "
              "worst structure/phase; quality_share_error: worst class of either view; max_word_share: any "
              "structure)."]  # fmt: skip
    return "\n".join(lines)


# --- learnability -----------------------------------------------------------------------------------------


def prepared(out_dir: Path, patients: int, seed: int, size: tuple[int, int]) -> dict:
    """The phantom prepared at 64 px as `prepare` does, decoded per split (`synthecho.real.load_real`)."""
    from synthecho.layout import RunLayout
    from synthecho.real import SPLITS, load_real, record_row, write_split
    from synthecho.sources.camus import read_camus
    from synthecho.sources.phantom import write_phantom

    root = write_phantom(out_dir / "source", patients=patients, seed=seed, size=size, preview=False)
    rows = [record_row(record, RESOLUTION) for record in read_camus(root, name="phantom")]
    run = out_dir / "run"
    for split in SPLITS:
        write_split([row for row in rows if row["split"] == split], RunLayout.of(run).real_split(split))
    return {split: load_real(run, split) for split in SPLITS}


def quality_network():
    import torch.nn as nn

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()]

    return nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 32), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(32 * 4, 3))  # fmt: skip


def train_quality(train, validation, steps: int, seed: int) -> dict:
    """A 3-class quality CNN on real train frames (class-balanced batches); accuracy on validation."""
    import torch
    from scipy.stats import binomtest

    qualities = ("Good", "Medium", "Poor")
    targets = {name: np.array([qualities.index(r["image_quality"]) for r in split.records])
               for name, split in (("train", train), ("validation", validation))}  # fmt: skip
    torch.manual_seed(seed)
    network = quality_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(train.images.astype(np.float32) / 255.0)[:, None]
    weights = 1.0 / np.bincount(targets["train"], minlength=3)[targets["train"]]
    for _ in range(steps):
        batch = rng.choice(len(train), size=32, p=weights / weights.sum())
        network.train()
        loss = torch.nn.functional.cross_entropy(
            network(images[batch]), torch.from_numpy(targets["train"][batch])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(validation.images.astype(np.float32) / 255.0)[:, None])
    predicted = logits.argmax(dim=1).numpy()
    correct = int((predicted == targets["validation"]).sum())
    n = len(predicted)
    interval = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="exact")
    majority = np.bincount(targets["validation"], minlength=3).max() / n
    return {"accuracy": correct / n, "n": n, "ci": (interval.low, interval.high), "majority": float(majority)}


def learnability(patients: int, seed: int, size: tuple[int, int], steps: int) -> str:
    from synthecho.metrics import dice_per_image
    from synthecho.recipe import SegmenterConfig
    from synthecho.segmenter import load_segmenter, train_segmenter

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        splits = prepared(Path(tmp), patients, seed, size)
        config = SegmenterConfig(steps=steps, validate_every=max(steps // 8, 1))
        train_segmenter(config, splits["train"], splits["validation"], Path(tmp) / "segmenter", seed=seed,
                        progress=False)  # fmt: skip
        segmenter = load_segmenter(Path(tmp) / "segmenter")
        validation = splits["validation"]
        dice = dice_per_image(segmenter.predict(validation.images), validation.masks)
        mean = (dice["lv"] + dice["myo"] + dice["la"]) / 3
        quality = train_quality(splits["train"], validation, steps=max(steps, 300), seed=seed)
    classes = np.array([r["image_quality"] for r in validation.records])
    lines = [
        f"### Learnability: {patients} patients (seed {seed}), "
        f"{len(splits['train'])} train / {len(validation)} "
        f"validation frames at {RESOLUTION} px, {time.time() - started:.0f} s",
        "",
        "| quality | n | segmenter Dice (mean of LV, MYO, LA) | LV | MYO | LA |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("Good", "Medium", "Poor"):
        chosen = classes == name
        if chosen.any():
            cells = " | ".join(f"{dice[k][chosen].mean():.3f}" for k in ("lv", "myo", "la"))
            lines.append(f"| {name} | {int(chosen.sum())} | {mean[chosen].mean():.3f} | {cells} |")
    low, high = quality["ci"]
    lines += [
        "",
        f"Quality CNN (3 classes, class-balanced training): validation accuracy {quality['accuracy']:.1%} "
        f"(n={quality['n']}, 95 % Clopper-Pearson {low:.1%} to {high:.1%}); majority-class rate "
        f"{quality['majority']:.1%}, uniform chance 33.3 %.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(192, 160), metavar=("ROWS", "COLS"))
    parser.add_argument("--tree", type=Path, help="measure this CAMUS tree instead of writing a phantom")
    parser.add_argument("--learnability", action="store_true")
    parser.add_argument("--steps", type=int, default=400, help="--learnability: segmenter steps")
    args = parser.parse_args(argv)
    if args.learnability:
        print(learnability(args.patients, args.seed, tuple(args.size), args.steps))
        return 0
    if args.tree is not None:
        print(render_table(measure(args.tree), f"CAMUS tree {args.tree}"))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        started = time.process_time()
        root = write_cohort(Path(tmp), args.patients, args.seed, tuple(args.size))
        seconds = time.process_time() - started
        stats = measure(root, Path(tmp), args.seed)
    title = (
        f"Phantom (seed {args.seed}, {args.size[0]}x{args.size[1]}, "
        f"{seconds / args.patients:.2f} s CPU per patient)"
    )
    print(render_table(stats, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
