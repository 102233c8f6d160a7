"""Latent diffusion shared by `sd` and `controlnet`: components, denoiser training, pipeline save/load,
sampler.

Two ways to get the components (`generator.base_model`):
- **Fine-tune** (a local SD folder or Hub id, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5): the
  base VAE, text encoder and tokenizer are frozen and its UNet is reused. With HF_HUB_OFFLINE set the base
  must be a local folder or already in the Hub cache.
- **From config** (`base_model: null`, offline): a small `AutoencoderKL` is trained first on the real
  frames for `vae_steps` (L1 + MSE reconstruction + a small KL) and frozen, its latent scaling factor
  measured (1 / std of the train latents, as SD's 0.18215 was); then a small `UNet2DConditionModel`
  with cross-attention on the pretrained MiniLM text encoder (synthecho.generators.text).

Grayscale: frames are replicated to 3 channels on the way in and the 3 output channels averaged on the
way out, so a pretrained RGB VAE works unchanged. Prompt dropout: a training prompt is replaced by "" with
probability `prompt_dropout`, which is exactly the unconditional branch the pipeline uses for
classifier-free guidance (its default negative prompt is "").

Class conditioning (`generator.class_attributes`, e.g. [view, phase]): the prompt names view and phase in
one word each among ~30 tokens, and a small text-conditioned model follows them only partly (ControlNet
from config: 0.86 view agreement). The class index (`base.AttributeClasses`) is also looked up in an
embedding added to the time embedding (diffusers' `num_class_embeds`) of the UNet and of a ControlNet, a
global signal every residual block sees. Training conditions a sample on prompt and class, on neither
(`prompt_dropout`: the unconditional branch of guidance, with the null class) or on the class alone
(`class_alone_fraction`): prompt and class always agree, so without class-alone samples the model is free
to ignore the class, and did (flipping it changed no frame's view). A new embedding on a pretrained base
starts at zero, so step 0 reproduces the base exactly; from config it starts random (seeded). The diffusers
pipelines pass no class labels, so sampling runs synthecho's own loop (`synthecho.generators.latent_sampler`).

Both generators save a complete diffusers pipeline (model_index.json, vae/, text_encoder/, tokenizer/,
unet/, scheduler/ = the training noise schedule, safetensors; controlnet adds controlnet/), then
synthecho_generator.json last; checkpoints/<part>/ hold each trained part's resume state.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthecho import labels as lab
from synthecho.errors import SynthechoError
from synthecho.generators.base import (
    DESCRIPTOR_FILE,
    AttributeClasses,
    check_unet_levels,
    checkpoint_fingerprint,
    condition_maps,
    diffusion_loss,
    dtype_keyword,
    norm_groups,
    plain_config,
    read_descriptor,
    replace_folder,
    resolve_dtype,
    signed_frames,
    write_descriptor,
)
from synthecho.generators.text import load_text_encoder, tokenize

SCALE_SAMPLES = 256  # train frames used to measure the from-config VAE's latent scaling factor
# check_unet_levels names of the from-config UNet: channels per level at the latent size.
LATENT_UNET_NAMES = (
    "generator.unet_channels",
    "latent size",
    "prepare.resolution, generator.vae_channels or generator.unet_channels",
)


# --- components: a pretrained base or small models from config ---------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def load_base(base_model: str) -> dict[str, Any]:
    """vae, text_encoder, tokenizer, unet and the noise schedule of an SD pipeline folder or Hub id."""
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            base_model,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=_offline() or Path(base_model).exists(),
        )
    except (OSError, ValueError) as error:
        raise SynthechoError(
            f"cannot load the Stable Diffusion base {base_model!r} (generator.base_model): {error}. Give a "
            f"local folder holding model_index.json, or a Hub id already in the cache (HF_HUB_OFFLINE is "
            f"{'set' if _offline() else 'not set'}), or null to build small models from config."
        ) from None
    return {
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder.requires_grad_(False).eval(),
        "tokenizer": pipe.tokenizer,
        "unet": pipe.unet,
        # The base's betas (SD: scaled_linear 0.00085..0.012); sampling kinds are built from this dict.
        "scheduler_config": plain_config(pipe.scheduler.config),
    }


def scheduler_config_from(config) -> dict[str, Any]:
    """From-config noise schedule: SD's (scaled_linear), the config's prediction type, trailing spacing."""
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=config.prediction_type,
        clip_sample=False,  # latents are not bounded to [-1, 1]
        timestep_spacing="trailing",
    )
    return plain_config(schedule.config)


def build_vae(config):
    from diffusers import AutoencoderKL

    levels = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=list(config.vae_channels),
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=norm_groups(config.vae_channels),
        sample_size=64,
    )


def build_unet(config, latent_size: int, latent_channels: int):
    """Small UNet2DConditionModel, cross-attention only where `attention` says: attention dominates CPU
    time."""
    from diffusers import UNet2DConditionModel

    channels = list(config.unet_channels)
    check_unet_levels(config.attention, channels, latent_size, names=LATENT_UNET_NAMES)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention)],
        block_out_channels=channels,
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_heads,  # diffusers: this is the NUMBER of heads
        norm_num_groups=norm_groups(channels),
    )


# --- class conditioning ------------------------------------------------------------------------------


def classes_of(class_attributes) -> AttributeClasses | None:
    """The classes of `generator.class_attributes` (None when empty: the prompt is the only condition)."""
    return AttributeClasses(tuple(class_attributes)) if class_attributes else None


def add_class_embedding(model, classes: AttributeClasses | None, seed: int | None = None):
    """Give a UNet2DConditionModel or ControlNetModel a class embedding of `classes`.

    `seed` None (a pretrained model): zero, so the output is unchanged until training moves it (step 0
    reproduces the base). A seed (from config): a random vector of norm ~1 per class (the time embedding's
    norm is 3-8), so training reads distinct classes from step 0 instead of first growing them from zero.
    Either way the global RNG is not drawn from: every other weight is what it would be without classes.
    A model that already has one (a ControlNet copied from a class-conditioned UNet) keeps it.
    """
    if classes is None:
        return model
    if model.class_embedding is not None:
        if model.config.class_embed_type is not None or model.config.num_class_embeds != classes.embeddings:
            raise SynthechoError(
                f"the {type(model).__name__} of the base already has a class embedding (type "
                f"{model.config.class_embed_type}, {model.config.num_class_embeds} rows), not the "
                f"{classes.embeddings} rows (with the null class) of generator.class_attributes "
                f"{list(classes.attributes)}: use a base without one, or the class_attributes it was "
                f"trained with."
            )
        return model
    linear = model.time_embedding.linear_2
    shape = (classes.embeddings, linear.out_features)
    if seed is None:
        weight = torch.zeros(shape)
    else:
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) / shape[1] ** 0.5
    # Given its weight, nn.Embedding skips its own (global-RNG) initialisation.
    model.class_embedding = torch.nn.Embedding(
        *shape, _weight=weight.to(device=linear.weight.device, dtype=linear.weight.dtype)
    )
    model.register_to_config(num_class_embeds=classes.embeddings)  # saved, so from_pretrained rebuilds it
    return model


def class_keywords(model, class_labels) -> dict:
    """`class_labels=` for a model with a class embedding (diffusers raises without them), else nothing."""
    return {} if model.class_embedding is None else {"class_labels": class_labels}


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W) -> (B, 3, H, W) float in [-1, 1]: grayscale replicated for an RGB VAE."""
    return signed_frames(frames).expand(-1, 3, -1, -1).contiguous()


class VaeTrainee(torch.nn.Module):
    """forward(frames) -> L1 + MSE reconstruction + kl_weight * KL, so train_loop can drive the VAE."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample.float()
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, like the reconstruction terms
        return F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x) + self.kl_weight * kl


def train_vae(recipe, real_train, out_dir: Path, progress: bool) -> tuple[Any, dict]:
    """From config: train the AutoencoderKL on real frames, freeze it, set its latent scaling factor."""
    from synthecho.training import recipe_loop_settings, train_loop

    config, batch_size = recipe.generator, recipe.train.batch_size
    frames = real_train.images
    torch.manual_seed(recipe.seed)
    trainee = VaeTrainee(build_vae(config), config.vae_kl_weight)

    def sample_batch(rng: np.random.Generator) -> torch.Tensor:
        return pixels(frames[rng.integers(0, len(frames), size=batch_size)])

    info = train_loop(
        trainee,
        lambda model, batch: model(batch),
        sample_batch,
        steps=config.vae_steps,
        checkpoint_dir=out_dir / "checkpoints" / "vae",
        learning_rate=config.vae_learning_rate,
        fingerprint=checkpoint_fingerprint(recipe, frames.shape[1], real_train, "vae"),
        description=f"train {config.kind}/vae",
        **recipe_loop_settings(recipe, progress),
    )
    vae = trainee.vae.to("cpu").requires_grad_(False).eval()
    # SD scales latents to unit variance (0.18215 for its VAE); measure it for this one (posterior means,
    # deterministic, so a resumed run gets the same factor).
    with torch.no_grad():
        picks = np.linspace(0, len(frames) - 1, min(SCALE_SAMPLES, len(frames))).round().astype(int)
        latents = torch.cat(
            [vae.encode(pixels(frames[c])).latent_dist.mean for c in np.array_split(picks, 8) if len(c)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp_min(1e-6)))
    info = {k: v for k, v in info.items() if k != "losses"} | {"scaling_factor": vae.config.scaling_factor}
    return vae, info


def components(recipe, real_train, out_dir: Path, progress: bool) -> tuple[dict[str, Any], dict]:
    """The latent-diffusion parts before denoiser training: a pretrained base, or from config (VAE
    trained)."""
    config = recipe.generator
    resolution = real_train.images.shape[1]
    if config.base_model:
        parts = load_base(config.base_model)
        needed = vae_factor(parts["vae"]) * 2 ** (len(parts["unet"].config.block_out_channels) - 1)
        if resolution % needed:
            raise SynthechoError(
                f"prepare.resolution {resolution} must be divisible by {needed} (the base VAE's factor times "
                f"the UNet's downsampling) to fine-tune {config.base_model}."
            )
        return parts, {"pretrained": config.base_model}
    text_encoder, tokenizer = load_text_encoder(config.text_encoder)
    if text_encoder.config.hidden_size != config.cross_attention_dim:
        raise SynthechoError(
            f"generator.cross_attention_dim is {config.cross_attention_dim} but the text encoder's hidden "
            f"size is {text_encoder.config.hidden_size}: set cross_attention_dim to "
            f"{text_encoder.config.hidden_size}."
        )
    vae, vae_info = train_vae(recipe, real_train, out_dir, progress)
    latent_size = resolution // vae_factor(vae)
    torch.manual_seed(recipe.seed + 1)
    unet = build_unet(config, latent_size, config.latent_channels)
    parts = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler_config": scheduler_config_from(config),
    }
    return parts, {"vae": vae_info}


# --- denoiser training -------------------------------------------------------------------------------


def train_denoiser(
    recipe,
    parts: dict,
    real_train,
    out_dir: Path,
    *,
    steps: int,
    name: str,
    controlnet=None,
    learning_rate: float | None = None,
    progress=True,
) -> dict:
    """Train the UNet (controlnet None) or the ControlNet over a frozen UNet, in latent space, with
    train_loop.

    VAE and text encoder are frozen and run inside the loss (no_grad), so checkpoints hold only the
    trained model. Mixed precision: the frozen parts run under the same autocast as the trained one.
    `learning_rate` defaults to `train.learning_rate`.
    """
    from diffusers import DDPMScheduler

    from synthecho.training import recipe_loop_settings, train_loop

    config, batch_size = recipe.generator, recipe.train.batch_size
    vae, text_encoder, unet = parts["vae"], parts["text_encoder"], parts["unet"]
    frames = real_train.images
    prompts = [record["prompt"] for record in real_train.records]
    classes = classes_of(config.class_attributes)
    indices = classes.indices(real_train.records) if classes else None
    maps = condition_maps(real_train) if controlnet is not None else None
    noise_schedule = DDPMScheduler.from_config(parts["scheduler_config"])
    total = noise_schedule.config.num_train_timesteps
    frozen = [vae, text_encoder] + ([unet] if controlnet is not None else [])
    for module in frozen:
        module.requires_grad_(False).eval()
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.train.mixed_precision)

    def sample_batch(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        picks = rng.integers(0, len(frames), size=batch_size)
        # One draw per sample: below prompt_dropout prompt "" and the null class (the guidance's
        # unconditional branch); then, with classes, class_alone_fraction more with prompt "" only.
        draws = np.array([rng.random() for _ in picks])
        no_prompt = draws < config.prompt_dropout + (config.class_alone_fraction if classes else 0.0)
        texts = ["" if drop else prompts[i] for i, drop in zip(picks, no_prompt, strict=True)]
        batch = {"pixels": pixels(frames[picks]), "input_ids": tokenize(parts["tokenizer"], texts)}
        if indices is not None:
            no_class = draws < config.prompt_dropout
            batch["classes"] = torch.from_numpy(np.where(no_class, classes.null, indices[picks]))
        if maps is not None:
            batch["condition"] = torch.from_numpy(lab.one_hot(maps[picks], lab.NUM_CONDITION_CLASSES))
        return batch

    # Prompts repeat (a few attributes each), so each distinct token sequence is encoded once.
    text_cache: dict[bytes, torch.Tensor] = {}

    def encode_cached(input_ids: torch.Tensor) -> torch.Tensor:
        keys = [row.tobytes() for row in input_ids.cpu().numpy()]
        missing = sorted({k for k in keys if k not in text_cache})
        if missing:
            rows = [keys.index(k) for k in missing]
            for key, hidden in zip(missing, text_encoder(input_ids[rows])[0], strict=True):
                text_cache[key] = hidden
        return torch.stack([text_cache[k] for k in keys])

    def loss_fn(model, batch) -> torch.Tensor:
        device = batch["pixels"].device
        for module in frozen:  # frozen parts follow the batch to the training device (once)
            if module.device != device:
                module.to(device)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            with torch.no_grad():
                latents = vae.encode(batch["pixels"]).latent_dist.sample() * vae.config.scaling_factor
                hidden = encode_cached(batch["input_ids"])
            noise = torch.randn_like(latents)
            t = torch.randint(0, total, (latents.shape[0],), device=device, dtype=torch.long)
            noisy = noise_schedule.add_noise(latents.float(), noise.float(), t)
            # `model` is the trained part as train_loop prepared it; the keywords come from the bare modules.
            unet_keywords = class_keywords(unet, batch.get("classes"))
            if controlnet is None:
                prediction = model(noisy, t, encoder_hidden_states=hidden, **unet_keywords).sample
            else:
                control = {"controlnet_cond": batch["condition"], "return_dict": False}
                control |= class_keywords(controlnet, batch.get("classes"))
                down, mid = model(noisy, t, encoder_hidden_states=hidden, **control)
                residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
                prediction = unet(noisy, t, encoder_hidden_states=hidden, **residuals, **unet_keywords).sample
        return diffusion_loss(noise_schedule, prediction, latents, noise, t, recipe.train.snr_gamma)

    trained = controlnet if controlnet is not None else unet
    trained.requires_grad_(True).train()
    info = train_loop(
        trained,
        loss_fn,
        sample_batch,
        steps=steps,
        checkpoint_dir=out_dir / "checkpoints" / name,
        learning_rate=recipe.train.learning_rate if learning_rate is None else learning_rate,
        fingerprint=checkpoint_fingerprint(recipe, frames.shape[1], real_train, name),
        description=f"train {config.kind}/{name}",
        **recipe_loop_settings(recipe, progress),
    )
    for module in frozen + [trained]:
        module.to("cpu").requires_grad_(False).eval()
    return info


# --- saving and loading ------------------------------------------------------------------------------


def save_pipeline(parts: dict, out_dir: Path, descriptor: dict, controlnet=None) -> None:
    """The diffusers pipeline of `parts` (+ `controlnet`), its scheduler the training noise schedule.

    save_pretrained (safetensors) writes into a temp folder; each part then replaces its old copy in
    out_dir, and the descriptor, removed first, is written last.
    """
    from diffusers import DDPMScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline if controlnet is None else StableDiffusionControlNetPipeline
    pipe = pipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        **({} if controlnet is None else {"controlnet": controlnet}),
        scheduler=DDPMScheduler.from_config(parts["scheduler_config"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DESCRIPTOR_FILE).unlink(missing_ok=True)  # absent while the folder is being replaced
    tmp = out_dir / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a killed save
    pipe.save_pretrained(tmp, safe_serialization=True)
    for part in sorted(tmp.iterdir()):
        replace_folder(part, out_dir / part.name)
    tmp.rmdir()
    write_descriptor(out_dir, descriptor)


def pipeline_descriptor(kind: str, config, resolution: int, mask_source: str, parts: dict) -> dict:
    return {
        "kind": kind,
        "resolution": resolution,
        "mask_source": mask_source,
        "config": config.model_dump(mode="json"),
        "vae_factor": vae_factor(parts["vae"]),
        "base_model": config.base_model,
        "base_license": config.base_license,
        "text_encoder": type(parts["text_encoder"]).__name__,
    }


def load_pipeline(generator_dir: str | Path, kind: str, dtype, controlnet: bool = False) -> tuple:
    """(pipe, descriptor, torch dtype) of a saved `kind` folder; `controlnet`: it holds controlnet/ too."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    generator_dir = Path(generator_dir)
    described = read_descriptor(generator_dir, kind)
    torch_dtype = resolve_dtype(dtype)
    pipeline, extra = StableDiffusionPipeline, {}
    if controlnet:
        pipeline = StableDiffusionControlNetPipeline
        extra["controlnet"] = ControlNetModel.from_pretrained(
            generator_dir / "controlnet", **dtype_keyword(torch_dtype)
        )
    pipe = pipeline.from_pretrained(
        generator_dir, local_files_only=True, **extra, **dtype_keyword(torch_dtype)
    )
    return pipe, described, torch_dtype
