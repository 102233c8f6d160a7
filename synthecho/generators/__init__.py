"""Generators: each module trains one kind of model and loads it back as a `Sampler`.

A generator module exposes
    train(recipe, real_train: RealSplit, out_dir: Path, *, real_validation=None, progress=True) -> dict
        trains from the real train split, resumes from `out_dir/checkpoints/` after an interruption,
        saves a self-describing folder (config + safetensors) into `out_dir`, returns what it measured;
    load(generator_dir: Path, device="cpu", dtype=None) -> Sampler
and `get_generator(kind)` finds the module for a recipe's `generator.kind`.

The four generator modules (sdm, ddpm, sd, controlnet) are siblings: what they share is in `base`
(the Sampler protocol, descriptor, folder swap, seeds, pixel-space UNet helpers); `latent` holds the
latent-diffusion machinery of sd and controlnet (`latent_sampler` their sampling loop), `text` their
bundled MiniLM text encoder.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from synthecho.errors import SynthechoError

GENERATOR_MODULES = {
    "sdm": "synthecho.generators.sdm",
    "ddpm": "synthecho.generators.ddpm",
    "sd": "synthecho.generators.sd",
    "controlnet": "synthecho.generators.controlnet",
}


def get_generator(kind: str) -> ModuleType:
    if kind not in GENERATOR_MODULES:
        raise SynthechoError(f"generator.kind {kind!r} is not one of {sorted(GENERATOR_MODULES)}")
    return importlib.import_module(GENERATOR_MODULES[kind])
