"""Downstream classification: ED vs ES (DiffEcho's task, both views pooled) and 2CH vs 4CH.

Model: torchvision `resnet18(weights=None, num_classes=2)` with a 1-channel stem (grayscale frames).
DiffEcho fine-tuned ImageNet-pretrained networks; synthecho never downloads weights mid-build, so the
default is random initialisation. `evaluate.classification.weights` may name a local torchvision
resnet18 state dict (`.pth` via torch.load(weights_only=True), or `.safetensors`): its RGB stem kernels
are summed over the colour axis (the response to a gray image fed as three equal channels) and its
1000-class head is dropped. Adam, cross entropy, intensity jitter; selection on real-validation
accuracy (DiffEcho: best-validation-accuracy epoch); reported on real test: accuracy and macro
precision / recall / F1, plus per-image correctness for the paired tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthecho.downstream import augment, budget_settings, epoch_steps, fit, pick_device, seeded_init
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


class ClassificationTask:
    """`phase` or `view`: build, train (select on real validation accuracy) and test a ResNet-18."""

    paired_metrics = ("correct",)  # per-image correctness (fraction of seeds right) for Wilcoxon

    def __init__(self, task: str, evaluate_config, validation: RealSplit, test: RealSplit, device=None):
        if task not in ATTRIBUTES:
            raise SynthechoError(f"classification task {task!r}: expected one of {', '.join(ATTRIBUTES)}")
        config = evaluate_config.classification
        self.name = task
        self.steps = config.steps or evaluate_config.steps
        self.finetune_steps = config.finetune_steps or evaluate_config.steps
        self.batch_size = config.batch_size or evaluate_config.batch_size
        self.learning_rate = config.learning_rate or evaluate_config.learning_rate
        self.validate_every = evaluate_config.validate_every
        self.epochs, self.augmentation = evaluate_config.epochs, evaluate_config.augmentation
        self.weights = config.resolved_weights()
        self.validation, self.test = validation, test
        self.validation_labels = labels_of(validation, task)
        self.test_labels = labels_of(test, task)
        self.device = device or pick_device()
        self.settings = {
            "model": "torchvision resnet18, 1-channel stem",
            "weights": self.weights,
            "steps": self.steps,
            "finetune_steps": self.finetune_steps,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "validate_every": self.validate_every,
            "optimizer": "Adam",
            **budget_settings(evaluate_config),
        }

    def new_model(self, seed: int):
        return seeded_init(lambda: build_resnet18(self.weights), seed).to(self.device)

    def predict(self, model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        import torch

        out = np.zeros(len(images), np.int64)
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size].astype(np.float32) / 255.0)
                out[start : start + len(batch)] = (
                    model(batch[:, None].to(self.device)).argmax(dim=1).cpu().numpy()
                )
        return out

    def validation_score(self, model) -> float:
        return float(np.mean(self.predict(model, self.validation.images) == self.validation_labels))

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
        import torch

        labels = labels_of(data, self.name)
        images = data.images.astype(np.float32) / 255.0
        loss_function = torch.nn.CrossEntropyLoss()

        def step_loss(model, indices, rng):
            frames, _ = augment(images[indices], None, rng, self.augmentation)
            batch = torch.from_numpy(frames)[:, None].to(self.device)
            return loss_function(model(batch), torch.from_numpy(labels[indices]).to(self.device))

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
            desc=desc or self.name,
        )

    def evaluate(self, model) -> dict:
        predictions = self.predict(model, self.test.images)
        summary = classification_metrics(self.test_labels, predictions, num_classes=2)
        correct = (predictions == self.test_labels).astype(np.float64)
        return {"summary": summary, "per_image": {"correct": correct.tolist()}}
