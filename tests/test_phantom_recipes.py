"""The four phantom recipes (demo = sdm, ddpm-phantom, sd-phantom, controlnet-phantom) load, and measure
their generators the same way: same source, resolution, segmenter, filter and generate settings."""

from __future__ import annotations

import pytest

from synthecho.recipe import load_recipe

PHANTOM_RECIPES = {
    "demo": "sdm",
    "ddpm-phantom": "ddpm",
    "sd-phantom": "sd",
    "controlnet-phantom": "controlnet",
}
# generate settings a generator may choose for itself: guidance needs an unconditional branch
GENERATOR_CHOICES = {"guidance_scale"}


def shared(recipe) -> dict:
    generate = {k: v for k, v in recipe.generate.model_dump().items() if k not in GENERATOR_CHOICES}
    sections = ("source", "prepare", "segmenter", "filter")
    return {**{name: getattr(recipe, name).model_dump() for name in sections}, "generate": generate}


@pytest.mark.parametrize("name", sorted(PHANTOM_RECIPES))
def test_phantom_recipe_loads_and_matches_the_demo(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.generator.kind == PHANTOM_RECIPES[name]
    assert recipe.source.kind == "phantom" and recipe.generator.model_dump().get("base_model") is None
    assert shared(recipe) == shared(load_recipe("demo"))


def test_the_comparison_sees_a_different_setting():
    assert shared(load_recipe("sd-phantom", ["filter.dice_threshold.lv=0.6"])) != shared(load_recipe("demo"))
    assert shared(load_recipe("sd-phantom", ["generate.steps=20"])) != shared(load_recipe("demo"))


@pytest.mark.parametrize("name", ["sd-phantom", "controlnet-phantom"])
def test_latent_phantom_recipes_are_class_conditioned(name):
    assert load_recipe(name).generator.class_attributes == ["view", "phase"]
