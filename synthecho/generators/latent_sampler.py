"""The sampler of `sd` and `controlnet`: synthecho's own denoising loop over a loaded diffusers pipeline.

The pipeline (`pipe`) holds the parts (VAE, text encoder, tokenizer, UNet, ControlNet) and is what the
saved folder loads as; the loop is the pipeline's, step for step, plus class labels, which the diffusers
pipelines do not pass (`latent.add_class_embedding`). Without classes it gives the pipeline's frames
(tests/test_generators_diffusers.py checks it). Per batch:

1. encode the prompts (and, with guidance, "" for each row: the unconditional branch that prompt dropout
   trained, with the null class);
2. each row's starting latents from its own seed (`base.row_noise`), its step noise from
   `base.step_generators` (stochastic samplers), so a row never depends on its batch neighbours;
3. the scheduler loop: `scale_model_input`, the ControlNet's residuals (controlnet), the UNet, guidance
   eps_uncond + s * (eps_cond - eps_uncond) where guidance_scale != 1, `scheduler.step`;
4. VAE decode, [-1, 1] -> [0, 1], the three channels averaged to gray uint8.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from synthecho.errors import SynthechoError
from synthecho.generators.base import (
    check_sampling,
    make_scheduler,
    plain_config,
    resolve_device,
    row_noise,
    step_generators,
)
from synthecho.generators.latent import class_keywords, classes_of
from synthecho.generators.text import encode, tokenize

# The image-level prompt names view, phase, sex, age and image quality (synthecho.prompts.image_prompt).
PROMPT_ATTRIBUTES = ("view", "phase", "sex", "age", "image_quality")


class LatentSampler:
    """Shared by sd and controlnet: prompts (+ classes, + control maps) and seeds in, gray frames out."""

    uses_prompt = True
    kind: str
    leading_conditions: tuple[str, ...] = ()  # what conditioned_on names first ("label_map" for controlnet)

    def __init__(self, pipe, resolution: int, device: str, dtype, config: dict | None = None):
        """`config`: the descriptor's generator config (its class_attributes; absent in older folders)."""
        device = resolve_device(device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.scheduler_config = plain_config(pipe.scheduler.config)
        self.resolution = resolution
        self.device = device
        self.dtype = dtype
        # Folders saved before class_attributes existed have none.
        self.classes = classes_of((config or {}).get("class_attributes"))
        names = self.classes.attributes if self.classes else ()
        # What the rows were made to follow: the prompt's attributes, and any class not among them.
        self.conditioned_on = tuple(dict.fromkeys((*self.leading_conditions, *PROMPT_ATTRIBUTES, *names)))

    def class_labels(self, attributes: list[dict] | None, count: int):
        """(B,) class indices of the rows' attributes, or None when the model has no class embedding."""
        if self.classes is None:
            return None
        return torch.from_numpy(self.classes.sampling_indices(attributes, count, self.kind)).to(self.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = tokenize(self.pipe.tokenizer, list(prompts))
        return encode(self.pipe.text_encoder, ids).to(self.dtype)

    @torch.inference_mode()
    def denoise(
        self,
        prompts,
        seeds,
        sampler: str,
        steps: int,
        guidance_scale: float,
        attributes=None,
        control: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
    ) -> np.ndarray:
        """(B, H, W) uint8 frames; `control`: (B, C, H, W) ControlNet conditioning images."""
        if seeds is None or prompts is None or len(prompts) != len(seeds):
            raise SynthechoError(f"{self.kind}.sample needs one prompt and one seed per row")
        check_sampling(sampler, steps)
        pipe, count = self.pipe, len(seeds)
        if count == 0:
            return np.zeros((0, self.resolution, self.resolution), np.uint8)
        labels = self.class_labels(attributes, count)

        # 1. Text (and class) conditioning; the unconditional rows first, as the pipelines order them.
        hidden = self.encode_prompts(prompts)
        guided = guidance_scale != 1.0
        if guided:
            hidden = torch.cat([self.encode_prompts([""] * count), hidden])
            if labels is not None:
                labels = torch.cat([torch.full_like(labels, self.classes.null), labels])
            if control is not None:
                control = torch.cat([control, control])

        # 2. Per-row noise.
        scheduler = make_scheduler(sampler, self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        factor = pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, self.resolution // factor, self.resolution // factor)
        latents = row_noise(seeds, shape, device=self.device, dtype=self.dtype) * scheduler.init_noise_sigma
        step_keywords = {}
        accepted = inspect.signature(scheduler.step).parameters
        if "generator" in accepted:
            step_keywords["generator"] = step_generators(seeds)
        if "eta" in accepted:
            step_keywords["eta"] = 0.0  # the pipelines' default: DDIM deterministic

        # 3. The loop.
        unet_keywords = class_keywords(pipe.unet, labels)
        for t in scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            residuals = {}
            if control is not None:
                down, mid = pipe.controlnet(
                    model_in,
                    t,
                    encoder_hidden_states=hidden,
                    controlnet_cond=control,
                    conditioning_scale=conditioning_scale,
                    return_dict=False,
                    **class_keywords(pipe.controlnet, labels),
                )
                residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            eps = pipe.unet(
                model_in, t, encoder_hidden_states=hidden, **residuals, **unet_keywords, return_dict=False
            )[0]
            if guided:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents, **step_keywords, return_dict=False)[0]

        # 4. Decode to gray.
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return self.gray((decoded / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy())

    @staticmethod
    def gray(images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) float [0, 1] -> (B, H, W) uint8: the average of the three channels."""
        return (
            (np.asarray(images, dtype=np.float32).mean(axis=-1) * 255).round().clip(0, 255).astype(np.uint8)
        )
