"""`controlnet`: a ControlNet on the 5-class label map + the image-level prompt, over a Stable Diffusion base.

- **Fine-tune** (`generator.base_model` set): the base (VAE, text encoder, UNet) is frozen and only the
  ControlNet trains, initialised from the base UNet's encoder (`ControlNetModel.from_unet`), as DiffEcho
  trained its SD 1.5 ControlNet.
- **From config** (`base_model: null`): three phases, in order: the small VAE (`vae_steps`), the base UNet
  as a text-to-image model (`base_steps`, trained as the `sd` generator trains its UNet), then the
  ControlNet with that base frozen (`train.steps`); `synthecho.generators.latent` holds the machinery the
  phases share with `sd`. Sequential rather than joint because (1) ControlNet's zero-initialised
  residuals are designed to steer a denoiser that already works: trained jointly, the base would learn to
  lean on the label map and the pipeline's text-only branch would be meaningless; (2) `from_unet` then
  copies a trained encoder, so the ControlNet starts from useful features instead of noise; (3) each
  phase resumes from its own checkpoints (checkpoints/vae, checkpoints/unet, checkpoints/controlnet).

Class conditioning (`class_attributes`, e.g. [view, phase]): the label map outlines LV, MYO and LA only,
so it does not say whether a right heart belongs in the frame (4CH) or not (2CH), and the prompt's one word
for it was followed on 0.86 of the rows. From config, the base UNet gets a (seeded random) class embedding
that it trains with in phase 2, and `from_unet` copies it into the ControlNet; fine-tuning, only the
ControlNet gets one (zero-initialised: step 0 reproduces the frozen base), since the base UNet is frozen.
Both phases train `class_alone_fraction` of the samples on the class without the prompt.

The conditioning embedding downsamples the one-hot map by 2^(len(conditioning_embedding_out_channels)-1),
which must equal the VAE's factor so the control features line up with the latents (SD: factor 8,
(16, 32, 96, 256); the default from-config VAE (32, 64): factor 2, (16, 32)).

Saved folder (`out_dir`):
    model_index.json, controlnet/, vae/, text_encoder/, tokenizer/, unet/, scheduler/
                                    a complete StableDiffusionControlNetPipeline (safetensors; the
                                    scheduler is the training noise schedule)
    synthecho_generator.json        the `sd` descriptor keys with "kind": "controlnet", plus
                                    "conditioning_embedding_out_channels"; written last
    loss_curve.png, sample_grid.png what training looked like (one curve per phase)
    checkpoints/controlnet/ (+ vae/, unet/ from config)  resume state (not part of the published model)
Sampling passes the one-hot map (B, 5, H, W) in [0, 1] as the control image (the pipeline's image
processor leaves a tensor's channels alone); frames are 0 outside the conditioning sector, like real ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from synthecho import labels as lab
from synthecho.errors import SynthechoError
from synthecho.generators import latent
from synthecho.generators.base import (
    SampleBatch,
    check_label_maps,
    check_real_split,
    condition_maps,
    grid_reference,
)
from synthecho.generators.latent_sampler import LatentSampler

KIND = "controlnet"
SD_CONDITIONING_CHANNELS = (16, 32, 96, 256)  # the ControlNet paper's embedding for SD's factor-8 VAE


def conditioning_channels_for(config, factor: int) -> list[int]:
    """The conditioning embedding widths; checked to downsample by exactly the VAE's `factor`."""
    levels = int(round(math.log2(factor))) + 1
    if config.conditioning_embedding_out_channels is None:
        if factor == 8:
            return list(SD_CONDITIONING_CHANNELS)
        return [16 * 2**i for i in range(levels)]
    channels = list(config.conditioning_embedding_out_channels)
    if 2 ** (len(channels) - 1) != factor:
        raise SynthechoError(
            f"generator.conditioning_embedding_out_channels {channels} downsamples the label map by "
            f"{2 ** (len(channels) - 1)} but the VAE downsamples frames by {factor}: give {levels} widths "
            f"(e.g. {[16 * 2**i for i in range(levels)]}) or null to derive them."
        )
    return channels


def build_controlnet(config, unet, factor: int):
    from diffusers import ControlNetModel

    channels = conditioning_channels_for(config, factor)
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=tuple(channels),
        conditioning_channels=lab.NUM_CONDITION_CLASSES,
    )
    # The check the pipeline relies on: control features at the latents' resolution.
    embedded = 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)
    assert embedded == factor, f"conditioning embedding downsamples {embedded}x, VAE {factor}x"
    return controlnet


def load(generator_dir: str | Path, device: str = "cpu", dtype=None) -> ControlNetSampler:
    """Load a saved `controlnet` folder (a StableDiffusionControlNetPipeline) as a Sampler."""
    pipe, described, torch_dtype = latent.load_pipeline(generator_dir, KIND, dtype, controlnet=True)
    scale = float(described["config"].get("conditioning_scale", 1.0))
    return ControlNetSampler(
        pipe, int(described["resolution"]), device, torch_dtype, described["config"], scale
    )


class ControlNetSampler(LatentSampler):
    """Sampler protocol: label maps + prompts (+ attributes) in, frames out; the conditioning maps are the
    masks."""

    kind = KIND
    mask_source = "conditioning"
    leading_conditions = ("label_map",)

    def __init__(self, pipe, resolution: int, device: str, dtype, config=None, conditioning_scale=1.0):
        super().__init__(pipe, resolution, device, dtype, config)
        self.conditioning_scale = conditioning_scale

    @torch.inference_mode()
    def sample(
        self,
        labels: np.ndarray | None,
        prompts: list[str] | None = None,
        seeds: list[int] | None = None,
        *,
        sampler: str = "dpmsolver++",
        steps: int = 20,
        guidance_scale: float = 1.0,
        attributes: list[dict] | None = None,  # the class inputs, with generator.class_attributes
    ) -> SampleBatch:
        """(B, H, W) 5-class maps + prompts + seeds (+ attributes) -> (B, H, W) uint8 frames, 0 outside
        the sector."""
        labels = check_label_maps(labels, seeds, self.resolution, KIND)
        control = torch.from_numpy(lab.one_hot(labels, lab.NUM_CONDITION_CLASSES)).to(self.device, self.dtype)
        frames = self.denoise(
            prompts, seeds, sampler, steps, guidance_scale, attributes, control, self.conditioning_scale
        )
        frames[labels == lab.OUTSIDE_SECTOR] = 0
        return SampleBatch(images=frames, masks=None)


def _sample_grid(sampler: ControlNetSampler, reference, picks, path: Path, steps: int) -> None:
    from synthecho.grids import colorize_condition, save_grid

    subset = reference.subset(picks)
    maps = condition_maps(subset)
    prompts = [record["prompt"] for record in subset.records]
    generated = sampler.sample(maps, prompts, list(range(len(picks))), steps=steps, attributes=subset.records)
    rows = [
        [colorize_condition(maps[row]), generated.images[row], reference.images[i]]
        for row, i in enumerate(picks)
    ]
    save_grid(rows, path, labels=["condition", "generated", "real"])


def train(recipe, real_train, out_dir: str | Path, *, real_validation=None, progress: bool = True) -> dict:
    """Train the ControlNet (and, from config, its VAE and base UNet first); save, curves and grid."""
    config = recipe.generator
    if config.kind != KIND:
        raise SynthechoError(f"controlnet.train was given a {config.kind!r} generator config")
    out_dir = Path(out_dir)
    resolution = check_real_split(real_train, "train")

    # 1. Base: pretrained and frozen, or from config (VAE, then text-to-image UNet trained for base_steps).
    parts, parts_info = latent.components(recipe, real_train, out_dir, progress)
    classes = latent.classes_of(config.class_attributes)
    base_losses = []
    if not config.base_model:
        latent.add_class_embedding(parts["unet"], classes, seed=recipe.seed + 3)
        base = latent.train_denoiser(
            recipe,
            parts,
            real_train,
            out_dir,
            steps=config.base_steps,
            name="unet",
            learning_rate=config.base_learning_rate,
            progress=progress,
        )
        base_losses = base.pop("losses")
        parts_info["base_unet"] = base

    # 2. ControlNet from the (now frozen) base UNet, trained on (frame, prompt, label map) triplets.
    factor = latent.vae_factor(parts["vae"])
    torch.manual_seed(recipe.seed + 2)
    controlnet = latent.add_class_embedding(build_controlnet(config, parts["unet"], factor), classes)
    info = latent.train_denoiser(
        recipe,
        parts,
        real_train,
        out_dir,
        steps=recipe.train.steps,
        name="controlnet",
        controlnet=controlnet,
        progress=progress,
    )

    from synthecho.training import is_main_process

    if not is_main_process():  # a data-parallel peer (accelerate launch): the main process saves
        return {"kind": KIND, **info}
    # 3. Save as a StableDiffusionControlNetPipeline; the grid comes from the saved folder.
    described = latent.pipeline_descriptor(KIND, config, resolution, "conditioning", parts)
    described["conditioning_embedding_out_channels"] = list(
        controlnet.config.conditioning_embedding_out_channels
    )
    latent.save_pipeline(parts, out_dir, described, controlnet=controlnet)
    curves = {"controlnet": info["losses"]}
    if base_losses:
        curves = {"base UNet (text-to-image)": base_losses, **curves}
    _save_curves(curves, out_dir / "loss_curve.png")
    reference, picks = grid_reference(real_train, real_validation)
    _sample_grid(
        load(out_dir, device=info["device"]),
        reference,
        picks,
        out_dir / "sample_grid.png",
        recipe.train.grid_sampler_steps,
    )
    return {
        "kind": KIND,
        "resolution": resolution,
        "base_model": config.base_model,
        "parameters": sum(p.numel() for p in controlnet.parameters()),
        **parts_info,
        **info,
        "loss_curve": "loss_curve.png",
        "sample_grid": "sample_grid.png",
    }


def _save_curves(curves: dict[str, list[float]], path: Path) -> None:
    """One loss curve per training phase, in training order (the ControlNet's last)."""
    from synthecho.grids import save_loss_curve

    if len(curves) == 1:
        save_loss_curve(next(iter(curves.values())), path, title="controlnet training loss")
        return
    joined = [value for losses in curves.values() for value in losses]
    phases = " then ".join(f"{name} ({len(losses)} steps)" for name, losses in curves.items())
    save_loss_curve(joined, path, title=f"loss: {phases}")
