"""What every generator's sampler offers to `generate`, `train`'s sample grid and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from synthecho import labels as lab
from synthecho.errors import SynthechoError

SAMPLERS = ("dpmsolver++", "unipc", "ddim", "ddpm")


def dtype_keyword(dtype) -> dict:
    """diffusers' `from_pretrained` dtype keyword: `dtype` from 0.40 on (which deprecates `torch_dtype`)."""
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype": dtype}


def plain_config(config) -> dict:
    """A scheduler config without diffusers' private keys (`_use_default_values`, `_class_name`, ...).

    Without `_use_default_values`, `from_config` applies every saved value to the target scheduler kind
    instead of silently falling back to that kind's defaults.
    """
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def check_sampling(sampler: str, steps: int) -> None:
    """The sampling arguments every Sampler.sample takes: a known sampler kind, at least one step."""
    if sampler not in SAMPLERS:
        raise SynthechoError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if steps < 1:
        raise SynthechoError(f"sampling steps must be >= 1, got {steps}")


def check_label_maps(labels, seeds, resolution: int, kind: str) -> np.ndarray:
    """One (resolution x resolution) 5-class conditioning map per seed, as int64; else a clear error."""
    if labels is None:
        raise SynthechoError(f"the {kind} generator needs conditioning label maps (labels=None given)")
    labels = np.asarray(labels)
    count = len(seeds) if seeds is not None else -1
    if labels.shape != (count, resolution, resolution):
        raise SynthechoError(
            f"{kind}.sample: labels have shape {labels.shape}, expected ({count}, {resolution}, {resolution}) "
            f"(one per seed)"
        )
    if labels.size and int(labels.max()) >= lab.NUM_CONDITION_CLASSES:
        raise SynthechoError(f"{kind}.sample: labels must be 5-class maps 0..4, got max {int(labels.max())}")
    return labels.astype(np.int64)


# check_unet_levels names of the pixel-space UNets (sdm, ddpm): channels per level at frame resolution.
PIXEL_UNET_NAMES = ("generator.channels", "resolution", "prepare.resolution or generator.channels")


def check_unet_levels(attention: list[bool], channels: list[int], size: int, *, names: tuple[str, str, str]):
    """What every from-config UNet needs: one attention flag per level, a size its levels can halve.

    `names` = (the channels key, what `size` is, the keys that change it), for the error messages.
    """
    channels_key, size_name, fix = names
    if len(attention) != len(channels):
        raise SynthechoError(
            f"generator.attention has {len(attention)} entries but {channels_key} has {len(channels)}: "
            f"give one true/false per level."
        )
    factor = 2 ** (len(channels) - 1)
    if size % factor:
        raise SynthechoError(
            f"{size_name} {size} is not divisible by {factor} ({len(channels)} UNet levels): change {fix}."
        )


@dataclass
class SampleBatch:
    images: np.ndarray  # (B, H, W) uint8
    masks: np.ndarray | None  # (B, H, W) uint8 in 0..3 when the generator makes its own label maps


class Sampler(Protocol):
    kind: str  # "sdm", "ddpm", "sd", "controlnet"
    mask_source: str  # "conditioning" | "generated" | "segmenter"
    resolution: int
    uses_prompt: bool  # False for unconditional / label-map-only generators (their rows get prompt "")

    def sample(
        self,
        labels: np.ndarray | None,  # (B, H, W) uint8 5-class conditioning maps (synthecho.labels), or None
        prompts: list[str],  # image-level prompts (ignored when uses_prompt is False)
        seeds: list[int],  # one per row: the row's noise depends on its seed only
        *,
        sampler: str = "dpmsolver++",
        steps: int = 20,
        guidance_scale: float = 1.0,
    ) -> SampleBatch: ...


def make_scheduler(name: str, config: dict):
    """A diffusers scheduler of kind `name` from a saved scheduler config (any trained model can use any)."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def row_noise(seeds: list[int], shape: tuple[int, ...], device="cpu", dtype=None):
    """Initial noise for a batch, each row from its own seed (independent of batch composition)."""
    import torch

    rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype or torch.float32)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
