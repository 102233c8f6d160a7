"""`sdm`: semantic diffusion, a pixel-space DDPM conditioned on the 5-class label map.

Two variants of the denoiser (`generator.variant`):
- `spade`: MONAI `SPADEDiffusionModelUNet`: the one-hot label map modulates every decoder normalisation
  (SPADE), as SDM and Echo from noise do;
- `concat`: a diffusers `UNet2DModel` that reads the one-hot map as 5 extra input channels; about 4x
  cheaper on a CPU, so the CPU demo uses it.

Classifier-free guidance: with probability `condition_dropout` a training map is replaced by the all-zero
"null" map; sampling with guidance_scale s != 1 mixes eps_null + s * (eps_cond - eps_null).

Saved folder (`out_dir`, self-describing; written by `base.save_pixel_generator`, descriptor last):
    synthecho_generator.json        {"kind": "sdm", "variant", "resolution", "config", "mask_source"}
    unet/                           concat: diffusers save_pretrained; spade: config.json + safetensors
    scheduler/scheduler_config.json the training DDPMScheduler (any sampler is built from it)
    loss_curve.png, sample_grid.png what training looked like
    checkpoints/                    resume state (not part of the published model)
The saved weights are the EMA weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthecho import labels as lab
from synthecho.errors import SynthechoError
from synthecho.generators.base import (
    PIXEL_UNET_NAMES,
    SampleBatch,
    check_label_maps,
    check_real_split,
    check_sampling,
    check_unet_levels,
    checkpoint_fingerprint,
    condition_maps,
    grid_reference,
    head_channels,
    loss_target,
    norm_groups,
    pixel_frames,
    pixel_sampling,
    pixel_scheduler_config,
    read_descriptor,
    resolve_device,
    resolve_dtype,
    save_pixel_generator,
    signed_frames,
)
from synthecho.io import read_json

KIND = "sdm"
SPADE_WEIGHTS = "diffusion_pytorch_model.safetensors"


# --- the denoiser ------------------------------------------------------------------------------------


def unet_config(config, resolution: int) -> dict[str, Any]:
    """Constructor arguments of the variant's UNet for an `SdmConfig` at `resolution`."""
    channels = list(config.channels)
    check_unet_levels(config.attention, channels, resolution, names=PIXEL_UNET_NAMES)
    head = head_channels(config)
    groups = norm_groups(channels)
    if config.variant == "concat":
        return {
            "sample_size": resolution,
            "in_channels": 1 + lab.NUM_CONDITION_CLASSES,
            "out_channels": 1,
            "block_out_channels": channels,
            "layers_per_block": config.layers_per_block,
            "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention],
            "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention)],
            "attention_head_dim": head,
            "norm_num_groups": groups,
            "add_attention": True,  # middle block attention, as MONAI's (which cannot turn it off)
        }
    return {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 1,
        "label_nc": lab.NUM_CONDITION_CLASSES,
        "channels": channels,
        "attention_levels": list(config.attention),
        "num_res_blocks": config.layers_per_block,
        "num_head_channels": [min(head, c) for c in channels],
        "norm_num_groups": groups,
    }


class SdmDenoiser(torch.nn.Module):
    """eps = denoiser(noisy (B,1,H,W), timesteps (B,), one-hot label map (B,5,H,W)), for either variant."""

    def __init__(self, variant: str, unet: torch.nn.Module):
        super().__init__()
        self.variant = variant
        self.unet = unet

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if self.variant == "concat":
            return self.unet(torch.cat([noisy, condition], dim=1), timesteps).sample
        return self.unet(noisy, timesteps, seg=condition)


def build_denoiser(variant: str, config: dict[str, Any]) -> SdmDenoiser:
    if variant == "concat":
        from diffusers import UNet2DModel

        return SdmDenoiser(variant, UNet2DModel(**config))
    if variant == "spade":
        from monai.networks.nets import SPADEDiffusionModelUNet

        return SdmDenoiser(variant, SPADEDiffusionModelUNet(**config))
    raise SynthechoError(f"generator.variant must be 'concat' or 'spade', got {variant!r}")


# --- saving and loading ------------------------------------------------------------------------------


def save(denoiser: SdmDenoiser, out_dir: Path, config, resolution: int, unet_kwargs: dict) -> None:
    """Write the self-describing generator folder (the EMA weights the denoiser holds)."""
    from safetensors.torch import save_file

    def save_unet(folder: Path) -> None:
        if config.variant == "concat":
            denoiser.unet.save_pretrained(folder, safe_serialization=True)
            return
        # MONAI has no save_pretrained: safetensors + a config.json of the constructor arguments.
        folder.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in denoiser.unet.state_dict().items()}
        save_file(state, str(folder / SPADE_WEIGHTS))
        described = {"_class_name": "SPADEDiffusionModelUNet", "_library": "monai", **unet_kwargs}
        (folder / "config.json").write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")

    descriptor = {
        "kind": KIND,
        "variant": config.variant,
        "resolution": resolution,
        "config": config.model_dump(mode="json"),
        "mask_source": "conditioning",
    }
    save_pixel_generator(Path(out_dir), save_unet, config, descriptor)


def load(generator_dir: str | Path, device: str = "cpu", dtype=None) -> SdmSampler:
    """Load a saved `sdm` folder as a Sampler (dtype: torch dtype, 'fp32', 'bf16', 'fp16' or None=fp32)."""
    generator_dir = Path(generator_dir)
    descriptor = read_descriptor(generator_dir, KIND)
    from synthecho.recipe import SdmConfig

    config = SdmConfig.model_validate(descriptor["config"])
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    unet_dir = generator_dir / "unet"
    if config.variant == "concat":
        from diffusers import UNet2DModel

        denoiser = SdmDenoiser("concat", UNet2DModel.from_pretrained(unet_dir))
    else:
        from safetensors.torch import load_file

        described = read_json(unet_dir / "config.json")
        kwargs = {k: v for k, v in described.items() if not k.startswith("_")}
        denoiser = build_denoiser("spade", kwargs)
        denoiser.unet.load_state_dict(load_file(str(unet_dir / SPADE_WEIGHTS)))
    scheduler_config = read_json(generator_dir / "scheduler" / "scheduler_config.json")
    denoiser.to(device=device, dtype=torch_dtype).eval()
    return SdmSampler(denoiser, scheduler_config, int(descriptor["resolution"]), config, device, torch_dtype)


# --- sampling ----------------------------------------------------------------------------------------


class SdmSampler:
    """Sampler protocol (synthecho.generators.base): label maps in, frames out; the masks are the inputs."""

    kind = KIND
    mask_source = "conditioning"
    uses_prompt = False

    def __init__(self, denoiser: SdmDenoiser, scheduler_config: dict, resolution: int, config, device, dtype):
        self.denoiser = denoiser
        self.scheduler_config = scheduler_config
        self.resolution = resolution
        self.config = config
        self.variant = config.variant
        self.device = device
        self.dtype = dtype

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
    ) -> SampleBatch:
        """(B, H, W) 5-class maps + one seed per row -> (B, H, W) uint8 frames, 0 outside the sector."""
        if seeds is None:
            raise SynthechoError("sdm.sample needs one seed per row")
        check_sampling(sampler, steps)
        label_maps = check_label_maps(labels, seeds, self.resolution, KIND)
        batch = len(seeds)
        if batch == 0:
            return SampleBatch(np.zeros((0, self.resolution, self.resolution), np.uint8), None)
        # 1. Conditioning (and the null map for guidance), noise from each row's own seed.
        condition = torch.from_numpy(lab.one_hot(label_maps, lab.NUM_CONDITION_CLASSES))
        condition = condition.to(self.device, self.dtype)
        guided = guidance_scale != 1.0
        if guided:
            condition = torch.cat([condition, torch.zeros_like(condition)])
        shape = (1, self.resolution, self.resolution)
        scheduler, x, step_kwargs = pixel_sampling(
            sampler, steps, self.scheduler_config, seeds, shape, self.device
        )
        # 2. Denoise (float32 state; the model may run in bf16/fp16).
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, t)
            if guided:
                model_in = torch.cat([model_in, model_in])
            timesteps = torch.full((model_in.shape[0],), int(t), device=self.device, dtype=torch.long)
            eps = self.denoiser(model_in.to(self.dtype), timesteps, condition).float()
            if guided:
                eps_cond, eps_null = eps.chunk(2)
                eps = eps_null + guidance_scale * (eps_cond - eps_null)
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        # 3. [-1, 1] -> uint8, exactly 0 outside the conditioning sector (as real frames are).
        frames = pixel_frames(x)
        frames[label_maps == lab.OUTSIDE_SECTOR] = 0
        return SampleBatch(images=frames, masks=None)


# --- training ----------------------------------------------------------------------------------------


def _sample_grid(sampler: SdmSampler, reference, picks, path: Path, steps: int) -> None:
    from synthecho.grids import colorize_condition, save_grid

    count = len(picks)
    maps = condition_maps(reference.subset(picks))
    generated = sampler.sample(maps, [""] * count, list(range(count)), sampler="dpmsolver++", steps=steps)
    rows = [
        [colorize_condition(maps[i]), generated.images[i], reference.images[picks[i]]] for i in range(count)
    ]
    save_grid(rows, path, labels=["condition", "generated", "real"])


def train(recipe, real_train, out_dir: str | Path, *, real_validation=None, progress: bool = True) -> dict:
    """Train the SDM on real (frame, label map) pairs, save it into `out_dir`, draw the loss and a grid.

    Resumes from `out_dir/checkpoints/` after an interruption. Returns the training figures
    ({kind, variant, resolution, parameters, steps, start_step, seconds, seconds_per_step, final_loss,
    losses, device, loss_curve, sample_grid}).
    """
    import torch.nn.functional as F

    from synthecho.grids import save_loss_curve
    from synthecho.training import recipe_loop_settings, train_loop

    config, train_config = recipe.generator, recipe.train
    if config.kind != KIND:
        raise SynthechoError(f"sdm.train was given a {config.kind!r} generator config")
    out_dir = Path(out_dir)
    resolution = check_real_split(real_train, "train")

    # 1. The data as compact arrays; batches are random (frame, map) pairs. No flips: apical views have a
    #    fixed left/right anatomy.
    frames = real_train.images
    maps = condition_maps(real_train)

    def sample_batch(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        picks = rng.integers(0, len(frames), size=train_config.batch_size)
        images = signed_frames(frames[picks])
        condition = torch.from_numpy(lab.one_hot(maps[picks], lab.NUM_CONDITION_CLASSES))
        return {"images": images, "condition": condition}

    # 2. Model (seeded initialisation) and the epsilon-prediction loss with label-map dropout.
    unet_kwargs = unet_config(config, resolution)
    torch.manual_seed(recipe.seed)
    denoiser = build_denoiser(config.variant, unet_kwargs)
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pixel_scheduler_config(config))
    timesteps_total = noise_schedule.config.num_train_timesteps

    def loss_fn(model, batch) -> torch.Tensor:
        images, condition = batch["images"], batch["condition"]
        count = images.shape[0]
        if config.condition_dropout > 0:
            keep = torch.rand(count, device=images.device) >= config.condition_dropout
            condition = condition * keep[:, None, None, None].to(condition.dtype)
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, timesteps_total, (count,), device=images.device, dtype=torch.long)
        noisy = noise_schedule.add_noise(images, noise, timesteps)
        target = loss_target(noise_schedule, images, noise, timesteps)
        return F.mse_loss(model(noisy, timesteps, condition).float(), target)

    # 3. The shared loop (accelerate, EMA, checkpoints, resume); the model comes back holding the EMA.
    info = train_loop(
        denoiser,
        loss_fn,
        sample_batch,
        steps=train_config.steps,
        checkpoint_dir=out_dir / "checkpoints",
        learning_rate=train_config.learning_rate,
        fingerprint=checkpoint_fingerprint(recipe, resolution, real_train),
        description=f"train sdm/{config.variant}",
        **recipe_loop_settings(recipe, progress),
    )

    # 4. Save, then prove the saved folder loads by drawing the sample grid from it.
    save(denoiser.to("cpu", torch.float32), out_dir, config, resolution, unet_kwargs)
    save_loss_curve(info["losses"], out_dir / "loss_curve.png", title=f"sdm/{config.variant} training loss")
    sampler = load(out_dir, device=info["device"])
    reference, picks = grid_reference(real_train, real_validation)
    _sample_grid(sampler, reference, picks, out_dir / "sample_grid.png", train_config.grid_sampler_steps)
    return {
        "kind": KIND,
        "variant": config.variant,
        "resolution": resolution,
        "parameters": sum(p.numel() for p in denoiser.parameters()),
        **info,
        "loss_curve": "loss_curve.png",
        "sample_grid": "sample_grid.png",
    }
