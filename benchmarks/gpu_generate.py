"""GPU figures at full size: `synthecho generate` end to end against a raw diffusers loop, and training steps.

    python benchmarks/gpu_generate.py --out DIR                       # every job at full size, on a CUDA GPU
    python benchmarks/gpu_generate.py --out DIR --tiny --device cpu   # the same code paths at toy sizes
    python benchmarks/gpu_generate.py --list                          # the jobs, in priority order
    python benchmarks/gpu_generate.py --preflight                     # can this machine import what it needs?
    bash benchmarks/gpu_run.sh                                        # the prepared GPU run (<= 8 minutes)

The architectures are the 9k recipes' at full size with random weights (speed does not depend on them):
SD 1.5 (UNet 860M, VAE 84M, CLIP-L text encoder 123M with a byte-level tokenizer) as the `base_model` of
`controlnet-9k` and `sd-9k`, the `sdm-9k` SPADE UNet and the `ddpm-9k` UNet. Every generator folder is made
by the generator's own public `train` (the recipe's steps cut to warm-up + timed steps), which also gives
that recipe's training figure: seconds per optimizer step, timed by torch's global optimizer-step hook
inside the recipe's own loop (batch size, mixed precision, frozen parts and EMA as in the recipe).

Each generate figure, for one case (recipe, resolution, batch, precision, attention, channels_last, compile):
- warm-up: `--warmup` raw calls plus one `Sampler.sample` call (compilation and autotuning happen here);
- raw: `--iters` timed calls of the diffusers pipeline (latent models) or a plain scheduler loop over the
  model (pixel models), inputs prepared on the device beforehand: the model's own speed;
- end to end: `generate.run` over `--iters` batches with the same loaded sampler (plan, mask perturbation,
  sampling, shape words, PNG encoding, Parquet, markers, manifest);
- FLOPs per image with `torch.utils.flop_counter` (one and two sampling steps, extrapolated to the recipe's;
  attention through the math backend so it is counted), achieved TFLOP/s and % of the bf16 peak;
- peak GPU memory over the timed calls; and the outputs on 16 fixed seeds, compared with fp32 (TF32 off):
  PSNR and mask-Dice difference.
Every figure is appended to DIR/results.jsonl as soon as it is measured; `benchmarks/gpu_report.py` renders
benchmarks/RESULTS.md from that file.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))

DONE = ".bench-done"  # written into a folder this benchmark finished building
FIDELITY_SEEDS = 16
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; first match wins.
BF16_PEAKS = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM (HBM3): 'NVIDIA H100 80GB HBM3'
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)
PIXEL_UNETS = ("SPADEDiffusionModelUNet", "UNet2DModel")
# Toy versions of the recipes (same code paths, seconds on a CPU): --tiny.
TINY_RESOLUTION = {512: 64, 256: 32, 128: 16}
TINY_PIXEL_UNET = [
    "generator.channels=[8,16]",
    "generator.attention=[false,true]",
    "generator.layers_per_block=1",
    "generator.num_head_channels=8",
]
TINY_OVERRIDES = {
    "sdm-9k": TINY_PIXEL_UNET,
    "ddpm-9k": TINY_PIXEL_UNET,
    "sd-9k": [],
    "controlnet-9k": [],
}
TINY_SEGMENTER = ["segmenter.channels=[4,8]", "segmenter.strides=[2]", "segmenter.num_res_units=1"]


@dataclass(frozen=True)
class Case:
    """One generate figure: a 9k recipe's generator at a resolution and batch, with the speed switches."""

    name: str
    recipe: str
    resolution: int
    batch: int
    precision: str = "bf16"
    attention: str = "default"  # default (as loaded) | sdpa | classic (diffusers AttnProcessor, MONAI math)
    channels_last: bool = False
    compile: bool = False


CN512 = Case("controlnet-512", "controlnet-9k", 512, 8)
CN256 = Case("controlnet-256", "controlnet-9k", 256, 32)  # the recipe's batch
SD256 = Case("sd-256", "sd-9k", 256, 32)  # the recipe's batch
# The recipe's batch is 64; 16 frames of 256 px at 128 channels fill the GPU already, and 64 would take
# 45 calls x ~3 s of the 8-minute run.
SDM256 = Case("sdm-256", "sdm-9k", 256, 16)
DDPM128 = Case("ddpm-128", "ddpm-9k", 128, 64)  # the recipe's batch


# --- small helpers ------------------------------------------------------------------------------------


def torch():
    import torch as module

    return module


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch().cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch().cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> dict[str, float | None]:
    if not device.startswith("cuda"):
        return {"peak_memory_gib": None, "peak_reserved_gib": None}
    cuda = torch().cuda
    return {
        "peak_memory_gib": round(cuda.max_memory_allocated() / 2**30, 3),
        "peak_reserved_gib": round(cuda.max_memory_reserved() / 2**30, 3),
    }


def bf16_peak_tflops(device_name: str) -> float | None:
    for key, peak in BF16_PEAKS:
        if key in device_name:
            return peak
    return None


def dtype_of(precision: str):
    t = torch()
    return {"fp32": t.float32, "bf16": t.bfloat16, "fp16": t.float16}[precision]


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """The fp32 reference: no TF32 in matmuls or convolutions (cuDNN allows TF32 by default)."""
    backends = torch().backends
    saved = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved


@functools.cache
def cpu_benchmark():
    """benchmarks/generate.py (the CPU benchmark) as a module: its scratch run is reused here."""
    spec = importlib.util.spec_from_file_location("synthecho_benchmark_generate", BENCHMARKS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def original_recipe(name: str):
    """A 9k recipe as shipped (its training steps, batch sizes, sampler)."""
    from synthecho.recipe import load_recipe

    return load_recipe(REPO / "recipes" / f"{name}.yaml")


def variant_name(case: Case) -> str:
    """What a case's outputs on the fixed seeds are saved as: precision and the switches that differ."""
    switches = [
        case.precision,
        "compiled" if case.compile else "",
        "channels-last" if case.channels_last else "",
    ]
    return "-".join([*filter(None, switches), *([case.attention] if case.attention != "default" else [])])


@contextlib.contextmanager
def scratch_run(run_dir: Path) -> Iterator[Path]:
    """The CPU benchmark's throwaway run (real/, generator/ linked) plus segmenter/ and the manifest."""
    with cpu_benchmark().scratch_run(run_dir) as scratch:
        if (run_dir / "segmenter").exists():
            (scratch / "segmenter").symlink_to((run_dir / "segmenter").resolve())
        if (run_dir / "manifest.json").is_file():
            shutil.copyfile(run_dir / "manifest.json", scratch / "manifest.json")
        yield scratch


# --- random-initialised full-size parts -----------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of CLIP's byte-level BPE."""
    codes = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = codes[:]
    for byte in range(256):
        if byte not in codes:
            codes.append(byte)
            chars.append(256 + len(chars) - 188)  # 188 printable bytes map to themselves
    return {byte: chr(char) for byte, char in zip(codes, chars, strict=True)}


def byte_tokenizer(folder: Path):
    """A CLIPTokenizer with CLIP's 512 byte tokens and no merges: every prompt still pads to 77 tokens,
    so the text encoder does exactly SD 1.5's work (its real vocabulary cannot be downloaded here)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(
        json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def sd15_configs(tiny: bool) -> dict[str, dict]:
    """Constructor arguments of SD 1.5's UNet, VAE and CLIP text encoder (or toy ones)."""
    if tiny:
        return {
            "unet": dict(
                sample_size=16,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1,
                cross_attention_dim=32,
                attention_head_dim=2,
            ),
            "vae": dict(
                block_out_channels=[16, 32],
                down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2,
                layers_per_block=1,
                norm_num_groups=16,
                sample_size=32,
            ),
            "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        }
    return {
        "unet": dict(sample_size=64, cross_attention_dim=768),  # diffusers' defaults are SD 1.x otherwise
        "vae": dict(
            block_out_channels=[128, 256, 512, 512],
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=2,
            sample_size=512,
            scaling_factor=0.18215,
        ),
        "text": dict(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        ),
    }


def build_sd_base(folder: Path, tiny: bool, device: str) -> dict:
    """A random-initialised SD 1.5 pipeline folder (the `base_model` of controlnet-9k and sd-9k)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd15_configs(tiny)
    tokenizer = byte_tokenizer(folder.parent / f"{folder.name}.tokenizer")
    ids = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(token)
        for name, token in (("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"), ("pad", "<|endoftext|>"))
    }
    text_config = {"vocab_size": len(tokenizer), **configs["text"], "max_position_embeddings": 77, **ids}
    torch().manual_seed(0)
    with torch().device(device):  # initialised where it is fast; saved from the CPU
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(latent_channels=4, **configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = PNDMScheduler(  # SD 1.5's scheduler config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    scheduler.register_to_config(clip_sample=False)  # in SD 1.5's scheduler_config.json, not an argument
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to("cpu")
    pipe.save_pretrained(folder, safe_serialization=True)
    return {
        name: sum(p.numel() for p in part.parameters())
        for name, part in pipe.components.items()
        if hasattr(part, "parameters")
    }


# --- real frames: a prepared train split at any resolution ----------------------------------------------


def fake_record(index: int, resolution: int, rng: np.random.Generator) -> SimpleNamespace:
    """A CAMUS-like source record: fan sector (0 outside), LV ellipse in a myocardium ring, LA below."""
    from synthecho import labels as lab

    rows, cols = np.mgrid[0:resolution, 0:resolution]
    sector = (rows >= resolution // 32) & (np.abs(cols - resolution / 2 + 0.5) <= rows * 0.6 + 1)
    cy, cx = resolution * (0.42 + rng.uniform(-0.03, 0.03)), resolution * (0.5 + rng.uniform(-0.04, 0.04))
    distance = ((rows - cy) / (resolution * 0.24)) ** 2 + ((cols - cx) / (resolution * 0.14)) ** 2
    mask = np.zeros((resolution, resolution), np.uint8)
    mask[distance < 1.7] = lab.MYO
    mask[distance < 1] = lab.LV
    la = ((rows - resolution * 0.78) / (resolution * 0.1)) ** 2 + ((cols - cx) / (resolution * 0.12)) ** 2
    mask[la < 1] = lab.LA
    mask[~sector] = 0
    image = np.clip(rng.gamma(2.0, 40.0, mask.shape), 1, 255)
    image[mask == lab.LV] = np.clip(image[mask == lab.LV] * 0.15, 1, 255)
    image[mask == lab.LA] = np.clip(image[mask == lab.LA] * 0.2, 1, 255)
    view, phase = (("2CH", "4CH")[index % 2], ("ED", "ES")[(index // 2) % 2])
    return SimpleNamespace(
        id=f"bench/patient{index // 4:04d}_{view}_{phase}",
        patient=f"patient{index // 4:04d}",
        split="train",
        view=view,
        phase=phase,
        sex=("F", "M")[(index // 4) % 2],
        age=int(30 + (index * 7) % 60),
        image_quality=("Good", "Medium", "Poor")[index % 3],
        ef=55.0,
        spacing=(0.3, 0.3),
        source_file=f"bench/{index}",
        image=np.where(sector, image, 0).astype(np.uint8),
        mask=mask,
    )


def write_real(run_dir: Path, resolution: int, count: int) -> None:
    """`<run_dir>/real/train.parquet` with `count` records, written through `prepare`'s own row writer."""
    from synthecho.layout import RunLayout
    from synthecho.real import record_row, write_split

    path = RunLayout.of(run_dir).real_split("train")
    if (run_dir / DONE).is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(resolution)
    write_split([record_row(fake_record(i, resolution, rng), resolution) for i in range(count)], path)
    (run_dir / DONE).write_text(f"{count}\n")


# --- the sampler's parts, switches and the raw loops ------------------------------------------------------


def sampler_parts(sampler) -> tuple[object | None, dict]:
    """(the diffusers pipeline or None, {name: torch module}) found in a loaded Sampler's attributes."""
    from diffusers import DiffusionPipeline

    nn = torch().nn
    pipe, modules = None, {}
    for name, value in vars(sampler).items():
        if isinstance(value, DiffusionPipeline):
            pipe = value
            modules.update({k: v for k, v in value.components.items() if isinstance(v, nn.Module)})
        elif isinstance(value, nn.Module):
            modules[name] = value
        elif isinstance(value, (list, tuple)):  # e.g. one pixel denoiser per class
            modules.update({f"{name}.{i}": v for i, v in enumerate(value) if isinstance(v, nn.Module)})
    return pipe, modules


def denoisers(modules: dict) -> dict:
    """The modules every sampling step runs (UNet, ControlNet, pixel denoiser): what compile targets."""
    return {name: module for name, module in modules.items() if name not in ("vae", "text_encoder")}


def set_attention(modules: dict, choice: str) -> str:
    """Switch attention to SDPA or the classic (matmul + softmax) kernels; returns what is in effect."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    names = {"AttnProcessor2_0": "sdpa", "AttnProcessor": "classic"}
    effective = set()
    for module in modules.values():
        if hasattr(module, "attn_processors") and module.attn_processors:
            if choice != "default":
                module.set_attn_processor(AttnProcessor2_0() if choice == "sdpa" else AttnProcessor())
            effective |= {
                names.get(type(p).__name__, type(p).__name__) for p in module.attn_processors.values()
            }
        for block in module.modules():
            if hasattr(block, "use_flash_attention"):  # MONAI's attention blocks: SDPA when True
                if choice != "default":
                    block.use_flash_attention = choice == "sdpa"
                effective.add("sdpa" if block.use_flash_attention else "classic")
    return "+".join(sorted(effective)) or "none"


def apply_switches(sampler, case: Case, args) -> dict:
    _, modules = sampler_parts(sampler)
    if case.channels_last:
        for module in modules.values():
            module.to(memory_format=torch().channels_last)
    attention = set_attention(modules, case.attention)
    compiled = {"compiled": [], "compile_backend": None, "compile_mode": None}
    if case.compile:
        options = {"backend": args.compile_backend}
        if args.compile_backend == "inductor":
            options["mode"] = args.compile_mode
        for module in denoisers(modules).values():
            module.compile(**options)
        compiled = {
            "compiled": sorted(denoisers(modules)),
            "compile_backend": args.compile_backend,
            "compile_mode": options.get("mode"),
        }
    return {"attention": attention, "channels_last": case.channels_last, **compiled}


def scheduler_for(generator_dir: Path, name: str):
    """A fresh scheduler of kind `name` from the generator folder's saved noise schedule."""
    from synthecho.generators.base import make_scheduler, plain_config

    config = json.loads((generator_dir / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    return make_scheduler(name, plain_config(config))


def raw_loop(sampler, generator_dir: Path, recipe, device: str) -> Callable:
    """prepare(labels, prompts, seeds) -> inputs on the device; run(inputs): one batch, the model alone."""
    from synthecho import labels as lab

    config = recipe.generate
    pipe, modules = sampler_parts(sampler)
    t = torch()
    resolution = sampler.resolution

    if pipe is not None:  # latent diffusion: the diffusers pipeline, called as a diffusers user would
        dtype = pipe.unet.dtype
        latent = resolution // pipe.vae_scale_factor
        control = "controlnet" in pipe.components and pipe.components["controlnet"] is not None

        def prepare(labels, prompts, seeds):
            generator = t.Generator(device).manual_seed(int(seeds[0]))
            shape = (len(seeds), pipe.unet.config.in_channels, latent, latent)
            inputs = {
                "prompt": list(prompts),
                "latents": t.randn(shape, generator=generator, device=device, dtype=dtype),
            }
            if control:
                onehot = lab.one_hot(np.asarray(labels), lab.NUM_CONDITION_CLASSES)
                inputs["image"] = t.from_numpy(onehot).to(device, dtype)
                inputs["controlnet_conditioning_scale"] = float(recipe.generator.conditioning_scale)
            return inputs

        def run(inputs):
            pipe.scheduler = scheduler_for(generator_dir, config.sampler)
            return pipe(
                height=resolution,
                width=resolution,
                num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale,
                output_type="np",
                **inputs,
            ).images

        return SimpleNamespace(prepare=prepare, run=run)

    unet = next(
        block
        for module in modules.values()
        for block in module.modules()
        if type(block).__name__ in PIXEL_UNETS
    )
    spade = type(unet).__name__ == "SPADEDiffusionModelUNet"
    dtype = next(unet.parameters()).dtype
    classes = unet.num_class_embeds if spade else unet.config.num_class_embeds  # None: no class input
    label_map = sampler.kind == "sdm"  # sdm: conditioned on the map (SPADE, or concatenated channels)
    concat = label_map and not spade
    channels = (
        unet.in_channels if spade else unet.config.in_channels - (lab.NUM_CONDITION_CLASSES if concat else 0)
    )
    guided = config.guidance_scale != 1.0
    doubled = 2 if guided else 1

    def prepare(labels, prompts, seeds):
        count = len(seeds)
        generator = t.Generator(device).manual_seed(int(seeds[0]))
        inputs = {"x": t.randn((count, channels, resolution, resolution), generator=generator, device=device)}
        inputs["classes"] = t.randint(0, classes, (count * doubled,), device=device) if classes else None
        if label_map:
            cond = t.from_numpy(lab.one_hot(np.asarray(labels), lab.NUM_CONDITION_CLASSES)).to(device, dtype)
            inputs["cond"] = t.cat([cond, t.zeros_like(cond)]) if guided else cond
        return inputs

    def model(x, timesteps, inputs):
        if spade:
            return unet(x, timesteps, seg=inputs["cond"], class_labels=inputs["classes"])
        if concat:
            x = t.cat([x, inputs["cond"]], dim=1)
        return unet(x, timesteps, class_labels=inputs["classes"]).sample

    def run(inputs):
        scheduler = scheduler_for(generator_dir, config.sampler)
        scheduler.set_timesteps(config.steps, device=device)
        x = inputs["x"] * scheduler.init_noise_sigma
        for step in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, step)
            if guided:
                model_in = t.cat([model_in, model_in])
            timesteps = t.full((model_in.shape[0],), int(step), device=device, dtype=t.long)
            eps = model(model_in.to(dtype), timesteps, inputs).float()
            if guided:
                eps_cond, eps_null = eps.chunk(2)
                eps = eps_null + config.guidance_scale * (eps_cond - eps_null)
            x = scheduler.step(eps, step, x).prev_sample
        return ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(t.uint8).cpu().numpy()

    return SimpleNamespace(prepare=prepare, run=run)


def sample_rows(sampler, rows, labels, config, steps: int | None = None):
    """`Sampler.sample` on plan rows as generate calls it (prompts, seeds, and the rows' attributes for
    class-conditioned generators, where this synthecho passes them)."""
    from synthecho.stages import generate

    attributes = getattr(generate, "row_attributes", None)
    return sampler.sample(
        labels,
        [row.prompt for row in rows],
        [row.seed for row in rows],
        sampler=config.sampler,
        steps=config.steps if steps is None else steps,
        guidance_scale=config.guidance_scale,
        **({"attributes": attributes(rows)} if attributes is not None else {}),
    )


def flops_per_image(sampler, rows, labels, config) -> float:
    """FLOPs of one image at the recipe's steps: counted at 1 and 2 steps (the model runs once per step),
    extrapolated; attention through the math backend so torch.utils.flop_counter sees its matmuls."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    def count(steps: int) -> int:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            sample_rows(sampler, rows, labels, config, steps)
        return counter.get_total_flops()

    one, two = count(1), count(2)
    return (one + (config.steps - 1) * (two - one)) / len(rows)


def psnr(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 frames; identical frames count as 99 dB."""
    error = ((images.astype(np.float64) - reference.astype(np.float64)) ** 2).reshape(len(images), -1).mean(1)
    return np.where(error > 0, 10 * np.log10(255.0**2 / np.maximum(error, 1e-12)), 99.0)


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images and the three structures (LV, MYO, LA) of synthecho's per-image Dice."""
    from synthecho.metrics import dice_per_image

    scores = dice_per_image(a, b)
    return float(np.mean([scores[name].mean() for name in ("lv", "myo", "la")]))


class StepClock:
    """Times optimizer steps with torch's global step hook, inside a generator's own training loop."""

    def __init__(self, device: str, warmup: int):
        self.device, self.warmup, self.times, self.peak = device, warmup, [], {}

    def __enter__(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self._step)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _step(self, optimizer, args, kwargs) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        if len(self.times) == self.warmup:
            reset_peak(self.device)  # the steady state: optimizer state exists, kernels are chosen
        elif len(self.times) > self.warmup:
            self.peak = peak_gib(self.device)

    def figures(self) -> dict:
        steps = np.diff(self.times[self.warmup - 1 :])
        if not len(steps):
            raise RuntimeError(f"only {len(self.times)} optimizer steps were seen (warm-up {self.warmup})")
        return {
            "warmup_steps": self.warmup,
            "timed_steps": len(steps),
            "seconds_per_step": round(float(np.median(steps)), 5),
            "seconds_per_step_mean": round(float(np.mean(steps)), 5),
            "seconds_per_step_max": round(float(np.max(steps)), 5),
            **self.peak,
        }


# --- the benchmark ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.tiny = args.tiny
        self.out = Path(args.out)
        self.work = Path(args.work or self.out / "work")
        self.start = args.start_epoch or time.time()
        self.results = self.out / "results.jsonl"
        self.kept: dict[str, object] = {}  # samplers a later job reuses (the compiled case)
        self.flops: dict[tuple, float] = {}
        self.environment: dict = {}
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)

    # bookkeeping
    def elapsed(self) -> float:
        return time.time() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)

    def emit(self, event: str, **fields) -> None:
        record = {"event": event, "t": round(self.elapsed(), 2), **fields}
        with open(self.results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if event == "figure":
            shown = {k: v for k, v in fields.items() if not isinstance(v, (dict, list))}
            self.log(f"FIGURE {json.dumps(shown, default=str)}")

    def past_guard(self) -> bool:
        return self.elapsed() > self.args.guard_s

    def precision(self, precision: str) -> str:
        return "fp32" if self.tiny and precision == "bf16" else precision

    def res(self, resolution: int) -> int:
        return TINY_RESOLUTION[resolution] if self.tiny else resolution

    def batch(self, batch: int) -> int:
        return min(batch, 2) if self.tiny else batch

    # recipes and folders
    def recipe(
        self,
        name: str,
        resolution: int,
        *,
        batch: int | None = None,
        precision: str = "bf16",
        base: bool = True,
    ):
        """The 9k recipe at `resolution` (full size or toy), trained for warm-up + timed steps, and with
        `batch` its plan cut to `--iters` full batches."""
        from synthecho.recipe import load_recipe

        steps = self.args.warmup + self.args.iters
        overrides = [
            f"prepare.resolution={resolution}",
            f"train.steps={steps}",
            f"segmenter.steps={steps}",
            "train.checkpoint_every=1000000000",
            "train.grid_sampler_steps=1",
            "generate.splits=[train]",
            f"generate.device={self.device}",
            f"generate.precision={precision}",
        ]
        if base and name in ("sd-9k", "controlnet-9k"):
            overrides.append(f"generator.base_model={self.sd_base()}")
        if self.tiny:  # toy models, fp32 (bf16 on a CPU is emulated: minutes), 2 sampling steps
            overrides += TINY_OVERRIDES[name] + TINY_SEGMENTER
            overrides += ["train.batch_size=2", "segmenter.batch_size=2", "train.mixed_precision='no'"]
            overrides += [f"generate.steps={self.args.tiny_steps}"]
        if batch is not None:
            rows = self.args.iters * batch
            variants = 5 if rows % 5 == 0 else 1  # the recipes' 5 perturbed masks per real mask
            overrides += [
                f"generate.batch_size={batch}",
                f"generate.variants={variants}",
                f"generate.max_records_per_split={rows // variants}",
            ]
        return load_recipe(REPO / "recipes" / f"{name}.yaml", overrides)

    def sd_base(self) -> Path:
        folder = self.work / "sd15-random"
        if not (folder / DONE).is_file():
            started = time.perf_counter()
            parameters = build_sd_base(folder, self.tiny, self.device)
            (folder / DONE).write_text("built\n")
            self.emit(
                "built",
                part="sd15-random",
                seconds=round(time.perf_counter() - started, 2),
                parameters=parameters,
            )
        return folder

    def real_run(self, resolution: int) -> Path:
        """A run dir whose real/train.parquet holds enough records for every case at `resolution`."""
        needed = [16, self.args.fidelity_seeds]  # 16: the recipes' largest training batch
        for case in CASES:
            if self.res(case.resolution) == resolution:
                rows = self.args.iters * self.batch(case.batch)
                needed.append(rows // (5 if rows % 5 == 0 else 1))
        run = self.work / f"real-{resolution}"
        write_real(run, resolution, max(needed))
        return run

    def real_split(self, resolution: int):
        from synthecho.real import load_real

        return load_real(self.real_run(resolution), "train")

    def generator(self, recipe_name: str, resolution: int) -> Path:
        """The recipe's generator folder, made by its own `train` (which gives the training figure)."""
        from synthecho.generators import get_generator

        folder = self.work / "generators" / f"{recipe_name}-{resolution}"
        if (folder / DONE).is_file():
            return folder
        recipe = self.recipe(recipe_name, resolution)
        real = self.real_split(resolution)
        started = time.perf_counter()
        with StepClock(self.device, self.args.warmup) as clock:
            info = get_generator(recipe.generator.kind).train(recipe, real, folder, progress=False)
        self.emit_train(
            recipe_name, "generator", recipe, clock, time.perf_counter() - started, info.get("parameters")
        )
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # disk: ControlNet + EMA + AdamW is 6 GB
        (folder / DONE).write_text("trained\n")
        return folder

    def segmenter(self, resolution: int) -> Path:
        """The filter's segmenter (the 9k recipes' architecture): trained briefly, for sd and the Dice."""
        from synthecho.segmenter import train_segmenter

        folder = self.work / f"segmenter-{resolution}"
        if (folder / DONE).is_file():
            return folder
        recipe = self.recipe("sd-9k", resolution, base=False)
        real = self.real_split(resolution)
        started = time.perf_counter()
        with StepClock(self.device, self.args.warmup) as clock:
            train_segmenter(recipe.segmenter, real, real, folder, progress=False, device=self.device)
        self.emit_train("segmenter", "segmenter", recipe, clock, time.perf_counter() - started, None)
        (folder / DONE).write_text("trained\n")
        return folder

    def emit_train(self, recipe_name, part, recipe, clock, wall, parameters) -> None:
        config = recipe.segmenter if part == "segmenter" else recipe.train
        original = original_recipe("sd-9k" if part == "segmenter" else recipe_name)
        self.emit(
            "figure",
            figure="train",
            recipe=recipe_name,
            part=part,
            kind=recipe.generator.kind if part == "generator" else "monai-unet",
            device_name=self.environment.get("device_name"),
            resolution=recipe.prepare.resolution,
            batch_size=config.batch_size,
            mixed_precision=recipe.train.mixed_precision if part == "generator" else "no",
            parameters=parameters,
            recipe_steps=(original.segmenter if part == "segmenter" else original.train).steps,
            wall_seconds=round(wall, 2),
            **clock.figures(),
        )

    def run_dir(self, case: Case, resolution: int, generator_dir: Path, segmenter: Path | None) -> Path:
        """real/ (at the case's resolution), generator/, segmenter/ and a manifest as `train` leaves them."""
        from synthecho.manifest import update_manifest

        run = self.work / "runs" / case.name
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        (run / "real").symlink_to((self.real_run(resolution) / "real").resolve())
        (run / "generator").symlink_to(generator_dir.resolve())
        if segmenter is not None:
            (run / "segmenter").symlink_to(segmenter.resolve())
        # `train` records the weights' sha256 in the manifest; without it generate would hash the folder
        # (5.8 GB for ControlNet) on every run, which a real run never does.
        update_manifest(run, generator={"sha256": f"random-init:{generator_dir.name}"})
        return run

    def load(self, case: Case, generator_dir: Path, resolution: int, precision: str):
        from synthecho.generators import get_generator

        kind = original_recipe(case.recipe).generator.kind
        sampler = get_generator(kind).load(generator_dir, device=self.device, dtype=dtype_of(precision))
        # `resolution` is a Sampler attribute: one set of weights (trained at 256 px) serves 512 px too.
        sampler.resolution = resolution
        return sampler

    # the measurements
    def generate_case(self, case: Case, *, sampler=None, reference: bool = True, keep: bool = False) -> None:
        """Measure one case (the generate figure), then its outputs on the fixed seeds (the fidelity)."""
        from synthecho.plan import build_plan, shards_of
        from synthecho.real import load_real
        from synthecho.stages import generate

        args, device = self.args, self.device
        case = replace(case, precision=self.precision(case.precision))
        resolution, batch = self.res(case.resolution), self.batch(case.batch)
        train_resolution = self.res(256 if case.recipe != "ddpm-9k" else 128)
        generator_dir = self.generator(case.recipe, train_resolution)
        # The filter's segmenter at the 9k resolution: sd's masks, and every 256 px case's Dice check.
        segmenter = self.segmenter(resolution) if resolution == self.res(256) else None
        rows = args.iters * batch
        recipe = self.recipe(case.recipe, resolution, batch=batch, precision=case.precision)
        config = recipe.generate
        run_dir = self.run_dir(case, resolution, generator_dir, segmenter if case.recipe == "sd-9k" else None)

        # 1. The plan's batches and their conditioning maps (as generate makes them).
        real = {"train": load_real(run_dir, "train")}
        batches = [b for shard in shards_of(build_plan(recipe, real)) for b in shard.batches]
        assert len(batches) == args.iters and all(len(b) == batch for b in batches), [len(b) for b in batches]
        labels = [generate.conditioning(b, real)[1] for b in batches]
        prompts = [[row.prompt for row in b] for b in batches]
        seeds = [[row.seed for row in b] for b in batches]

        # 2. The sampler, its switches and the model's FLOPs (counted eagerly, before any compile).
        started = time.perf_counter()
        if sampler is None:
            sampler = self.load(case, generator_dir, resolution, case.precision)
        load_seconds = time.perf_counter() - started
        flops_key = (case.recipe, resolution, batch)
        if flops_key not in self.flops:
            self.flops[flops_key] = flops_per_image(sampler, batches[0], labels[0], config)
        switches = apply_switches(sampler, case, args)
        raw = raw_loop(sampler, generator_dir, recipe, device)
        inputs = [raw.prepare(labels[i], prompts[i], seeds[i]) for i in range(len(batches))]

        def raw_call(i: int) -> float:
            synchronize(device)
            begun = time.perf_counter()
            with torch().inference_mode():  # as Sampler.sample: one grad mode, so compiled graphs are reused
                raw.run(inputs[i % len(inputs)])
            synchronize(device)
            return time.perf_counter() - begun

        # 3. Warm-up, the raw loop, then generate end to end with the same sampler.
        warmup = [raw_call(i) for i in range(args.warmup)]
        sample_rows(sampler, batches[0], labels[0], config)
        synchronize(device)
        reset_peak(device)
        timings = [raw_call(i) for i in range(args.iters)]
        with scratch_run(run_dir) as scratch:
            synchronize(device)
            begun = time.perf_counter()
            info = generate.run(recipe, scratch, progress=False, device=device, sampler=sampler)
            synchronize(device)
            stage_seconds = time.perf_counter() - begun
        memory = peak_gib(device)
        assert info["rows_generated"] == rows, info

        raw_rate, stage_rate = rows / sum(timings), rows / stage_seconds
        flops = self.flops[flops_key]
        peak = self.environment.get("bf16_peak_tflops")
        matmul = self.environment.get("matmul_bf16_tflops")
        figure = {
            "figure": "generate",
            "case": case.name,
            "recipe": case.recipe,
            "kind": sampler.kind,
            "device_name": self.environment.get("device_name"),
            "precision": case.precision,
            "variant": variant_name(case),
            "batch_size": batch,
            "recipe_batch_size": original_recipe(case.recipe).generate.batch_size,
            "steps": config.steps,
            "sampler": config.sampler,
            "guidance_scale": config.guidance_scale,
            "resolution": resolution,
            **switches,
            "rows": rows,
            "warmup_iterations": args.warmup,
            "timed_iterations": args.iters,
            "load_seconds": round(load_seconds, 2),
            "warmup_seconds": round(sum(warmup), 2),
            "raw_images_per_second": round(raw_rate, 4),
            "raw_seconds_per_batch_median": round(float(np.median(timings)), 5),
            "raw_seconds_per_batch_max": round(float(np.max(timings)), 5),
            "generate_images_per_second": round(stage_rate, 4),
            "generate_seconds": round(stage_seconds, 3),
            "ratio": round(stage_rate / raw_rate, 4),
            "flops_per_image": flops,
            "raw_tflops": round(flops * raw_rate / 1e12, 2),
            "generate_tflops": round(flops * stage_rate / 1e12, 2),
            "bf16_peak_tflops": peak,
            "raw_percent_of_peak": round(100 * flops * raw_rate / 1e12 / peak, 2) if peak else None,
            "generate_percent_of_peak": round(100 * flops * stage_rate / 1e12 / peak, 2) if peak else None,
            "matmul_bf16_tflops": matmul,
            **memory,
        }
        self.emit("figure", **figure)

        # 4. Outputs on the fixed seeds; the fp32 reference (and fp16) when asked for.
        if self.past_guard():
            self.log(f"{case.name}: past the guard, fidelity skipped")
        else:
            fixed = self.fixed_rows(recipe, real)
            self.save_outputs(case, variant_name(case), sampler, fixed, config, batch)
            if reference:
                self.reference(case, generator_dir, resolution, fixed, config, batch, segmenter)
            else:  # compared now if the fp32 outputs exist, else by the job that makes them
                self.compare(case, segmenter, only=variant_name(case))
        if keep:
            self.kept[case.name] = sampler

    def fixed_rows(self, recipe, real) -> dict:
        """The first FIDELITY_SEEDS plan rows: labels, prompts, seeds and conditioning masks."""
        from synthecho.plan import build_plan
        from synthecho.stages import generate

        rows = build_plan(recipe, real)[: self.args.fidelity_seeds]
        masks, labels = generate.conditioning(rows, real)
        return {"rows": rows, "labels": labels, "masks": masks}

    def outputs_path(self, case: Case, variant: str) -> Path:
        return self.work / "fidelity" / f"{case.recipe}-{self.res(case.resolution)}-{variant}.npz"

    def save_outputs(self, case: Case, variant: str, sampler, fixed: dict, config, batch: int) -> None:
        images, masks = [], []
        for start in range(0, len(fixed["rows"]), batch):
            result = sample_rows(
                sampler, fixed["rows"][start : start + batch], fixed["labels"][start : start + batch], config
            )
            images.append(result.images)
            masks.append(result.masks if result.masks is not None else fixed["masks"][start : start + batch])
        path = self.outputs_path(case, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        # mask_source "segmenter" (sd): the written masks are the segmenter's, made at comparison time.
        np.savez(
            path,
            images=np.concatenate(images),
            masks=np.concatenate(masks),
            segmented=sampler.mask_source == "segmenter",
        )

    def reference(
        self,
        case: Case,
        generator_dir: Path,
        resolution: int,
        fixed: dict,
        config,
        batch: int,
        segmenter: Path | None,
        variants: tuple[str, ...] = ("fp16",),
    ) -> None:
        """fp32 outputs (TF32 off), the other precisions', and each one's agreement with fp32."""
        for variant in ("reference", *variants):
            if self.outputs_path(case, variant).is_file():
                continue
            sampler = self.load(
                case, generator_dir, resolution, "fp32" if variant == "reference" else variant
            )
            with strict_fp32() if variant == "reference" else contextlib.nullcontext():
                self.save_outputs(case, variant, sampler, fixed, config, batch)
            del sampler
            self.free()
        self.compare(case, segmenter)

    def compare(self, case: Case, segmenter_dir: Path | None, only: str | None = None) -> None:
        """Saved variants of `case` (all, or `only`) against its fp32 outputs: PSNR, mask-Dice difference."""
        reference_path = self.outputs_path(case, "reference")
        if not reference_path.is_file():
            return
        reference = np.load(reference_path)
        segmenter = None
        if segmenter_dir is not None:
            from synthecho.segmenter import load_segmenter

            segmenter = load_segmenter(segmenter_dir, device=self.device)
        prefix = reference_path.name[: -len("reference.npz")]
        for path in sorted(reference_path.parent.glob(prefix + "*.npz")):
            variant = path.name[len(prefix) : -len(".npz")]
            if variant == "reference" or (only is not None and variant != only):
                continue
            outputs = np.load(path)
            values = psnr(outputs["images"], reference["images"])
            # The masks written with the rows (the conditioning, generated or segmented ones) and the
            # filter's Dice of the segmenter on each frame against them: how much a variant moves either.
            masks, reference_masks = outputs["masks"], reference["masks"]
            filter_difference = None
            if segmenter is not None:
                segmented, reference_segmented = (
                    segmenter.predict(o["images"]) for o in (outputs, reference)
                )
                if bool(outputs["segmented"]):
                    masks, reference_masks = segmented, reference_segmented
                ours, theirs = mean_dice(segmented, masks), mean_dice(reference_segmented, reference_masks)
                filter_difference = abs(ours - theirs)
            agreement = mean_dice(masks, reference_masks)
            difference = max(1 - agreement, filter_difference or 0.0)
            self.emit(
                "figure",
                figure="fidelity",
                case=case.name,
                recipe=case.recipe,
                resolution=self.res(case.resolution),
                variant=variant,
                reference="fp32, TF32 off",
                seeds=len(values),
                weights="random-init (speed benchmark)",
                psnr_mean=round(float(values.mean()), 2),
                psnr_min=round(float(values.min()), 2),
                mask_agreement_dice=round(agreement, 5),
                filter_dice_difference=None if filter_difference is None else round(filter_difference, 5),
                mask_dice_difference=round(difference, 5),
                segmenter="random-init, recipe architecture" if segmenter is not None else None,
            )

    def free(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch().cuda.empty_cache()


# --- the jobs, in priority order ------------------------------------------------------------------


def job_env(bench: Bench) -> None:
    """The machine: device, versions, the datasheet bf16 peak and a measured bf16 matmul rate."""
    import platform
    from importlib import metadata

    t = torch()
    device = bench.device
    info = {"device": device, "python": platform.python_version(), "torch": t.__version__}
    for package in (
        "diffusers",
        "transformers",
        "accelerate",
        "datasets",
        "monai",
        "pydantic",
        "numpy",
        "pyarrow",
        "safetensors",
        "synthecho",
    ):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    if device.startswith("cuda"):
        properties = t.cuda.get_device_properties(0)
        info.update(
            device_name=properties.name,
            device_count=t.cuda.device_count(),
            capability=".".join(map(str, t.cuda.get_device_capability(0))),
            multiprocessors=properties.multi_processor_count,
            memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=t.version.cuda,
            cudnn=t.backends.cudnn.version(),
            bf16_peak_tflops=bf16_peak_tflops(properties.name),
        )
    else:
        info.update(device_name=f"cpu ({os.cpu_count()} threads)", bf16_peak_tflops=None)
    size, repeats = (8192, 10) if device.startswith("cuda") else (256, 3)
    a = t.randn(size, size, device=device, dtype=t.bfloat16)
    b = t.randn(size, size, device=device, dtype=t.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    begun = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    info["matmul_bf16_tflops"] = round(2 * size**3 * repeats / (time.perf_counter() - begun) / 1e12, 2)
    info["matmul_size"] = size
    del a, b
    bench.environment = info
    bench.emit("figure", figure="env", **info)


def job_controlnet_512(bench: Bench) -> None:
    """ControlNet over SD 1.5 at 512 px, 20 UniPC steps with CFG, bf16 eager: the issue's target case."""
    bench.generate_case(CN512, reference=False, keep=True)


def job_controlnet_512_compiled(bench: Bench) -> None:
    """The same, UNet and ControlNet through torch.compile (the one compiled configuration)."""
    bench.generate_case(
        replace(CN512, name="controlnet-512-compiled", compile=True),
        sampler=bench.kept.pop(CN512.name, None),
        reference=False,
    )


def job_sdm_256(bench: Bench) -> None:
    """sdm-9k's SPADE UNet (pixel space, 256 px, 20 DPM-Solver++ steps), its training step, fp32/fp16."""
    bench.generate_case(SDM256)


def job_sd_256(bench: Bench) -> None:
    """sd-9k: SD 1.5 at 256 px, 20 UniPC steps with CFG, masks from the segmenter; its training step."""
    bench.generate_case(SD256)


def job_ddpm_128(bench: Bench) -> None:
    """ddpm-9k: its training step, then its generate figure (128 px, frames with generated masks)."""
    bench.generate_case(DDPM128)


def job_controlnet_256(bench: Bench) -> None:
    """controlnet-9k at its own resolution and batch (256 px, 32): the figure its projection uses."""
    bench.generate_case(CN256)


def job_fidelity_512(bench: Bench) -> None:
    """fp32 ControlNet 512 outputs (TF32 off): the agreement of bf16 eager and compiled with fp32 (bf16's
    outputs are made here when no earlier job left them; the compiled ones only come from their job)."""
    case = CN512
    recipe = bench.recipe(case.recipe, bench.res(512), batch=bench.batch(case.batch))
    from synthecho.real import load_real

    real = {"train": load_real(bench.real_run(bench.res(512)), "train")}
    bench.reference(
        case,
        bench.generator(case.recipe, bench.res(256)),
        bench.res(512),
        bench.fixed_rows(recipe, real),
        recipe.generate,
        bench.batch(case.batch),
        None,
        variants=(bench.precision(case.precision),),
    )


def job_controlnet_512_channels_last(bench: Bench) -> None:
    """Spare time: the 512 px case with channels_last memory format."""
    bench.generate_case(
        replace(CN512, name="controlnet-512-channels-last", channels_last=True), reference=False
    )


def job_controlnet_512_classic_attention(bench: Bench) -> None:
    """Spare time: the 512 px case with the classic (matmul + softmax, no SDPA) attention."""
    bench.generate_case(
        replace(CN512, name="controlnet-512-classic-attention", attention="classic"), reference=False
    )


def job_sdm_256_sdpa(bench: Bench) -> None:
    """Spare time: SPADE with MONAI's SDPA attention (synthecho builds it with the math attention)."""
    bench.generate_case(replace(SDM256, name="sdm-256-sdpa", attention="sdpa"), reference=False)


CASES = (CN512, SDM256, SD256, DDPM128, CN256)
JOBS: dict[str, Callable[[Bench], None]] = {
    "env": job_env,
    "controlnet-512": job_controlnet_512,
    "controlnet-512-compiled": job_controlnet_512_compiled,
    "sdm-256": job_sdm_256,
    "sd-256": job_sd_256,
    "ddpm-128": job_ddpm_128,
    "controlnet-256": job_controlnet_256,
    "fidelity-512": job_fidelity_512,
    "controlnet-512-channels-last": job_controlnet_512_channels_last,
    "controlnet-512-classic-attention": job_controlnet_512_classic_attention,
    "sdm-256-sdpa": job_sdm_256_sdpa,
}


def finished_jobs(results: Path) -> dict[str, str]:
    """job -> how it ended ('done', 'failed', 'skipped', or 'crashed' when it started and never ended)."""
    ended: dict[str, str] = {}
    if not results.is_file():
        return ended
    for line in results.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a kill
            continue
        if record.get("event") == "start":
            ended.setdefault(record["job"], "crashed")
        elif record.get("event") in ("done", "failed", "skipped", "crashed", "interrupted"):
            ended[record["job"]] = record["event"]
    return ended


def preflight() -> int:
    """Import what the jobs import; report versions and whether torchvision & co. came along."""
    needed = [
        "torch",
        "numpy",
        "scipy",
        "PIL",
        "pyarrow",
        "diffusers",
        "transformers",
        "accelerate",
        "datasets",
        "pydantic",
        "num2words",
        "yaml",
        "synthecho.stages.generate",
        "synthecho.generators.controlnet",
        "synthecho.generators.sd",
    ]
    optional = ["monai", "synthecho.generators.sdm", "synthecho.generators.ddpm", "synthecho.segmenter"]
    status = 0
    for name in needed + optional:
        try:
            module = __import__(name, fromlist=["_"])
            print(f"ok       {name} {getattr(module, '__version__', '')} {getattr(module, '__file__', '')}")
        except Exception as error:  # noqa: BLE001 - report every missing piece at once
            print(f"MISSING  {name}: {type(error).__name__}: {error}")
            status = status or (1 if name in needed else 0)
    import torch as t

    print(f"cuda available: {t.cuda.is_available()}, devices: {t.cuda.device_count()}")
    for name, loaded in optional_imports().items():
        print(f"{name} imported by this path: {loaded}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None, help="folder of results.jsonl (default: a new temp folder)")
    parser.add_argument(
        "--work", default=None, help="scratch folder for weights and runs (default: OUT/work)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: the code paths in seconds on a CPU")
    parser.add_argument("--only", default=None, help="comma-separated jobs (default: all, in priority order)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 5; tiny 1)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 20; tiny 2)")
    parser.add_argument("--tiny-steps", type=int, default=2, help="sampling steps with --tiny")
    parser.add_argument("--fidelity-seeds", type=int, default=None, help=f"default {FIDELITY_SEEDS}; tiny 2")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests: eager)")
    parser.add_argument("--compile-mode", default="default", help="inductor mode")
    parser.add_argument(
        "--start-epoch", type=float, default=None, help="the run's start (gpu_run.sh's clock)"
    )
    parser.add_argument("--guard-s", type=float, default=420, help="start no job after this many seconds")
    parser.add_argument("--resume", action="store_true", help="skip jobs results.jsonl says have ended")
    parser.add_argument("--list", action="store_true", help="print the jobs in priority order")
    parser.add_argument("--preflight", action="store_true", help="check the imports the jobs need")
    args = parser.parse_args(argv)
    if args.list:
        for name, job in JOBS.items():
            print(f"{name:34s} {job.__doc__.splitlines()[0]}")
        return 0
    if args.preflight:
        return preflight()
    args.warmup = args.warmup or (1 if args.tiny else 5)
    args.iters = args.iters or (2 if args.tiny else 20)
    args.fidelity_seeds = args.fidelity_seeds or (2 if args.tiny else FIDELITY_SEEDS)
    if args.out is None:
        import tempfile

        args.out = tempfile.mkdtemp(prefix="synthecho-gpu-")
    selected = args.only.split(",") if args.only else list(JOBS)
    unknown = sorted(set(selected) - set(JOBS))
    if unknown:
        parser.error(f"unknown jobs {unknown}; --list shows them")
    if "env" not in selected:
        selected.insert(0, "env")  # every figure names its device

    if args.tiny:  # toy models gain nothing from threads, and OpenMP's spinning costs 10x on a busy CPU
        torch().set_num_threads(1)
    bench = Bench(args)
    ended = finished_jobs(bench.results) if args.resume else {}
    for name, how in ended.items():
        if how == "crashed" and name in selected:
            bench.emit("crashed", job=name, note="the process died during this job; not retried")
    bench.log(f"jobs: {', '.join(selected)}; out {bench.out}; work {bench.work}")
    for name in selected:
        if name in ended and name != "env":
            continue
        if name != "env" and bench.past_guard():
            bench.emit("skipped", job=name, reason=f"guard: {bench.elapsed():.0f} s > {args.guard_s:.0f} s")
            continue
        bench.emit("start", job=name)
        begun = time.perf_counter()
        try:
            JOBS[name](bench)
        except KeyboardInterrupt:
            bench.emit("interrupted", job=name, seconds=round(time.perf_counter() - begun, 2))
            emit_imports(bench)
            return 124
        except Exception as error:  # noqa: BLE001 - one broken job must not cost the others
            traceback.print_exc()
            bench.emit(
                "failed",
                job=name,
                error=f"{type(error).__name__}: {error}"[:2000],
                seconds=round(time.perf_counter() - begun, 2),
            )
            bench.kept.clear()
            bench.free()
            continue
        bench.free()
        free = round(shutil.disk_usage(bench.work).free / 2**30, 1)  # the run writes ~30 GB at its peak
        bench.emit(
            "done",
            job=name,
            seconds=round(time.perf_counter() - begun, 2),
            loaded=optional_imports(),
            work_free_gib=free,
        )
    emit_imports(bench)
    bench.log(f"all jobs ended; results in {bench.results}")
    return 0


OPTIONAL_IMPORTS = ("torchvision", "monai", "SimpleITK", "cleanfid")


def optional_imports() -> dict[str, bool]:
    """Which of the packages the GPU machine may lack this process has imported so far."""
    return {name: sys.modules.get(name) is not None for name in OPTIONAL_IMPORTS}


def emit_imports(bench: Bench) -> None:
    bench.emit("imports", loaded=optional_imports())


if __name__ == "__main__":
    sys.exit(main())
