"""`ddpm`: pixel-space DDPM without a label map (DiffEcho's unconditional model), in one model.

DiffEcho trained one unconditional `UNet2DModel` per class (2CH/4CH x ED/ES). Here one model serves all
four: with `class_conditional` the UNet gets a class embedding of view x phase (`num_class_embeds` 4).
With `joint_masks` the UNet also denoises the 4-class label map as 4 extra channels (one-hot scaled to
[-1, 1]), so each generated frame comes with its own mask (`mask_source` "generated"); otherwise the
segmenter labels the frames (`mask_source` "segmenter").

Sampling takes the rows' view and phase from `attributes` ([{"view": "2CH", "phase": "ED"}, ...]) or,
when they are not given, from the image-level prompts ("Two-chamber view ... diastole ..."). With
`class_dropout` the class is replaced by a null class in that fraction of training steps, which gives
classifier-free guidance its unconditional branch (guidance_scale > 1); without it, guidance_scale must be 1.

Saved folder (`out_dir`; written by `base.save_pixel_generator`, descriptor last):
    synthecho_generator.json        {"kind": "ddpm", "resolution", "config", "mask_source"}
    unet/                           diffusers save_pretrained (safetensors), the EMA weights
    scheduler/scheduler_config.json the training DDPMScheduler, the same pixel-space schedule as sdm's
    loss_curve.png, sample_grid.png what training looked like
    checkpoints/                    resume state (not part of the published model)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthecho import labels as lab
from synthecho.errors import SynthechoError
from synthecho.generators.base import (
    PIXEL_UNET_NAMES,
    SampleBatch,
    check_real_split,
    check_sampling,
    check_unet_levels,
    checkpoint_fingerprint,
    diffusion_loss,
    dtype_keyword,
    grid_reference,
    head_channels,
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

KIND = "ddpm"
MASK_CLASSES = 4  # CAMUS labels 0..3 (background, LV, MYO, LA)
VIEWS, PHASES = ("2CH", "4CH"), ("ED", "ES")


def class_index(view: str, phase: str) -> int:
    """view x phase -> 0..3 (2CH-ED, 2CH-ES, 4CH-ED, 4CH-ES)."""
    if view not in VIEWS or phase not in PHASES:
        raise SynthechoError(
            f"ddpm: view must be one of {VIEWS} and phase one of {PHASES}, got {view}/{phase}"
        )
    return VIEWS.index(view) * 2 + PHASES.index(phase)


def attributes_from_prompt(prompt: str) -> dict[str, str]:
    """{"view", "phase"} read from an image-level prompt (synthecho.prompts.image_prompt wording)."""
    text = prompt.lower()
    view = "2CH" if "two-chamber" in text else "4CH" if "four-chamber" in text else None
    phase = "ED" if "diastole" in text else "ES" if "systole" in text else None
    if view is None or phase is None:
        raise SynthechoError(
            f"ddpm (class_conditional) cannot read view and phase from the prompt {prompt!r}: pass "
            f"attributes=[{{'view': '2CH', 'phase': 'ED'}}, ...] or image-level prompts."
        )
    return {"view": view, "phase": phase}


NULL_CLASS = len(VIEWS) * len(PHASES)  # the unconditional branch's class (with class_dropout)


def class_embeddings(config) -> int:
    """Class embeddings: view x phase, plus the null class when the class is dropped in training."""
    return NULL_CLASS + (1 if config.class_dropout > 0 else 0)


def unet_config(config, resolution: int) -> dict[str, Any]:
    """UNet2DModel arguments for a `DdpmConfig` at `resolution`."""
    channels = list(config.channels)
    check_unet_levels(config.attention, channels, resolution, names=PIXEL_UNET_NAMES)
    io_channels = 1 + (MASK_CLASSES if config.joint_masks else 0)
    return {
        "sample_size": resolution,
        "in_channels": io_channels,
        "out_channels": io_channels,
        "block_out_channels": channels,
        "layers_per_block": config.layers_per_block,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention)],
        "attention_head_dim": head_channels(config),
        "norm_num_groups": norm_groups(channels),
        # class_embed_type None + num_class_embeds: a learned embedding added to the time embedding
        "num_class_embeds": class_embeddings(config) if config.class_conditional else None,
    }


def _targets(images: np.ndarray, masks: np.ndarray | None) -> torch.Tensor:
    """uint8 frames (+ 0..3 masks) -> (B, C, H, W) float in [-1, 1]: frame, then one-hot mask channels."""
    x = signed_frames(images)
    if masks is None:
        return x
    one_hot = torch.from_numpy(lab.one_hot(masks.astype(np.int64), MASK_CLASSES)) * 2 - 1
    return torch.cat([x, one_hot], dim=1)


# --- saving and loading ------------------------------------------------------------------------------


def save(unet, out_dir: Path, config, resolution: int) -> None:
    """unet/ (safetensors), the training schedule and the descriptor."""
    descriptor = {
        "kind": KIND,
        "resolution": resolution,
        "config": config.model_dump(mode="json"),
        "mask_source": "generated" if config.joint_masks else "segmenter",
    }
    save_pixel_generator(
        out_dir,
        {"unet": lambda folder: unet.save_pretrained(folder, safe_serialization=True)},
        config,
        descriptor,
    )


def load(generator_dir: str | Path, device: str = "cpu", dtype=None) -> DdpmSampler:
    """Load a saved `ddpm` folder as a Sampler."""
    from diffusers import UNet2DModel

    from synthecho.recipe import DdpmConfig

    generator_dir = Path(generator_dir)
    descriptor = read_descriptor(generator_dir, KIND)
    config = DdpmConfig.model_validate(descriptor["config"])
    device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    unet = UNet2DModel.from_pretrained(generator_dir / "unet", **dtype_keyword(torch_dtype)).to(device).eval()
    scheduler_config = read_json(generator_dir / "scheduler" / "scheduler_config.json")
    return DdpmSampler(unet, scheduler_config, int(descriptor["resolution"]), config, device, torch_dtype)


# --- sampling ----------------------------------------------------------------------------------------


class DdpmSampler:
    """Sampler protocol: seeds (+ view/phase) in, frames (+ their generated masks) out."""

    kind = KIND
    uses_prompt = False  # the prompt only carries view/phase; rows keep their image-level prompt text

    def __init__(self, unet, scheduler_config: dict, resolution: int, config, device, dtype):
        self.unet = unet
        self.scheduler_config = scheduler_config
        self.resolution = resolution
        self.config = config
        self.mask_source = "generated" if config.joint_masks else "segmenter"
        self.conditioned_on = ("view", "phase") if config.class_conditional else ()
        self.device = device
        self.dtype = dtype

    def _classes(self, prompts, attributes, count: int) -> torch.Tensor | None:
        if not self.config.class_conditional:
            return None
        if attributes is None:
            if prompts is None or len(prompts) != count:
                raise SynthechoError("ddpm (class_conditional) needs one prompt or attributes dict per seed")
            attributes = [attributes_from_prompt(p) for p in prompts]
        if len(attributes) != count:
            raise SynthechoError(f"ddpm: {len(attributes)} attributes for {count} seeds")
        indices = [class_index(a["view"], a["phase"]) for a in attributes]
        return torch.tensor(indices, dtype=torch.long, device=self.device)

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
        attributes: list[dict] | None = None,
    ) -> SampleBatch:
        """Frames (B, H, W) uint8 and, with joint_masks, their masks (B, H, W) 0..3; `labels` is ignored."""
        if seeds is None:
            raise SynthechoError("ddpm.sample needs one seed per row")
        check_sampling(sampler, steps)
        guided = guidance_scale != 1.0
        if guided and not (self.config.class_conditional and self.config.class_dropout > 0):
            raise SynthechoError(
                "this ddpm generator has no unconditional branch (trained without generator.class_dropout): "
                "set generate.guidance_scale to 1.0, or retrain with class_dropout > 0"
            )
        count, size = len(seeds), self.resolution
        if count == 0:
            empty = np.zeros((0, size, size), np.uint8)
            return SampleBatch(empty, empty.copy() if self.config.joint_masks else None)
        classes = self._classes(prompts, attributes, count)
        shape = (self.unet.config.in_channels, size, size)
        scheduler, x, step_kwargs = pixel_sampling(
            sampler, steps, self.scheduler_config, seeds, shape, self.device
        )
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, t).to(self.dtype)
            timesteps = torch.full((count,), int(t), device=self.device, dtype=torch.long)
            if guided:  # one batch: conditional rows, then the same rows with the null class
                both = self.unet(
                    torch.cat([model_in, model_in]),
                    torch.cat([timesteps, timesteps]),
                    class_labels=torch.cat([classes, torch.full_like(classes, NULL_CLASS)]),
                )
                conditional, unconditional = both.sample.float().chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            else:
                prediction = self.unet(model_in, timesteps, class_labels=classes).sample.float()
            x = scheduler.step(prediction, t, x, **step_kwargs).prev_sample
        frames = pixel_frames(x)
        masks = x[:, 1:].argmax(dim=1).to(torch.uint8).cpu().numpy() if self.config.joint_masks else None
        return SampleBatch(images=frames, masks=masks)


# --- training ----------------------------------------------------------------------------------------


def _sample_grid(sampler: DdpmSampler, reference, picks, path: Path, steps: int) -> None:
    from synthecho.grids import colorize_mask, save_grid

    count = len(picks)
    attributes = [
        {"view": reference.records[i]["view"], "phase": reference.records[i]["phase"]} for i in picks
    ]
    generated = sampler.sample(None, None, list(range(count)), steps=steps, attributes=attributes)
    rows = []
    for row, i in enumerate(picks):
        cells = [generated.images[row]]
        if generated.masks is not None:
            cells.append(colorize_mask(generated.masks[row]))
        rows.append(cells + [reference.images[i]])
    header = (
        ["generated"] + (["generated mask"] if generated.masks is not None else []) + ["real (same class)"]
    )
    save_grid(rows, path, labels=header)


def train(recipe, real_train, out_dir: str | Path, *, real_validation=None, progress: bool = True) -> dict:
    """Train the DDPM on real frames (+ masks, + view x phase), save it, draw the loss curve and a grid."""
    from diffusers import DDPMScheduler, UNet2DModel

    from synthecho.grids import save_loss_curve
    from synthecho.training import recipe_loop_settings, train_loop

    config, train_config = recipe.generator, recipe.train
    if config.kind != KIND:
        raise SynthechoError(f"ddpm.train was given a {config.kind!r} generator config")
    out_dir = Path(out_dir)
    resolution = check_real_split(real_train, "train")

    # 1. Data: frames, masks, class indices (no flips: apical views have a fixed left/right anatomy).
    frames, masks = real_train.images, real_train.masks if config.joint_masks else None
    classes = np.array([class_index(r["view"], r["phase"]) for r in real_train.records], dtype=np.int64)

    def sample_batch(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        picks = rng.integers(0, len(frames), size=train_config.batch_size)
        batch = {"x": _targets(frames[picks], None if masks is None else masks[picks])}
        batch["classes"] = torch.from_numpy(classes[picks])
        return batch

    # 2. Model (seeded init) and the epsilon loss over all channels.
    torch.manual_seed(recipe.seed)
    unet = UNet2DModel(**unet_config(config, resolution))
    noise_schedule = DDPMScheduler.from_config(pixel_scheduler_config(config))
    total = noise_schedule.config.num_train_timesteps

    def loss_fn(model, batch) -> torch.Tensor:
        x = batch["x"]
        noise = torch.randn_like(x)
        t = torch.randint(0, total, (x.shape[0],), device=x.device, dtype=torch.long)
        class_labels = batch["classes"] if config.class_conditional else None
        if class_labels is not None and config.class_dropout > 0:
            dropped = torch.rand(x.shape[0], device=x.device) < config.class_dropout
            class_labels = torch.where(dropped, torch.full_like(class_labels, NULL_CLASS), class_labels)
        prediction = model(noise_schedule.add_noise(x, noise, t), t, class_labels=class_labels).sample
        return diffusion_loss(noise_schedule, prediction, x, noise, t, recipe.train.snr_gamma)

    # 3. Shared loop (the model comes back holding its EMA weights).
    info = train_loop(
        unet,
        loss_fn,
        sample_batch,
        steps=train_config.steps,
        checkpoint_dir=out_dir / "checkpoints",
        learning_rate=train_config.learning_rate,
        fingerprint=checkpoint_fingerprint(recipe, resolution, real_train),
        description="train ddpm",
        **recipe_loop_settings(recipe, progress),
    )

    from synthecho.training import is_main_process

    if not is_main_process():  # a data-parallel peer (accelerate launch): the main process saves
        return {"kind": KIND, **info}
    # 4. Save, then draw the grid from the saved folder (proves it loads).
    save(unet.to("cpu"), out_dir, config, resolution)
    save_loss_curve(info["losses"], out_dir / "loss_curve.png", title="ddpm training loss")
    reference, picks = grid_reference(real_train, real_validation)
    _sample_grid(
        load(out_dir, device=info["device"]),
        reference,
        picks,
        out_dir / "sample_grid.png",
        train_config.grid_sampler_steps,
    )
    return {
        "kind": KIND,
        "resolution": resolution,
        "mask_source": "generated" if config.joint_masks else "segmenter",
        "parameters": sum(p.numel() for p in unet.parameters()),
        **info,
        "loss_curve": "loss_curve.png",
        "sample_grid": "sample_grid.png",
    }
