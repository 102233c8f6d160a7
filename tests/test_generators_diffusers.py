"""ddpm, sd and controlnet generators: tiny configs train 2 steps, save, load, sample identically;
fine-tune path.

The fine-tune path runs against a tiny Stable Diffusion folder this file saves in the real format
(AutoencoderKL, CLIPTextModel + CLIPTokenizer from a local vocab, UNet2DConditionModel, PNDMScheduler,
model_index.json): no network.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from generator_fixtures import PROMPTS, RES, fake_real

from synthecho import labels as lab
from synthecho.errors import SynthechoError
from synthecho.generators import controlnet, ddpm, get_generator, latent, sd
from synthecho.generators.base import condition_maps
from synthecho.real import RealSplit
from synthecho.recipe import recipe_from_dict

TRAIN = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "grid_sampler_steps": 2}
LATENT = {"vae_channels": [8, 16], "vae_steps": 2, "unet_channels": [8, 16], "attention": [False, True]}


def recipe(generator: dict, **train):
    return recipe_from_dict({"name": "tiny", "seed": 0, "generator": generator, "train": {**TRAIN, **train}})


@pytest.fixture(scope="module")
def real() -> RealSplit:
    return fake_real()


def assert_trained_folder(folder: Path, info: dict, kind: str) -> dict:
    described = json.loads((folder / "synthecho_generator.json").read_text())
    assert described["kind"] == kind and described["resolution"] == RES
    assert (folder / "loss_curve.png").stat().st_size > 0 and (folder / "sample_grid.png").stat().st_size > 0
    assert info["steps"] == 2 and np.isfinite(info["final_loss"])
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    return described


# --- ddpm --------------------------------------------------------------------------------------------


def test_ddpm_joint_masks_class_conditional(real, tmp_path):
    generator = {"kind": "ddpm", "channels": [8, 16], "attention": [False, True], "num_head_channels": 8}
    info = get_generator("ddpm").train(recipe(generator), real, tmp_path, progress=False)
    described = assert_trained_folder(tmp_path, info, "ddpm")
    assert described["mask_source"] == "generated"

    first, second = ddpm.load(tmp_path), ddpm.load(tmp_path)
    assert first.mask_source == "generated" and first.uses_prompt is False
    a = first.sample(None, PROMPTS, [3, 4], sampler="ddpm", steps=2)
    b = second.sample(None, PROMPTS, [3, 4], sampler="ddpm", steps=2)
    assert a.images.shape == (2, RES, RES) and a.images.dtype == np.uint8
    assert a.masks.shape == (2, RES, RES) and int(a.masks.max()) <= 3
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    # attributes= gives the same rows as the prompts they were read from; another class changes them
    attributes = [{"view": "2CH", "phase": "ED"}, {"view": "4CH", "phase": "ES"}]
    c = first.sample(None, None, [3, 4], sampler="ddpm", steps=2, attributes=attributes)
    d = first.sample(None, None, [3, 4], sampler="ddpm", steps=2, attributes=attributes[::-1])
    assert np.array_equal(a.images, c.images) and not np.array_equal(c.images, d.images)
    with pytest.raises(SynthechoError, match="view and phase"):
        first.sample(None, ["an echo frame"], [0], steps=2)
    with pytest.raises(SynthechoError, match="guidance_scale"):
        first.sample(None, PROMPTS, [3, 4], steps=2, guidance_scale=2.0)


def test_ddpm_class_dropout_gives_guidance_an_unconditional_branch(real, tmp_path):
    generator = {"kind": "ddpm", "channels": [8, 16], "attention": [False, True], "num_head_channels": 8,
                 "class_dropout": 0.2}  # fmt: skip
    ddpm.train(recipe(generator), real, tmp_path, progress=False)
    sampler = ddpm.load(tmp_path)
    assert sampler.unet.config.num_class_embeds == ddpm.NULL_CLASS + 1  # view x phase + the null class
    attributes = [{"view": "2CH", "phase": "ED"}, {"view": "4CH", "phase": "ES"}]
    plain = sampler.sample(None, None, [3, 4], sampler="ddpm", steps=2, attributes=attributes)
    guided = sampler.sample(None, None, [3, 4], sampler="ddpm", steps=2, attributes=attributes,
                            guidance_scale=3.0)  # fmt: skip
    again = ddpm.load(tmp_path).sample(None, None, [3, 4], sampler="ddpm", steps=2, attributes=attributes,
                                       guidance_scale=3.0)  # fmt: skip
    assert guided.images.shape == plain.images.shape and not np.array_equal(guided.images, plain.images)
    assert np.array_equal(guided.images, again.images)  # guided sampling is seeded too


def test_ddpm_unconditional_without_masks_uses_the_segmenter(real, tmp_path):
    generator = {"kind": "ddpm", "channels": [8, 16], "attention": [False, False], "num_head_channels": 8}
    generator.update(class_conditional=False, joint_masks=False)
    ddpm.train(recipe(generator, steps=1, checkpoint_every=1), real, tmp_path, progress=False)
    sampler = ddpm.load(tmp_path)
    batch = sampler.sample(None, ["", ""], [0, 1], steps=2)
    assert sampler.mask_source == "segmenter" and batch.masks is None and batch.images.shape == (2, RES, RES)


# --- sd / controlnet from config ---------------------------------------------------------------------


def test_sd_from_config_pipeline_and_guidance(real, tmp_path):
    from diffusers import StableDiffusionPipeline

    info = sd.train(recipe({"kind": "sd", **LATENT, "prompt_dropout": 0.5}), real, tmp_path, progress=False)
    described = assert_trained_folder(tmp_path, info, "sd")
    assert described["mask_source"] == "segmenter" and described["vae_factor"] == 2
    assert info["vae"]["steps"] == 2 and info["vae"]["scaling_factor"] > 0
    # A standard diffusers pipeline folder; the MiniLM tokenizer saved at 77 tokens, not 512.
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert pipe.tokenizer.model_max_length == 77 and pipe.unet.config.cross_attention_dim == 384

    a = sd.load(tmp_path).sample(None, PROMPTS, [5, 6], steps=2, guidance_scale=3.0)
    b = sd.load(tmp_path).sample(None, PROMPTS, [5, 6], steps=2, guidance_scale=3.0)
    assert a.images.shape == (2, RES, RES) and a.images.dtype == np.uint8 and a.masks is None
    assert np.array_equal(a.images, b.images)
    # a row depends on its own seed only, not on its batch neighbours
    alone = sd.load(tmp_path).sample(None, PROMPTS[:1], [5], steps=2, guidance_scale=3.0)
    assert np.array_equal(alone.images[0], a.images[0])


def test_controlnet_from_config_follows_sector_and_reloads(real, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    # v_prediction as recipes/controlnet-phantom.yaml (the sd test above covers SD's epsilon)
    generator = {"kind": "controlnet", **LATENT, "base_steps": 2, "prediction_type": "v_prediction"}
    info = controlnet.train(recipe(generator), real, tmp_path, progress=False)
    described = assert_trained_folder(tmp_path, info, "controlnet")
    assert described["mask_source"] == "conditioning"
    scheduler = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    assert described["conditioning_embedding_out_channels"] == [16, 32]  # downsamples 2x, as the VAE
    assert info["base_unet"]["steps"] == 2
    net = ControlNetModel.from_pretrained(tmp_path / "controlnet")
    StableDiffusionControlNetPipeline.from_pretrained(tmp_path, controlnet=net, local_files_only=True)

    maps = condition_maps(real.subset([0, 1]))
    a = controlnet.load(tmp_path).sample(maps, PROMPTS, [7, 8], sampler="unipc", steps=2, guidance_scale=2.0)
    b = controlnet.load(tmp_path).sample(maps, PROMPTS, [7, 8], sampler="unipc", steps=2, guidance_scale=2.0)
    assert np.array_equal(a.images, b.images) and a.masks is None
    assert (a.images[maps == lab.OUTSIDE_SECTOR] == 0).all()
    with pytest.raises(SynthechoError, match="label maps"):
        controlnet.load(tmp_path).sample(None, PROMPTS, [7, 8], steps=2)


def test_conditioning_embedding_must_match_the_vae_factor():
    config = recipe({"kind": "controlnet", "conditioning_embedding_out_channels": [16, 32, 64]}).generator
    with pytest.raises(SynthechoError, match="conditioning_embedding_out_channels"):
        controlnet.conditioning_channels_for(config, 2)
    assert controlnet.conditioning_channels_for(config, 4) == [16, 32, 64]
    default = recipe({"kind": "controlnet"}).generator
    assert controlnet.conditioning_channels_for(default, 8) == [16, 32, 96, 256]


# --- fine-tune path: a tiny SD folder in the real format --------------------------------------------


def save_tiny_stable_diffusion(folder: Path) -> Path:
    """A Stable Diffusion 1.x-format pipeline folder with tiny random components (CLIP text encoder)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_dir = folder.parent / "clip-vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + ".,-":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=[8, 16],
        layers_per_block=1,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("base") / "tiny-sd")


def test_sd_fine_tunes_a_saved_base(real, tiny_base, tmp_path):
    generator = {"kind": "sd", "base_model": str(tiny_base), "base_license": "test-only"}
    info = sd.train(recipe(generator), real, tmp_path, progress=False)
    described = assert_trained_folder(tmp_path, info, "sd")
    assert described["base_model"] == str(tiny_base) and described["text_encoder"] == "CLIPTextModel"
    # VAE and text encoder are the base's, unchanged; the UNet moved.
    from safetensors.torch import load_file

    for part in ("vae", "text_encoder"):
        before = load_file(next((tiny_base / part).glob("*.safetensors")))
        after = load_file(next((tmp_path / part).glob("*.safetensors")))
        assert all(torch.equal(before[k], after[k]) for k in before)
    unet_before = load_file(next((tiny_base / "unet").glob("*.safetensors")))
    unet_after = load_file(next((tmp_path / "unet").glob("*.safetensors")))
    assert any(not torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    a = sd.load(tmp_path).sample(None, PROMPTS, [1, 2], steps=2, guidance_scale=2.0)
    b = sd.load(tmp_path).sample(None, PROMPTS, [1, 2], steps=2, guidance_scale=2.0)
    assert np.array_equal(a.images, b.images)


def test_controlnet_fine_tunes_over_a_frozen_base(real, tiny_base, tmp_path):
    from safetensors.torch import load_file

    generator = {"kind": "controlnet", "base_model": str(tiny_base)}
    info = controlnet.train(recipe(generator), real, tmp_path, progress=False)
    assert_trained_folder(tmp_path, info, "controlnet")
    assert "base_unet" not in info  # the base is not trained on the fine-tune path
    before = load_file(next((tiny_base / "unet").glob("*.safetensors")))
    after = load_file(next((tmp_path / "unet").glob("*.safetensors")))
    assert all(torch.equal(before[k], after[k]) for k in before)
    maps = condition_maps(real.subset([2, 3]))
    a = controlnet.load(tmp_path).sample(maps, PROMPTS, [1, 2], steps=2)
    b = controlnet.load(tmp_path).sample(maps, PROMPTS, [1, 2], steps=2)
    assert np.array_equal(a.images, b.images)


def test_missing_base_model_names_the_key(real, tmp_path):
    generator = {"kind": "sd", "base_model": str(tmp_path / "no-such-model")}
    with pytest.raises(SynthechoError, match="generator.base_model"):
        sd.train(recipe(generator), real, tmp_path / "out", progress=False)


def test_unet_level_checks_name_the_keys():
    ddpm_config = recipe({"kind": "ddpm", "channels": [8, 16, 32], "attention": [False, True]}).generator
    with pytest.raises(
        SynthechoError, match="generator.attention has 2 entries but generator.channels has 3"
    ):
        ddpm.unet_config(ddpm_config, RES)
    sd_config = recipe({"kind": "sd", "unet_channels": [8, 16, 16], "attention": [False] * 3}).generator
    with pytest.raises(SynthechoError, match="latent size 6 is not divisible by 4 .*generator.vae_channels"):
        latent.build_unet(sd_config, 6, 4)


# --- class conditioning and synthecho's own sampling loop --------------------------------------------

CLASSES = ["view", "phase"]
ATTRIBUTES = [{"view": "2CH", "phase": "ED"}, {"view": "4CH", "phase": "ES"}]


def pipeline_frames(sampler, prompts, seeds, maps=None, *, steps, guidance_scale, kind="dpmsolver++"):
    """The diffusers pipeline's frames for the same rows: the reference the own loop must reproduce."""
    from synthecho.generators.base import make_scheduler, row_noise, step_generators

    pipe = sampler.pipe
    pipe.scheduler = make_scheduler(kind, sampler.scheduler_config)
    latent_size = RES // pipe.vae_scale_factor
    arguments = {
        "prompt": list(prompts),
        "height": RES,
        "width": RES,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "latents": row_noise(seeds, (pipe.unet.config.in_channels, latent_size, latent_size)),
        "generator": step_generators(seeds),
        "output_type": "np",
    }
    if maps is not None:
        arguments["image"] = torch.from_numpy(lab.one_hot(maps, lab.NUM_CONDITION_CLASSES))
    frames = sampler.gray(pipe(**arguments).images)
    if maps is not None:
        frames[maps == lab.OUTSIDE_SECTOR] = 0
    return frames


@pytest.fixture(scope="module")
def controlnet_folder(real, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("controlnet")
    controlnet.train(recipe({"kind": "controlnet", **LATENT, "base_steps": 2}), real, folder, progress=False)
    return folder


@pytest.mark.parametrize("kind,guidance", [("dpmsolver++", 1.0), ("ddpm", 2.5)])  # ddpm: step noise too
def test_own_loop_gives_the_pipelines_frames(controlnet_folder, real, kind, guidance):
    """Positive control of the loop that class labels need: without classes it is the pipeline, exactly."""
    sampler = controlnet.load(controlnet_folder)
    maps = condition_maps(real.subset([0, 1]))
    ours = sampler.sample(maps, PROMPTS, [3, 9], sampler=kind, steps=3, guidance_scale=guidance)
    theirs = pipeline_frames(sampler, PROMPTS, [3, 9], maps, steps=3, guidance_scale=guidance, kind=kind)
    assert np.array_equal(ours.images, theirs)
    # the check fires: other seeds are other frames
    assert not np.array_equal(ours.images, pipeline_frames(sampler, PROMPTS, [4, 9], maps, steps=3,
                                                           guidance_scale=guidance, kind=kind))  # fmt: skip
    assert sampler.conditioned_on == ("label_map", "view", "phase", "sex", "age", "image_quality")


def test_class_conditioned_sd_follows_the_class(real, tmp_path):
    generator = {"kind": "sd", **LATENT, "class_attributes": CLASSES}
    sd.train(recipe(generator, learning_rate=0.05), real, tmp_path, progress=False)
    sampler = sd.load(tmp_path)
    assert sampler.pipe.unet.config.num_class_embeds == 5  # 4 classes and the null class
    assert float(sampler.pipe.unet.class_embedding.weight.detach().abs().sum()) > 0  # trained away from zero
    same_prompts = [PROMPTS[0]] * 2
    a = sampler.sample(None, same_prompts, [5, 6], steps=2, attributes=ATTRIBUTES)
    b = sampler.sample(None, same_prompts, [5, 6], steps=2, attributes=ATTRIBUTES[::-1])
    again = sd.load(tmp_path).sample(None, same_prompts, [5, 6], steps=2, attributes=ATTRIBUTES)
    assert np.array_equal(a.images, again.images) and not np.array_equal(a.images, b.images)
    # guided: the unconditional branch (null class, "") runs; a row still depends on its own inputs only
    guided = sampler.sample(None, same_prompts, [5, 6], steps=2, guidance_scale=3.0, attributes=ATTRIBUTES)
    alone = sampler.sample(
        None, same_prompts[:1], [5], steps=2, guidance_scale=3.0, attributes=ATTRIBUTES[:1]
    )
    assert np.array_equal(guided.images[0], alone.images[0])
    with pytest.raises(SynthechoError, match="class embedding of \\['view', 'phase'\\].*attributes"):
        sampler.sample(None, same_prompts, [5, 6], steps=2)


def test_class_conditioned_controlnet_follows_the_class(real, tmp_path):
    generator = {"kind": "controlnet", **LATENT, "base_steps": 2, "class_attributes": CLASSES}
    controlnet.train(recipe(generator, learning_rate=0.05), real, tmp_path, progress=False)
    sampler = controlnet.load(tmp_path)
    # from config: the base UNet trained its embedding, from_unet copied it into the ControlNet
    assert sampler.pipe.unet.config.num_class_embeds == sampler.pipe.controlnet.config.num_class_embeds == 5
    maps = condition_maps(real.subset([0, 0]))  # one map and one prompt: only the class differs
    a = sampler.sample(maps, [PROMPTS[0]] * 2, [7, 7], steps=2, attributes=ATTRIBUTES)
    b = sampler.sample(maps, [PROMPTS[0]] * 2, [7, 7], steps=2, attributes=ATTRIBUTES[:1] * 2)
    assert np.array_equal(a.images[0], b.images[0]) and not np.array_equal(a.images[1], b.images[1])
    assert (a.images[maps == lab.OUTSIDE_SECTOR] == 0).all()


def test_a_new_class_embedding_reproduces_the_base(tiny_base):
    """Zero-initialised: a pretrained UNet and a ControlNet copied from it answer as before, every class."""
    from diffusers import UNet2DConditionModel

    from synthecho.generators.base import AttributeClasses

    classes = AttributeClasses(tuple(CLASSES))
    base = UNet2DConditionModel.from_pretrained(tiny_base / "unet").eval()
    unet = latent.add_class_embedding(
        UNet2DConditionModel.from_pretrained(tiny_base / "unet"), classes
    ).eval()
    torch.manual_seed(0)
    x, hidden = torch.randn(5, 4, 8, 8), torch.randn(5, 7, 32)
    t, labels = torch.tensor([1, 200, 400, 600, 999]), torch.arange(5)  # 4 classes and the null class
    with torch.no_grad():
        expected = base(x, t, encoder_hidden_states=hidden).sample
        assert torch.equal(unet(x, t, encoder_hidden_states=hidden, class_labels=labels).sample, expected)
        unet.class_embedding.weight.add_(0.1)  # positive control: a non-zero embedding changes the output
        assert not torch.allclose(
            unet(x, t, encoder_hidden_states=hidden, class_labels=labels).sample, expected
        )
    config = recipe({"kind": "controlnet"}).generator
    plain = controlnet.build_controlnet(config, base, 2).eval()
    net = latent.add_class_embedding(controlnet.build_controlnet(config, base, 2), classes).eval()
    control = torch.rand(5, lab.NUM_CONDITION_CLASSES, 16, 16)
    with torch.no_grad():
        want = plain(x, t, encoder_hidden_states=hidden, controlnet_cond=control, return_dict=False)
        got = net(x, t, encoder_hidden_states=hidden, controlnet_cond=control, class_labels=labels,
                  return_dict=False)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip([*want[0], want[1]], [*got[0], got[1]], strict=True))
    with pytest.raises(SynthechoError, match="already has a class embedding"):
        latent.add_class_embedding(unet, AttributeClasses(("view",)))


def test_a_from_config_class_embedding_is_seeded_and_leaves_the_global_rng_alone():
    """From config the embedding starts random (norm ~1 per class) from its own seed: the same every time,
    and every other weight, and the global RNG after it, as without classes."""
    config = recipe({"kind": "sd", **LATENT}).generator
    torch.manual_seed(0)
    plain = latent.build_unet(config, 8, 4)
    after_plain = torch.random.get_rng_state()
    built = []
    for _ in range(2):
        torch.manual_seed(0)
        built.append(
            latent.add_class_embedding(latent.build_unet(config, 8, 4), latent.classes_of(CLASSES), 3)
        )
        assert torch.equal(torch.random.get_rng_state(), after_plain)
    weights = [unet.state_dict() for unet in built]
    assert weights[0].keys() - plain.state_dict().keys() == {"class_embedding.weight"}
    assert all(torch.equal(weights[1][k], v) for k, v in weights[0].items())
    assert all(torch.equal(weights[0][k], v) for k, v in plain.state_dict().items())
    norms = weights[0]["class_embedding.weight"].norm(dim=1)
    assert norms.shape == (5,) and bool(((norms > 0.5) & (norms < 2)).all())


def test_class_alone_fraction_leaves_room_for_the_prompt():
    with pytest.raises(SynthechoError, match="class_alone_fraction"):
        recipe(
            {"kind": "sd", "class_attributes": CLASSES, "prompt_dropout": 0.5, "class_alone_fraction": 0.6}
        )
    recipe({"kind": "sd", "prompt_dropout": 0.5, "class_alone_fraction": 0.6})  # unused without classes


@pytest.mark.parametrize("kind", ["sd", "controlnet"])
def test_fine_tuning_with_classes_starts_from_the_base(real, tiny_base, tmp_path, kind):
    """The fine-tune path with class_attributes, trained with learning rate 0: its saved folder, sampled
    with class labels through the own loop, gives exactly the base pipeline's frames."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    generator = {"kind": kind, "base_model": str(tiny_base), "class_attributes": CLASSES}
    get_generator(kind).train(recipe(generator, learning_rate=0.0), real, tmp_path, progress=False)
    sampler = get_generator(kind).load(tmp_path)
    part = sampler.pipe.unet if kind == "sd" else sampler.pipe.controlnet
    assert part.config.num_class_embeds == 5 and float(part.class_embedding.weight.detach().abs().sum()) == 0
    if kind == "sd":
        assert sampler.conditioned_on == ("view", "phase", "sex", "age", "image_quality")
        base = StableDiffusionPipeline.from_pretrained(tiny_base, local_files_only=True)
        maps = None
    else:
        assert sampler.pipe.unet.class_embedding is None  # the frozen base UNet has none
        base = StableDiffusionControlNetPipeline.from_pretrained(
            tiny_base,
            controlnet=ControlNetModel.from_pretrained(tmp_path / "controlnet"),
            local_files_only=True,
        )
        base.controlnet.class_embedding = None  # what from_unet made before the zero embedding was added
        maps = condition_maps(real.subset([0, 1]))
    base.scheduler = sampler.pipe.scheduler
    base.set_progress_bar_config(disable=True)
    ours = sampler.sample(maps, PROMPTS, [1, 2], steps=2, guidance_scale=2.0, attributes=ATTRIBUTES)
    reference = type(sampler)(base, RES, "cpu", torch.float32)  # no classes: the base as it was
    theirs = pipeline_frames(reference, PROMPTS, [1, 2], maps, steps=2, guidance_scale=2.0)
    assert np.array_equal(ours.images, theirs)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_weighs_each_row_by_its_clipped_snr(prediction_type):
    """train.snr_gamma: a row's squared error counts min(SNR, gamma) / SNR (epsilon) or / (SNR + 1)
    (v_prediction); with gamma above every SNR an epsilon loss is the plain MSE again."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from synthecho.generators.base import diffusion_loss

    schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                             prediction_type=prediction_type)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    x, noise, prediction = (torch.randn(4, 1, 8, 8, generator=generator) for _ in range(3))
    timesteps = torch.tensor([0, 10, 500, 999])
    plain = diffusion_loss(schedule, prediction, x, noise, timesteps)
    weighted = diffusion_loss(schedule, prediction, x, noise, timesteps, snr_gamma=5.0)

    target = schedule.get_velocity(x, noise, timesteps) if prediction_type == "v_prediction" else noise
    per_row = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    snr = compute_snr(schedule, timesteps)
    expected = torch.clamp(snr, max=5.0) / (snr + 1 if prediction_type == "v_prediction" else snr)
    assert torch.allclose(plain, per_row.mean())
    assert torch.allclose(weighted, (per_row * expected).mean())
    assert expected[0] < 0.01  # the nearly clean row barely counts
    if prediction_type == "epsilon":
        unclipped = diffusion_loss(schedule, prediction, x, noise, timesteps, snr_gamma=1e12)
        assert torch.allclose(unclipped, plain)
