"""`sd`: text-guided latent diffusion on the image-level prompt; saved as a diffusers StableDiffusionPipeline.

The components come from `generator.base_model` (synthecho.generators.latent):
- **Fine-tune** (a local SD folder or Hub id): the base VAE, text encoder and tokenizer are frozen, its UNet
  is trained on the real train split (as DiffEcho fine-tuned SD with diffusers' train_text_to_image.py);
- **From config** (`base_model: null`, offline): a small VAE trained first, then a small UNet with
  cross-attention on the bundled MiniLM text encoder.
Prompt dropout (`prompt_dropout`) trains the unconditional branch that classifier-free guidance uses.
`class_attributes` (e.g. [view, phase]) adds a class embedding to the UNet (zero-initialised on a pretrained
one), trained with it (`class_alone_fraction` of the samples on the class without the prompt); sampling then
needs each row's attributes (synthecho.generators.latent_sampler).

Saved folder (`out_dir`):
    model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/
                                    a complete StableDiffusionPipeline (safetensors; the scheduler is the
                                    training noise schedule)
    synthecho_generator.json        {"kind": "sd", "resolution", "mask_source", "config", "vae_factor",
                                    "base_model", "base_license", "text_encoder"}, written last
    loss_curve.png, sample_grid.png what training looked like
    checkpoints/unet/ (+ vae/ from config) resume state (not part of the published model)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from synthecho.errors import SynthechoError
from synthecho.generators import latent
from synthecho.generators.base import SampleBatch, check_real_split, grid_reference
from synthecho.generators.latent_sampler import LatentSampler

KIND = "sd"


def load(generator_dir: str | Path, device: str = "cpu", dtype=None) -> SdSampler:
    """Load a saved `sd` folder (a StableDiffusionPipeline) as a Sampler."""
    pipe, described, torch_dtype = latent.load_pipeline(generator_dir, KIND, dtype)
    return SdSampler(pipe, int(described["resolution"]), device, torch_dtype, described["config"])


class SdSampler(LatentSampler):
    """Sampler protocol: image-level prompts in, frames out (the segmenter labels them)."""

    kind = KIND
    mask_source = "segmenter"

    @torch.inference_mode()
    def sample(
        self,
        labels: np.ndarray | None = None,
        prompts: list[str] | None = None,
        seeds: list[int] | None = None,
        *,
        sampler: str = "dpmsolver++",
        steps: int = 20,
        guidance_scale: float = 1.0,
        attributes: list[dict] | None = None,  # the class inputs, with generator.class_attributes
    ) -> SampleBatch:
        """(B, H, W) uint8 frames for B prompts (+ attributes); `labels` is ignored (no label map)."""
        frames = self.denoise(prompts, seeds, sampler, steps, guidance_scale, attributes)
        return SampleBatch(images=frames, masks=None)


def _sample_grid(sampler: SdSampler, reference, picks, path: Path, steps: int) -> None:
    from synthecho.grids import save_grid

    records = [reference.records[i] for i in picks]
    prompts = [record["prompt"] for record in records]
    generated = sampler.sample(None, prompts, list(range(len(picks))), steps=steps, attributes=records)
    rows = [[generated.images[row], reference.images[i]] for row, i in enumerate(picks)]
    save_grid(rows, path, labels=["generated (real's prompt)", "real"])


def train(recipe, real_train, out_dir: str | Path, *, real_validation=None, progress: bool = True) -> dict:
    """Fine-tune (or build and train) the SD pipeline on real (frame, prompt) pairs; save, curve and grid."""
    from synthecho.grids import save_loss_curve

    config = recipe.generator
    if config.kind != KIND:
        raise SynthechoError(f"sd.train was given a {config.kind!r} generator config")
    out_dir = Path(out_dir)
    resolution = check_real_split(real_train, "train")

    # 1. Base parts (pretrained, or from config with the VAE trained first), 2. the UNet trained, with a
    #    class embedding when class_attributes are set (zero on a pretrained UNet, seeded from config).
    parts, parts_info = latent.components(recipe, real_train, out_dir, progress)
    seed = None if config.base_model else recipe.seed + 3
    latent.add_class_embedding(parts["unet"], latent.classes_of(config.class_attributes), seed)
    info = latent.train_denoiser(
        recipe, parts, real_train, out_dir, steps=recipe.train.steps, name="unet", progress=progress
    )

    from synthecho.training import is_main_process

    if not is_main_process():  # a data-parallel peer (accelerate launch): the main process saves
        return {"kind": KIND, **info}
    # 3. Save the pipeline (scheduler = training noise schedule), then sample the grid from the saved folder.
    latent.save_pipeline(
        parts, out_dir, latent.pipeline_descriptor(KIND, config, resolution, "segmenter", parts)
    )
    save_loss_curve(info["losses"], out_dir / "loss_curve.png", title="sd UNet training loss")
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
        "parameters": sum(p.numel() for p in parts["unet"].parameters()),
        **parts_info,
        **info,
        "loss_curve": "loss_curve.png",
        "sample_grid": "sample_grid.png",
    }
