"""What the four generators (sdm, ddpm, sd, controlnet) share: the Sampler protocol and the helpers each uses.

- sampling: `Sampler`/`SampleBatch`, the sampler kinds and `make_scheduler`, per-row initial and step noise;
- data: checking a real split, its 5-class conditioning maps, frames as [-1, 1] tensors;
- training: the checkpoint fingerprint, the sample-grid reference rows, the diffusion loss target;
- saved folders: the descriptor `synthecho_generator.json` (written last: it marks a complete folder) and
  swapping a finished temp folder into place;
- pixel-space UNets (sdm, ddpm): the level checks, GroupNorm groups, attention heads, the noise schedule.
The latent-diffusion machinery of sd and controlnet is in `synthecho.generators.latent`.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from synthecho import labels as lab
from synthecho.errors import SynthechoError
from synthecho.io import read_json, sha256_json, write_json_atomic

SAMPLERS = ("dpmsolver++", "unipc", "ddim", "ddpm")
DESCRIPTOR_FILE = "synthecho_generator.json"
GRID_ROWS = 8  # rows of the sample grid every generator draws after training
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # torch names


# --- the sampler protocol ----------------------------------------------------------------------------


@dataclass
class SampleBatch:
    images: np.ndarray  # (B, H, W) uint8
    masks: np.ndarray | None  # (B, H, W) uint8 in 0..3 when the generator makes its own label maps


class Sampler(Protocol):
    kind: str  # "sdm", "ddpm", "sd", "controlnet"
    mask_source: str  # "conditioning" | "generated" | "segmenter"
    resolution: int
    uses_prompt: bool  # False for unconditional / label-map-only generators (their rows get prompt "")
    conditioned_on: tuple[str, ...]  # what it was trained to follow: "label_map", "prompt", "view", ...

    def sample(
        self,
        labels: np.ndarray | None,  # (B, H, W) uint8 5-class conditioning maps (synthecho.labels), or None
        prompts: list[str],  # image-level prompts (ignored when uses_prompt is False)
        seeds: list[int],  # one per row: the row's noise depends on its seed only
        *,
        sampler: str = "dpmsolver++",
        steps: int = 20,
        guidance_scale: float = 1.0,
        attributes: list[dict] | None = None,  # per row {"view": "2CH", "phase": "ED", ...} (class inputs)
    ) -> SampleBatch: ...


# --- class conditioning ------------------------------------------------------------------------------

# Attributes a generator can take as a class (CAMUS spelling, ClassLabel order of synthecho.schema).
CLASS_VALUES = {"view": ("2CH", "4CH"), "phase": ("ED", "ES"), "image_quality": ("Good", "Medium", "Poor")}


@dataclass(frozen=True)
class AttributeClasses:
    """The class index of a row's attributes, for a class embedding added to a UNet's time embedding.

    Mixed radix over `attributes` in order (view x phase: 2CH-ED 0, 2CH-ES 1, 4CH-ED 2, 4CH-ES 3). Index
    `count` is the null class: the unconditional branch that classifier-free guidance needs, which
    training reaches by dropping the class (with the label map or prompt) for a fraction of samples.
    """

    attributes: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [name for name in self.attributes if name not in CLASS_VALUES]
        if unknown or len(set(self.attributes)) != len(self.attributes):
            raise SynthechoError(
                f"generator.class_attributes {list(self.attributes)}: give distinct names out of "
                f"{list(CLASS_VALUES)}"
            )

    @property
    def count(self) -> int:
        return math.prod(len(CLASS_VALUES[name]) for name in self.attributes)

    @property
    def null(self) -> int:
        return self.count

    @property
    def embeddings(self) -> int:
        """Rows of the class embedding table: every class and the null class."""
        return self.count + 1

    def index(self, attributes: dict) -> int:
        index = 0
        for name in self.attributes:
            values = CLASS_VALUES[name]
            if attributes.get(name) not in values:
                raise SynthechoError(f"{name} {attributes.get(name)!r} is not one of {values}")
            index = index * len(values) + values.index(attributes[name])
        return index

    def indices(self, rows: list[dict]) -> np.ndarray:
        return np.array([self.index(row) for row in rows], dtype=np.int64)

    def sampling_indices(self, attributes: list[dict] | None, count: int, kind: str) -> np.ndarray:
        """The class of each of `count` rows to sample; a clear error unless one attributes dict per row."""
        if attributes is None or len(attributes) != count:
            raise SynthechoError(
                f"this {kind} generator has a class embedding of {list(self.attributes)}: sample() needs "
                f"one attributes dict per row (generate passes the plan's)"
            )
        return self.indices(attributes)

    def names(self) -> list[str]:
        """Class names in index order, e.g. ["2CH-ED", "2CH-ES", "4CH-ED", "4CH-ES"]."""
        import itertools

        return ["-".join(combo) for combo in itertools.product(*(CLASS_VALUES[n] for n in self.attributes))]


# --- sampling ----------------------------------------------------------------------------------------


def dtype_keyword(dtype) -> dict:
    """diffusers' `from_pretrained` dtype keyword: `dtype` from 0.40 on (which deprecates `torch_dtype`)."""
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype": dtype}


def resolve_dtype(dtype):
    """A torch dtype from a torch dtype, 'fp32'/'float32', 'bf16', 'fp16', or None/'auto' (float32)."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SynthechoError(f"precision must be one of {sorted(DTYPES)}, got {dtype!r}")
    return getattr(torch, DTYPES[dtype])


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
            f"{kind}.sample: labels have shape {labels.shape}, expected ({count}, {resolution}, "
            f"{resolution}) (one per seed)"
        )
    if labels.size and int(labels.max()) >= lab.NUM_CONDITION_CLASSES:
        raise SynthechoError(f"{kind}.sample: labels must be 5-class maps 0..4, got max {int(labels.max())}")
    return labels.astype(np.int64)


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


def step_noise_seed(seed: int) -> int:
    """Seed of a row's per-step noise: derived from its seed, unlike any other row's initial noise."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_generators(seeds: list[int]) -> list:
    """One CPU generator per row for a stochastic sampler's fresh noise at each step (rows independent)."""
    import torch

    return [torch.Generator("cpu").manual_seed(step_noise_seed(s)) for s in seeds]


# --- data and training -------------------------------------------------------------------------------


def check_real_split(real, name: str) -> int:
    """The frame size of a non-empty real split of square frames; else a clear error."""
    if real is None or len(real) == 0:
        raise SynthechoError(f"the real {name} split is empty: `prepare` produced no {name} records.")
    n, height, width = real.images.shape
    if height != width:
        raise SynthechoError(f"real {name} frames are {height}x{width}; generators need square frames.")
    return height


def condition_maps(real) -> np.ndarray:
    """(N, H, W) uint8 5-class maps of a RealSplit (its masks inside its sectors)."""
    return np.stack([lab.to_condition_labels(m, s) for m, s in zip(real.masks, real.sectors, strict=True)])


def signed_frames(frames: np.ndarray):
    """uint8 (B, H, W) -> (B, 1, H, W) float tensor in [-1, 1]."""
    import torch

    return torch.from_numpy(frames.astype(np.float32) / 127.5 - 1.0)[:, None]


def checkpoint_fingerprint(recipe, resolution: int, real_train, part: str | None = None) -> str:
    """What makes a checkpoint resumable: model config, optimisation settings, seed and data.

    `part` names one of several models trained in turn into their own checkpoint folders (vae, unet, ...).
    """
    train = recipe.train.model_dump(mode="json")
    for free in ("steps", "checkpoint_every", "grid_sampler_steps"):  # may change between resumes
        train.pop(free)
    if train["snr_gamma"] is None:  # unset, as before the option existed: earlier runs still resume
        train.pop("snr_gamma")
    fingerprint = sha256_json(
        {
            "generator": recipe.generator.model_dump(mode="json"),
            "train": train,
            "seed": recipe.seed,
            "resolution": resolution,
            "data": sha256_json(real_train.ids),
        }
    )
    return fingerprint if part is None else sha256_json([fingerprint, part])


def loss_target(noise_schedule, x, noise, timesteps):
    """What the denoiser learns to predict: the noise, or the velocity under v_prediction."""
    if noise_schedule.config.prediction_type == "v_prediction":
        return noise_schedule.get_velocity(x, noise, timesteps)
    return noise


def diffusion_loss(noise_schedule, prediction, x, noise, timesteps, snr_gamma: float | None = None):
    """The denoising loss: MSE between `prediction` and `loss_target`, or with `snr_gamma` each row
    weighted by min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v_prediction), as diffusers' training
    scripts do with `compute_snr` (Min-SNR-gamma weighting)."""
    import torch
    import torch.nn.functional as F

    target = loss_target(noise_schedule, x, noise, timesteps).float()
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_schedule, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    weights = clipped / (snr + 1 if noise_schedule.config.prediction_type == "v_prediction" else snr)
    per_row = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=tuple(range(1, target.ndim)))
    return (per_row * weights).mean()


def grid_reference(real_train, real_validation):
    """(split, picks): the validation split (the train split when there is none), GRID_ROWS spread rows."""
    reference = real_validation if real_validation is not None and len(real_validation) else real_train
    count = min(GRID_ROWS, len(reference))
    return reference, np.linspace(0, len(reference) - 1, count).round().astype(int)


# --- saved folders -----------------------------------------------------------------------------------


def replace_folder(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` onto `final`, removing what was there first (a folder, or a file)."""
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_descriptor(out_dir: Path, descriptor: dict[str, Any]) -> None:
    """Write `synthecho_generator.json`; callers write it last, so its presence marks a complete folder."""
    write_json_atomic(Path(out_dir) / DESCRIPTOR_FILE, descriptor)


def read_descriptor(generator_dir: Path, kind: str) -> dict[str, Any]:
    """The descriptor of a saved `kind` generator folder; a clear error for any other folder."""
    path = Path(generator_dir) / DESCRIPTOR_FILE
    if not path.is_file():
        raise SynthechoError(
            f"{path} is missing: {generator_dir} is not a trained generator folder (or its training was "
            f"interrupted before the save). Train it with `synthecho train <recipe>`, which writes "
            f"<run>/generator/, or give the folder that holds {DESCRIPTOR_FILE}."
        )
    descriptor = read_json(path)
    found = descriptor.get("kind")
    if found != kind:
        raise SynthechoError(
            f"{path} describes a {found!r} generator, not {kind!r}: load it with "
            f"synthecho.generators.get_generator({found!r}), or set generator.kind to {found!r}."
        )
    return descriptor


# --- pixel-space UNets (sdm, ddpm) -------------------------------------------------------------------

# check_unet_levels names of the pixel-space UNets: channels per level at frame resolution.
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


def norm_groups(channels: list[int]) -> int:
    """Largest GroupNorm group count <= 32 that divides every level's width (32 for (32, 64, 64))."""
    return min(32, math.gcd(*channels))


def head_channels(config) -> int:
    """Channels per attention head: the recipe's value, capped by the narrowest attended level."""
    attended = [c for c, a in zip(config.channels, config.attention, strict=True) if a] + [
        config.channels[-1]
    ]
    head = min(config.num_head_channels, *attended)  # the middle block (lowest level) always attends
    bad = [c for c in attended if c % head]
    if bad:
        raise SynthechoError(
            f"generator.num_head_channels {config.num_head_channels} must divide the width of every "
            f"attention level (channels {config.channels}, attention {config.attention}); {bad} do not "
            f"divide by {head}."
        )
    return head


def pixel_scheduler_config(config) -> dict[str, Any]:
    """The pixel-space noise schedule, saved with the sampling settings every sampler kind reads from it.

    Pixel-space models keep their x0 predictions inside the data range [-1, 1] (guided-diffusion's
    clip_denoised, which SDM samples with): `clip_sample` for DDPM/DDIM, `thresholding` with
    `sample_max_value` 1 (a plain clip to [-1, 1]) for DPM-Solver++/UniPC. Near the noisiest step of the
    cosine schedule alpha_bar is ~1e-9, so an unclipped x0 estimate multiplies any eps error by ~1e4.
    `trailing` spacing starts few-step samplers at the noisiest trained step.
    """
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
        thresholding=True,
        sample_max_value=1.0,
        timestep_spacing="trailing",
    )
    return plain_config(scheduler.config)


def save_pixel_generator(out_dir: Path, unets: dict, config, descriptor: dict[str, Any]) -> None:
    """The UNet folders (`unets`: folder name -> `save(folder)`, each written into a temp folder renamed
    into place), the noise schedule (every sampler is built from it), then the descriptor."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # The descriptor marks a complete folder: remove it first, so a save killed half-way never leaves an
    # old descriptor over new weights.
    (out_dir / DESCRIPTOR_FILE).unlink(missing_ok=True)
    for name, save_unet in unets.items():
        tmp = out_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed save
        save_unet(tmp)
        replace_folder(tmp, out_dir / name)
    write_json_atomic(out_dir / "scheduler" / "scheduler_config.json", pixel_scheduler_config(config))
    write_descriptor(out_dir, descriptor)


def pixel_sampling(name: str, steps: int, scheduler_config: dict, seeds: list[int], shape, device):
    """(scheduler, x, step keywords) to start a pixel-space sampling loop: each row's noise from its seed."""
    import inspect

    scheduler = make_scheduler(name, scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    x = row_noise(seeds, shape, device=device) * scheduler.init_noise_sigma
    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:  # stochastic samplers (ddpm)
        step_kwargs["generator"] = step_generators(seeds)
    return scheduler, x, step_kwargs


def pixel_frames(x) -> np.ndarray:
    """(B, C, H, W) float in [-1, 1] -> (B, H, W) uint8 frames from channel 0."""
    import torch

    return ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def row_masks(sampler: Sampler, result: SampleBatch, images: np.ndarray, conditioning_masks, segmenter):
    """The (B, H, W) 0..3 masks a batch of rows carries, by the sampler's `mask_source`: the
    conditioning masks it followed, the masks it drew itself, or the segmenter's labels of `images`."""
    if sampler.mask_source == "conditioning":
        return conditioning_masks
    if sampler.mask_source == "generated":
        if result.masks is None:
            raise SynthechoError(f"generator {sampler.kind} says mask_source 'generated' but returned none")
        return as_uint8(result.masks, 3)
    return segmenter.predict(images)


def as_uint8(array, high: int) -> np.ndarray:
    """Sampler output as uint8 in [0, high]; NaN/inf become 0 so degenerate rows are written, not fatal."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return np.minimum(array, high) if high < 255 else array
    return np.clip(np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=high, neginf=0), 0, high).astype(
        np.uint8
    )
