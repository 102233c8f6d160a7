"""Dataset-level FID and KID through clean-fid.

Two feature spaces, always labelled, never mixed:

- "domain": the filtering segmenter's encoder at the native resolution, pooled to <= 64 numbers
  (`Segmenter.features`). Always available; with few hundred images a 64-dimensional covariance is still
  well-conditioned, which a 2048-dimensional Inception one is not.
- "inception": clean-fid's own Inception-V3 (the torchscript `inception-2015-12-05.pt`, "clean" resize to
  299 px) when that weights file exists locally. clean-fid would download it; synthecho never downloads
  weights mid-build, so the path comes from the recipe key `filter.inception_weights` or the environment
  variable it names, and its absence is reported in plain words instead of a number.

Both go through clean-fid's `fid_from_feats` and `kernel_distance`. KID draws its random subsets from
numpy's global RNG, so it is seeded here: the same features give the same KID on every run. KID is
unbiased, so it is the headline number at small N; FID is biased upwards when N is small.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

INCEPTION_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W loads from a folder


def kid(
    real_features: np.ndarray,
    synthetic_features: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (clean-fid's cubic polynomial kernel): (mean, std over subsets).

    clean-fid's `kernel_distance` returns the mean over subsets only; calling it once per subset, after
    seeding numpy's global RNG once, draws exactly the same subsets as one call with `subsets` subsets,
    so the mean is clean-fid's number and the spread comes for free. The caller's global RNG state is
    restored afterwards.
    """
    from cleanfid.fid import kernel_distance

    size = min(subset_size, len(real_features), len(synthetic_features))
    if size < 2:
        raise ValueError(
            f"KID needs at least 2 images on each side, got {len(real_features)} real and "
            f"{len(synthetic_features)} synthetic"
        )
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        values = np.array(
            [
                kernel_distance(real_features, synthetic_features, num_subsets=1, max_subset_size=size)
                for _ in range(subsets)
            ]
        )
    finally:
        np.random.set_state(state)
    return float(values.mean()), float(values.std(ddof=1) if subsets > 1 else 0.0)


def fid(real_features: np.ndarray, synthetic_features: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (clean-fid's `fid_from_feats`)."""
    import contextlib
    import io
    import warnings

    from cleanfid.fid import fid_from_feats
    from scipy.linalg import LinAlgWarning

    if min(len(real_features), len(synthetic_features)) < 2:
        raise ValueError("FID needs at least 2 images on each side (a covariance)")
    # With fewer images than dimensions the covariances are singular: scipy warns and clean-fid prints a
    # note while it regularises. That is the known small-N bias of FID (why KID is the headline), not an
    # error, so keep the output clean.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)
        return float(fid_from_feats(real_features, synthetic_features))


def compare(
    real_features: np.ndarray,
    synthetic_features: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 50,
    seed: int = 0,
) -> dict:
    """{fid, kid_mean, kid_std, kid_subset_size, n_real, n_synthetic}; None values when a side has < 2
    images (a split with almost every row rejected has no distribution to compare)."""
    size = min(subset_size, len(real_features), len(synthetic_features))
    result = {"n_real": int(len(real_features)), "n_synthetic": int(len(synthetic_features))}
    if size < 2:
        return {**result, "fid": None, "kid_mean": None, "kid_std": None, "kid_subset_size": size}
    kid_mean, kid_std = kid(
        real_features, synthetic_features, subsets=subsets, subset_size=subset_size, seed=seed
    )
    return {
        **result,
        "fid": fid(real_features, synthetic_features),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": size,
    }


# --- Inception features (only when the weights file is present) -------------------------------------


def resolve_inception_weights(weights: str | None, env: str) -> tuple[Path | None, str]:
    """The local Inception weights file and a plain note saying where it came from or why it is absent."""
    if weights:
        origin, value = "filter.inception_weights", weights
    elif os.environ.get(env):
        origin, value = f"${env}", os.environ[env]
    else:
        return None, (
            f"Inception features not computed: weights file not found (set filter.inception_weights or "
            f"${env} to a local copy of clean-fid's {INCEPTION_FILE}); synthecho does not download weights."
        )
    path = Path(value).expanduser()
    if not path.is_file():
        return None, (
            f"Inception features not computed: {path} (from {origin}) does not exist; point it at a local "
            f"copy of clean-fid's {INCEPTION_FILE}."
        )
    return path, f"Inception features from {path.name} (clean-fid torchscript Inception-V3, clean resize)."


class InceptionFeatures:
    """clean-fid's Inception-V3 loaded once from a local file: `extractor(images)` -> (N, 2048) float64.

    Uses clean-fid's own model class (`InceptionV3W`, without its download) and its "clean" resizer
    (PIL bicubic on float values to 299 x 299), with the grey channel repeated three times as clean-fid
    does when it reads a grayscale PNG with `.convert("RGB")`.
    """

    def __init__(self, weights: Path, device: str = "cpu", batch_size: int = 32):
        import tempfile

        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        with tempfile.TemporaryDirectory() as folder:
            # InceptionV3W loads `<folder>/inception-2015-12-05.pt`: a link lets the file have any name.
            (Path(folder) / INCEPTION_FILE).symlink_to(Path(weights).resolve())
            self.model = InceptionV3W(folder, download=False, resize_inside=False).to(device).eval()
        self.resize = build_resizer("clean")
        self.device = device
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        features = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [
                    self.resize(np.repeat(image[:, :, None], 3, axis=2)).transpose(2, 0, 1)
                    for image in images[start : start + self.batch_size]
                ]
                tensor = torch.from_numpy(np.stack(batch).astype(np.float32)).to(self.device)
                features.append(self.model(tensor).double().cpu().numpy())
        return np.concatenate(features) if features else np.zeros((0, 2048), np.float64)


# --- a corpus against the real splits ------------------------------------------------------------


def _compare_or_note(real: np.ndarray, synthetic: np.ndarray, config, seed: int) -> dict:
    values = compare(
        real, synthetic, subsets=config.kid_subsets, subset_size=config.kid_subset_size, seed=seed
    )
    if values["kid_mean"] is None:  # fewer than 2 rows on a side: say so instead of a number
        return {
            "n_real": values["n_real"],
            "n_synthetic": values["n_synthetic"],
            "note": "fewer than 2 rows on a side: no distribution to compare",
        }
    return values


def feature_space_metrics(
    real: dict[str, np.ndarray], synthetic: dict[str, list], config, seed: int
) -> tuple[dict, dict]:
    """One feature space: ({split: ..., "overall": ...}, real train vs real validation).

    Each split's passed rows are compared with the real split of the same name; "overall" pools every
    split on both sides. `synthetic` maps split -> list of (n, d) feature blocks (possibly empty).
    """
    width = real["train"].shape[1]

    def stack(splits) -> np.ndarray:
        blocks = [block for split in splits for block in synthetic[split]]
        return np.concatenate(blocks) if blocks else np.zeros((0, width))

    result = {split: _compare_or_note(real[split], stack([split]), config, seed) for split in synthetic}
    everything = np.concatenate([real[split] for split in synthetic])
    result["overall"] = _compare_or_note(everything, stack(list(synthetic)), config, seed)
    reference = _compare_or_note(real["train"], real["validation"], config, seed)
    return result, reference
