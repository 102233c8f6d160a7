"""Downstream segmentation: a MONAI 2-D U-Net, 4 classes, one architecture for every strategy.

The network is the Echo from noise / DiffEcho family (`monai.networks.nets.UNet`, 1 input channel,
background/LV/MYO/LA out), scaled by `evaluate.segmentation.{channels,strides,num_res_units}` — the
defaults are CPU-sized; echo_from_noise used 8 levels (2..256 channels) at 256 px. Loss: Dice + cross
entropy (MONAI `DiceCELoss`), Adam. Selection: best mean real-validation Dice (LV, MYO, LA). Reported
on the real test split, per image: Dice and HD95 (mm, the record's pixel spacing) for LV endocardium
(label 1), LV epicardium (1 ∪ 2) and LA (3), plus myocardium Dice.

It is trained from scratch here, separately from the filter's segmenter (`synthecho.segmenter`): one
network doing everything rewards what it likes. Only the architecture builder is shared.
"""

from __future__ import annotations

import numpy as np

from synthecho.downstream import augment, budget_settings, epoch_steps, fit, pick_device, seeded_init
from synthecho.downstream.stats import hd95
from synthecho.errors import SynthechoError
from synthecho.metrics import dice_per_image, epicardium
from synthecho.real import RealSplit

# Reported structures: name -> (Dice key of synthecho.metrics.dice_per_image, boolean mask of a label map).
STRUCTURES = {
    "lv_endo": ("lv", lambda labels: labels == 1),
    "lv_epi": ("epi", epicardium),
    "la": ("la", lambda labels: labels == 3),
}
STRUCTURE_TITLES = {"lv_endo": "LV endo", "lv_epi": "LV epi", "la": "LA"}


def segmentation_metrics(pred_labels: np.ndarray, test: RealSplit) -> dict:
    """Per-image Dice and HD95 of predicted label maps against the test masks.

    Returns {"per_image": {"dice_lv_endo", "dice_lv_epi", "dice_la", "dice_myo", "hd95_lv_endo", ...} ->
    lists of floats (one per test image, in test order), "summary": the means over images}. When the test
    split carries the phantom's truth, `truth_dice_*` give the same Dice against it: model error without
    the label noise of the test masks.
    """
    dice = dice_per_image(pred_labels, test.masks)
    per_image: dict[str, list[float]] = {}
    for name, (dice_key, _) in STRUCTURES.items():
        per_image[f"dice_{name}"] = dice[dice_key].tolist()
    per_image["dice_myo"] = dice["myo"].tolist()
    for name, (_, select) in STRUCTURES.items():
        per_image[f"hd95_{name}"] = [
            hd95(select(pred), select(target), (record["spacing_row_mm"], record["spacing_col_mm"]))
            for pred, target, record in zip(pred_labels, test.masks, test.records, strict=True)
        ]
    if test.truth is not None:
        truth = dice_per_image(pred_labels, test.truth)
        per_image.update({f"truth_dice_{name}": truth[key].tolist() for name, (key, _) in STRUCTURES.items()})
        per_image["truth_dice_myo"] = truth["myo"].tolist()
    summary = {key: float(np.mean(values)) for key, values in per_image.items()}
    summary["dice_mean"] = float(np.mean([summary[f"dice_{name}"] for name in STRUCTURES]))
    if test.truth is not None:
        summary["truth_dice_mean"] = float(np.mean([summary[f"truth_dice_{name}"] for name in STRUCTURES]))
    return {"summary": summary, "per_image": per_image}


def label_noise_dice(test: RealSplit) -> dict[str, float] | None:
    """Mean Dice of the test labels against the phantom's truth per structure (None without truth): the
    ceiling label noise puts on Dice against the labels."""
    if test.truth is None:
        return None
    dice = dice_per_image(test.masks, test.truth)
    keys = {name: key for name, (key, _) in STRUCTURES.items()} | {"myo": "myo"}
    return {name: float(dice[key].mean()) for name, key in keys.items()}


class SegmentationTask:
    """The `segmentation` task: build, train (select on real validation) and test the U-Net."""

    name = "segmentation"
    paired_metrics = tuple(f"dice_{name}" for name in STRUCTURES)  # Wilcoxon per structure

    def __init__(self, evaluate_config, validation: RealSplit, test: RealSplit, device: str | None = None):
        task = evaluate_config.segmentation
        self.architecture = {
            "channels": list(task.channels),
            "strides": list(task.strides),
            "num_res_units": task.num_res_units,
        }
        if len(task.channels) != len(task.strides) + 1:
            raise SynthechoError(
                f"evaluate.segmentation.channels ({len(task.channels)} levels) needs exactly one more entry "
                f"than evaluate.segmentation.strides ({len(task.strides)})."
            )
        divisor = int(np.prod(task.strides))
        if test.images.shape[1] % divisor or test.images.shape[2] % divisor:
            raise SynthechoError(
                f"evaluate.segmentation.strides multiply to {divisor}, which does not divide the frame size "
                f"{test.images.shape[1]}x{test.images.shape[2]}: use fewer or smaller strides."
            )
        self.steps = task.steps or evaluate_config.steps
        self.finetune_steps = task.finetune_steps or evaluate_config.steps
        self.batch_size = task.batch_size or evaluate_config.batch_size
        self.learning_rate = task.learning_rate or evaluate_config.learning_rate
        self.validate_every = evaluate_config.validate_every
        self.epochs, self.augmentation = evaluate_config.epochs, evaluate_config.augmentation
        self.validation, self.test = validation, test
        self.device = device or pick_device()
        self.settings = {
            "architecture": self.architecture,
            "steps": self.steps,
            "finetune_steps": self.finetune_steps,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "validate_every": self.validate_every,
            "loss": "DiceCELoss(softmax)",
            "optimizer": "Adam",
            **budget_settings(evaluate_config),
        }

    def new_model(self, seed: int):
        from synthecho.segmenter import build_unet

        return seeded_init(lambda: build_unet(self.architecture), seed).to(self.device)

    def predict(self, model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, H, W) uint8 -> (N, H, W) uint8 label maps (argmax), batched, no grad."""
        import torch

        out = np.zeros(images.shape, np.uint8)
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size].astype(np.float32) / 255.0)
                logits = model(batch[:, None].to(self.device))
                out[start : start + len(batch)] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return out

    def validation_score(self, model) -> float:
        dice = dice_per_image(self.predict(model, self.validation.images), self.validation.masks)
        return float(np.mean([dice[name].mean() for name in ("lv", "myo", "la")]))

    def fit(
        self,
        model,
        data: RealSplit,
        *,
        steps: int,
        seed: int,
        validate_at_start=False,
        progress=True,
        desc="",
    ):
        """Train on `data` (images + masks) for `steps`, keeping the best real-validation weights."""
        import torch
        from monai.losses import DiceCELoss

        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        images = data.images.astype(np.float32) / 255.0

        def step_loss(model, indices, rng):
            batch, masks = augment(images[indices], data.masks[indices], rng, self.augmentation)
            logits = model(torch.from_numpy(batch)[:, None].to(self.device))
            target = torch.from_numpy(masks.astype(np.int64))[:, None].to(self.device)
            return loss_function(logits, target)

        return fit(
            model,
            size=len(data),
            step_loss=step_loss,
            score=self.validation_score,
            steps=epoch_steps(self.epochs, len(data), self.batch_size, steps),
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            validate_every=self.validate_every,
            seed=seed,
            validate_at_start=validate_at_start,
            progress=progress,
            desc=desc or "segmentation",
        )

    def evaluate(self, model) -> dict:
        return segmentation_metrics(self.predict(model, self.test.images), self.test)
