"""Stage `publish`: the corpus as its Hub dataset repository, in a local folder and/or on the Hub.

The layout (`synthecho.publish.layout_repo`) is identical locally and on the Hub. `--repo-id` pushes that
folder with `HfApi`: create_repo -> upload_folder (one commit, stale data files deleted in the same
commit) -> create_tag v{version} on that commit, then records {repo_id, tag, commit, url} in the
manifest's "publish" section. The token comes from HF_TOKEN or the login cache (HfApi finds it);
synthecho never reads or stores it. Every Hub call goes through `synthecho.hubcalls` (retries on
transient failures, then one clear error); the manifest records the commit only once it is tagged.
`--with-generator` first pushes the generator folder with a model card as `<repo_id>-generator`, and the
two cards link to each other; with `--to DIR` it also lays that model repo out as `DIR-generator` beside
the dataset folder (what `synthecho regenerate` loads).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from synthecho.card import export_committed, render_card
from synthecho.errors import SynthechoError
from synthecho.hubcalls import hub_call
from synthecho.layout import hub
from synthecho.manifest import dataset_section
from synthecho.publish import (
    data_files,
    generator_files,
    generator_folder,
    generator_repo_id,
    layout_generator,
    layout_repo,
    render_generator_card,
    stage_generator,
)


def _existing_tag(api, repo_id: str, repo_type: str, tag: str):
    """The GitRefInfo of `tag` in the repo, or None (a repo that does not exist yet has no tags)."""
    refs = hub_call(
        f"reading the tags of {repo_type} repo {repo_id}",
        api.list_repo_refs,
        repo_id,
        repo_type=repo_type,
        repo=repo_id,
    )
    return next((ref for ref in getattr(refs, "tags", None) or [] if ref.name == tag), None)


def _open_repo(api, repo_id: str, repo_type: str, private: bool, tag: str):
    """create_repo (exist_ok) -> the repo's GitRefInfo of `tag`, or None when the version is new."""
    hub_call(
        f"creating {repo_type} repo {repo_id}",
        api.create_repo,
        repo_id,
        repo_type=repo_type,
        private=private,
        exist_ok=True,
        repo=repo_id,
    )
    return _existing_tag(api, repo_id, repo_type, tag)


def _upload_and_tag(
    api, repo_id: str, repo_type: str, folder: Path, version: str, delete_patterns=None
) -> str:
    """upload_folder (one commit) -> create_tag v{version} on that commit; returns the commit oid.

    Every call goes through `hub_call` (retries, then one clear error). A failure before the tag leaves at
    most an untagged commit, which the next publish replaces; the manifest is written only after this.
    """
    tag = f"v{version}"
    commit = hub_call(
        f"uploading to {repo_type} repo {repo_id}",
        api.upload_folder,
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=str(folder),
        commit_message=f"synthecho {version}",
        delete_patterns=delete_patterns,
        repo=repo_id,
    )
    oid = getattr(commit, "oid", None)
    if not oid:
        raise SynthechoError(f"upload to {repo_id} returned no commit id; nothing was tagged")
    hub_call(
        f"tagging {repo_type} repo {repo_id} {tag}",
        api.create_tag,
        repo_id,
        tag=tag,
        revision=oid,
        repo_type=repo_type,
        repo=repo_id,
        conflict=_tag_exists(repo_type, repo_id, tag),
    )
    return oid


def _tag_exists(repo_type: str, repo_id: str, tag: str) -> str:
    return (
        f"{repo_type} repo {repo_id} already has tag {tag}: bump the recipe key `version` to publish a "
        f"new version (published versions are never overwritten)."
    )


def _push_all(api, repo_id: str, model_repo: str | None, folder: Path, staging, version: str, private: bool):
    """The generator's model repo, then the dataset; returns {generator_commit?, commit}.

    The dataset's tag decides whether this version exists, so it is checked before anything goes up.
    A generator tag without its dataset tag is what a publish that stopped in between leaves: it is
    reused, so rerunning finishes the job instead of refusing.
    """
    tag = f"v{version}"
    if _open_repo(api, repo_id, "dataset", private, tag) is not None:
        raise SynthechoError(_tag_exists("dataset", repo_id, tag))
    commits = {}
    if model_repo:
        tagged = _open_repo(api, model_repo, "model", private, tag)
        if tagged is not None:
            print(
                f"publish: model repo {model_repo} already has {tag} (an earlier publish stopped before the "
                f"dataset): reusing its commit {tagged.target_commit[:12]}",
                file=sys.stderr,
            )
            commits["generator_commit"] = tagged.target_commit
        else:
            commits["generator_commit"] = _upload_and_tag(api, model_repo, "model", staging(), version)
    # Stale shards of an earlier version (another shard count) must not match data/train-* any more.
    commits["commit"] = _upload_and_tag(
        api, repo_id, "dataset", folder, version, delete_patterns=["data/*", "prompts/*"]
    )
    return commits


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
            "cc-by-nc-sa-4.0 — the synthetic data derives from CAMUS annotations, distributed for "
            "research use)."
        )
    if to is None and repo_id is None:
        raise SynthechoError("say where to publish: --to DIR and/or --repo-id ORG/NAME")
    if with_generator:
        generator_files(run_dir)  # a clear error before anything is written when there is no generator
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
            if with_generator:
                calls.append(f"layout_generator -> {generator_folder(to)}")
        if with_generator:
            gen_files = generator_files(run_dir)
            where = model_repo or generator_folder(to).name
            listing += [
                (f"{where}: {p.relative_to(run_dir / 'generator').as_posix()}", p.stat().st_size)
                for p in gen_files
            ]
            listing.append((f"{where}: README.md", None))
        if repo_id:
            repos = [(repo_id, "dataset")] + ([(model_repo, "model")] if model_repo else [])
            for repo, kind in repos:  # both exist and lack the tag before anything is uploaded
                calls += [
                    f"create_repo({repo!r}, repo_type='{kind}', private={private}, exist_ok=True)",
                    f"list_repo_refs({repo!r}, repo_type='{kind}')  # refuse if {tag} exists",
                ]
            for repo, kind in reversed(repos):  # the generator first: the card never links to nothing
                calls += [
                    (
                        f"upload_folder(repo_id={repo!r}, repo_type='{kind}', "
                        f"commit_message='synthecho {version}')"
                    ),
                    f"create_tag({repo!r}, tag={tag!r}, revision=<commit>, repo_type='{kind}')",
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
        if with_generator and to is not None:  # the model repo beside the dataset, as on the Hub
            local_model = generator_folder(to)
            card = render_generator_card(
                manifest, repo_id or f"ORG/{recipe.name}", model_repo or local_model.name
            )
            result["generator_folder"] = str(local_model)
            result["generator_files"] = len(layout_generator(run_dir, local_model, card))
        if not repo_id:
            return result

        # 5. Hub: generator first, so the dataset card never links to a model repo that failed to upload.
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        publish_section = dict(manifest["publish"])

        def staging() -> Path:  # the model repo folder, staged only when it is uploaded
            model_folder = Path(scratch) / "generator"
            stage_generator(run_dir, model_folder, render_generator_card(manifest, repo_id, model_repo))
            return model_folder

        publish_section.update(_push_all(api, repo_id, model_repo, folder, staging, version, private))

    # 6. Record the published commit (and refresh the committed copies when asked).
    update_manifest(run_dir, dataset=manifest["dataset"], publish=publish_section)
    if repo_root is not None:
        export_committed(run_dir, Path(repo_root))
    result.update(publish_section)
    return result
