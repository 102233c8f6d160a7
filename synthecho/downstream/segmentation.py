"""Downstream segmentation: a MONAI 2-D U-Net, 4 classes, one architecture for every strategy.

The network is the Echo from noise / DiffEcho family (`monai.networks.nets.UNet`, 1 input channel,
background/LV/MYO/LA out), scaled by `evaluate.segmentation.{channels,strides,num_res_units}` — the
defaults are CPU-sized; echo_from_noise used 8 levels (2..256 channels) at 256 px. Loss: Dice + cross
entropy (MONAI `DiceCELoss`), Adam, the study's augmentation policy on frames and masks alike.
Selection: best mean real-validation Dice (LV, MYO, LA). Reported on the real test split, per image: Dice
and HD95 (mm, the record's pixel spacing) for LV endocardium (label 1), LV epicardium (1 ∪ 2) and LA (3),
myocardium Dice, and the mean foreground Dice (LV, MYO, LA: the confirmatory family's measure).

It is trained from scratch here, separately from the filter's segmenter (`synthecho.segmenter`): one
network doing everything rewards what it likes. Only the architecture builder is shared.
"""

from __future__ import annotations

import numpy as np

from synthecho.downstream import DownstreamTask, seeded_init
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
FOREGROUND = ("lv", "myo", "la")  # the labelled classes: their mean Dice is the "foreground Dice"
# Per-image values the study compares strategies on, patient by patient (the first is the primary one);
# the same against the phantom's truth where the test split has it.
EFFECT_METRICS = ("dice_foreground", *(f"dice_{name}" for name in STRUCTURES))
EFFECT_METRICS += tuple(f"truth_{name}" for name in EFFECT_METRICS)


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
    per_image["dice_foreground"] = np.mean([dice[key] for key in FOREGROUND], axis=0).tolist()
    for name, (_, select) in STRUCTURES.items():
        per_image[f"hd95_{name}"] = [
            hd95(select(pred), select(target), (record["spacing_row_mm"], record["spacing_col_mm"]))
            for pred, target, record in zip(pred_labels, test.masks, test.records, strict=True)
        ]
    if test.truth is not None:
        truth = dice_per_image(pred_labels, test.truth)
        per_image.update({f"truth_dice_{name}": truth[key].tolist() for name, (key, _) in STRUCTURES.items()})
        per_image["truth_dice_myo"] = truth["myo"].tolist()
        per_image["truth_dice_foreground"] = np.mean([truth[key] for key in FOREGROUND], axis=0).tolist()
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


class SegmentationTask(DownstreamTask):
    """The `segmentation` task: build, train (select on real validation) and test the U-Net."""

    name = "segmentation"
    effect_metrics = EFFECT_METRICS

    def __init__(self, evaluate_config, validation: RealSplit, test: RealSplit, device: str | None = None):
        task = evaluate_config.segmentation
        super().__init__(evaluate_config, task, validation, test, device)
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
        self.settings = {
            "architecture": self.architecture,
            **self.budget_settings(),
            "loss": "DiceCELoss(softmax)",
            "optimizer": "Adam",
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

    def validate(self, model) -> float:
        dice = dice_per_image(self.predict(model, self.validation.images), self.validation.masks)
        return float(np.mean([dice[name].mean() for name in FOREGROUND]))

    def batch_loss(self, model, data: RealSplit, indices: np.ndarray, rng: np.random.Generator):
        """Dice + CE of one augmented batch of `data`'s frames and masks."""
        import torch
        from monai.losses import DiceCELoss

        frames = data.images[indices].astype(np.float32) / 255.0
        batch, masks = self.augmentation(frames, data.masks[indices], rng)
        logits = model(torch.from_numpy(batch)[:, None].to(self.device))
        target = torch.from_numpy(masks.astype(np.int64))[:, None].to(self.device)
        return DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)

    def evaluate(self, model) -> dict:
        return segmentation_metrics(self.predict(model, self.test.images), self.test)
