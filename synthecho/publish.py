"""Stage `publish`: lay the corpus out as the exact Hub dataset repo, in a folder or on the Hub.

Layout, identical locally and on the Hub:

    README.md                                   dataset card (synthecho.card.render_card)
    data/{split}-{i:05d}-of-{n:05d}.parquet      the filter's published shards, unchanged
    prompts/prompts-00000-of-00001.parquet      `prompts` config: every P0-P7 prompt of every row
    manifest.json                               the run manifest, with the publish target filled in

`--repo-id` pushes that folder with `HfApi`: create_repo -> upload_folder (one commit, stale data files
deleted in the same commit) -> create_tag v{version} on that commit, then records {repo_id, tag, commit,
url} in the manifest's "publish" section. The token comes from HF_TOKEN or the login cache (HfApi finds
it); synthecho never reads or stores it. `--with-generator` first pushes the generator folder with a
model card as `<repo_id>-generator`, and the two cards link to each other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from synthecho.card import PROMPTS_FILE, export_committed, render_card
from synthecho.card_context import SAMPLE_GRID, generator_values, source_values
from synthecho.errors import SynthechoError
from synthecho.io import sha256_file, write_json_atomic
from synthecho.manifest import article_rule, dataset_section, manifest_get, run_grid
from synthecho.prompts import prompts_table
from synthecho.templating import render

PROMPT_ROW_GROUP = 4800  # 100 corpus rows x 48 prompts: the same rows per group as the data shards


# ----------------------------------------------------------------------------------------------------
# The local layout
# ----------------------------------------------------------------------------------------------------


def data_files(run_dir: Path, manifest: dict) -> list[Path]:
    """The run's published shards, checked against the manifest (names, sizes, sha256)."""
    run_dir = Path(run_dir)
    recorded = {shard["path"]: shard for shard in manifest_get(manifest, "shards.data", [])}
    if not recorded:
        raise SynthechoError(
            f"{run_dir / 'manifest.json'} lists no published shards (shards.data): run the filter stage "
            f"(`synthecho filter --recipe ...`) before publishing."
        )
    on_disk = {p.relative_to(run_dir).as_posix() for p in (run_dir / "data").glob("*.parquet")}
    if on_disk != set(recorded):
        raise SynthechoError(
            f"{run_dir / 'data'} does not hold the shards the manifest lists (missing: "
            f"{sorted(set(recorded) - on_disk)}, unlisted: {sorted(on_disk - set(recorded))}): rerun "
            f"`synthecho filter --recipe ... --force`."
        )
    files = []
    for relative, shard in sorted(recorded.items()):
        path = run_dir / relative
        if path.stat().st_size != shard.get("bytes") or sha256_file(path) != shard.get("sha256"):
            raise SynthechoError(
                f"{path} differs from its manifest entry (size/sha256): it changed after filtering; rerun "
                f"`synthecho filter --recipe ... --force`."
            )
        files.append(path)
    return files


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link when on the same filesystem (no extra disk for big shards), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` with the finished `staging` folder (never leaves a half-written layout)."""
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / "manifest.json").is_file():
            shutil.rmtree(staging)
            raise SynthechoError(
                f"{out_dir} exists and is not a synthecho publish folder (no manifest.json): choose an empty "
                f"or new folder for --to."
            )
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(staging, out_dir)


def layout_repo(run_dir: Path, out_dir: Path, *, manifest: dict | None = None) -> list[Path]:
    """Write the Hub repo layout of a run into `out_dir` (built beside it, then renamed into place).

    `manifest` defaults to the run's; `publish` passes one with the publish target filled in, so the card
    and manifest.json in the folder are exactly what goes to the Hub. Returns the files written.
    """
    from synthecho.manifest import read_manifest

    run_dir, out_dir = Path(run_dir), Path(out_dir).absolute()
    manifest = manifest if manifest is not None else read_manifest(run_dir)
    if not manifest:
        raise SynthechoError(f"{run_dir / 'manifest.json'} is missing: build the run before publishing.")
    files = data_files(run_dir, manifest)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        # 1. Card and manifest.
        (staging / "README.md").write_text(render_card(manifest), encoding="utf-8")
        write_json_atomic(staging / "manifest.json", manifest)
        grid = run_grid(run_dir)
        if grid.is_file():  # the card shows it
            _link_or_copy(grid, staging / SAMPLE_GRID)
        # 2. Data shards, unchanged (their sha256 is in the manifest and the card).
        for path in files:
            _link_or_copy(path, staging / "data" / path.name)
        # 3. The prompts config.
        import pyarrow.parquet as pq

        prompts_path = staging / PROMPTS_FILE
        prompts_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            prompts_table(files, article_rule(manifest)), prompts_path, row_group_size=PROMPT_ROW_GROUP
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_into_place(staging, out_dir)
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------
# The generator model repo
# ----------------------------------------------------------------------------------------------------


def generator_repo_id(repo_id: str) -> str:
    return f"{repo_id}-generator"


def render_generator_card(manifest: dict, dataset_repo_id: str, model_repo_id: str) -> str:
    """Model card of the generator repo, linking back to the dataset."""
    from huggingface_hub import ModelCard, ModelCardData

    base_model = manifest_get(manifest, "generator.base_model")
    data = ModelCardData(
        license=manifest_get(manifest, "dataset.license"),
        datasets=[dataset_repo_id],
        base_model=base_model or None,
        tags=["echocardiography", "ultrasound", "medical", "synthetic", "diffusion", "synthecho"],
    )
    version = manifest_get(manifest, "dataset.version", "0.0.0")
    text = render(
        "model_card.md",
        card_data=data.to_yaml(),
        pretty_name=manifest_get(manifest, "dataset.pretty_name")
        or manifest_get(manifest, "dataset.name", "synthecho"),
        dataset_repo_id=dataset_repo_id,
        model_repo_id=model_repo_id,
        version=version,
        revision=f"v{version}",
        sha256=manifest_get(manifest, "generator.sha256", "n/a"),
        generator=generator_values(manifest),
        kind=manifest_get(manifest, "generator.kind", "sdm"),
        sampler=manifest_get(manifest, "generation.sampler", "dpmsolver++"),
        steps=manifest_get(manifest, "generation.steps", 20),
        guidance_scale=manifest_get(manifest, "generation.guidance_scale", 1.0),
        source=source_values(manifest),
    )
    ModelCard(text)  # validates the YAML header as the Hub parses it
    return text


def generator_files(run_dir: Path) -> list[Path]:
    """Files of the generator folder that a sampler loads (resume checkpoints and hidden files excluded)."""
    folder = Path(run_dir) / "generator"
    if not folder.is_dir():
        raise SynthechoError(
            f"{folder} does not exist: run `synthecho train --recipe ...` before --with-generator."
        )
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and "checkpoints" not in p.relative_to(folder).parts
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def stage_generator(run_dir: Path, staging: Path, card: str) -> list[Path]:
    folder = Path(run_dir) / "generator"
    for path in generator_files(run_dir):
        _link_or_copy(path, staging / path.relative_to(folder))
    (staging / "README.md").write_text(card, encoding="utf-8")
    return sorted(p for p in staging.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------
# publish
# ----------------------------------------------------------------------------------------------------


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


def publish(
    recipe,
    run_dir: Path,
    *,
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
        listing += [(f"data/{p.name}", p.stat().st_size) for p in files] + [(PROMPTS_FILE, None)]
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
