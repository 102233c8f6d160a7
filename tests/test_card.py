"""Dataset card: rendered from the manifest alone, deterministic, Hub-readable header, CI staleness check."""

from __future__ import annotations

import copy
import json

import pyarrow.parquet as pq
import pytest
from card_fixtures import make_run, tiny_recipe
from datasets import Features
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from synthecho import card, card_context
from synthecho.io import read_json, write_json_atomic
from synthecho.schema import corpus_features, prompt_features
from synthecho.stages import run_stage


@pytest.fixture()
def run(tmp_path):
    run_dir = tmp_path / "run"
    manifest = make_run(run_dir)
    return run_dir, manifest


def _header(text: str):
    data = DatasetCard(text).data
    return data, DatasetInfosDict.from_dataset_card_data(data), MetadataConfigs.from_dataset_card_data(data)


def test_render_is_deterministic_and_survives_a_json_round_trip(run):
    _, manifest = run
    first = card.render_card(manifest)
    assert card.render_card(copy.deepcopy(manifest)) == first
    assert card.render_card(json.loads(json.dumps(manifest))) == first
    assert first.startswith("---\n") and first.endswith("\n") and not first.endswith("\n\n")


def test_card_features_equal_the_parquet_metadata(run):
    run_dir, manifest = run
    _, infos, _ = _header(card.render_card(manifest))
    for path in sorted((run_dir / "data").glob("*.parquet")):
        parquet_features = Features.from_arrow_schema(pq.read_schema(path))
        assert infos["default"].features == parquet_features == corpus_features()
    assert infos["prompts"].features == prompt_features()


def test_header_has_licence_tasks_sizes_configs_and_split_counts(run):
    _, manifest = run
    data, infos, configs = _header(card.render_card(manifest))
    assert data.license == "cc-by-nc-sa-4.0"
    assert data.task_categories == ["image-segmentation", "text-to-image"]
    assert data.size_categories == ["n<1K"]
    assert data.source_datasets == ["synthecho phantom (simulated)"]
    assert {"echocardiography", "synthetic", "medical"} <= set(data.tags)
    assert configs["default"]["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "validation", "path": "data/validation-*"},
    ]
    assert configs["prompts"]["data_files"] == [{"split": "train", "path": "prompts/prompts-*"}]
    splits = infos["default"].splits
    assert (splits["train"].num_examples, splits["validation"].num_examples) == (5, 3)
    assert infos["prompts"].splits["train"].num_examples == 8 * 48


def test_body_states_generation_quality_and_provenance(run):
    _, manifest = run
    text = card.render_card(manifest)
    assert "not for clinical use" in text
    assert "an eighteen" not in text  # the example prompt is fixed (eighty), not row data
    assert "an eighty-year-old" in text and '**"an"** rule' in text
    assert "Sampler `dpmsolver++`, 2 steps" in text
    assert "![Sample grid written after training" in text and "](sample_grid.png)" in text
    assert "| synthetic train vs real train | 12.5 | 0.012 ± 0.003 | 4 | 5 |" in text
    assert "real train vs real validation (scale)" in text
    assert manifest["metrics"]["inception_note"] in text
    assert "| rejected: dice_lv | 2 |" in text
    assert f"`{manifest['shards']['data'][0]['content_hash'][:12]}`" in text
    assert "Downstream evaluation has not been run for this version." in text
    assert "phantom simulator, not from patients" in text
    for cite in ("10.1109/TMI.2019.2900516", "2309.12829", "2308.07706", "2403.19880", "978-3-031-44521-7_4"):
        assert cite in text
    assert 'load_dataset("ORG/tiny", revision="v0.1.0")' in text


def test_missing_sections_render_as_sentences_not_errors():
    text = card.render_card({})
    assert "Downstream evaluation has not been run for this version." in text
    assert "Inception-feature metrics were not computed" in text
    assert "The quality filter has not run for this version." in text
    assert "license: unknown" in text and "recipe key `license`" in text


def test_downstream_results_and_publish_target_are_rendered(run):
    _, manifest = run
    manifest = {
        **manifest,
        "downstream": {
            "strategies": ["real", "synthetic"],
            "caps": {
                "cap-1": {
                    "cap": 1.0,
                    "tasks": {
                        "segmentation": {
                            "strategies": {
                                "synthetic": {
                                    "metrics": {
                                        "dice_lv_endo": {"mean": 0.812, "std": 0.02},
                                        "dice_lv_epi": {"mean": 0.9, "std": 0.01},
                                        "dice_la": {"mean": 0.7, "std": 0.05},
                                    }
                                }
                            }
                        }
                    },
                }
            },
        },
        "publish": {"repo_id": "org/tiny", "tag": "v0.1.0", "generator_repo_id": "org/tiny-generator"},
    }
    text = card.render_card(manifest)
    assert "**segmentation, 100% of real train patients**" in text
    assert "| synthetic only | 81.2 ± 2.0 | 90.0 ± 1.0 | 70.0 ± 5.0 |" in text
    assert 'load_dataset("org/tiny", revision="v0.1.0")' in text
    assert "[org/tiny-generator](https://huggingface.co/org/tiny-generator)" in text
    assert "has not been pushed to the Hub yet" not in text


def test_stable_diffusion_base_weights_carry_the_openrail_restriction(run):
    _, manifest = run
    manifest = copy.deepcopy(manifest)
    manifest["generator"].update(
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", base_license="creativeml-openrail-m"
    )
    text = card.render_card(manifest)
    assert "CreativeML OpenRAIL-M" in text and "medical advice" in text


def test_every_schema_column_is_documented():
    assert set(card_context.COLUMN_DOCS) == set(corpus_features())


def test_the_card_describes_the_schema_its_manifest_records(run):
    """A published version's card lists the columns of its own files, not what the code writes today."""
    from datasets import Features, Value

    _, manifest = run
    manifest = {key: value for key, value in manifest.items() if key != "schema"}  # as before the record
    assert _header(card.render_card(manifest)) == _header(card.render_card({**manifest, "schema": {
        "version": 1, "features": corpus_features(1).to_dict()}}))  # fmt: skip
    wider = Features({**corpus_features(1), "extra_column": Value("string")})
    text = card.render_card({**manifest, "schema": {"version": 2, "features": wider.to_dict()}})
    assert "| `extra_column` |" in text and "extra_column" in str(_header(text))


@pytest.mark.parametrize(
    ("rows", "bucket"),
    [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9000, "1K<n<10K"), (10**5, "100K<n<1M")],
)
def test_size_category(rows, bucket):
    assert card.size_category(rows) == bucket


def test_empty_validation_split_is_left_out_of_the_configs(tmp_path):
    manifest = make_run(tmp_path / "run", rows={"train": 2})
    _, infos, configs = _header(card.render_card(manifest))
    assert [f["split"] for f in configs["default"]["data_files"]] == ["train"]
    assert list(infos["default"].splits) == ["train"]


def test_stage_writes_readme_and_refreshes_the_dataset_section(run):
    run_dir, _ = run
    recipe = tiny_recipe(license=None, description="Renamed.")
    info = run_stage("card", recipe, run_dir, progress=False)
    assert info["skipped"] is False and "warning" in info
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["dataset"]["license"] is None and manifest["dataset"]["description"] == "Renamed."
    readme = (run_dir / "README.md").read_text(encoding="utf-8")
    assert readme == card.render_card(manifest) and "Renamed." in readme
    assert run_stage("card", recipe, run_dir, progress=False)["skipped"] is True
    # A later stage changed the manifest: the README is re-rendered although the stage inputs did not change.
    accuracy = {"accuracy": {"mean": 0.5, "std": 0.0}, "f1": {"mean": 0.4, "std": 0.1}}
    manifest["downstream"] = {
        "caps": {"cap-1": {"cap": 1.0, "tasks": {"view": {"strategies": {"real": {"metrics": accuracy}}}}}}
    }
    write_json_atomic(run_dir / "manifest.json", manifest)
    assert run_stage("card", recipe, run_dir, progress=False)["skipped"] is False
    assert "| real only | 50.0 ± 0.0 | 40.0 ± 10.0 |" in (run_dir / "README.md").read_text(encoding="utf-8")


def test_export_then_check_passes_and_fails_on_a_stale_card(run, tmp_path):
    run_dir, _ = run
    repo = tmp_path / "repo"
    manifest_path, card_path = card.export_committed(run_dir, repo)
    assert manifest_path == repo / "manifests" / "tiny" / "0.1.0.json"
    assert card_path == repo / "cards" / "tiny" / "README.md"
    assert card.check_cards(repo) == []

    # A hand edit of the card is stale.
    card_path.write_text(
        card_path.read_text(encoding="utf-8").replace("Tiny test corpus.", "Edited."), encoding="utf-8"
    )
    stale = card.check_cards(repo)
    assert len(stale) == 1 and stale[0].startswith("cards/tiny/README.md: stale")
    assert "-Edited." in stale[0] and "+Tiny test corpus." in stale[0]

    # So is a fresh card whose manifest changed afterwards.
    card.export_committed(run_dir, repo)
    committed = read_json(manifest_path)
    committed["counts"]["passed"] = 999
    write_json_atomic(manifest_path, committed)
    assert len(card.check_cards(repo)) == 1


def test_check_compares_with_the_newest_version_and_reports_orphans(run, tmp_path):
    run_dir, manifest = run
    repo = tmp_path / "repo"
    card.export_committed(run_dir, repo)
    newer = copy.deepcopy(read_json(repo / "manifests" / "tiny" / "0.1.0.json"))
    newer["dataset"]["version"] = "0.10.0"  # semver order, not string order
    write_json_atomic(repo / "manifests" / "tiny" / "0.10.0.json", newer)
    assert len(card.check_cards(repo)) == 1
    (repo / "cards" / "tiny" / "README.md").write_text(card.render_card(newer), encoding="utf-8")
    assert card.check_cards(repo) == []
    (repo / "cards" / "orphan").mkdir()
    (repo / "cards" / "orphan" / "README.md").write_text("---\n---\n", encoding="utf-8")
    assert card.check_cards(repo) == ["cards/orphan/README.md: no manifest in manifests/orphan/"]


def test_committed_manifest_has_no_absolute_paths(run, tmp_path):
    run_dir, manifest = run
    manifest["recipe"]["source"]["root"] = "/home/someone/CAMUS_public"
    manifest["recipe"]["run_dir"] = str(run_dir)
    write_json_atomic(run_dir / "manifest.json", manifest)
    manifest_path, _ = card.export_committed(run_dir, tmp_path / "repo")
    committed = read_json(manifest_path)
    assert committed["recipe"]["source"]["root"] == "<local>/CAMUS_public"
    assert committed["recipe"]["run_dir"] == "."
    assert committed["environment"] == manifest["environment"]  # versions and timings stay
    assert str(tmp_path) not in manifest_path.read_text(encoding="utf-8")


def test_distances_keep_significant_digits():
    """Domain-feature KIDs are ~1e-4: fixed decimals printed them as 0.0001 ± 0.0000."""
    (row,) = card_context.distance_rows(
        {"overall": {"fid": 0.00587, "kid_mean": 7.98e-05, "kid_std": 4.23e-05}}
    )
    assert row["kid"] == "8e-05 ± 4.2e-05" and row["fid"] == "0.00587"


def test_every_template_ships_as_package_data():
    """The templates are loaded through the package: a wheel must contain every one of them."""
    from fnmatch import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    package = Path(card.__file__).parent
    pyproject = package.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("installed package: no pyproject.toml beside it")
    patterns = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    templates = sorted(p.relative_to(package).as_posix() for p in (package / "templates").iterdir())
    assert "templates/dataset_card.md" in templates and "templates/model_card.md" in templates
    for template in templates:
        assert any(fnmatch(template, pattern) for pattern in patterns["synthecho"]), template
