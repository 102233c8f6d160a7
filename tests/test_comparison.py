"""The generator comparison (`synthecho compare`): runs that differ in a shared part are refused with the
part named, the texture realism measure ranks degraded real frames below clean ones, and a tiny
comparison of two generators writes its table, grid (one column per generator, "(no map)" included),
charts and a manifest whose card `card --check` re-renders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_builds import TINY_BUILD

from synthecho.comparison import check_fair
from synthecho.errors import SynthechoError

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def demo_manifest() -> dict:
    return json.loads((MANIFESTS / "demo" / "0.3.0.json").read_text())


def test_identical_shared_parts_pass_the_fairness_check():
    check_fair({"a": demo_manifest(), "b": demo_manifest()})


@pytest.mark.parametrize(
    ("change", "part"),
    [
        (lambda m: m["segmenter"].update(sha256="0" * 64), "filter segmenter"),
        (lambda m: m["source"]["real_content_sha256"].update(train="1" * 64), "source"),
        (lambda m: m["recipe"]["evaluate"].update(seeds=[0]), "downstream settings"),
        (lambda m: m["recipe"]["filter"].update(copy_threshold=0.9), "filter settings"),
        (lambda m: m["recipe"]["generate"]["perturb"].update(degrees=20.0), "conditioning plan"),
    ],
)
def test_a_run_that_differs_in_a_shared_part_is_refused_naming_it(change, part):
    other = copy.deepcopy(demo_manifest())
    change(other)
    with pytest.raises(SynthechoError) as raised:
        check_fair({"sdm": demo_manifest(), "same-as-sdm": demo_manifest(), "odd": other})
    message = str(raised.value)
    assert part in message and "sdm, same-as-sdm; odd" in message
    assert message.count("differs between") == 1  # only the part that differs


def test_a_generator_setting_is_not_a_shared_part():
    other = copy.deepcopy(demo_manifest())
    other["recipe"]["generate"]["guidance_scale"] = 3.0  # a generator's own choice
    other["generator"]["sha256"] = "2" * 64
    check_fair({"a": demo_manifest(), "b": other})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared 64 px phantom (12 patients): real frames with speckle."""
    from synthecho.recipe import load_recipe
    from synthecho.stages import run_stage

    run_dir = tmp_path_factory.mktemp("prepared")
    recipe = load_recipe("demo", ["source.phantom.patients=12", "prepare.copy_null_renders=1"])
    run_stage("prepare", recipe, run_dir, progress=False)
    return run_dir


def test_realism_ranks_degraded_frames_below_clean_ones(prepared):
    from synthecho.quality.realism import degrade, positive_control, two_sample_auc
    from synthecho.real import load_real

    train = load_real(prepared, "train")
    patients = [record["patient"] for record in train.records]
    control = positive_control(train.images, patients, steps=30)
    assert control["reference"]["auc"] < 0.8  # real against real: no better than a weak guess
    assert control["monotone"]["blur"] and control["monotone"]["shuffle"]
    assert control["blur"][-1]["auc"] > 0.9 and control["shuffle"][-1]["auc"] > 0.9
    # Direct: the strongest blur of every frame against the clean frames, same patients.
    blurred = degrade(train.images, "blur", 2.0)
    assert two_sample_auc(train.images, patients, blurred, patients, steps=30)["auc"] > 0.9


def test_degradations_keep_the_sector_and_change_the_frame(prepared):
    from synthecho.quality.realism import DEGRADATIONS, degrade
    from synthecho.real import load_real

    images = load_real(prepared, "train").images[:4]
    for kind, strengths in DEGRADATIONS.items():
        out = degrade(images, kind, strengths[-1])
        assert out.shape == images.shape and out.dtype == np.uint8
        assert not np.array_equal(out, images), kind
        if kind != "blur":
            assert np.all(out[images == 0] == 0), kind  # nothing drawn outside the sector
    with pytest.raises(SynthechoError, match="not one of"):
        degrade(images, "jpeg", 1)


@pytest.mark.slow
def test_a_tiny_comparison_of_two_generators(tmp_path):
    """sdm (follows its map) and ddpm (draws its own mask: "(no map)") at toy size, end to end."""
    from synthecho.card import check_cards
    from synthecho.comparison import render_comparison
    from synthecho.recipe import load_recipe
    from synthecho.stages import build as pipeline
    from synthecho.stages import compare as comparing

    overrides = [*comparing.SHARED_SETTINGS, *TINY_BUILD, "source.phantom.patients=12",
                 "generate.max_records_per_split=4", "evaluate.segmentation.channels=[4, 8, 8]",
                 "evaluate.segmentation.strides=[2, 2]", "evaluate.segmentation.steps=2",
                 "evaluate.segmentation.finetune_steps=2", "evaluate.classification.finetune_steps=2",
                 "filter.copy_threshold=1.0", "evaluate.tasks=[segmentation, phase]"]  # fmt: skip
    spec = comparing.ComparisonSpec("tiny-comparison", "0.1.0", ("demo", "ddpm-phantom"), "Two tiny runs.")
    members = {}
    for name in spec.members:
        recipe = load_recipe(name, overrides)
        pipeline.build(recipe, tmp_path / name, progress=False)
        members[name] = (recipe, tmp_path / name)
    settings = comparing.CompareSettings(sweep_steps=(1, 2), sweep_rows=16, ancestral_steps=3,
                                         ancestral_rows=2, grid_rows=2, realism_steps=3)  # fmt: skip
    manifest = comparing.run(
        spec, members, tmp_path / "out", command="test", settings=settings, progress=False
    )

    assert manifest["grid_columns"] == ["real frame", "conditioning map", "demo", "ddpm-phantom (no map)"]
    assert list(manifest["members"]) == ["demo", "ddpm-phantom"]
    assert manifest["members"]["ddpm-phantom"]["mask_source"] == "generated"
    labels = [point["label"] for point in manifest["sweep"]["members"]["demo"]]
    assert labels == ["1", "2", "3 (DDPM)"]  # the SDM also gets ancestral DDPM sampling
    assert [p["label"] for p in manifest["sweep"]["members"]["ddpm-phantom"]] == ["1", "2"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert card == render_comparison(json.loads((tmp_path / "out" / "comparison.json").read_text()))
    demo, ddpm = (members[name][0].version for name in spec.members)
    assert card.count(f"| demo {demo} (sdm/concat) |") == 1 and f"| ddpm-phantom {ddpm}" in card
    assert "warped pretrain -> real" in card and "| ddpm-phantom | segmentation |" in card
    for picture in ("comparison_grid.png", "sampler_sweep.png", "downstream_effects.png"):
        assert (tmp_path / "out" / picture).stat().st_size > 1000
    from PIL import Image

    with Image.open(tmp_path / "out" / "comparison_grid.png") as grid:
        assert grid.width > 3 * grid.height / 2  # 4 columns, 2 rows

    # Committed like a corpus, the card is re-rendered from the manifest by `card --check`.
    repo = tmp_path / "repo"
    (repo / "manifests" / spec.name).mkdir(parents=True)
    (repo / "cards" / spec.name).mkdir(parents=True)
    (repo / "manifests" / spec.name / "0.1.0.json").write_text(
        (tmp_path / "out" / "comparison.json").read_text()
    )
    (repo / "cards" / spec.name / "README.md").write_text(card)
    assert check_cards(repo) == []
    (repo / "cards" / spec.name / "README.md").write_text(card.replace(f"demo {demo}", "demo 9.9.9"))
    assert len(check_cards(repo)) == 1


def test_recipes_that_differ_are_refused_before_anything_is_built():
    from synthecho.comparison import check_recipes_fair
    from synthecho.recipe import load_recipe
    from synthecho.stages.compare import COMPARISONS, SHARED_SETTINGS

    for spec in COMPARISONS.values():  # the shipped comparisons are fair as specified
        overrides = [*SHARED_SETTINGS, *spec.settings]
        recipes = {name: load_recipe(name, overrides) for name in spec.members}
        check_recipes_fair({name: recipe.model_dump(mode="json") for name, recipe in recipes.items()})
    # ddpm-9k keeps DiffEcho's 128 px: without the comparison's settings the resolutions differ.
    raw = {name: load_recipe(name).model_dump(mode="json") for name in COMPARISONS["9k"].members}
    with pytest.raises(SynthechoError, match=r"source and preparation .* differs between: sdm-9k, sd-9k, "):
        check_recipes_fair(raw)


def test_the_camus_comparison_lists_every_members_missing_inputs_at_once(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from synthecho.cli import app

    monkeypatch.delenv("SYNTHECHO_CAMUS_ROOT", raising=False)
    result = CliRunner().invoke(app, ["compare", "9k", "--check", "--run-root", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for member in ("sdm-9k", "ddpm-9k", "sd-9k", "controlnet-9k"):
        assert f"{member}: recipe '{member}' needs inputs" in result.output
    assert "source.root" in result.output and not any(tmp_path.iterdir())  # nothing was started
    phantom = CliRunner().invoke(app, ["compare", "phantom", "--check", "--run-root", str(tmp_path)])
    assert phantom.exit_code == 0 and "every member's outside inputs are here" in phantom.output
