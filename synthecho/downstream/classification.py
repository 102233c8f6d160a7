"""Downstream classification: ED vs ES (DiffEcho's task, both views pooled) and 2CH vs 4CH.

Model: torchvision `resnet18(weights=None, num_classes=2)` with a 1-channel stem (grayscale frames), or
with `evaluate.classification.model: small` MONAI's `Classifier` (the phantom recipes: ~9x cheaper).
DiffEcho fine-tuned ImageNet-pretrained networks; synthecho never downloads weights mid-build, so the
default is random initialisation. `evaluate.classification.weights` may name a local torchvision
resnet18 state dict (`.pth` via torch.load(weights_only=True), or `.safetensors`): its RGB stem kernels
are summed over the colour axis (the response to a gray image fed as three equal channels) and its
1000-class head is dropped. Adam, cross entropy, the study's augmentation policy; selection on
real-validation accuracy (DiffEcho: best-validation-accuracy epoch); reported on real test: accuracy and
macro precision / recall / F1, plus per image the correctness and the probability given to the true class
(`p_true`, the confirmatory family's measure: a smooth score where accuracy per patient moves in steps
of a quarter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthecho.downstream import DownstreamTask, seeded_init
from synthecho.downstream.stats import classification_metrics
from synthecho.errors import SynthechoError
from synthecho.real import RealSplit
from synthecho.schema import PHASES, VIEWS

# task name -> (record attribute, class names in ClassLabel order)
ATTRIBUTES = {"phase": ("phase", PHASES), "view": ("view", VIEWS)}
TASK_TITLES = {"phase": "Phase (ED vs ES)", "view": "View (2CH vs 4CH)"}


def labels_of(split: RealSplit, task: str) -> np.ndarray:
    """Integer class labels of a split for `task` ("phase" or "view")."""
    attribute, names = ATTRIBUTES[task]
    try:
        return np.asarray([names.index(record[attribute]) for record in split.records], dtype=np.int64)
    except ValueError as error:
        raise SynthechoError(f"{split.split}: a record has a {attribute} outside {names}: {error}") from None


def build_resnet18(weights: str | None = None):
    """ResNet-18, 2 classes, 1 input channel; optionally initialised from a local torchvision state dict."""
    import torch
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=2)
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise SynthechoError(
                f"evaluate.classification.weights {path} does not exist: point it at a local torchvision "
                f"resnet18 state dict, or leave it empty for random initialisation."
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        if "conv1.weight" in state and state["conv1.weight"].shape[1] == 3:
            state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise SynthechoError(
                f"{path} is not a torchvision resnet18 state dict (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})."
            )
    return model


def build_small_cnn(channels, strides, size: int):
    """MONAI's `Classifier` (residual conv units, one per level), 1 input channel, 2 classes."""
    from monai.networks.nets import Classifier

    return Classifier((1, size, size), 2, channels=tuple(channels), strides=tuple(strides), num_res_units=1)


class ClassificationTask(DownstreamTask):
    """`phase` or `view`: build, train (select on real validation accuracy) and test a classifier."""

    effect_metrics = ("p_true", "correct")  # per image; compared patient by patient

    def __init__(self, task: str, evaluate_config, validation: RealSplit, test: RealSplit, device=None):
        if task not in ATTRIBUTES:
            raise SynthechoError(f"classification task {task!r}: expected one of {', '.join(ATTRIBUTES)}")
        config = evaluate_config.classification
        super().__init__(evaluate_config, config, validation, test, device)
        self.name = task
        self.weights = config.resolved_weights()
        self.input_size = config.input_size
        self.validation_labels = labels_of(validation, task)
        self.test_labels = labels_of(test, task)
        self.model = config.model
        self.channels, self.strides = list(config.channels), list(config.strides)
        native = int(max(validation.images.shape[1:]))  # prepared frames are square
        self.size = min(self.input_size, native) if self.input_size else native
        small = f"MONAI Classifier, channels {self.channels}, strides {self.strides}, 1 residual unit"
        self.settings = {
            "model": "torchvision resnet18, 1-channel stem" if self.model == "resnet18" else small,
            "weights": self.weights,
            **({"input_size": self.input_size} if self.input_size else {}),
            **self.budget_settings(),
            "optimizer": "Adam",
        }

    def new_model(self, seed: int):
        if self.model == "small":
            return seeded_init(lambda: build_small_cnn(self.channels, self.strides, self.size), seed).to(
                self.device
            )
        return seeded_init(lambda: build_resnet18(self.weights), seed).to(self.device)

    def inputs(self, frames: np.ndarray):
        """Float frames in [0, 1] (B, H, W) -> the network's input (B, 1, h, w) on the device, area-averaged
        to `evaluate.classification.input_size` when they are larger."""
        import torch
        import torch.nn.functional as F

        batch = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
        if self.input_size and max(batch.shape[-2:]) > self.input_size:
            batch = F.interpolate(batch, size=(self.input_size, self.input_size), mode="area")
        return batch.to(self.device)

    def probabilities(self, model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(N, H, W) uint8 -> (N, 2) softmax over the task's classes, batched, no grad."""
        import torch

        out = np.zeros((len(images), 2), np.float64)
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                logits = model(self.inputs(images[start : start + batch_size] / 255.0)).float()
                out[start : start + len(logits)] = torch.softmax(logits, dim=1).cpu().numpy()
        return out

    def validate(self, model) -> float:
        predicted = self.probabilities(model, self.validation.images).argmax(axis=1)
        return float(np.mean(predicted == self.validation_labels))

    def batch_loss(self, model, data: RealSplit, indices: np.ndarray, rng: np.random.Generator):
        import torch

        frames, _ = self.augmentation(data.images[indices].astype(np.float32) / 255.0, None, rng)
        logits = model(self.inputs(frames))
        attribute, names = ATTRIBUTES[self.name]
        labels = torch.tensor([names.index(data.records[i][attribute]) for i in indices], device=self.device)
        return torch.nn.functional.cross_entropy(logits, labels)

    def evaluate(self, model) -> dict:
        probabilities = self.probabilities(model, self.test.images)
        predictions = probabilities.argmax(axis=1)
        summary = classification_metrics(self.test_labels, predictions, num_classes=2)
        correct = (predictions == self.test_labels).astype(np.float64)
        p_true = probabilities[np.arange(len(predictions)), self.test_labels]
        summary["p_true"] = float(p_true.mean())
        return {"summary": summary, "per_image": {"correct": correct.tolist(), "p_true": p_true.tolist()}}
