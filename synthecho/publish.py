"""The published layout: a run laid out as its exact Hub dataset repository, and the generator's model repo.

Layout (`synthecho.layout.hub`), identical locally and on the Hub:

    README.md                                   dataset card (synthecho.card.render_card)
    data/{split}-{i:05d}-of-{n:05d}.parquet      the filter's published shards, unchanged
    prompts/prompts-00000-of-00001.parquet      `prompts` config: every P0-P7 prompt of every row
    regeneration/plan-00000-of-00001.parquet    every planned row's sampler inputs (synthecho.regeneration)
    manifest.json                               the run manifest, with the publish target filled in

and the generator's model repo (`<repo>-generator` on the Hub, `<folder>-generator` beside a local
layout): the weights a sampler loads and a model card. The stage `synthecho.stages.publish` writes them
into folders and/or pushes them to the Hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from synthecho.card import render_card
from synthecho.card_context import generator_values, source_values
from synthecho.errors import SynthechoError
from synthecho.io import sha256_file, write_json_atomic
from synthecho.layout import RunLayout, hub
from synthecho.manifest import article_rule, manifest_get, run_grid
from synthecho.prompts import prompts_table
from synthecho.templating import render

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
    on_disk = {p.relative_to(run_dir).as_posix() for p in RunLayout.of(run_dir).data.glob("*.parquet")}
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


def _swap_into_place(staging: Path, out_dir: Path, marker: str = hub.MANIFEST) -> None:
    """Replace `out_dir` with the finished `staging` folder (never leaves a half-written layout).

    An existing `out_dir` is replaced only when it is empty or holds `marker` (an earlier layout).
    """
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / marker).is_file():
            shutil.rmtree(staging)
            raise SynthechoError(
                f"{out_dir} exists and is not a synthecho publish folder (no {marker}): choose an empty "
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
            _link_or_copy(grid, staging / hub.SAMPLE_GRID)
        # 2. Data shards, unchanged (their sha256 is in the manifest and the card).
        for path in files:
            _link_or_copy(path, staging / "data" / path.name)
        # 3. The prompts config.
        import pyarrow.parquet as pq

        prompts_path = staging / hub.PROMPTS_FILE
        prompts_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            prompts_table(files, article_rule(manifest)), prompts_path, row_group_size=hub.PROMPT_ROW_GROUP
        )
        # 4. What regenerating any row needs. Runs from before the plan hash was recorded have none.
        if manifest_get(manifest, "generation.plan_sha256"):
            from synthecho import regeneration

            published = {
                i for path in files for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()
            }
            regeneration.write(
                regeneration.table(run_dir, manifest, published), staging / hub.REGENERATION_FILE
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
    return f"{repo_id}{hub.GENERATOR_SUFFIX}"


def generator_folder(out_dir: Path) -> Path:
    """Where a local layout's model repo goes: beside the dataset folder, as on the Hub."""
    out_dir = Path(out_dir).absolute()
    return out_dir.with_name(out_dir.name + hub.GENERATOR_SUFFIX)


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
    folder = RunLayout.of(run_dir).generator
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
    folder = RunLayout.of(run_dir).generator
    for path in generator_files(run_dir):
        _link_or_copy(path, staging / path.relative_to(folder))
    (staging / "README.md").write_text(card, encoding="utf-8")
    return sorted(p for p in staging.rglob("*") if p.is_file())


def layout_generator(run_dir: Path, out_dir: Path, card: str) -> list[Path]:
    """Write the generator's model repo into `out_dir` (staged beside it, then renamed into place)."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        stage_generator(run_dir, staging, card)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # The descriptor every trained generator folder has (generators.base.DESCRIPTOR_FILE).
    _swap_into_place(staging, out_dir, marker="synthecho_generator.json")
    return sorted(p for p in out_dir.rglob("*") if p.is_file())
