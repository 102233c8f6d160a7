"""Recipe sections that need a module of their own: the base of every section, and the downstream
study's section (`evaluate`: tasks, strategies and their controls, budgets, augmentation, the
confirmatory family). `synthecho.recipe` imports them from here; read them as part of the recipe schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synthecho.errors import SynthechoError


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SegmentationTaskConfig(Section):
    """Downstream U-Net (Echo from noise / DiffEcho family, scaled down; separate from the filter's)."""

    channels: list[int] = [16, 32, 64, 128]  # echo_from_noise: (2,4,...,256) x 8 levels at 256 px
    strides: list[int] = [2, 2, 2]
    num_res_units: int = 1
    steps: int | None = None  # None: evaluate.steps
    finetune_steps: int | None = None  # real fine-tuning after synthetic pretraining; None: evaluate.steps
    batch_size: int | None = None  # None: evaluate.batch_size
    learning_rate: float | None = None  # None: evaluate.learning_rate (Adam; echo_from_noise used 1e-3)
    validate_every: int | None = Field(None, ge=1)  # None: evaluate.validate_every (patience counts these)


class ClassificationTaskConfig(Section):
    """ED vs ES (DiffEcho's task) and 2CH vs 4CH: ResNet-18 (DiffEcho), or a small MONAI CNN."""

    # resnet18: torchvision's, as DiffEcho (11M parameters); small: MONAI's `Classifier` (strided residual
    # conv units, `channels` / `strides`; 0.2M parameters, ~9x cheaper per step on a CPU) — enough for the
    # phantom's coarse attributes, where 30 ResNet-18 steps left the real-only view classifier near chance.
    model: Literal["resnet18", "small"] = "resnet18"
    channels: list[int] = [16, 32, 64, 128]  # small only
    strides: list[int] = [2, 2, 2, 2]  # small only
    steps: int | None = None
    finetune_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    validate_every: int | None = Field(None, ge=1)
    # Frames larger than this are area-averaged to it before the network (None: the prepared size). ED/ES
    # and 2CH/4CH are coarse attributes, and a ResNet-18 step at 32 px costs ~1/4 of one at 64 px.
    input_size: int | None = Field(None, ge=8)
    # Local torchvision resnet18 state dict (.pth/.safetensors); nothing can be downloaded here, so the
    # default is random init. The RGB stem is averaged to 1 channel, the 1000-class head replaced.
    weights: str | None = None
    # True: ImageNet weights are an input of the study (DiffEcho's protocol), from `weights` or else the
    # environment variable `weights_env`; `check` and `build` refuse to start without them.
    pretrained: bool = False
    weights_env: str = "SYNTHECHO_RESNET18_WEIGHTS"

    @model_validator(mode="after")
    def _weights_need_resnet18(self):
        if self.model != "resnet18" and (self.weights or self.pretrained):
            raise ValueError(
                "weights and pretrained are ResNet-18 state dicts: set model to resnet18, or remove them"
            )
        if len(self.channels) != len(self.strides):
            raise ValueError(f"channels {self.channels} and strides {self.strides} need the same length")
        return self

    def resolved_weights(self) -> str | None:
        """The weights file the classifiers start from: `weights`, or with `pretrained` `$weights_env`;
        with `pretrained`, no such file is an error naming both keys and how to make the file."""
        weights = self.weights or (os.environ.get(self.weights_env) if self.pretrained else None) or None
        if self.pretrained and (weights is None or not Path(weights).expanduser().is_file()):
            where = f"{weights!r} does not exist" if weights else "no file is given"
            raise SynthechoError(
                f"evaluate.classification.pretrained needs ImageNet ResNet-18 weights, but {where}: set "
                f"evaluate.classification.weights or ${self.weights_env} to a local torchvision resnet18 "
                f'state dict (made where there is network: python -c "import torch, torchvision; '
                f"torch.save(torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), "
                f"'resnet18-imagenet.pth')\"), or set pretrained to false for random initialisation."
            )
        return weights


class ClipSegTaskConfig(Section):
    """CLIPSeg (transformers) with the P0-P7 per-structure prompts; skipped without local weights."""

    weights: str | None = None  # local folder with CLIPSegForImageSegmentation + CLIPSegProcessor files
    weights_env: str = "SYNTHECHO_CLIPSEG_WEIGHTS"  # used when `weights` is empty
    levels: list[int] = [0, 1, 2, 3, 4, 5, 6, 7]
    steps: int | None = None
    finetune_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None  # None: evaluate.learning_rate (Synthetic Boost: AdamW 2e-3)
    validate_every: int | None = Field(None, ge=1)

    @field_validator("levels")
    @classmethod
    def _prompt_levels(cls, value: list[int]) -> list[int]:
        if not value or any(level not in range(8) for level in value):
            raise ValueError(f"levels must be prompt levels 0..7 (P0-P7), got {value}")
        return value


class AugmentationConfig(Section):
    """The downstream augmentation policy: one for every strategy's training data
    (synthecho.downstream.augment).

    Defaults: Echo from noise's U-Net augmentation (rotation +-10 degrees, translation, scaling, gamma)
    within nnU-Net's default ranges (docs/references.md), plus gain and Gaussian noise. No flips: apical
    views have a fixed layout. A range of (1, 1), a None or a 0 turns that part off.
    """

    rotation_degrees: float = Field(10.0, ge=0, lt=90)  # rotation drawn from +-this
    translate: float = Field(0.1, ge=0, lt=0.5)  # shift drawn from +-this x the frame side, per axis
    scale: tuple[float, float] = (0.9, 1.1)  # isotropic zoom drawn from [low, high]
    gamma: tuple[float, float] | None = (0.7, 1.5)  # nnU-Net's gamma range (MONAI RandAdjustContrast)
    gain: tuple[float, float] | None = (0.85, 1.15)  # multiplicative brightness (RandScaleIntensity)
    noise_std: float = Field(0.03, ge=0, lt=0.5)  # Gaussian noise, std drawn from [0, this] per frame

    @field_validator("scale", "gamma", "gain")
    @classmethod
    def _ranges(cls, value):
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"expected (low, high) with 0 < low <= high, got {value}")
        return value


# The downstream strategies, in report order (synthecho.downstream.STRATEGIES); the warped ones are the
# row-paired controls of the synthetic ones.
Strategy = Literal[
    "real",
    "synthetic",
    "warped",
    "pretrain_finetune",
    "warped_pretrain_finetune",
    "real_plus_synthetic",
    "real_plus_warped",
]


class ConfirmatoryConfig(Section):
    """The confirmatory family, fixed before the study runs: at real-data cap `cap`, `strategy` against each
    of `versus`, on the per-patient mean foreground Dice (segmentation) and, for each classification
    task, on the per-patient mean probability of the true class. Only these are tested (exact sign-flip
    test over patients, Holm across the family); every other comparison is an effect with its interval.
    """

    cap: float = Field(0.25, gt=0, le=1)
    strategy: Strategy = "pretrain_finetune"
    versus: list[Strategy] = ["real", "warped_pretrain_finetune"]
    alpha: float = Field(0.05, gt=0, lt=1)


class EvaluateConfig(Section):
    enabled: bool = False
    tasks: list[Literal["segmentation", "phase", "view", "clipseg"]] = ["segmentation", "phase", "view"]
    # Each synthetic strategy runs beside its control (warped: the same rows' source frames warped by the
    # rows' mask_transform), so a gain is attributable to the generator rather than to the warping.
    strategies: list[Strategy] = list(get_args(Strategy))
    seeds: list[int] = [0, 1, 2]  # >= 3 seeds before any claim
    real_caps: list[float] = [1.0]
    steps: int = 200  # the most optimizer steps of one fit (early stopping usually ends it sooner)
    # None: every model trains for at most a fixed number of optimizer steps (`steps`, the CPU budget). Set:
    # a model trained on N rows runs at most ceil(epochs x N / batch size) steps, pretraining and
    # fine-tuning alike (the papers' budget: epochs over each training set).
    epochs: int | None = Field(None, ge=1)
    batch_size: int = 8
    learning_rate: float = 1e-3
    validate_every: int = Field(25, ge=1)  # model selection on real validation every N steps (and at the end)
    # Early stopping: a fit ends after this many validations in a row without a better score (None: the
    # whole budget). A run whose best validation is its last is reported as not converged.
    patience: int | None = Field(4, ge=1)
    augmentation: AugmentationConfig = AugmentationConfig()
    max_synthetic: int | None = None  # cap synthetic training rows (time budget); None = every passed row
    confirmatory: ConfirmatoryConfig = ConfirmatoryConfig()
    segmentation: SegmentationTaskConfig = SegmentationTaskConfig()
    classification: ClassificationTaskConfig = ClassificationTaskConfig()
    clipseg: ClipSegTaskConfig = ClipSegTaskConfig()

    @field_validator("real_caps")
    @classmethod
    def _caps_are_fractions(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < cap <= 1 for cap in value):
            raise ValueError(f"real_caps must be fractions in (0, 1] of the real train patients, got {value}")
        return value
