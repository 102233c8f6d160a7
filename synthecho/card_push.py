"""`synthecho card --push`: bring every published dataset's card on the Hub in step with its manifest.

For each dataset in `manifests/` whose newest manifest records a Hub repo (`publish.repo_id`, written by
`synthecho publish`), the card is rendered from that manifest alone (no run, no torch, no datasets) and
compared with the Hub's `main` by git blob hash (README.md) or LFS sha256 (sample_grid.png), so nothing is
downloaded. Only what differs is uploaded, in one commit per dataset whose message names the manifest
version; the commit is made on the revision that was compared (`parent_commit`), so a concurrent change
makes the push fail instead of being overwritten. Data files, the manifest and tags are never touched:
the version tag keeps pointing at the published data; `main` carries the current card.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from synthecho.card import newest_manifests, render_card
from synthecho.hubcalls import hub_call
from synthecho.io import read_json
from synthecho.layout import hub
from synthecho.manifest import manifest_get


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub's `blob_id`) gives a file's bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _same(remote, data: bytes) -> bool:
    """Does the Hub file `remote` (a RepoFile, or None when absent) hold exactly `data`?"""
    if remote is None:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        return sha256 == hashlib.sha256(data).hexdigest()
    return getattr(remote, "blob_id", None) == git_blob_sha1(data)


def card_files(repo_root: Path, name: str, manifest: dict) -> dict[str, bytes]:
    """What `card --push` uploads for one dataset: the card rendered from the manifest (+ its grid)."""
    files = {hub.CARD: render_card(manifest).encode("utf-8")}
    grid = Path(repo_root) / "cards" / name / hub.SAMPLE_GRID
    if grid.is_file():
        files[hub.SAMPLE_GRID] = grid.read_bytes()
    return files


def push_cards(
    repo_root: Path, *, api=None, dry_run: bool = False, echo: Callable[[str], None] = print
) -> list[dict]:
    """Push every stale published card; one result per dataset ({name, repo_id, status, files, commit})."""
    repo_root = Path(repo_root)
    results = []
    for name, manifest_path in newest_manifests(repo_root).items():
        if manifest_path is None:
            continue  # a card without a manifest: `card --check` reports it
        manifest = read_json(manifest_path)
        repo_id = manifest_get(manifest, "publish.repo_id")
        version = manifest_get(manifest, "dataset.version", manifest_path.stem)
        relative = manifest_path.relative_to(repo_root).as_posix()
        result = {"name": name, "repo_id": repo_id, "files": [], "commit": None}
        if not repo_id:
            echo(f"{name}: not published ({relative} records no publish.repo_id), skipped")
            results.append({**result, "status": "unpublished"})
            continue
        files = card_files(repo_root, name, manifest)
        message = f"Card of {name} {version}, rendered from {relative}"
        if dry_run:
            echo(f"{name} -> datasets/{repo_id}:")
            echo(f"  repo_info({repo_id!r}, repo_type='dataset')")
            echo(f"  get_paths_info({repo_id!r}, {sorted(files)!r}, repo_type='dataset', revision=<main>)")
            echo(
                f"  create_commit({repo_id!r}, operations=[add {', '.join(sorted(files))}] (only files that "
                f"differ), commit_message={message!r}, repo_type='dataset', parent_commit=<main>)"
            )
            results.append({**result, "status": "dry-run", "files": sorted(files)})
            continue
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()  # the token comes from HF_TOKEN or the login cache; synthecho never sees it
        info = hub_call(
            f"reading dataset repo {repo_id}", api.repo_info, repo_id, repo_type="dataset", repo=repo_id
        )
        remote = hub_call(
            f"reading the card of {repo_id}",
            api.get_paths_info,
            repo_id,
            sorted(files),
            repo_type="dataset",
            revision=info.sha,
            repo=repo_id,
        )
        on_hub = {getattr(entry, "path", None): entry for entry in remote}
        changed = [path for path, data in sorted(files.items()) if not _same(on_hub.get(path), data)]
        if not changed:
            echo(f"{name}: the card on {repo_id} is current, no commit")
            results.append({**result, "status": "current"})
            continue
        from huggingface_hub import CommitOperationAdd

        commit = hub_call(
            f"uploading the card to {repo_id}",
            api.create_commit,
            repo_id,
            operations=[CommitOperationAdd(path_in_repo=p, path_or_fileobj=files[p]) for p in changed],
            commit_message=message,
            repo_type="dataset",
            parent_commit=info.sha,
            repo=repo_id,
            conflict=(
                f"{repo_id} got a new commit while the card was compared: rerun `synthecho card --push`."
            ),
        )
        echo(f"{name}: pushed {', '.join(changed)} to {repo_id} ({getattr(commit, 'oid', '?')[:12]})")
        results.append(
            {**result, "status": "pushed", "files": changed, "commit": getattr(commit, "oid", None)}
        )
    return results
