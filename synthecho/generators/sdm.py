"""`sdm`: semantic diffusion, a pixel-space DDPM conditioned on the 5-class label map.

Two variants of the denoiser (`generator.variant`):
- `spade`: MONAI `SPADEDiffusionModelUNet`: the one-hot label map modulates every decoder normalisation
  (SPADE), as SDM and Echo from noise do;
- `concat`: a diffusers `UNet2DModel` that reads the one-hot map as 5 extra input channels; about 4x
  cheaper on a CPU, so the CPU demo uses it.

The label map does not say which view or phase a frame shows (whether a right heart belongs in the
picture, how thick the walls are), so `class_attributes` (e.g. [view, phase]) adds a class embedding of
those attributes to the UNet's time embedding (`num_class_embeds`, in both diffusers and MONAI UNets).
`per_class` instead trains one model per class, as Echo from noise trained one SDM per view x phase: the
same conditioning, at the cost of one training run per class (4x for view x phase).

Classifier-free guidance: with probability `condition_dropout` a training map is replaced by the all-zero
"null" map (and the class by the null class); sampling with guidance_scale s != 1 mixes
eps_null + s * (eps_cond - eps_null).

Saved folder (`out_dir`, self-describing; written by `base.save_pixel_generator`, descriptor last):
    synthecho_generator.json        {"kind": "sdm", "variant", "resolution", "config", "mask_source", "unets"}
    unet/ (or unet-2CH-ED/ ...)     one per class with per_class; concat: diffusers save_pretrained,
                                    spade: config.json + safetensors
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
    AttributeClasses,
    SampleBatch,
    check_label_maps,
    check_real_split,
    check_sampling,
    check_unet_levels,
    checkpoint_fingerprint,
    condition_maps,
    diffusion_loss,
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

KIND = "sdm"
SPADE_WEIGHTS = "diffusion_pytorch_model.safetensors"


# --- the denoiser ------------------------------------------------------------------------------------


def classes_of(config) -> AttributeClasses | None:
    """The class embedding's attributes (None: the label map is the only condition, one model per class
    with `per_class`)."""
    return AttributeClasses(tuple(config.class_attributes)) if config.class_attributes else None


def embedded_classes(config) -> AttributeClasses | None:
    """Classes fed to a class embedding: none when each class has a model of its own."""
    return None if config.per_class else classes_of(config)


def unet_config(config, resolution: int) -> dict[str, Any]:
    """Constructor arguments of the variant's UNet for an `SdmConfig` at `resolution`."""
    channels = list(config.channels)
    check_unet_levels(config.attention, channels, resolution, names=PIXEL_UNET_NAMES)
    head = head_channels(config)
    groups = norm_groups(channels)
    classes = embedded_classes(config)
    embeds = {"num_class_embeds": classes.embeddings} if classes else {}
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
            **embeds,
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
        **embeds,
    }


class SdmDenoiser(torch.nn.Module):
    """eps = denoiser(noisy (B,1,H,W), timesteps (B,), one-hot label map (B,5,H,W)[, classes (B,)])."""

    def __init__(self, variant: str, unet: torch.nn.Module):
        super().__init__()
        self.variant = variant
        self.unet = unet

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        condition: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.variant == "concat":
            return self.unet(
                torch.cat([noisy, condition], dim=1), timesteps, class_labels=class_labels
            ).sample
        return self.unet(noisy, timesteps, seg=condition, class_labels=class_labels)


def build_denoiser(variant: str, config: dict[str, Any]) -> SdmDenoiser:
    if variant == "concat":
        from diffusers import UNet2DModel

        return SdmDenoiser(variant, UNet2DModel(**config))
    if variant == "spade":
        from monai.networks.nets import SPADEDiffusionModelUNet

        return SdmDenoiser(variant, SPADEDiffusionModelUNet(**config))
    raise SynthechoError(f"generator.variant must be 'concat' or 'spade', got {variant!r}")


# --- saving and loading ------------------------------------------------------------------------------


def unet_folders(config) -> list[str]:
    """`unet`, or with `per_class` one `unet-<class>` per class (e.g. unet-2CH-ED)."""
    if config.per_class:
        return [f"unet-{name}" for name in classes_of(config).names()]
    return ["unet"]


def save(denoisers: list[SdmDenoiser], out_dir: Path, config, resolution: int, unet_kwargs: dict) -> None:
    """Write the self-describing generator folder (the EMA weights the denoisers hold), one UNet folder
    per entry of `unet_folders(config)`."""
    from safetensors.torch import save_file

    def saver(denoiser: SdmDenoiser):
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

        return save_unet

    folders = unet_folders(config)
    descriptor = {
        "kind": KIND,
        "variant": config.variant,
        "resolution": resolution,
        "config": config.model_dump(mode="json"),
        "mask_source": "conditioning",
        "unets": folders,
    }
    unets = {name: saver(denoiser) for name, denoiser in zip(folders, denoisers, strict=True)}
    save_pixel_generator(Path(out_dir), unets, config, descriptor)


def _load_denoiser(unet_dir: Path, variant: str) -> SdmDenoiser:
    if variant == "concat":
        from diffusers import UNet2DModel

        return SdmDenoiser("concat", UNet2DModel.from_pretrained(unet_dir))
    from safetensors.torch import load_file

    described = read_json(unet_dir / "config.json")
    denoiser = build_denoiser("spade", {k: v for k, v in described.items() if not k.startswith("_")})
    denoiser.unet.load_state_dict(load_file(str(unet_dir / SPADE_WEIGHTS)))
    return denoiser


def load(generator_dir: str | Path, device: str = "cpu", dtype=None) -> SdmSampler:
    """Load a saved `sdm` folder as a Sampler (dtype: torch dtype, 'fp32', 'bf16', 'fp16' or None=fp32)."""
    generator_dir = Path(generator_dir)
    descriptor = read_descriptor(generator_dir, KIND)
    from synthecho.recipe import SdmConfig

    config = SdmConfig.model_validate(descriptor["config"])
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    denoisers = [
        _load_denoiser(generator_dir / name, config.variant).to(device=device, dtype=torch_dtype).eval()
        for name in descriptor.get("unets", ["unet"])  # folders saved before per-class models: unet/
    ]
    scheduler_config = read_json(generator_dir / "scheduler" / "scheduler_config.json")
    return SdmSampler(denoisers, scheduler_config, int(descriptor["resolution"]), config, device, torch_dtype)


# --- sampling ----------------------------------------------------------------------------------------


class SdmSampler:
    """Sampler protocol (synthecho.generators.base): label maps (+ classes) in, frames out; the masks are
    the inputs."""

    kind = KIND
    mask_source = "conditioning"
    uses_prompt = False

    def __init__(self, denoisers, scheduler_config: dict, resolution: int, config, device, dtype):
        self.denoisers = list(denoisers)
        self.scheduler_config = scheduler_config
        self.resolution = resolution
        self.config = config
        self.variant = config.variant
        self.device = device
        self.dtype = dtype
        self.classes = classes_of(config)
        self.conditioned_on = ("label_map", *config.class_attributes)

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
        attributes: list[dict] | None = None,
    ) -> SampleBatch:
        """(B, H, W) 5-class maps + one seed (+ attributes) per row -> (B, H, W) uint8 frames, 0 outside
        the sector."""
        if seeds is None:
            raise SynthechoError("sdm.sample needs one seed per row")
        check_sampling(sampler, steps)
        label_maps = check_label_maps(labels, seeds, self.resolution, KIND)
        if len(seeds) == 0:
            return SampleBatch(np.zeros((0, self.resolution, self.resolution), np.uint8), None)
        classes = (
            None if self.classes is None else self.classes.sampling_indices(attributes, len(seeds), "sdm")
        )
        if not self.config.per_class:
            frames = self.denoise(
                self.denoisers[0], label_maps, list(seeds), classes, sampler, steps, guidance_scale
            )
        else:  # each row through its class's own model; rows keep their order and their own noise
            frames = np.zeros((len(seeds), self.resolution, self.resolution), np.uint8)
            for index in np.unique(classes):
                rows = np.flatnonzero(classes == index)
                frames[rows] = self.denoise(
                    self.denoisers[index], label_maps[rows], [seeds[i] for i in rows], None, sampler, steps,
                    guidance_scale,
                )  # fmt: skip
        return SampleBatch(images=frames, masks=None)

    def denoise(self, denoiser, label_maps, seeds, classes, sampler, steps, guidance_scale) -> np.ndarray:
        # 1. Conditioning (and the null map and class for guidance), noise from each row's own seed.
        condition = torch.from_numpy(lab.one_hot(label_maps, lab.NUM_CONDITION_CLASSES))
        condition = condition.to(self.device, self.dtype)
        class_labels = None if classes is None else torch.from_numpy(classes).to(self.device)
        guided = guidance_scale != 1.0
        if guided:
            condition = torch.cat([condition, torch.zeros_like(condition)])
            if class_labels is not None:
                class_labels = torch.cat([class_labels, torch.full_like(class_labels, self.classes.null)])
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
            eps = denoiser(model_in.to(self.dtype), timesteps, condition, class_labels).float()
            if guided:
                eps_cond, eps_null = eps.chunk(2)
                eps = eps_null + guidance_scale * (eps_cond - eps_null)
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
        # 3. [-1, 1] -> uint8, exactly 0 outside the conditioning sector (as real frames are).
        frames = pixel_frames(x)
        frames[label_maps == lab.OUTSIDE_SECTOR] = 0
        return frames


# --- training ----------------------------------------------------------------------------------------


def _sample_grid(sampler: SdmSampler, reference, picks, path: Path, steps: int) -> None:
    from synthecho.grids import colorize_condition, save_grid

    count = len(picks)
    subset = reference.subset(picks)
    maps = condition_maps(subset)
    generated = sampler.sample(
        maps, [""] * count, list(range(count)), sampler="dpmsolver++", steps=steps, attributes=subset.records
    )
    rows = [
        [colorize_condition(maps[i]), generated.images[i], reference.images[picks[i]]] for i in range(count)
    ]
    save_grid(rows, path, labels=["condition", "generated", "real"])


def _train_one(
    recipe, real, unet_kwargs, out_dir: Path, name: str, progress: bool
) -> tuple[SdmDenoiser, dict]:
    """Train one denoiser on (frame, label map[, class]) pairs of `real`; checkpoints in
    checkpoints/<name>."""
    from diffusers import DDPMScheduler

    from synthecho.training import recipe_loop_settings, train_loop

    config, train_config = recipe.generator, recipe.train
    resolution = real.images.shape[1]
    # 1. The data as compact arrays; batches are random (frame, map) pairs. No flips: apical views have a
    #    fixed left/right anatomy.
    frames = real.images
    maps = condition_maps(real)
    classes = embedded_classes(config)
    indices = classes.indices(real.records) if classes else None

    def sample_batch(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        picks = rng.integers(0, len(frames), size=train_config.batch_size)
        images = signed_frames(frames[picks])
        condition = torch.from_numpy(lab.one_hot(maps[picks], lab.NUM_CONDITION_CLASSES))
        batch = {"images": images, "condition": condition}
        if indices is not None:
            batch["classes"] = torch.from_numpy(indices[picks])
        return batch

    # 2. Model (seeded initialisation) and the diffusion loss with label-map (and class) dropout.
    torch.manual_seed(recipe.seed)
    denoiser = build_denoiser(config.variant, unet_kwargs)
    noise_schedule = DDPMScheduler.from_config(pixel_scheduler_config(config))
    timesteps_total = noise_schedule.config.num_train_timesteps

    def loss_fn(model, batch) -> torch.Tensor:
        images, condition = batch["images"], batch["condition"]
        class_labels = batch.get("classes")
        count = images.shape[0]
        if config.condition_dropout > 0:
            keep = torch.rand(count, device=images.device) >= config.condition_dropout
            condition = condition * keep[:, None, None, None].to(condition.dtype)
            if class_labels is not None:  # the unconditional branch has neither map nor class
                class_labels = torch.where(keep, class_labels, torch.full_like(class_labels, classes.null))
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, timesteps_total, (count,), device=images.device, dtype=torch.long)
        noisy = noise_schedule.add_noise(images, noise, timesteps)
        prediction = model(noisy, timesteps, condition, class_labels)
        return diffusion_loss(noise_schedule, prediction, images, noise, timesteps, train_config.snr_gamma)

    # 3. The shared loop (accelerate, EMA, checkpoints, resume); the model comes back holding the EMA.
    part = None if name == "unet" else name  # a single model keeps its checkpoint folder and fingerprint
    info = train_loop(
        denoiser,
        loss_fn,
        sample_batch,
        steps=train_config.steps,
        checkpoint_dir=out_dir / "checkpoints" / (part or ""),
        learning_rate=train_config.learning_rate,
        fingerprint=checkpoint_fingerprint(recipe, resolution, real, part),
        description=f"train sdm/{config.variant}" + (f" {name}" if part else ""),
        **recipe_loop_settings(recipe, progress),
    )
    return denoiser.to("cpu", torch.float32), info


def train(recipe, real_train, out_dir: str | Path, *, real_validation=None, progress: bool = True) -> dict:
    """Train the SDM (one model, or one per class), save it into `out_dir`, draw the loss and a grid.

    Resumes from `out_dir/checkpoints/` after an interruption. Returns the training figures
    ({kind, variant, resolution, parameters, steps, start_step, seconds, seconds_per_step, final_loss,
    losses, device, loss_curve, sample_grid}; with per_class, seconds and losses summed / joined over the
    class models and `per_class` holding each one's figures).
    """
    from synthecho.grids import save_loss_curve

    config, train_config = recipe.generator, recipe.train
    if config.kind != KIND:
        raise SynthechoError(f"sdm.train was given a {config.kind!r} generator config")
    out_dir = Path(out_dir)
    resolution = check_real_split(real_train, "train")
    unet_kwargs = unet_config(config, resolution)

    if not config.per_class:
        denoiser, info = _train_one(recipe, real_train, unet_kwargs, out_dir, "unet", progress)
        denoisers, per_class = [denoiser], None
    else:
        classes = classes_of(config)
        indices = classes.indices(real_train.records)
        denoisers, per_class, curves = [], {}, []
        for index, name in enumerate(unet_folders(config)):
            subset = real_train.subset(np.flatnonzero(indices == index))
            if len(subset) == 0:
                raise SynthechoError(
                    f"generator.per_class: the real train split has no {classes.names()[index]} frame to "
                    f"train its model on"
                )
            denoiser, figures = _train_one(recipe, subset, unet_kwargs, out_dir, name, progress)
            denoisers.append(denoiser)
            per_class[name] = {k: v for k, v in figures.items() if k != "losses"} | {"frames": len(subset)}
            curves.append(figures["losses"])
        info = {
            "steps": train_config.steps,
            "start_step": min(f["start_step"] for f in per_class.values()),
            "seconds": round(sum(f["seconds"] for f in per_class.values()), 3),
            "seconds_per_step": round(
                sum(f["seconds_per_step"] for f in per_class.values()) / len(per_class), 4
            ),
            "final_loss": float(np.mean([f["final_loss"] for f in per_class.values()])),
            "losses": [float(np.mean(step)) for step in zip(*curves, strict=True)],
            "device": next(iter(per_class.values()))["device"],
        }

    from synthecho.training import is_main_process

    if not is_main_process():  # a data-parallel peer (accelerate launch): the main process saves
        return {"kind": KIND, **info}
    # 4. Save, then prove the saved folder loads by drawing the sample grid from it.
    save(denoisers, out_dir, config, resolution, unet_kwargs)
    save_loss_curve(info["losses"], out_dir / "loss_curve.png", title=f"sdm/{config.variant} training loss")
    sampler = load(out_dir, device=info["device"])
    reference, picks = grid_reference(real_train, real_validation)
    _sample_grid(sampler, reference, picks, out_dir / "sample_grid.png", train_config.grid_sampler_steps)
    return {
        "kind": KIND,
        "variant": config.variant,
        "resolution": resolution,
        "parameters": sum(p.numel() for denoiser in denoisers for p in denoiser.parameters()),
        **info,
        **({"per_class": per_class} if per_class else {}),
        "loss_curve": "loss_curve.png",
        "sample_grid": "sample_grid.png",
    }
