"""The CAMUS-scale recipes (*-9k): what they evaluate with, what `check` asks for, what their options do,
and where their row counts come from."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from generator_fixtures import fake_real
from typer.testing import CliRunner

from synthecho.cli import app
from synthecho.recipe import (
    AugmentationConfig,
    EvaluateConfig,
    available_recipes,
    find_recipe_file,
    load_recipe,
)

NINE_K = [name for name in available_recipes() if name.endswith("-9k")]
CPU = EvaluateConfig()  # the defaults: what a recipe without an evaluate block gets


def test_there_are_four_9k_recipes():
    assert sorted(NINE_K) == ["controlnet-9k", "ddpm-9k", "sd-9k", "sdm-9k"]


@pytest.mark.parametrize("name", NINE_K)
def test_every_9k_recipe_evaluates_at_camus_scale_not_with_the_cpu_defaults(name):
    recipe = load_recipe(name)
    config, resolution = recipe.evaluate, recipe.prepare.resolution
    segmentation = config.segmentation
    # depth: >= 6 levels (Echo from noise's 8 at 256 px), down to a few pixels at the corpus resolution
    assert len(segmentation.channels) >= 6 > len(CPU.segmentation.channels)
    assert len(segmentation.strides) == len(segmentation.channels) - 1
    assert 2 <= resolution // 2 ** len(segmentation.strides) <= 4
    # budget: epochs over each training set, not the CPU's fixed 200 steps
    assert CPU.epochs is None and config.epochs is not None and config.epochs >= 20
    # augmentation: Echo from noise's geometry and gamma ranges, wider than the CPU study's policy
    augmentation = config.augmentation
    assert augmentation != AugmentationConfig() == CPU.augmentation
    assert augmentation.rotation_degrees == 10 and tuple(augmentation.scale) == (0.8, 1.2)
    assert tuple(augmentation.gamma) == (0.5, 3.0)
    # ImageNet-pretrained classifiers (DiffEcho), an input of the run
    assert config.classification.pretrained and not CPU.classification.pretrained
    assert {"segmentation", "phase", "view"} <= set(config.tasks)


@pytest.mark.parametrize("name", NINE_K)
def test_every_9k_header_states_its_gpu_hours_and_no_asserted_row_count(name):
    text = find_recipe_file(name).read_text(encoding="utf-8")
    header = text[: text.index("\nname:")]
    assert re.search(r"in all\s+~[\d.]+ GPU-hours", header), "train + caps + evaluate GPU-hours"
    for part in ("train", "caps", "evaluate", "estimated, not measured"):
        assert part in header
    # counts come from the data: the description (printed on the card) names none
    description = load_recipe(name).description
    assert not re.search(r"\d,?000", description), description


def check(tmp_path, name: str, env: dict) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["check", "--recipe", name, "--run-dir", str(tmp_path / "run")], env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize("name", NINE_K)
def test_check_names_every_missing_input_of_a_9k_recipe_and_starts_nothing(tmp_path, name):
    code, output = check(tmp_path, name, {"SYNTHECHO_CAMUS_ROOT": "", "SYNTHECHO_RESNET18_WEIGHTS": ""})
    assert code == 2 and "nothing was started" in output
    assert "SYNTHECHO_CAMUS_ROOT" in output
    assert "ImageNet ResNet-18 weights" in output and "SYNTHECHO_RESNET18_WEIGHTS" in output
    assert not (tmp_path / "run").exists()


def test_check_passes_once_the_camus_root_and_the_imagenet_weights_are_there(tmp_path):
    # Positive control of the check above: the same recipe with both inputs present is accepted.
    camus = tmp_path / "CAMUS_public"
    camus.mkdir()
    weights = tmp_path / "resnet18-imagenet.pth"
    weights.write_bytes(b"checked for existence only; loading is the classification task's")
    env = {"SYNTHECHO_CAMUS_ROOT": str(camus), "SYNTHECHO_RESNET18_WEIGHTS": str(weights)}
    code, output = check(tmp_path, "sdm-9k", env)
    assert code == 0, output
    missing = {**env, "SYNTHECHO_RESNET18_WEIGHTS": str(tmp_path / "absent.pth")}
    code, output = check(tmp_path, "sdm-9k", missing)
    assert code == 2 and "absent.pth' does not exist" in output and "SYNTHECHO_CAMUS_ROOT" not in output


def header_options(name: str) -> dict[str, list[str]]:
    """The `--set` options a recipe header documents: {text before the first --set: [key=value, ...]}."""
    options = {}
    for line in find_recipe_file(name).read_text(encoding="utf-8").split("\nname:")[0].splitlines():
        if "--set " in line:
            label = line.split("--set ")[0].strip("#: ").strip()
            options[label] = re.findall(r"--set (\S+)", line)
    return options


@pytest.mark.parametrize("name", NINE_K)
def test_every_option_a_9k_header_documents_is_a_valid_recipe(name):
    for overrides in header_options(name).values():
        load_recipe(name, overrides)


def test_the_controlnet_options():
    options = header_options("controlnet-9k")
    wide = load_recipe("controlnet-9k", options["512 px"])
    assert wide.prepare.resolution == 512
    assert wide.train.batch_size * wide.train.gradient_accumulation_steps == 16  # the 256 px batch
    sd_unet = load_recipe("controlnet-9k", options["sd-9k UNet"])
    assert sd_unet.generator.base_model == "runs/sd-9k/generator" and sd_unet.evaluate.real_caps == [1.0]
    assert load_recipe("sd-9k").resolve_run_dir() / "generator" == Path(sd_unet.generator.base_model)
    grid = next(o for label, o in options.items() if "10 x 4" in label)
    perturb = load_recipe("controlnet-9k", grid).generate.perturb
    assert (perturb.elastic_control_points, perturb.elastic_control_points_col) == (10, 4)
    assert load_recipe("controlnet-9k").generate.perturb.elastic_control_points_col is None  # 10 x 10


@pytest.mark.slow
def test_a_controlnet_trains_over_the_unet_of_an_sd_run(tmp_path):
    """The sd-9k option for real (tiny): `generator.base_model` = an sd run's generator folder (~15 s of
    CPU: two tiny latent-diffusion trainings)."""
    from safetensors.torch import load_file

    from synthecho.generators import controlnet, sd
    from synthecho.recipe import recipe_from_dict

    latent = {"vae_channels": [8, 16], "vae_steps": 2, "unet_channels": [8, 16], "attention": [False, True]}
    train = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "grid_sampler_steps": 2}
    real = fake_real()
    sd_recipe = recipe_from_dict({"name": "tiny-sd", "generator": {"kind": "sd", **latent}, "train": train})
    sd.train(sd_recipe, real, tmp_path / "sd", progress=False)
    generator = {"kind": "controlnet", "base_model": str(tmp_path / "sd"), "base_license": "test-only"}
    recipe = recipe_from_dict({"name": "tiny-cn", "generator": generator, "train": train})
    info = controlnet.train(recipe, real, tmp_path / "cn", progress=False)
    assert info["base_model"] == str(tmp_path / "sd")
    weights = "unet/diffusion_pytorch_model.safetensors"
    base, frozen = load_file(str(tmp_path / "sd" / weights)), load_file(str(tmp_path / "cn" / weights))
    assert base.keys() == frozen.keys() and all((base[k] == frozen[k]).all() for k in base)  # the sd UNet


@pytest.mark.slow
def test_a_2019_layout_build_counts_its_rows_from_the_data_and_the_card_prints_them(tmp_path):
    """sdm-9k on a 2019-layout phantom of 588 patients: 500 in training/ (what CAMUS 2019's 450 + 50
    test become once the phantom carves 15% each for validation and test), so 350 train patients, as the
    real 2019 release gives with 50 + 50 carved: 350 x 4 frames x 5 = 7000 train rows, not the 8000 the
    2023 release gives. The plan counts them from the prepared data; `generate` records that count in
    the manifest (generation.rows_planned) and the card prints the manifest. About a minute of CPU."""
    from synthecho.card import render_card
    from synthecho.manifest import read_manifest, update_manifest
    from synthecho.plan import build_plan, rows_per_split
    from synthecho.real import load_real
    from synthecho.stages import run_stage

    overrides = ["source.kind=phantom", "source.phantom.layout='2019'", "source.phantom.patients=588",
                 "source.phantom.size=[32,32]", "prepare.resolution=16",
                 "prepare.copy_null_renders=1"]  # the copy null is not what this test reads  # fmt: skip
    recipe = load_recipe("sdm-9k", overrides)
    run = tmp_path / "run"
    run_stage("prepare", recipe, run, progress=False)
    source = read_manifest(run)["source"]
    assert source["release"] == "2019" and source["patients"]["train"] == 350

    planned = rows_per_split(
        build_plan(recipe, {split: load_real(run, split) for split in ("train", "validation")})
    )
    assert planned == {split: 5 * source["records"][split] for split in ("train", "validation")}
    assert planned["train"] == 7000

    update_manifest(run, recipe=recipe.model_dump(mode="json"), generation={"rows_planned": planned})
    card = render_card(read_manifest(run))
    assert "| train | 7,000 |" in card and "| validation | 1,500 |" in card
    assert not re.search(r"8,?000|9,?000", card)  # no count from a recipe comment or description
    shutil.rmtree(run / "source")  # the phantom tree (~2000 files) need not outlive the test


# --- the keys the 9k recipes set: their defaults change nothing ----------------------------------------


def test_the_elastic_grid_option_changes_the_plan_only_when_set():
    import numpy as np

    from synthecho.perturb import PARAM_KEYS, PerturbConfig, apply_transform, sample_transform

    square, echo_from_noise = PerturbConfig(), PerturbConfig(elastic_control_points_col=4)
    default = sample_transform(11, square)
    assert list(default) == list(PARAM_KEYS)  # the parameter set every committed row was planned with
    assert sample_transform(11, PerturbConfig(elastic_control_points_col=10)) == default
    narrow = sample_transform(11, echo_from_noise)
    assert narrow == {**default, "elastic_control_points_col": 4}

    rows, cols = np.mgrid[0:64, 0:64]
    mask = ((rows - 32) ** 2 / 400 + (cols - 32) ** 2 / 150 < 1).astype(np.uint8)
    sector = np.ones_like(mask, dtype=bool)
    plain = {**default, "angle": 0.0, "translate_row": 0.0, "scale": 1.0, "shear": 0.0}
    grid_4 = {**plain, "elastic_control_points_col": 4}
    assert not np.array_equal(apply_transform(mask, sector, plain), apply_transform(mask, sector, grid_4))
    with pytest.raises(ValueError, match="elastic_control_points_col"):
        PerturbConfig(elastic_control_points_col=3)


def test_the_default_augmentation_moves_frame_and_mask_together_and_is_seeded():
    import numpy as np

    from synthecho.downstream import epoch_steps
    from synthecho.downstream.augment import Augmentation

    masks = np.zeros((3, 32, 32), np.uint8)
    masks[:, 8:24, 12:20] = 1
    bright = np.where(masks == 1, 0.8, 0.0).astype(np.float32)  # a frame that shows its mask
    for config in (
        AugmentationConfig(),
        AugmentationConfig(rotation_degrees=10, translate=0.1, scale=(0.8, 1.2), gamma=(0.5, 3.0)),
    ):
        augment = Augmentation(config)
        moved, moved_masks = augment(bright, masks, np.random.default_rng(5))
        assert not np.array_equal(moved_masks, masks)
        inside = moved[moved_masks == 1]
        assert inside.mean() > 0.3 and moved[moved_masks == 0].mean() < 0.1  # the frame followed its mask
        again = augment(bright, masks, np.random.default_rng(5))
        assert np.array_equal(again[0], moved) and np.array_equal(again[1], moved_masks)  # seeded
    off = Augmentation(
        AugmentationConfig(rotation_degrees=0, translate=0, scale=(1, 1), gamma=None, gain=None, noise_std=0)
    )
    assert off.identity and off(bright, masks, np.random.default_rng(5))[0] is bright

    assert epoch_steps(None, 1000, 16, 200) == 200  # no epochs: the fixed CPU budget
    assert epoch_steps(50, 1000, 16, 200) == 50 * 63


def test_a_study_records_its_budget_and_augmentation():
    from synthecho.downstream import DownstreamTask
    from synthecho.real import RealSplit

    def settings(config):
        return DownstreamTask(
            config, config.segmentation, RealSplit("v"), RealSplit("t"), "cpu"
        ).budget_settings()

    assert (
        "epochs" not in settings(EvaluateConfig())
        and settings(EvaluateConfig())["augmentation"]["noise_std"] > 0
    )
    set_ = settings(load_recipe("sdm-9k").evaluate)
    assert set_["epochs"] == 50 and set_["augmentation"]["gamma"] == [0.5, 3.0]
