"""Stage `publish`: the corpus as its Hub dataset repository, in a local folder and/or on the Hub.

The layout (`synthecho.publish.layout_repo`) is identical locally and on the Hub. `--repo-id` pushes that
folder with `HfApi`: create_repo -> upload_folder (one commit, stale data files deleted in the same
commit) -> create_tag v{version} on that commit, then records {repo_id, tag, commit, url} in the
manifest's "publish" section. The token comes from HF_TOKEN or the login cache (HfApi finds it);
synthecho never reads or stores it. `--with-generator` first pushes the generator folder with a model
card as `<repo_id>-generator`, and the two cards link to each other.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from synthecho.card import export_committed, render_card
from synthecho.errors import SynthechoError
from synthecho.layout import hub
from synthecho.manifest import dataset_section
from synthecho.publish import (
    data_files,
    generator_files,
    generator_repo_id,
    layout_repo,
    render_generator_card,
    stage_generator,
)


def _push(
    api, repo_id: str, repo_type: str, folder: Path, version: str, private: bool, delete_patterns=None
) -> str:
    """create_repo -> upload_folder (one commit) -> create_tag v{version} on that commit; returns the oid."""
    tag = f"v{version}"
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    # A version tag is immutable: refuse before uploading anything rather than fail after the commit.
    existing = {ref.name for ref in getattr(api.list_repo_refs(repo_id, repo_type=repo_type), "tags", [])}
    if tag in existing:
        raise SynthechoError(
            f"{repo_type} repo {repo_id} already has tag {tag}: bump the recipe key `version` to publish a "
            f"new version (published versions are never overwritten)."
        )
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=str(folder),
        commit_message=f"synthecho {version}",
        delete_patterns=delete_patterns,
    )
    oid = getattr(commit, "oid", None)
    if not oid:
        raise SynthechoError(f"upload to {repo_id} returned no commit id; nothing was tagged")
    api.create_tag(repo_id, tag=tag, revision=oid, repo_type=repo_type)
    return oid


def _describe(files: list[tuple[str, int | None]], calls: list[str]) -> str:
    lines = ["would upload:"]
    for name, size in files:
        lines.append(f"  {name}  ({'built at publish time' if size is None else f'{size:,} bytes'})")
    lines.append("would call:")
    lines += [f"  {call}" for call in calls]
    return "\n".join(lines)


def run(
    recipe,
    run_dir: Path,
    *,
    force: bool = False,
    progress: bool = True,
    to: Path | None = None,
    repo_id: str | None = None,
    private: bool = False,
    with_generator: bool = False,
    dry_run: bool = False,
    api=None,
    repo_root: Path | None = None,
) -> dict:
    """Lay the corpus out in `to` and/or push it to the Hub dataset repo `repo_id`.

    Refuses without the recipe key `license`. `dry_run` prints the files and Hub calls and changes
    nothing. `api` is an `HfApi` (tests pass an autospec'd one); by default `HfApi()`, which takes the token
    from HF_TOKEN or the login cache. `repo_root`: re-export the committed manifest and card there after
    a push (the push adds the commit to the manifest).
    """
    from synthecho.manifest import read_manifest, update_manifest

    run_dir = Path(run_dir)
    # 1. Preconditions: a licence, a target, a built run.
    if not recipe.license:
        raise SynthechoError(
            "publish refuses a corpus without a licence: set the recipe key `license` (e.g. license: "
            "cc-by-nc-sa-4.0 — the synthetic data derives from CAMUS annotations, distributed for research use)."
        )
    if to is None and repo_id is None:
        raise SynthechoError("say where to publish: --to DIR and/or --repo-id ORG/NAME")
    if with_generator and repo_id is None:
        raise SynthechoError("--with-generator pushes a model repo: it needs --repo-id ORG/NAME")
    manifest = read_manifest(run_dir)
    if not manifest:
        raise SynthechoError(
            f"{run_dir / 'manifest.json'} is missing: run `synthecho build --recipe ...` first."
        )
    version = recipe.version
    tag = f"v{version}"

    # 2. What goes out: the manifest with the recipe's dataset section and the publish target (no commit:
    # it is only known after the upload, and the uploaded card must equal the one rendered later).
    manifest = {**manifest, "dataset": dataset_section(recipe)}
    model_repo = generator_repo_id(repo_id) if with_generator else None
    if repo_id:
        target = {"repo_id": repo_id, "tag": tag, "url": f"https://huggingface.co/datasets/{repo_id}"}
        if model_repo:
            target["generator_repo_id"] = model_repo
        manifest["publish"] = target
    files = data_files(run_dir, manifest)

    # 3. Dry run: say what would happen, touch nothing.
    if dry_run:
        manifest_text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
        listing = [("README.md", len(render_card(manifest).encode("utf-8")))]
        listing.append(("manifest.json", len(manifest_text.encode("utf-8"))))
        listing += [(f"data/{p.name}", p.stat().st_size) for p in files] + [(hub.PROMPTS_FILE, None)]
        calls = []
        if to is not None:
            calls.append(f"layout_repo -> {to}")
        if model_repo:
            gen_files = generator_files(run_dir)
            listing += [
                (f"{model_repo}: {p.relative_to(run_dir / 'generator').as_posix()}", p.stat().st_size)
                for p in gen_files
            ]
            listing.append((f"{model_repo}: README.md", None))
            calls += [
                f"create_repo({model_repo!r}, repo_type='model', private={private}, exist_ok=True)",
                f"upload_folder(repo_id={model_repo!r}, repo_type='model', commit_message='synthecho {version}')",
                f"create_tag({model_repo!r}, tag={tag!r}, revision=<commit>, repo_type='model')",
            ]
        if repo_id:
            calls += [
                f"create_repo({repo_id!r}, repo_type='dataset', private={private}, exist_ok=True)",
                f"upload_folder(repo_id={repo_id!r}, repo_type='dataset', commit_message='synthecho {version}')",
                f"create_tag({repo_id!r}, tag={tag!r}, revision=<commit>, repo_type='dataset')",
            ]
        plan = _describe(listing, calls)
        print(plan)
        sizes = [size for _, size in listing if size is not None]
        return {"dry_run": True, "files": len(listing), "known_bytes": sum(sizes), "calls": len(calls)}

    # 4. Local layout (into `to`, or a temporary folder that only lives for the upload).
    result: dict = {"dry_run": False}
    with tempfile.TemporaryDirectory(prefix="synthecho-publish-") as scratch:
        folder = Path(to) if to is not None else Path(scratch) / "repo"
        written = layout_repo(run_dir, folder, manifest=manifest)
        result.update({"folder": str(folder) if to is not None else None, "files": len(written)})
        if not repo_id:
            return result

        # 5. Hub: generator first, so the dataset card never links to a model repo that failed to upload.
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        publish_section = dict(manifest["publish"])
        if model_repo:
            staging = Path(scratch) / "generator"
            stage_generator(run_dir, staging, render_generator_card(manifest, repo_id, model_repo))
            publish_section["generator_commit"] = _push(api, model_repo, "model", staging, version, private)
        # Stale shards of an earlier version (another shard count) must not match data/train-* any more.
        publish_section["commit"] = _push(
            api, repo_id, "dataset", folder, version, private, delete_patterns=["data/*", "prompts/*"]
        )

    # 6. Record the published commit (and refresh the committed copies when asked).
    update_manifest(run_dir, dataset=manifest["dataset"], publish=publish_section)
    if repo_root is not None:
        export_committed(run_dir, Path(repo_root))
    result.update(publish_section)
    return result
