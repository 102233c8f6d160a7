"""Publishing: the exact Hub layout in a folder (loaded back with `datasets`), and the HfApi call sequence."""

from __future__ import annotations

import copy
import subprocess
from unittest.mock import call, create_autospec

import pytest
from card_fixtures import make_run, tiny_recipe
from datasets import load_dataset
from huggingface_hub import CommitInfo, DatasetCard, HfApi, ModelCard
from huggingface_hub.hf_api import GitRefInfo, GitRefs

from synthecho import publish as pub
from synthecho.card import render_card
from synthecho.errors import SynthechoError
from synthecho.io import read_json, write_json_atomic
from synthecho.prompts import Attributes, all_structure_prompts
from synthecho.schema import corpus_features, prompt_features
from synthecho.stages import run_stage


@pytest.fixture()
def run_dir(tmp_path):
    folder = tmp_path / "run"
    make_run(folder)
    (folder / "generator" / "unet").mkdir(parents=True)
    (folder / "generator" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (folder / "generator" / "synthecho_generator.json").write_text('{"kind": "sdm"}', encoding="utf-8")
    (folder / "generator" / "checkpoints").mkdir()
    (folder / "generator" / "checkpoints" / "step-1.pt").write_bytes(b"resume state")
    (folder / "generator" / ".complete.json").write_text("{}", encoding="utf-8")
    return folder


def _commit(oid: str) -> CommitInfo:
    return CommitInfo(
        commit_url=f"https://huggingface.co/datasets/org/tiny/commit/{oid}",
        commit_message="synthecho 0.1.0",
        commit_description="",
        oid=oid,
    )


def _api(*oids: str, tags: tuple[str, ...] = ()):
    """An autospec'd HfApi whose uploads return commits and which records what each upload saw."""
    api = create_autospec(HfApi, instance=True)
    api.list_repo_refs.return_value = GitRefs(
        branches=[],
        converts=[],
        tags=[GitRefInfo(name=t, ref=f"refs/tags/{t}", target_commit="0" * 40) for t in tags],
    )
    uploaded = []

    def upload_folder(**kwargs):
        folder = kwargs["folder_path"]
        from pathlib import Path

        files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()
        }
        uploaded.append((kwargs["repo_id"], files))
        return _commit(oids[len(uploaded) - 1])

    api.upload_folder.side_effect = upload_folder
    return api, uploaded


def test_layout_loads_with_datasets_as_declared(run_dir, tmp_path):
    out = tmp_path / "out"
    files = pub.layout_repo(run_dir, out)
    assert [p.relative_to(out).as_posix() for p in files] == [
        "README.md",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "manifest.json",
        "prompts/prompts-00000-of-00001.parquet",
        "sample_grid.png",
    ]
    corpus = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(corpus) == {"train", "validation"}
    assert (corpus["train"].num_rows, corpus["validation"].num_rows) == (5, 3)
    assert corpus["train"].features == corpus_features()
    row = corpus["validation"][0]
    assert row["image"].mode == "L" and row["mask"].mode == "P" and row["image"].size == (16, 16)
    assert corpus["train"].features["image_quality"].names == ["Good", "Medium", "Poor"]
    assert corpus["train"].features["view"].int2str(corpus["train"][1]["view"]) == "4CH"

    prompts = load_dataset(str(out), "prompts", split="train", cache_dir=str(tmp_path / "cache"))
    assert prompts.features == prompt_features()
    assert prompts.num_rows == 8 * 48
    # The prompts of one row are the prompt module's, with the ClassLabel ints decoded to CAMUS names.
    first = corpus["train"][3]  # index 6: 4CH, ES, M, quality Good, age 24
    names = corpus["train"].features
    attrs = Attributes(
        view=names["view"].int2str(first["view"]),
        phase=names["phase"].int2str(first["phase"]),
        sex=names["sex"].int2str(first["sex"]),
        age=first["age"],
        image_quality=names["image_quality"].int2str(first["image_quality"]),
    )
    expected = all_structure_prompts(attrs, {"lv": "square", "myo": "rectangle", "la": "oval"})
    got = [
        {k: r[k] for k in ("structure", "level", "phrasing", "text", "attributes")}
        for r in prompts
        if r["id"] == first["id"]
    ]
    assert got == expected
    assert any("of an eighteen-year-old" in text for text in prompts["text"])  # the "an" rule
    assert (out / "README.md").read_text(encoding="utf-8") == render_card(
        read_json(run_dir / "manifest.json")
    )
    assert read_json(out / "manifest.json") == read_json(run_dir / "manifest.json")


def test_layout_replaces_a_previous_layout_but_not_a_foreign_folder(run_dir, tmp_path):
    out = tmp_path / "out"
    pub.layout_repo(run_dir, out)
    (out / "data" / "train-00000-of-00009.parquet").write_bytes(b"stale shard of an older layout")
    pub.layout_repo(run_dir, out)
    assert not (out / "data" / "train-00000-of-00009.parquet").exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious", encoding="utf-8")
    with pytest.raises(SynthechoError, match="not a synthecho publish folder"):
        pub.layout_repo(run_dir, foreign)
    assert (foreign / "thesis.tex").read_text(encoding="utf-8") == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_layout_refuses_shards_that_changed_after_filtering(run_dir, tmp_path):
    shard = run_dir / "data" / "train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(SynthechoError, match="differs from its manifest entry"):
        pub.layout_repo(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_publish_refuses_without_license(run_dir, tmp_path):
    api, _ = _api("a" * 40)
    with pytest.raises(SynthechoError, match="recipe key `license`"):
        run_stage(
            "publish", tiny_recipe(license=None), run_dir, to=tmp_path / "out", repo_id="org/tiny", api=api
        )
    assert api.method_calls == [] and not (tmp_path / "out").exists()


def test_push_calls_hfapi_in_order_and_records_the_commit(run_dir, tmp_path):
    api, uploaded = _api("a" * 40)
    repo = tmp_path / "repo"
    result = run_stage(
        "publish", tiny_recipe(), run_dir, repo_id="org/tiny", private=True, api=api, repo_root=repo
    )
    assert api.method_calls == [
        call.create_repo("org/tiny", repo_type="dataset", private=True, exist_ok=True),
        call.list_repo_refs("org/tiny", repo_type="dataset"),
        call.upload_folder(
            repo_id="org/tiny",
            repo_type="dataset",
            folder_path=api.upload_folder.call_args.kwargs["folder_path"],
            commit_message="synthecho 0.1.0",
            delete_patterns=["data/*", "prompts/*"],
        ),
        call.create_tag("org/tiny", tag="v0.1.0", revision="a" * 40, repo_type="dataset"),
    ]
    ((repo_id, files),) = uploaded
    assert sorted(files) == [
        "README.md",
        "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet",
        "manifest.json",
        "prompts/prompts-00000-of-00001.parquet",
        "sample_grid.png",
    ]
    card = files["README.md"].decode("utf-8")
    assert 'load_dataset("org/tiny", revision="v0.1.0")' in card
    manifest = read_json(run_dir / "manifest.json")
    assert manifest["publish"] == {
        "repo_id": "org/tiny",
        "tag": "v0.1.0",
        "url": "https://huggingface.co/datasets/org/tiny",
        "commit": "a" * 40,
    }
    assert result["commit"] == "a" * 40
    # The uploaded card is what the recorded manifest renders (the commit is not shown in the card) ...
    assert render_card(manifest) == card
    # ... and the committed copies were refreshed with the commit.
    assert read_json(repo / "manifests" / "tiny" / "0.1.0.json")["publish"]["commit"] == "a" * 40
    assert (repo / "cards" / "tiny" / "README.md").read_text(encoding="utf-8") == card


def test_with_generator_pushes_a_linked_model_repo_first(run_dir, tmp_path):
    api, uploaded = _api("b" * 40, "c" * 40)
    out = tmp_path / "out"
    result = run_stage(
        "publish", tiny_recipe(), run_dir, to=out, repo_id="org/tiny", with_generator=True, api=api
    )
    names = [c[0] for c in api.method_calls]
    # Both repos exist and neither has the tag before anything is uploaded; then model, then dataset.
    assert names == ["create_repo", "list_repo_refs"] * 2 + ["upload_folder", "create_tag"] * 2
    assert api.create_repo.call_args_list == [
        call("org/tiny", repo_type="dataset", private=False, exist_ok=True),
        call("org/tiny-generator", repo_type="model", private=False, exist_ok=True),
    ]
    assert api.create_tag.call_args_list == [
        call("org/tiny-generator", tag="v0.1.0", revision="b" * 40, repo_type="model"),
        call("org/tiny", tag="v0.1.0", revision="c" * 40, repo_type="dataset"),
    ]
    (model_repo, model_files), (dataset_repo, dataset_files) = uploaded
    assert model_repo == "org/tiny-generator" and dataset_repo == "org/tiny"
    assert sorted(model_files) == [
        "README.md",
        "synthecho_generator.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    model_card = ModelCard(model_files["README.md"].decode("utf-8"))
    assert model_card.data.datasets == ["org/tiny"]
    assert "https://huggingface.co/datasets/org/tiny" in model_card.text
    dataset_card = dataset_files["README.md"].decode("utf-8")
    assert "https://huggingface.co/org/tiny-generator" in dataset_card
    assert (out / "README.md").read_text(encoding="utf-8") == dataset_card  # --to holds what was pushed
    assert result["generator_commit"] == "b" * 40 and result["commit"] == "c" * 40
    assert DatasetCard(dataset_card).data.license == "cc-by-nc-sa-4.0"


def test_an_existing_version_tag_is_refused_before_uploading(run_dir):
    api, uploaded = _api("d" * 40, tags=("v0.1.0",))
    before = read_json(run_dir / "manifest.json")
    with pytest.raises(SynthechoError, match="bump the recipe key `version`"):
        run_stage("publish", tiny_recipe(), run_dir, repo_id="org/tiny", api=api)
    assert uploaded == [] and not api.create_tag.called
    assert read_json(run_dir / "manifest.json") == before


def test_dry_run_prints_the_plan_and_touches_nothing(run_dir, tmp_path, capsys):
    api, _ = _api("e" * 40)
    before = read_json(run_dir / "manifest.json")
    out = tmp_path / "out"
    result = run_stage(
        "publish",
        tiny_recipe(),
        run_dir,
        to=out,
        repo_id="org/tiny",
        with_generator=True,
        dry_run=True,
        api=api,
    )
    printed = capsys.readouterr().out
    assert (
        "data/train-00000-of-00001.parquet" in printed and "prompts/prompts-00000-of-00001.parquet" in printed
    )
    assert "create_tag('org/tiny', tag='v0.1.0'" in printed and "org/tiny-generator" in printed
    assert "checkpoints" not in printed and ".complete.json" not in printed
    assert result["dry_run"] is True and result["calls"] == 10  # 2 layouts + 4 per repo
    assert api.method_calls == [] and not out.exists()
    assert read_json(run_dir / "manifest.json") == before


def test_local_only_publish_does_not_touch_the_hub_or_the_manifest(run_dir, tmp_path):
    before = copy.deepcopy(read_json(run_dir / "manifest.json"))
    result = run_stage("publish", tiny_recipe(), run_dir, to=tmp_path / "out")
    assert result["files"] == 6 and "commit" not in result  # card, manifest, 2 shards, prompts, grid
    assert read_json(run_dir / "manifest.json") == before


def test_publish_needs_filtered_shards(tmp_path):
    run_dir = tmp_path / "run"
    manifest = make_run(run_dir)
    manifest["shards"] = {"raw": []}
    write_json_atomic(run_dir / "manifest.json", manifest)
    with pytest.raises(SynthechoError, match="run the filter stage"):
        run_stage("publish", tiny_recipe(), run_dir, to=tmp_path / "out")


# --- Hub failures: one `error:` line, exit 2, nothing half-published ---------------------------------

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"


@pytest.fixture()
def cli_run(run_dir, tmp_path, monkeypatch):
    """(recipe file, run dir, invoke) for `synthecho publish` through the real CLI with a fake token."""
    import yaml

    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe().model_dump(mode="json")), encoding="utf-8")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("SYNTHECHO_HUB_RETRIES", "2")
    monkeypatch.setattr("time.sleep", lambda seconds: None)  # the backoff, without the wait

    def invoke(api, *extra):
        import huggingface_hub
        from typer.testing import CliRunner

        from synthecho.cli import app

        monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
        args = ["publish", "--recipe", str(recipe_file), "--run-dir", str(run_dir), "--repo-id", "org/tiny"]
        return CliRunner().invoke(app, [*args, *extra])

    return recipe_file, run_dir, invoke


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _tree_bytes(folder) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


HUB_FAILURES = {
    "token (401)": (
        "create_repo",
        (401, "Invalid credentials in Authorization header"),
        "error: creating dataset repo org/tiny: the Hub rejected the credentials (HTTP 401): Invalid "
        "credentials in Authorization header: set HF_TOKEN to a valid token with write access "
        "(or run `hf auth login`); an expired or revoked token must be replaced.",
    ),
    "no write access (403)": (
        "create_repo",
        (403, 'You don\'t have the rights to create a dataset under the namespace "org"'),
        "error: creating dataset repo org/tiny: this token may not write to org/tiny (HTTP 403): You don't "
        'have the rights to create a dataset under the namespace "org": use a token with write access to it '
        "(a fine-grained token needs write permission on that repo or its organisation).",
    ),
    "missing repo (404)": (
        "list_repo_refs",
        (404, "Repository not found"),
        "error: reading the tags of dataset repo org/tiny: org/tiny was not found (HTTP 404): Repository not "
        "found: check the repo id (ORG/NAME), that it exists, and that the token can see it (private repos "
        "need a token of a member).",
    ),
    "rate limit (429)": (
        "upload_folder",
        (429, "You have been rate-limited"),
        "error: uploading to dataset repo org/tiny: the Hub is rate-limiting this token (HTTP 429): You "
        "have been rate-limited and retries did not help: wait a few minutes and rerun (what was published "
        "before this call stays).",
    ),
    "tag created meanwhile (409)": (
        "create_tag",
        (409, "Tag reference exists already"),
        "error: tagging dataset repo org/tiny v0.1.0 (HTTP 409): Tag reference exists already: dataset repo "
        "org/tiny already has tag v0.1.0: bump the recipe key `version` to publish a new version (published "
        "versions are never overwritten).",
    ),
}


@pytest.mark.parametrize("failure", list(HUB_FAILURES))
def test_hub_failures_are_one_error_line_and_publish_nothing_half_way(cli_run, failure):
    from hub_fixtures import http_error

    method, (status, text), expected = HUB_FAILURES[failure]
    _, run_dir, invoke = cli_run
    api, _ = _api("f" * 40)
    getattr(api, method).side_effect = http_error(status, text)
    before = _tree_bytes(run_dir)
    result = invoke(api)
    assert result.exit_code == 2, result.output
    assert _error_lines(result.output) == [expected]
    assert "Traceback" not in result.output and FAKE_TOKEN not in result.output
    assert _tree_bytes(run_dir) == before  # manifest (and everything else in the run) unchanged
    if method != "create_tag":
        assert not api.create_tag.called  # no tag without its commit
    retried = api.upload_folder.call_count if method == "upload_folder" else 1
    assert retried == (3 if status == 429 else 1)  # 429: the first try + SYNTHECHO_HUB_RETRIES=2


def test_no_token_at_all_is_one_error_line(cli_run):
    from huggingface_hub.errors import LocalTokenNotFoundError

    _, _, invoke = cli_run
    api, _ = _api("a" * 40)
    api.create_repo.side_effect = LocalTokenNotFoundError(
        "Token is required (`token=True`), but no token found."
    )
    result = invoke(api)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert _error_lines(result.output) == [
        "error: creating dataset repo org/tiny: no Hugging Face token found: set HF_TOKEN to a token with "
        "write access (a CI secret), or run `hf auth login` once on this machine."
    ]


def test_an_existing_tag_through_the_cli_is_one_error_line(cli_run):
    _, run_dir, invoke = cli_run
    api, uploaded = _api("d" * 40, tags=("v0.1.0",))
    result = invoke(api)
    assert result.exit_code == 2 and uploaded == []
    assert _error_lines(result.output) == [
        "error: dataset repo org/tiny already has tag v0.1.0: bump the recipe key `version` to publish a new "
        "version (published versions are never overwritten)."
    ]


def test_transient_errors_are_retried_and_the_publish_completes(cli_run):
    from hub_fixtures import http_error

    _, run_dir, invoke = cli_run
    api, uploaded = _api("a" * 40)
    api.create_repo.side_effect = [http_error(503, ""), http_error(502, ""), None]
    result = invoke(api)
    assert result.exit_code == 0, result.output
    assert api.create_repo.call_count == 3 and len(uploaded) == 1
    assert "retry 1 of 2" in result.output and "retry 2 of 2" in result.output
    assert read_json(run_dir / "manifest.json")["publish"]["commit"] == "a" * 40
    # The token is in the environment only: not in the output, the manifest, the card or the upload.
    assert FAKE_TOKEN not in result.output
    assert not any(FAKE_TOKEN.encode() in data for data in _tree_bytes(run_dir).values())
    assert not any(FAKE_TOKEN.encode() in data for data in uploaded[0][1].values())


def test_a_failed_tag_leaves_the_manifest_alone_and_the_rerun_finishes(cli_run):
    from hub_fixtures import http_error

    _, run_dir, invoke = cli_run
    api, uploaded = _api("a" * 40, "b" * 40)
    api.create_tag.side_effect = [http_error(500, "")] * 3 + [None]
    failed = invoke(api)
    assert failed.exit_code == 2 and "server error (HTTP 500)" in _error_lines(failed.output)[0]
    assert "publish" not in read_json(run_dir / "manifest.json")  # the commit is recorded only once tagged
    done = invoke(api)  # the untagged commit is replaced by a new one, which gets the tag
    assert done.exit_code == 0, done.output
    assert len(uploaded) == 2 and api.create_tag.call_args.kwargs["revision"] == "b" * 40
    assert read_json(run_dir / "manifest.json")["publish"]["commit"] == "b" * 40


def test_a_generator_tag_left_by_a_stopped_publish_is_reused(run_dir):
    api, uploaded = _api("c" * 40)
    refs = {
        "org/tiny": GitRefs(branches=[], converts=[], tags=[]),
        "org/tiny-generator": GitRefs(
            branches=[],
            converts=[],
            tags=[GitRefInfo(name="v0.1.0", ref="refs/tags/v0.1.0", target_commit="b" * 40)],
        ),
    }
    api.list_repo_refs.side_effect = lambda repo_id, **kwargs: refs[repo_id]
    result = run_stage("publish", tiny_recipe(), run_dir, repo_id="org/tiny", with_generator=True, api=api)
    assert [repo for repo, _ in uploaded] == ["org/tiny"]  # the generator is not uploaded again
    assert result["generator_commit"] == "b" * 40 and result["commit"] == "c" * 40


def _real_cli(run_dir, recipe_file, env: dict) -> subprocess.CompletedProcess:
    import os
    import sys

    args = ["publish", "--recipe", str(recipe_file), "--run-dir", str(run_dir), "--repo-id", "org/tiny"]
    return subprocess.run(
        [sys.executable, "-m", "synthecho", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_TOKEN": FAKE_TOKEN, **env},
        timeout=300,
    )


def test_offline_and_unreachable_hub_for_real(cli_run, tmp_path):
    """Real HfApi, real huggingface_hub: offline mode, then a Hub endpoint where nothing listens."""
    recipe_file, run_dir, _ = cli_run
    before = _tree_bytes(run_dir)
    offline = _real_cli(run_dir, recipe_file, {"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert _error_lines(offline.stderr) == [
        "error: creating dataset repo org/tiny: the Hugging Face Hub is disabled on this machine "
        "(HF_HUB_OFFLINE is set): unset HF_HUB_OFFLINE to reach it, or work locally with --to DIR or "
        "--dry-run."
    ]
    # Port 9 on the loopback: nothing listens, the connection is refused at once.
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "SYNTHECHO_HUB_RETRIES": "1"}
    unreachable = _real_cli(run_dir, recipe_file, env)
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    (line,) = _error_lines(unreachable.stderr)
    assert line.startswith("error: creating dataset repo org/tiny: cannot reach the Hugging Face Hub at "
                           "http://127.0.0.1:9")  # fmt: skip
    assert line.endswith("check the network or proxy (HTTPS_PROXY, HF_ENDPOINT) and rerun; nothing was "
                         "published by this call.")  # fmt: skip
    assert "retry 1 of 1" in unreachable.stderr
    for output in (offline.stdout + offline.stderr, unreachable.stdout + unreachable.stderr):
        assert FAKE_TOKEN not in output
    assert _tree_bytes(run_dir) == before
    assert not any(FAKE_TOKEN.encode() in data for data in _tree_bytes(run_dir).values())


def test_with_generator_and_to_lays_the_model_repo_out_beside_the_dataset(run_dir, tmp_path):
    from synthecho.io import sha256_model_folder

    out = tmp_path / "corpus"
    result = run_stage("publish", tiny_recipe(), run_dir, to=out, with_generator=True)
    model = tmp_path / "corpus-generator"
    assert result["generator_folder"] == str(model)
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()) == [
        "README.md",
        "synthecho_generator.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    assert sha256_model_folder(model) == sha256_model_folder(run_dir / "generator")
    assert ModelCard((model / "README.md").read_text(encoding="utf-8")).data.datasets == ["ORG/tiny"]
    # A second layout replaces the first; a foreign folder in the way is refused.
    run_stage("publish", tiny_recipe(), run_dir, to=out, with_generator=True)
    foreign = tmp_path / "home"
    (tmp_path / "home-generator").mkdir()
    (tmp_path / "home-generator" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(SynthechoError, match="not a synthecho publish folder"):
        run_stage("publish", tiny_recipe(), run_dir, to=foreign, with_generator=True)
    assert (tmp_path / "home-generator" / "notes.txt").read_text(encoding="utf-8") == "mine"
