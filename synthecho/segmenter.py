"""The filtering segmenter: a MONAI 2-D U-Net trained on the real train split.

Later stages use it for three things:
- mask consistency: its prediction on a generated image vs the row's mask (Dice per structure);
- masks for generators that make none;
- domain features for FID/KID: the deepest encoder activation, pooled to <= 64 numbers per image.

It is deliberately separate from the downstream evaluation models (one network doing everything rewards
what it likes). Training (the shared loop, `synthecho.fitting`) keeps the weights with the best mean
validation Dice (LV, MYO, LA) on the real validation split; that Dice is recorded in `metrics.json` and
goes into the manifest.

Folder layout (`<run>/segmenter/`): `model.safetensors` (best weights), `config.json` (architecture +
resolution, enough to rebuild the network), `metrics.json`, `training_curve.png`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthecho.errors import SynthechoError
from synthecho.io import atomic_path, read_json, write_bytes_atomic, write_json_atomic
from synthecho.labels import NUM_MASK_CLASSES
from synthecho.metrics import dice_per_image
from synthecho.real import RealSplit
from synthecho.recipe import SegmenterConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"
STRUCTURE_NAMES = ("lv", "myo", "la")

# Augmentation ranges. They keep the anatomy where it is: apical views have a fixed layout (apex at the
# top, LA at the bottom, 4CH right heart on a fixed side), so no flips and no rotations, only small
# shifts and the brightness changes that gain/TGC settings produce.
MAX_SHIFT_FRACTION = 0.05  # of the image side
GAMMA_LOG_RANGE = 0.25  # gamma in [exp(-0.25), exp(0.25)] ~ [0.78, 1.28]
CONTRAST_RANGE = (0.85, 1.15)  # multiplicative, so the black outside of the sector stays black


def build_unet(architecture: dict):
    """The MONAI UNet described by a config.json `architecture` dict."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=NUM_MASK_CLASSES,
        channels=tuple(architecture["channels"]),
        strides=tuple(architecture["strides"]),
        num_res_units=architecture["num_res_units"],
    )


def encoder_blocks(unet) -> list:
    """The encoder path of a MONAI UNet as a list of modules: [down_0, down_1, ..., bottom].

    MONAI nests its UNet: `unet.model = Sequential(down_0, SkipConnection(inner), up_0)` where `inner` is
    again `Sequential(down_1, SkipConnection(...), up_1)` and the innermost SkipConnection wraps the bottom
    block. Applying the blocks in order reproduces exactly the activations of a full forward pass
    (checked in tests with a forward hook), without paying for the decoder.
    """
    import torch
    from monai.networks.layers import SkipConnection

    blocks = []
    node = unet.model
    while True:
        down, skip = node[0], node[1]
        if not isinstance(skip, SkipConnection):
            raise TypeError(f"unexpected MONAI UNet layout: {type(skip).__name__} where a SkipConnection was")
        blocks.append(down)
        inner = skip.submodule
        # An inner level is a 3-item Sequential (down, SkipConnection, up); anything else is the bottom
        # (a ResidualUnit, or a Convolution - itself a Sequential - when num_res_units is 0).
        if (
            isinstance(inner, torch.nn.Sequential)
            and len(inner) == 3
            and isinstance(inner[1], SkipConnection)
        ):
            node = inner
        else:
            blocks.append(inner)  # the bottom block: the deepest encoder level
            return blocks


def _to_input(images: np.ndarray):
    """(N, H, W) uint8 -> (N, 1, H, W) float32 tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)[:, None]


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Segmenter:
    """A trained segmenter: batched, gradient-free inference on (N, H, W) uint8 frames."""

    def __init__(self, model, config: dict, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.resolution: int = int(config["resolution"])
        strides = config["architecture"]["strides"]
        self._divisor = int(np.prod(strides))

    def _check(self, images: np.ndarray, *, exact_resolution: bool = False) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 3:
            raise SynthechoError(
                f"segmenter expects a (N, H, W) stack of grayscale frames, got shape {images.shape}"
            )
        height, width = images.shape[1:]
        if exact_resolution and (height, width) != (self.resolution, self.resolution):
            raise SynthechoError(
                f"segmenter features are defined at the training resolution "
                f"{self.resolution}x{self.resolution}, got {height}x{width}: resize the frames (or use the "
                f"run's prepare.resolution)."
            )
        if height % self._divisor or width % self._divisor:
            raise SynthechoError(
                f"frame size {height}x{width} is not divisible by {self._divisor} (the U-Net's total "
                f"stride); the segmenter was trained at {self.resolution}x{self.resolution}."
            )
        return images

    def _batches(self, images: np.ndarray, batch_size: int):
        """(start index, input tensor on the device) for consecutive batches."""
        for start in range(0, len(images), batch_size):
            yield start, _to_input(images[start : start + batch_size]).to(self.device)

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, H, W) uint8 -> (N, 4, H, W) float32 softmax over background, LV, MYO, LA."""
        import torch

        images = self._check(images)
        out = np.zeros((len(images), NUM_MASK_CLASSES, *images.shape[1:]), np.float32)
        with torch.inference_mode():
            for start, batch in self._batches(images, batch_size):
                out[start : start + len(batch)] = (
                    torch.softmax(self.model(batch).float(), dim=1).cpu().numpy()
                )
        return out

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, H, W) uint8 -> (N, H, W) uint8 label maps 0..3 (argmax of the logits)."""
        import torch

        images = self._check(images)
        out = np.zeros(images.shape, np.uint8)
        with torch.inference_mode():
            for start, batch in self._batches(images, batch_size):
                out[start : start + len(batch)] = (
                    self.model(batch).argmax(dim=1).to(torch.uint8).cpu().numpy()
                )
        return out

    def features(self, images: np.ndarray, dims: int = 64, batch_size: int = 32) -> np.ndarray:
        """Domain features for FID/KID: (N, H, W) uint8 -> (N, min(dims, C)) float64.

        The deepest encoder activation (C channels at 1/stride of the frame) is averaged over space, one
        number per channel. When C > dims, adjacent channel groups are averaged down to `dims` numbers
        (np.array_split of the channel axis: deterministic, no random projection, so the same images give
        the same features on every machine and run).

        Why <= 64 dimensions: FID fits a d x d covariance to each image set. With a few hundred images and
        d = 2048 (Inception) the estimate is rank-deficient and its matrix square root is dominated by
        noise; d <= 64 keeps several samples per dimension, so the covariances are well-conditioned.
        Frames must be at the training resolution (features are only comparable at one scale).
        """
        import torch

        if dims < 1:
            raise SynthechoError(f"features: dims must be >= 1, got {dims}")
        images = self._check(images, exact_resolution=True)
        blocks = encoder_blocks(self.model)
        pooled = []
        with torch.inference_mode():
            for _, batch in self._batches(images, batch_size):
                activation = batch
                for block in blocks:
                    activation = block(activation)
                pooled.append(activation.float().mean(dim=(2, 3)).double().cpu().numpy())
        channels = pooled[0].shape[1] if pooled else int(self.config["architecture"]["channels"][-1])
        features = np.concatenate(pooled) if pooled else np.zeros((0, channels), np.float64)
        if channels <= dims:
            return features
        groups = np.array_split(np.arange(channels), dims)
        return np.stack([features[:, group].mean(axis=1) for group in groups], axis=1)


def load_segmenter(folder: Path, device: str = "cpu") -> Segmenter:
    """Rebuild the network from `config.json` and load `model.safetensors` (safetensors: no pickle)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, model_path = folder / CONFIG_FILE, folder / MODEL_FILE
    if not config_path.is_file() or not model_path.is_file():
        raise SynthechoError(
            f"{folder} is not a trained segmenter (needs {CONFIG_FILE} and {MODEL_FILE}): "
            f"run `synthecho train --recipe ...` first."
        )
    config = read_json(config_path)
    device = _pick_device(device)
    model = build_unet(config["architecture"])
    model.load_state_dict(load_file(str(model_path), device="cpu"))
    return Segmenter(model, config, device=device)


def _augment(
    images: np.ndarray, masks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy-preserving augmentation of a batch: float images in [0, 1] (B, H, W) and label maps.

    1. gamma and contrast jitter (multiplicative: the outside of the sector stays exactly zero);
    2. a small translation, zero-filled (background in the mask), never a flip or rotation.
    """
    count, height, width = images.shape
    gamma = np.exp(rng.uniform(-GAMMA_LOG_RANGE, GAMMA_LOG_RANGE, size=(count, 1, 1)))
    contrast = rng.uniform(*CONTRAST_RANGE, size=(count, 1, 1))
    images = np.clip(images**gamma * contrast, 0.0, 1.0).astype(np.float32)

    max_shift = int(round(MAX_SHIFT_FRACTION * min(height, width)))
    if max_shift == 0:
        return images, masks
    shifts = rng.integers(-max_shift, max_shift + 1, size=(count, 2))
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift))
    padded_images, padded_masks = np.pad(images, pad), np.pad(masks, pad)
    out_images, out_masks = np.empty_like(images), np.empty_like(masks)
    for i, (dy, dx) in enumerate(shifts):
        rows = slice(max_shift - dy, max_shift - dy + height)
        cols = slice(max_shift - dx, max_shift - dx + width)
        out_images[i], out_masks[i] = padded_images[i, rows, cols], padded_masks[i, rows, cols]
    return out_images, out_masks


def _validation_dice(segmenter: Segmenter, split: RealSplit) -> dict[str, float]:
    """Mean over images of the per-image Dice of each structure, and their mean (the selection score)."""
    per_image = dice_per_image(segmenter.predict(split.images), split.masks)
    scores = {name: float(per_image[name].mean()) for name in STRUCTURE_NAMES}
    scores["mean"] = float(np.mean([scores[name] for name in STRUCTURE_NAMES]))
    return scores


class _Training:
    """The segmenter as a `synthecho.fitting.Task`: augmented Dice + CE batches, validation Dice."""

    def __init__(self, segmenter: Segmenter, validation: RealSplit):
        from monai.losses import DiceCELoss

        self.segmenter, self.validation = segmenter, validation
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def batch_loss(self, model, data: tuple[np.ndarray, np.ndarray], indices, rng):
        import torch

        images, masks = _augment(data[0][indices], data[1][indices], rng)
        logits = model(torch.from_numpy(images)[:, None].to(self.segmenter.device))
        return self.loss(logits, torch.from_numpy(masks.astype(np.int64))[:, None].to(self.segmenter.device))

    def validate(self, model) -> dict[str, float]:
        return _validation_dice(self.segmenter, self.validation)


def _check_split(split: RealSplit, name: str) -> None:
    if len(split) == 0 or split.images.ndim != 3:
        raise SynthechoError(
            f"segmenter: the real {name} split is empty; `prepare` must produce {name} frames."
        )
    if split.images.shape != split.masks.shape:
        raise SynthechoError(
            f"segmenter: {name} images {split.images.shape} and masks {split.masks.shape} differ"
        )
    if split.masks.max() >= NUM_MASK_CLASSES:
        raise SynthechoError(
            f"segmenter: {name} masks hold label {int(split.masks.max())}; expected 0..3 (CAMUS)"
        )


def _write_curve(path: Path, losses: list[float], validations: list[dict], best_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = np.arange(1, len(losses) + 1)
    loss_axis.plot(steps, losses, color="0.7", linewidth=0.8, label="batch")
    window = max(1, len(losses) // 20)
    if len(losses) >= window:
        smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
        loss_axis.plot(steps[window - 1 :], smoothed, color="C0", label=f"mean of {window}")
    loss_axis.set(xlabel="step", ylabel="Dice + CE loss", title="training loss")
    loss_axis.legend()
    val_steps = [entry["step"] for entry in validations]
    for name in (*STRUCTURE_NAMES, "mean"):
        dice_axis.plot(val_steps, [entry[name] for entry in validations], marker="o", label=name)
    dice_axis.axvline(best_step, color="k", linestyle=":", label=f"best (step {best_step})")
    dice_axis.set(xlabel="step", ylabel="Dice", title="real validation Dice", ylim=(0, 1))
    dice_axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def train_segmenter(
    config: SegmenterConfig,
    real_train: RealSplit,
    real_validation: RealSplit,
    out_dir: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    device: str = "auto",
) -> dict:
    """Train the U-Net on real train frames, keep the best weights on real validation Dice, save them.

    Returns (and writes to `metrics.json`): {"validation_dice": {"lv", "myo", "la", "mean"}, "best_step",
    "steps", "seconds", "seconds_per_step", "history": [{step, lv, myo, la, mean}, ...]}.
    Seeded: the same inputs, seed and device give the same weights on CPU.
    """
    import torch
    from safetensors.torch import save

    from synthecho.fitting import Budget, fit

    # 1. Check inputs and fix the architecture (resolution comes from the prepared frames).
    _check_split(real_train, "train")
    _check_split(real_validation, "validation")
    height, width = real_train.images.shape[1:]
    if height != width or real_validation.images.shape[1:] != (height, width):
        raise SynthechoError(
            f"segmenter: frames must be square and equal across splits, got train {height}x{width} and "
            f"validation {real_validation.images.shape[1]}x{real_validation.images.shape[2]}"
        )
    if len(config.channels) != len(config.strides) + 1:
        raise SynthechoError(
            f"segmenter.channels ({len(config.channels)} levels) needs exactly one more entry than "
            f"segmenter.strides ({len(config.strides)}); e.g. channels [16, 32, 64, 128], strides [2, 2, 2]."
        )
    divisor = int(np.prod(config.strides))
    if height % divisor:
        raise SynthechoError(
            f"segmenter: resolution {height} is not divisible by the U-Net total stride {divisor}"
        )
    architecture = {
        "channels": list(config.channels),
        "strides": list(config.strides),
        "num_res_units": config.num_res_units,
    }
    device = _pick_device(device)

    # 2. Seeded model (fork_rng: the caller's global torch RNG is left untouched); data order and
    #    augmentation draw from the loop's generator, seeded with the same seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_unet(architecture).to(device)
    segmenter = Segmenter(model, {"architecture": architecture, "resolution": height}, device=device)

    # 3. Train; validate every `validate_every` steps and at the end, keeping the best weights.
    budget = Budget(
        config.steps, config.batch_size, config.learning_rate, validate_every=config.validate_every
    )
    data = (real_train.images.astype(np.float32) / 255.0, real_train.masks)
    result = fit(model, _Training(segmenter, real_validation), data, budget, seed=seed, size=len(real_train),
                 select="mean", progress=progress, desc="segmenter", profile="segmenter")  # fmt: skip
    best, best_step, losses = result.validation, result.best_step, result.losses
    best_state = {name: value.detach().cpu() for name, value in model.state_dict().items()}  # loaded back

    # 4. Save: weights and config first, metrics last (a folder with metrics.json is complete).
    #    One metadata key only: safetensors writes its metadata map in hash order, so two keys would make
    #    the file bytes (and the manifest's sha256) differ between identical trainings.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / MODEL_FILE, save(best_state, metadata={"format": "pt"}))
    import monai

    saved_config = {
        "architecture": {"class": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1,
                         "out_channels": NUM_MASK_CLASSES, **architecture},
        "resolution": height,
        "input": "grayscale uint8 frame / 255, shape (N, 1, H, W)",
        "labels": {"0": "background", "1": "lv", "2": "myo", "3": "la"},
        "monai_version": monai.__version__,
        "training": {**config.model_dump(mode="json"), "seed": seed, "device": device},
    }  # fmt: skip
    write_json_atomic(out_dir / CONFIG_FILE, saved_config)
    _write_curve(out_dir / CURVE_FILE, losses, result.history, best_step)
    metrics = {
        "validation_dice": {name: best[name] for name in (*STRUCTURE_NAMES, "mean")},
        "best_step": best_step,
        "steps": config.steps,
        "seconds": result.seconds,
        "seconds_per_step": round(result.seconds / config.steps, 5),
        "final_loss": losses[-1],
        "n_train": len(real_train),
        "n_validation": len(real_validation),
        "history": result.history,
    }
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    return metrics
