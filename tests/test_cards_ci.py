"""Cards in CI: the datasets-free card header, `card --check/--push` without torch/diffusers/datasets, and
`card --push` against an autospec'd HfApi (only README.md + grid, one commit, none when current)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from unittest.mock import create_autospec

import pytest
from card_fixtures import make_run
from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.hf_api import DatasetInfo, RepoFile
from packaging.requirements import Requirement
from typer.testing import CliRunner

from synthecho import card, card_header
from synthecho.card_push import git_blob_sha1, push_cards
from synthecho.cli import app
from synthecho.io import read_json, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "datasets", "transformers")
FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"
HEAD = "1" * 40


def datasets_header(manifest: dict) -> str:
    """The YAML header as the `datasets` serialisers write it (the reference card_header must equal)."""
    from datasets import DatasetInfo as DsInfo
    from datasets import Features
    from datasets.info import DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    data = card.card_data(manifest)
    reference = DatasetCardData(
        **{k: v for k, v in data.to_dict().items() if k not in ("configs", "dataset_info")}
    )
    MetadataConfigs({c.pop("config_name"): c for c in copy.deepcopy(data["configs"])}).to_dataset_card_data(
        reference
    )
    infos = {}
    entries = data["dataset_info"] if isinstance(data["dataset_info"], list) else [data["dataset_info"]]
    schemas = {
        "default": card_header.recorded_feature_dict(manifest),
        "prompts": card_header.recorded_prompt_feature_dict(manifest),
    }
    for entry in entries:
        name = entry.get("config_name", "default")
        splits = SplitDict()
        for split in entry["splits"]:
            splits.add(SplitInfo(**split))
        infos[name] = DsInfo(
            features=Features.from_dict(schemas[name]),
            splits=splits,
            download_size=entry.get("download_size"),
            dataset_size=entry.get("dataset_size"),
        )
    DatasetInfosDict(infos).to_dataset_card_data(reference)
    return reference.to_yaml()


def committed_manifests() -> list[Path]:
    return sorted((REPO / "manifests").glob("*/*.json"))


@pytest.mark.parametrize("path", committed_manifests(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_header_equals_the_datasets_serialisers_for_committed_manifests(path):
    manifest = read_json(path)
    assert card.card_data(manifest).to_yaml() == datasets_header(manifest)


def test_header_equals_the_datasets_serialisers_for_the_current_schema(tmp_path):
    from synthecho.schema import schema_record

    manifest = make_run(tmp_path / "run")
    manifest["schema"] = schema_record()
    assert card.card_data(manifest).to_yaml() == datasets_header(manifest)
    # One config only (no published rows): the datasets layout of a lone config.
    empty = copy.deepcopy(manifest)
    empty["shards"]["data"] = []
    assert card.card_data(empty).to_yaml() == datasets_header(empty)


def test_version_1_constants_are_schema_version_1():
    from synthecho.schema import corpus_features, prompt_features

    assert card_header.V1_FEATURES == corpus_features(1).to_dict()
    assert card_header.V1_PROMPT_FEATURES == prompt_features(1).to_dict()
    # Positive control: a changed constant would be caught.
    assert {**card_header.V1_FEATURES, "extra": {"dtype": "int32", "_type": "Value"}} != corpus_features(
        1
    ).to_dict()


def test_features_yaml_covers_lists_and_nested_structs():
    from datasets import ClassLabel, Features, LargeList, Sequence, Value

    features = Features(
        {
            "tags": Sequence(Value("string")),
            "points": Sequence({"x": Value("float32"), "label": ClassLabel(names=["a", "b"])}),
            "big": LargeList(Value("int64")),
            "nested": {"inner": {"deep": Value("bool")}},
        }
    )
    assert card_header.features_yaml(features.to_dict()) == features._to_yaml_list()


# --- no torch / diffusers / datasets -------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cards_job_packages() -> list[str]:
    """The requirements cards.yml installs besides synthecho itself (installed with --no-deps)."""
    workflow = (REPO / ".github" / "workflows" / "cards.yml").read_text(encoding="utf-8")
    return [Requirement(r).name for r in re.findall(r'"([A-Za-z0-9_.\-]+[<>=!~][^"]*)"', workflow)]


def _closure(names: list[str]) -> set[str]:
    """The distributions `names` pull in (their requirements, recursively, without extras)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if _norm(name) in seen:
            continue
        seen.add(_norm(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def absent_in_the_cards_job() -> list[str]:
    """Top-level modules of synthecho's dependencies that the cards job does not install."""
    installed = _closure(cards_job_packages())
    dependencies = [Requirement(r) for r in metadata.requires("synthecho") or []]
    absent = {_norm(r.name) for r in dependencies if r.marker is None and _norm(r.name) not in installed}
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if any(_norm(dist) in absent for dist in dists)
    )


BLOCKER = """
import sys
ABSENT = set(sys.argv.pop(1).split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from synthecho.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
else:
    code = 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ABSENT)
print("LOADED", loaded)
sys.exit(code)
"""


def run_blocked(args: list[str], env: dict | None = None, code: str = BLOCKER) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where every module the cards job does not install fails to import."""
    return subprocess.run(
        [sys.executable, "-c", code, ",".join(absent_in_the_cards_job()), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_card_check_and_push_need_only_what_the_cards_job_installs(tmp_path):
    check = run_blocked(["card", "--check", "--repo-root", str(REPO)])
    assert check.returncode == 0, check.stderr
    assert "all committed cards match" in check.stdout and "LOADED []" in check.stdout
    dry = run_blocked(["card", "--push", "--dry-run", "--repo-root", str(published_repo(tmp_path))])
    assert dry.returncode == 0, dry.stderr
    assert "create_commit('org/tiny'" in dry.stdout and "LOADED []" in dry.stdout
    # A real push attempt (offline here): one error line, still no heavy import.
    offline = run_blocked(
        ["card", "--push", "--repo-root", str(tmp_path / "repo")],
        env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": FAKE_TOKEN},
    )
    assert offline.returncode == 2 and "LOADED []" in offline.stdout
    assert [line for line in offline.stderr.splitlines() if line.strip()] == [
        "error: reading dataset repo org/tiny: the Hugging Face Hub is disabled on this machine "
        "(HF_HUB_OFFLINE is set): unset HF_HUB_OFFLINE to reach it, or work locally with --to DIR or "
        "--dry-run."
    ]
    assert FAKE_TOKEN not in offline.stdout + offline.stderr
    # Positive controls: the blocked set holds the heavy libraries, and the blocker does block.
    assert set(HEAVY) <= set(absent_in_the_cards_job())
    blocked = run_blocked([], code=BLOCKER.replace("from synthecho.cli import app", "import datasets"))
    assert blocked.returncode != 0 and "blocked: datasets" in blocked.stderr


# --- card --push against an autospec'd HfApi ----------------------------------------------------------


def published_repo(tmp_path: Path) -> Path:
    """A repository root with one published dataset (manifest with publish.repo_id, card, grid) and one
    that was never published."""
    root = tmp_path / "repo"
    if root.exists():
        return root
    manifest = make_run(tmp_path / "run")
    manifest["publish"] = {"repo_id": "org/tiny", "tag": "v0.1.0", "commit": "a" * 40}
    write_json_atomic(tmp_path / "run" / "manifest.json", manifest)
    card.export_committed(tmp_path / "run", root)
    unpublished = copy.deepcopy(manifest)
    del unpublished["publish"]
    unpublished["dataset"]["name"] = "draft"
    write_json_atomic(root / "manifests" / "draft" / "0.1.0.json", unpublished)
    (root / "cards" / "draft").mkdir(parents=True)
    (root / "cards" / "draft" / "README.md").write_text(card.render_card(unpublished), encoding="utf-8")
    return root


def hub_files(readme: bytes | None, grid: bytes | None) -> list[RepoFile]:
    """What get_paths_info answers: README.md as a plain git blob, the grid as an LFS file."""
    files = []
    if readme is not None:
        files.append(RepoFile(path="README.md", size=len(readme), oid=git_blob_sha1(readme)))
    if grid is not None:
        lfs = {"size": len(grid), "oid": hashlib.sha256(grid).hexdigest(), "pointerSize": 134}  # API payload
        files.append(RepoFile(path="sample_grid.png", size=len(grid), oid="9" * 40, lfs=lfs))
    return files


def fake_api(on_hub: list[RepoFile]):
    api = create_autospec(HfApi, instance=True)
    api.repo_info.return_value = DatasetInfo(
        id="org/tiny", sha=HEAD, private=False, downloads=0, likes=0, tags=[]
    )
    api.get_paths_info.return_value = on_hub
    api.create_commit.return_value = CommitInfo(
        commit_url="https://huggingface.co/datasets/org/tiny/commit/" + "c" * 40,
        commit_message="card",
        commit_description="",
        oid="c" * 40,
    )
    return api


def test_git_blob_sha1_is_gits():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_push_uploads_only_the_changed_card_in_one_commit(tmp_path):
    root = published_repo(tmp_path)
    grid = (root / "cards" / "tiny" / "sample_grid.png").read_bytes()
    api = fake_api(hub_files(b"---\nlicense: old\n---\nan old card\n", grid))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    results = push_cards(root, api=api, echo=lambda line: None)
    assert [c[0] for c in api.method_calls] == ["repo_info", "get_paths_info", "create_commit"]
    assert api.get_paths_info.call_args.kwargs["revision"] == HEAD
    (call,) = api.create_commit.call_args_list
    assert call.args == ("org/tiny",)
    assert call.kwargs["repo_type"] == "dataset" and call.kwargs["parent_commit"] == HEAD
    assert call.kwargs["commit_message"] == "Card of tiny 0.1.0, rendered from manifests/tiny/0.1.0.json"
    (operation,) = call.kwargs["operations"]
    assert operation.path_in_repo == "README.md"
    manifest = read_json(root / "manifests" / "tiny" / "0.1.0.json")
    assert operation.path_or_fileobj == card.render_card(manifest).encode("utf-8")
    assert [r["status"] for r in results] == ["unpublished", "pushed"]
    # No data, no tags, no other repos; the committed files are untouched.
    assert {c[0] for c in api.method_calls} <= {"repo_info", "get_paths_info", "create_commit"}
    assert before == {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_push_sends_card_and_grid_together_when_both_are_missing(tmp_path):
    root = published_repo(tmp_path)
    api = fake_api([])
    push_cards(root, api=api, echo=lambda line: None)
    (call,) = api.create_commit.call_args_list
    assert [op.path_in_repo for op in call.kwargs["operations"]] == ["README.md", "sample_grid.png"]
    assert all(not op.path_in_repo.startswith("data/") for op in call.kwargs["operations"])


def test_push_makes_no_commit_when_the_hub_card_is_current(tmp_path):
    root = published_repo(tmp_path)
    manifest = read_json(root / "manifests" / "tiny" / "0.1.0.json")
    readme = card.render_card(manifest).encode("utf-8")
    grid = (root / "cards" / "tiny" / "sample_grid.png").read_bytes()
    api = fake_api(hub_files(readme, grid))
    results = push_cards(root, api=api, echo=lambda line: None)
    assert not api.create_commit.called and results[-1]["status"] == "current"
    # Positive control: one changed byte in the grid is seen.
    api = fake_api(hub_files(readme, grid + b"\0"))
    push_cards(root, api=api, echo=lambda line: None)
    assert [op.path_in_repo for op in api.create_commit.call_args.kwargs["operations"]] == ["sample_grid.png"]


def test_push_dry_run_prints_the_calls_and_calls_nothing(tmp_path):
    root = published_repo(tmp_path)
    api = fake_api([])
    printed = []
    results = push_cards(root, api=api, dry_run=True, echo=printed.append)
    assert api.method_calls == []
    assert any("create_commit('org/tiny'" in line for line in printed)
    assert results[-1]["files"] == ["README.md", "sample_grid.png"]


def test_push_cli_with_a_rejected_token_is_one_error_line(tmp_path, monkeypatch):
    import huggingface_hub
    from hub_fixtures import http_error

    root = published_repo(tmp_path)
    api = fake_api([])
    api.repo_info.side_effect = http_error(401, "Invalid credentials in Authorization header")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    result = CliRunner().invoke(app, ["card", "--push", "--repo-root", str(root)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: reading dataset repo org/tiny: the Hub rejected the credentials (HTTP 401): Invalid "
        "credentials in Authorization header: set HF_TOKEN to a valid token with write access "
        "(or run `hf auth login`); an expired or revoked token must be replaced."
    ]
    assert FAKE_TOKEN not in result.output and not api.create_commit.called


def test_committed_cards_on_this_branch_are_what_push_would_send():
    """`card --push` sends exactly the committed card: check and push agree."""
    for name, path in card.newest_manifests(REPO).items():
        committed = (REPO / "cards" / name / "README.md").read_bytes()
        assert card.render_card(json.loads(path.read_text())).encode("utf-8") == committed
