"""The command line as a user meets it: bad input gives one clear line naming the file/key, exit 2, no
traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from camus_fixtures import write_camus_2019, write_camus_2023
from typer.testing import CliRunner

from synthecho.cli import app

runner = CliRunner()


def camus_recipe(tmp_path: Path, root: Path, **extra) -> Path:
    data = {"name": "cli-test", "source": {"kind": "camus", "root": str(root)}, "prepare": {"resolution": 32}}
    data.update(extra)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def prepare(tmp_path: Path, recipe: Path):
    return runner.invoke(app, ["prepare", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")])


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture()
def tree(tmp_path):
    root = write_camus_2023(tmp_path / "camus")
    return root / "CAMUS_public"


def patient_dir(tree: Path, patient: str = "patient0001") -> Path:
    return tree / "database_nifti" / patient


def break_missing_file(tree):
    (patient_dir(tree) / "patient0001_2CH_ED_gt.nii.gz").unlink()
    return "patient0001_2CH_ED_gt.nii.gz"


def break_empty_image(tree):
    (patient_dir(tree) / "patient0001_4CH_ES.nii.gz").write_bytes(b"")
    return "patient0001_4CH_ES.nii.gz"


def break_truncated_image(tree):
    path = patient_dir(tree) / "patient0001_4CH_ED.nii.gz"
    path.write_bytes(path.read_bytes()[:60])
    return "patient0001_4CH_ED.nii.gz"


def break_mask_values(tree):
    import SimpleITK as sitk

    path = patient_dir(tree) / "patient0001_2CH_ES_gt.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array[0, 0] = 7
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    sitk.WriteImage(broken, str(path))
    return "patient0001_2CH_ES_gt.nii.gz"


def break_shape_mismatch(tree):
    import numpy as np
    import SimpleITK as sitk

    path = patient_dir(tree) / "patient0001_2CH_ED_gt.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 12), np.uint8)), str(path))
    return "patient0001_2CH_ED"


def break_cfg_key(tree):
    path = patient_dir(tree) / "Info_2CH.cfg"
    path.write_text(
        "\n".join(line for line in path.read_text().splitlines() if not line.startswith("Age")) + "\n"
    )
    return "Age"


def break_cfg_value(tree):
    path = patient_dir(tree) / "Info_4CH.cfg"
    path.write_text(path.read_text().replace("Age: 71", "Age: old"))
    return "Info_4CH.cfg"


def break_missing_split(tree):
    (tree / "database_split" / "subgroup_validation.txt").unlink()
    return "subgroup_validation.txt"


def break_empty_split(tree):
    (tree / "database_split" / "subgroup_testing.txt").write_text("")
    return "subgroup_testing.txt"


def break_overlapping_split(tree):
    (tree / "database_split" / "subgroup_testing.txt").write_text("patient0003\npatient0001\n")
    return "patient0001"


def break_split_without_folder(tree):
    shutil.rmtree(patient_dir(tree, "patient0002"))
    return "patient0002"


BREAKAGES = [
    break_missing_file,
    break_empty_image,
    break_truncated_image,
    break_mask_values,
    break_shape_mismatch,
    break_cfg_key,
    break_cfg_value,
    break_missing_split,
    break_empty_split,
    break_overlapping_split,
    break_split_without_folder,
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.removeprefix("break_"))
def test_bad_camus_input_is_one_clear_error(tmp_path, tree, breakage):
    named = breakage(tree)
    result = prepare(tmp_path, camus_recipe(tmp_path, tree))
    assert_clean_error(result, named)
    assert not (tmp_path / "run" / "stages" / "prepare.json").exists()  # nothing mistaken for done


def test_missing_root_names_the_key_and_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHECHO_CAMUS_ROOT", raising=False)
    result = prepare(tmp_path, camus_recipe(tmp_path, tmp_path / "nowhere"))
    assert_clean_error(result, "nowhere", "source.root", "SYNTHECHO_CAMUS_ROOT")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "source": {"kind": "camus"}}))
    assert_clean_error(prepare(tmp_path, recipe), "source.root", "SYNTHECHO_CAMUS_ROOT")


def test_transposed_dataset_fails_the_anatomy_check(tmp_path):
    root = write_camus_2019(tmp_path / "camus", transform=lambda array: array.T.copy())
    result = prepare(
        tmp_path,
        camus_recipe(
            tmp_path, root, source={"kind": "camus", "root": str(root), "validation_patients_2019": 1}
        ),
    )
    assert_clean_error(result, "patient000")


def test_recipe_errors_name_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "train": {"stepz": 3}}))
    assert_clean_error(prepare(tmp_path, recipe), "train.stepz", "unknown key")
    result = runner.invoke(app, ["prepare", "--recipe", "demo", "--set", "train.steps=many"])
    assert_clean_error(result, "train.steps")
    assert_clean_error(
        runner.invoke(app, ["prepare", "--recipe", "no-such-recipe"]), "no-such-recipe", "demo"
    )


def test_prepare_2023_fixture_writes_patient_splits_and_skips_the_rerun(tmp_path, tree):
    recipe = camus_recipe(tmp_path, tree)
    first = prepare(tmp_path, recipe)
    assert first.exit_code == 0, first.output
    from synthecho.real import load_real

    patients = {
        split: {r["patient"] for r in load_real(tmp_path / "run", split).records}
        for split in ("train", "validation", "test")
    }
    assert patients == {"train": {"patient0001"}, "validation": {"patient0002"}, "test": {"patient0003"}}
    again = prepare(tmp_path, recipe)
    assert again.exit_code == 0 and "skipped" in again.output


def test_help_is_fast_and_imports_no_heavy_library():
    code = (
        "import sys, synthecho.cli; "
        "print(any(m in sys.modules for m in ('torch', 'diffusers', 'datasets', 'SimpleITK')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- build checks its outside inputs before any work --------------------------------------------------


@pytest.mark.parametrize("name", ["sdm-9k", "ddpm-9k", "sd-9k", "controlnet-9k"])
def test_9k_recipes_stop_before_any_work_naming_what_is_missing(name, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("SYNTHECHO_CAMUS_ROOT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["build", "--recipe", name, "--run-dir", str(run_dir)])
    assert_clean_error(result, "nothing was started", "source.root", "SYNTHECHO_CAMUS_ROOT")
    needs_base = name in ("sd-9k", "controlnet-9k")
    assert ("generator.base_model" in result.output) == needs_base, result.output
    if needs_base:
        assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in result.output
    assert not (run_dir / "stages").exists() and not (run_dir / "real").exists()


def test_preflight_accepts_a_local_pipeline_folder_and_names_a_bad_one(tmp_path):
    from synthecho.recipe import load_recipe
    from synthecho.stages import missing_inputs

    base = tmp_path / "sd15"
    base.mkdir()
    recipe = load_recipe("controlnet-9k", [f"generator.base_model={base}", f"source.root={tmp_path}"])
    assert missing_inputs(recipe, {"prepare", "train"}) == [
        f"generator.base_model {str(base)!r} has no model_index.json: it must be a diffusers pipeline folder."
    ]
    (base / "model_index.json").write_text("{}")
    assert missing_inputs(recipe, {"prepare", "train"}) == []
    # Stages already done need nothing: without the base, a trained run can still generate.
    gone = load_recipe("controlnet-9k", [f"generator.base_model={tmp_path / 'gone'}"])
    assert missing_inputs(gone, {"generate", "filter"}) == []
    assert "does not exist" in missing_inputs(gone, {"train"})[0]


def test_check_runs_nothing_and_says_what_build_would_do(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHECHO_CAMUS_ROOT", raising=False)
    missing = runner.invoke(app, ["check", "--recipe", "sdm-9k", "--run-dir", str(tmp_path / "a")])
    assert_clean_error(missing, "source.root")
    ready = runner.invoke(app, ["check", "--recipe", "demo", "--run-dir", str(tmp_path / "b")])
    assert ready.exit_code == 0, ready.output
    assert "build would run prepare, train, generate, filter, evaluate, card" in ready.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
