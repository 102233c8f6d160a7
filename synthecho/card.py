"""The dataset card (README.md with a Hub YAML header), rendered from the manifest alone.

`render_card(manifest)` is a pure function: the same manifest gives a byte-identical card, so CI can
re-render every committed card (`cards/<dataset>/README.md`) from its committed manifest
(`manifests/<dataset>/<version>.json`) and fail when one is stale (`check_cards`). Missing optional
sections (downstream results, Inception metrics, a run that has not been filtered yet) render as an
explicit sentence, never as an error.

The YAML header is built with huggingface_hub's `DatasetCardData` and `synthecho.card_header`, which
writes `configs:` and `dataset_info.features` exactly as the `datasets` library's own serialisers do
(`MetadataConfigs`, `DatasetInfosDict`; a test compares them) without importing it; the features are the
schema the manifest records (`synthecho.schema`), which is the one written into every Parquet file's
metadata. The body is the Jinja2 template
`synthecho/templates/dataset_card.md`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from synthecho.card_context import card_context, mask_fidelity_values
from synthecho.errors import SynthechoError
from synthecho.io import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from synthecho.layout import hub
from synthecho.manifest import (
    PUBLISHED_SPLITS,
    manifest_get,
    published_bytes,
    published_rows,
    require_manifest,
    run_grid,
)
from synthecho.prompts import PROMPTS_PER_ROW
from synthecho.templating import macro, render

TASK_CATEGORIES = ["image-segmentation", "text-to-image"]
TAGS = ["echocardiography", "ultrasound", "medical", "synthetic", "cardiac", "diffusion"]
NO_LICENSE = "unknown"  # Hub licence id used until the recipe sets `license` (publish refuses it)


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket for a number of rows."""
    buckets = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    buckets += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for limit, label in buckets:
        if rows < limit:
            return label
    return "n>1B"


# ----------------------------------------------------------------------------------------------------
# YAML header
# ----------------------------------------------------------------------------------------------------


def _source_dataset(manifest: dict) -> str:
    kind = manifest_get(manifest, "source.kind", manifest_get(manifest, "recipe.source.kind", "camus"))
    return "synthecho phantom (simulated)" if kind == "phantom" else "CAMUS"


def card_data(manifest: dict):
    """The `DatasetCardData` of the YAML header: licence, tasks, configs and dataset_info.

    Built without `datasets` (synthecho.card_header), so `card --check` and `card --push` run in a CI
    job that installs neither torch nor datasets; the YAML is what `datasets`' own serialisers write.
    """
    from huggingface_hub import DatasetCardData

    from synthecho.card_header import dataset_info_yaml, recorded_feature_dict, recorded_prompt_feature_dict

    rows = published_rows(manifest)
    sizes = published_bytes(manifest)
    splits = [split for split in PUBLISHED_SPLITS if rows[split] > 0]
    data = DatasetCardData(
        license=manifest_get(manifest, "dataset.license") or NO_LICENSE,
        pretty_name=manifest_get(manifest, "dataset.pretty_name")
        or manifest_get(manifest, "dataset.name", "synthecho corpus"),
        task_categories=TASK_CATEGORIES,
        size_categories=[size_category(sum(rows.values()))],
        source_datasets=[_source_dataset(manifest)],
        tags=TAGS,
    )
    # A config may only list splits that have files: a pattern matching nothing fails load_dataset.
    configs = {"prompts": {"data_files": [{"split": "train", "path": hub.PROMPTS_PATTERN}]}}
    if splits:
        configs["default"] = {
            "data_files": [{"split": s, "path": hub.DATA_PATTERN.format(split=s)} for s in splits]
        }
    data["configs"] = [{"config_name": name, **config} for name, config in sorted(configs.items())]

    # num_bytes is the Parquet size (image columns are stored uncompressed, so close to the Arrow size);
    # num_examples is exact and load_dataset checks it against the files.
    # The prompts config is built by publish; the filter stage measured its Arrow size (0 if unknown).
    prompt_bytes = int(manifest_get(manifest, "shards.prompts.arrow_bytes", 0) or 0)
    prompt_rows = sum(rows.values()) * PROMPTS_PER_ROW
    infos = {
        "prompts": {
            "features": recorded_prompt_feature_dict(manifest),
            "splits": [{"name": "train", "num_bytes": prompt_bytes, "num_examples": prompt_rows}],
        }
    }
    if splits:
        total = sum(sizes.values())
        infos["default"] = {
            "features": recorded_feature_dict(manifest),
            "splits": [{"name": s, "num_bytes": sizes[s], "num_examples": rows[s]} for s in splits],
            "download_size": total,
            "dataset_size": total,
        }
    data["dataset_info"] = dataset_info_yaml(infos)
    return data


# ----------------------------------------------------------------------------------------------------
# Rendering, the stage, committed copies and the CI check
# ----------------------------------------------------------------------------------------------------


def render_card(manifest: dict) -> str:
    """The dataset card (README.md text) of a manifest; the same manifest gives the same bytes.

    A comparison manifest (`synthecho compare`) is no dataset: its card is the comparison's table."""
    from huggingface_hub import DatasetCard

    from synthecho.comparison import COMPARISON_KIND, render_comparison

    if manifest.get("kind") == COMPARISON_KIND:
        return render_comparison(manifest)

    data = card_data(manifest)
    text = render("dataset_card.md", card_data=data.to_yaml(), **card_context(manifest))
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"  # optional sections leave blank runs
    DatasetCard(text)  # parses the YAML header exactly as the Hub does; raises when it is malformed
    return text


def mask_fidelity_sentence(fidelity: dict | None) -> str:
    """The filter's `mask_fidelity` metric as a sentence (the card and reports/quality.md say the same)."""
    return macro("common.md", "mask_fidelity")(mask_fidelity_values(fidelity))


# Absolute paths are machine-specific: the committed manifest must compare across machines.
_ABSOLUTE_PATH = re.compile(r"^(?:/|~|[A-Za-z]:[\\/])\S*$")


def portable_manifest(manifest: Any, roots: tuple[Path, ...] = ()) -> Any:
    """A copy with absolute paths made relative to one of `roots`, or reduced to `<local>/<name>`."""
    if isinstance(manifest, dict):
        return {key: portable_manifest(value, roots) for key, value in manifest.items()}
    if isinstance(manifest, list):
        return [portable_manifest(value, roots) for value in manifest]
    if isinstance(manifest, str) and _ABSOLUTE_PATH.match(manifest):
        path = Path(manifest).expanduser()
        for root in roots:
            try:
                return path.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                continue
        return f"<local>/{path.name}"
    return manifest


def committed_paths(repo_root: Path, name: str, version: str) -> tuple[Path, Path]:
    """(manifests/<dataset>/<version>.json, cards/<dataset>/README.md) under `repo_root`."""
    return repo_root / "manifests" / name / f"{version}.json", repo_root / "cards" / name / "README.md"


def export_committed(run_dir: Path, repo_root: Path) -> tuple[Path, Path]:
    """Write the run's manifest (portable) and its card as the committed copies under `repo_root`.

    Timings and the environment stay in: they are part of the record. Only absolute paths are rewritten.
    The card is rendered from the written manifest, so `check_cards` passes right after an export.
    """
    run_dir, repo_root = Path(run_dir), Path(repo_root)
    manifest = portable_manifest(require_manifest(run_dir, "rendering the card"), roots=(run_dir, repo_root))
    name, version = manifest_get(manifest, "dataset.name"), manifest_get(manifest, "dataset.version")
    if not name or not version:
        raise SynthechoError(f"{run_dir / 'manifest.json'} has no dataset.name/version: run prepare first.")
    manifest_path, card_path = committed_paths(repo_root, name, version)
    write_json_atomic(manifest_path, manifest)
    # Render from what was written (JSON round trip), exactly as check_cards will read it.
    write_text_atomic(card_path, render_card(read_json(manifest_path)))
    # The sample grid travels with the card (the card shows it; the README shows the demo's).
    grid = run_grid(run_dir)
    if grid.is_file():
        write_bytes_atomic(card_path.parent / hub.SAMPLE_GRID, grid.read_bytes())
    return manifest_path, card_path


def _version_key(path: Path):
    from packaging.version import InvalidVersion, Version

    try:
        return (1, Version(path.stem), path.stem)
    except InvalidVersion:
        return (0, None, path.stem)


def newest_manifests(repo_root: Path) -> dict[str, Path | None]:
    """Dataset name -> its newest committed manifest (None for a card without one), for every dataset
    that has a manifest or a card. The card describes the newest version; older manifests stay as the
    record of past releases."""
    repo_root = Path(repo_root)
    names = {p.parent.name for p in (repo_root / "manifests").glob("*/*.json")}
    names |= {p.parent.name for p in (repo_root / "cards").glob("*/README.md")}
    newest = {}
    for name in sorted(names):
        manifests = sorted((repo_root / "manifests" / name).glob("*.json"), key=_version_key)
        newest[name] = manifests[-1] if manifests else None
    return newest


def check_cards(repo_root: Path) -> list[str]:
    """Re-render every committed card from its newest committed manifest; one entry per stale card.

    Each entry names the card and holds a unified diff (committed -> re-rendered). A card with no
    manifest, or a manifest with no card, is reported too. An empty list means all cards are fresh.
    """
    repo_root = Path(repo_root)
    stale = []
    for name, manifest_path in newest_manifests(repo_root).items():
        card_path = repo_root / "cards" / name / "README.md"
        if manifest_path is None:
            stale.append(f"{card_path.relative_to(repo_root)}: no manifest in manifests/{name}/")
            continue
        expected = render_card(read_json(manifest_path))
        if not card_path.is_file():
            stale.append(f"{card_path.relative_to(repo_root)}: missing (manifest {manifest_path.name})")
            continue
        committed = card_path.read_text(encoding="utf-8")
        if committed != expected:
            relative = card_path.relative_to(repo_root).as_posix()
            diff = difflib.unified_diff(
                committed.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=f"{relative} (committed)",
                tofile=f"{relative} (rendered from {manifest_path.relative_to(repo_root).as_posix()})",
            )
            stale.append(f"{relative}: stale\n" + "".join(diff))
    return stale
