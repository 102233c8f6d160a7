"""SDM generator + the shared training loop: train, save, load, sample, guidance, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from generator_fixtures import RES, fake_real
from PIL import Image

from synthecho import labels as lab
from synthecho.errors import SynthechoError
from synthecho.generators import get_generator, sdm
from synthecho.generators.base import DESCRIPTOR_FILE, condition_maps
from synthecho.grids import colorize_condition, colorize_mask, save_grid, save_loss_curve
from synthecho.io import read_json
from synthecho.recipe import recipe_from_dict
from synthecho.training import list_checkpoints

TESTS_DIR = Path(__file__).resolve().parent


def tiny_recipe(variant: str = "concat", **train):
    generator = {"kind": "sdm", "variant": variant, "channels": [8, 16], "attention": [False, True]}
    generator["num_head_channels"] = 8
    generator["condition_dropout"] = 0.5  # exercises the null-map training branch
    settings = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "grid_sampler_steps": 2, **train}
    return recipe_from_dict({"name": "tiny", "seed": 0, "generator": generator, "train": settings})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors gain nothing from a second thread, and on a shared 2-core machine thread hand-offs make
    # each step several times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _train_tiny(variant: str, out_dir: Path):
    real = fake_real()
    info = sdm.train(
        tiny_recipe(variant), real, out_dir, real_validation=fake_real(3, seed=1), progress=False
    )
    return variant, out_dir, info, real


@pytest.fixture(scope="module")
def concat_model(one_thread, tmp_path_factory):
    return _train_tiny("concat", tmp_path_factory.mktemp("sdm-concat"))


@pytest.fixture(scope="module")
def spade_model(one_thread, tmp_path_factory):
    return _train_tiny("spade", tmp_path_factory.mktemp("sdm-spade"))


@pytest.fixture(params=["concat", "spade"])
def trained(request):
    return request.getfixturevalue(f"{request.param}_model")


def test_train_writes_a_self_describing_folder(trained):
    variant, out_dir, info, _ = trained
    assert info["steps"] == 2 and info["start_step"] == 0 and len(info["losses"]) == 2
    assert np.isfinite(info["final_loss"]) and info["seconds_per_step"] > 0
    descriptor = read_json(out_dir / DESCRIPTOR_FILE)
    assert descriptor["kind"] == "sdm" and descriptor["variant"] == variant
    assert descriptor["resolution"] == RES and descriptor["mask_source"] == "conditioning"
    assert descriptor["config"]["channels"] == [8, 16]
    assert (out_dir / "unet" / "config.json").is_file()
    assert (out_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert read_json(out_dir / "scheduler" / "scheduler_config.json")["num_train_timesteps"] == 1000
    grid = Image.open(out_dir / "sample_grid.png")
    assert grid.width > 3 * RES and grid.height > 8 * RES  # 8 rows x (condition, generated, real)
    assert Image.open(out_dir / "loss_curve.png").width > 100
    assert not list(out_dir.glob(".*tmp"))  # no temp leftovers


def test_saved_model_holds_the_ema_weights(trained):
    variant, out_dir, _, _ = trained
    from safetensors.torch import load_file

    from synthecho.training import latest_checkpoint

    saved = load_file(str(out_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    ema = load_file(str(latest_checkpoint(out_dir / "checkpoints") / "ema.safetensors"))
    raw = load_file(str(latest_checkpoint(out_dir / "checkpoints") / "model.safetensors"))
    name = next(k for k in ema if k.startswith("unet.") and ema[k].ndim == 4)
    assert torch.equal(saved[name.removeprefix("unet.")], ema[name])
    assert not torch.equal(ema[name], raw[name])  # EMA lags the raw weights


def test_reload_and_sample_is_deterministic_and_zero_outside_the_sector(trained):
    variant, out_dir, _, real = trained
    maps = condition_maps(real.subset([0, 1]))
    first = get_generator("sdm").load(out_dir).sample(maps, ["", ""], [3, 4], steps=2)
    second = sdm.load(out_dir).sample(maps, ["", ""], [3, 4], steps=2)
    assert first.images.dtype == np.uint8 and first.images.shape == (2, RES, RES) and first.masks is None
    np.testing.assert_array_equal(first.images, second.images)
    outside = maps == lab.OUTSIDE_SECTOR
    assert outside.any() and (first.images[outside] == 0).all()
    assert first.images[~outside].std() > 0
    assert not np.array_equal(first.images[0], first.images[1])  # different seeds, different frames


@pytest.mark.parametrize("sampler_name", ["dpmsolver++", "ddpm"])
def test_a_row_depends_only_on_its_seed(concat_model, sampler_name):
    _, out_dir, _, real = concat_model
    sampler = sdm.load(out_dir)
    maps = condition_maps(real.subset([0, 1, 2]))
    batched = sampler.sample(maps, [""] * 3, [5, 6, 7], sampler=sampler_name, steps=2).images
    alone = sampler.sample(maps[1:2], [""], [6], sampler=sampler_name, steps=2).images
    # Batched float kernels may differ in the last bit; after rounding to uint8 at most by one level.
    assert np.abs(batched[1].astype(int) - alone[0].astype(int)).max() <= 1


def test_guidance_and_every_sampler_run(trained):
    variant, out_dir, _, real = trained
    sampler = sdm.load(out_dir)
    maps = condition_maps(real.subset([0]))
    plain = sampler.sample(maps, [""], [1], steps=2).images
    guided = sampler.sample(maps, [""], [1], steps=2, guidance_scale=3.0).images
    assert guided.shape == plain.shape and (guided[maps == 0] == 0).all()
    if variant == "concat":
        # After 2 steps most pixels saturate; the label map entering at the input still moves some of them.
        # (SPADE's modulation of an untrained decoder is too weak to survive the uint8 rounding.)
        assert not np.array_equal(guided, plain)
    for name in ("unipc", "ddim", "ddpm"):
        out = sampler.sample(maps, [""], [1], sampler=name, steps=2).images
        assert out.shape == (1, RES, RES) and (out[maps == 0] == 0).all()


def test_bad_inputs_are_reported(trained, tmp_path):
    _, out_dir, _, real = trained
    sampler = sdm.load(out_dir)
    with pytest.raises(SynthechoError, match="expected"):
        sampler.sample(np.zeros((2, RES, RES), np.uint8), ["", ""], [1], steps=2)
    with pytest.raises(SynthechoError, match="0..4"):
        sampler.sample(np.full((1, RES, RES), 7, np.uint8), [""], [1], steps=2)
    with pytest.raises(SynthechoError, match="sampler"):
        sampler.sample(condition_maps(real.subset([0])), [""], [1], sampler="euler", steps=2)
    with pytest.raises(SynthechoError, match="not a trained generator.*synthecho train"):
        sdm.load(tmp_path)
    with pytest.raises(SynthechoError, match="describes a 'sdm' generator, not 'ddpm'"):
        get_generator("ddpm").load(out_dir)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    real = fake_real()
    straight = sdm.train(tiny_recipe(steps=4), real, tmp_path / "straight", progress=False)
    sdm.train(tiny_recipe(steps=2), real, tmp_path / "resumed", progress=False)
    resumed = sdm.train(tiny_recipe(steps=4), real, tmp_path / "resumed", progress=False)
    assert straight["start_step"] == 0 and resumed["start_step"] == 2 and resumed["steps"] == 4
    assert resumed["losses"] == straight["losses"]
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "straight" / weights).read_bytes() == (tmp_path / "resumed" / weights).read_bytes()
    assert [step for step, _ in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [2, 4]
    # A different optimisation setting is another model: its old checkpoints are not resumed.
    changed = sdm.train(tiny_recipe(steps=4, learning_rate=1e-3), real, tmp_path / "resumed", progress=False)
    assert changed["start_step"] == 0


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path):
    out_dir = tmp_path / "gen"
    steps = 6
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(TESTS_DIR)!r})
        torch.set_num_threads(1)
        from test_sdm import fake_real, tiny_recipe
        from synthecho.generators import sdm
        sdm.train(tiny_recipe(steps={steps}), fake_real(), {str(out_dir)!r}, progress=False)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR.parent)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(out_dir / "checkpoints"):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    saved = list_checkpoints(out_dir / "checkpoints")[-1][0]
    assert 0 < saved < steps
    assert not (out_dir / DESCRIPTOR_FILE).exists()  # killed before the model was saved

    info = sdm.train(tiny_recipe(steps=steps), fake_real(), out_dir, progress=False)
    assert info["start_step"] >= saved > 0
    assert info["steps"] == steps and len(info["losses"]) == steps
    assert (out_dir / DESCRIPTOR_FILE).is_file()
    assert list_checkpoints(out_dir / "checkpoints")[-1][0] == steps


def test_frames_follow_their_masks_after_a_short_training(tmp_path):
    # Flat intensities per structure: a correct pipeline (pairing, loss target, sampler settings) learns the
    # map -> frame relation in 100 steps; a wrong parametrisation or mispaired batches stay far off
    # (epsilon prediction at this length: mean error ~30 levels, LV ~60 instead of 15).
    def flat(count, seed):
        real = fake_real(count, seed=seed)
        intensity = np.array([150, 15, 220, 60], np.uint8)  # background, LV, MYO, LA
        real.images = np.where(real.sectors, intensity[real.masks], 0).astype(np.uint8)
        return real

    recipe = tiny_recipe(steps=100, batch_size=8, learning_rate=2e-3, ema_decay=0.99, checkpoint_every=100)
    generator = recipe.generator.model_copy(update={"channels": [16, 32], "num_head_channels": 16})
    recipe = recipe.model_copy(update={"generator": generator})
    sdm.train(recipe, flat(16, 0), tmp_path, progress=False)
    held_out = flat(4, 5)
    maps = condition_maps(held_out)
    frames = sdm.load(tmp_path).sample(maps, [""] * 4, [0, 1, 2, 3], steps=10).images.astype(float)
    assert np.abs(frames - held_out.images).mean() < 15
    assert frames[maps == 2].mean() < 50 < 180 < frames[maps == 3].mean()  # dark LV, bright myocardium


def test_grids_and_loss_curve(tmp_path):
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    assert colorize_mask(mask).shape == (2, 2, 3) and (colorize_mask(mask)[0, 0] == 0).all()
    condition = np.array([[0, 1], [2, 4]], np.uint8)
    colours = colorize_condition(condition)
    assert len({tuple(c) for c in colours.reshape(-1, 3)}) == 4
    with pytest.raises(ValueError):
        colorize_mask(np.full((2, 2), 4, np.uint8))
    frame = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = save_grid(
        [[colorize_mask(np.zeros((16, 16), np.uint8)), frame]] * 3, tmp_path / "g.png", ["a", "b"]
    )
    grid = Image.open(path)
    assert grid.mode == "RGB" and grid.width == 2 * 128 + 2 and grid.height == 16 + 3 * 128 + 2 * 2
    curve = save_loss_curve([1.0, 0.5, 0.2, 0.1] * 10, tmp_path / "loss.png")
    assert Image.open(curve).format == "PNG"


def _tiny_classed(out_dir: Path, **generator):
    recipe = tiny_recipe("concat")
    config = recipe.generator.model_copy(update=generator)
    recipe = recipe.model_copy(update={"generator": config})
    info = sdm.train(recipe, fake_real(), out_dir, real_validation=fake_real(3, seed=1), progress=False)
    return info, sdm.load(out_dir)


def test_a_class_conditioned_sdm_draws_what_the_class_says(tmp_path):
    """The class embedding is an input: the same map and seed give different frames for another class."""
    info, sampler = _tiny_classed(tmp_path, class_attributes=["view", "phase"])
    assert sampler.conditioned_on == ("label_map", "view", "phase")
    assert sampler.denoisers[0].unet.config.num_class_embeds == 5  # 4 classes + the null class
    maps = condition_maps(fake_real(2))[[0, 0]]
    seeds = [7, 7]
    two_classes = [{"view": "2CH", "phase": "ED"}, {"view": "4CH", "phase": "ES"}]
    drawn = sampler.sample(maps, None, seeds, steps=2, attributes=two_classes).images
    assert not np.array_equal(drawn[0], drawn[1])
    same = sampler.sample(maps, None, seeds, steps=2, attributes=[two_classes[0]] * 2).images
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[0], drawn[0])
    guided = sampler.sample(maps, None, seeds, steps=2, attributes=two_classes, guidance_scale=2.0).images
    assert not np.array_equal(guided, drawn)  # the null class gives guidance an unconditional branch
    with pytest.raises(SynthechoError, match="attributes"):
        sampler.sample(maps, None, seeds, steps=2)


def test_per_class_trains_one_model_per_class_and_routes_rows_to_theirs(tmp_path):
    """Echo from noise's one-SDM-per-view option: N models, each row sampled by its class's model."""
    info, sampler = _tiny_classed(tmp_path, class_attributes=["view"], per_class=True)
    assert read_json(tmp_path / DESCRIPTOR_FILE)["unets"] == ["unet-2CH", "unet-4CH"]
    assert set(info["per_class"]) == {"unet-2CH", "unet-4CH"} and len(sampler.denoisers) == 2
    assert all((tmp_path / name / "config.json").is_file() for name in ("unet-2CH", "unet-4CH"))
    assert {f["frames"] for f in info["per_class"].values()} == {3}  # fake_real alternates 2CH / 4CH
    first, second = (dict(sampler.denoisers[i].unet.named_parameters()) for i in (0, 1))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # two separately trained models
    maps = condition_maps(fake_real(2))[[0, 0]]
    mixed = sampler.sample(maps, None, [3, 4], steps=2, attributes=[{"view": "4CH"}, {"view": "2CH"}]).images
    alone = sampler.denoise(sampler.denoisers[1], maps[:1], [3], None, "dpmsolver++", 2, 1.0)
    assert np.array_equal(mixed[0], alone[0])  # the 4CH row went through the 4CH model
    with pytest.raises(SynthechoError, match="class_attributes"):
        recipe_from_dict({"name": "x", "generator": {"kind": "sdm", "per_class": True}})
