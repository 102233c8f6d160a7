"""The run manifest (`<run>/manifest.json`): provenance and results, one top-level section per stage.

Each stage updates only its own sections: the recipe and environment, the source, generator and
segmenter hashes, every shard with its file and content hash, counts, metrics, downstream results and
timings. Paths inside are relative to the run dir, because the manifest is committed and compared across
machines. The card is rendered from this file alone; the accessors at the end read what it shows.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from synthecho.errors import SynthechoError
from synthecho.io import read_json, write_json_atomic
from synthecho.layout import RunLayout

MANIFEST_NAME = "manifest.json"
VERSIONED_PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "datasets",
    "pyarrow",
    "numpy",
    "pillow",
    "monai",
    "huggingface_hub",
)


def manifest_path(run_dir: str | os.PathLike) -> Path:
    return RunLayout.of(run_dir).manifest


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """The manifest as a dict; {} when no stage has written one yet."""
    path = manifest_path(run_dir)
    return read_json(path) if path.is_file() else {}


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write between processes (several generate ranks may finish together)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; stages there run one process at a time
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f".{MANIFEST_NAME}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_manifest(run_dir: str | os.PathLike, **sections: Any) -> dict:
    """Replace the given top-level sections (atomically) and return the whole manifest.

    A section whose value is a dict replaces that section wholesale; stages that share a section
    (e.g. "shards": {"raw": ...} from generate and {"data": ...} from filter) pass the merged dict, or
    use `merge_section`.
    """
    run_dir = Path(run_dir)
    with _locked(run_dir):
        manifest = read_manifest(run_dir)
        manifest.update(sections)
        write_json_atomic(manifest_path(run_dir), manifest)
    return manifest


def merge_section(run_dir: str | os.PathLike, section: str, **keys: Any) -> dict:
    """Set keys inside one section (e.g. merge_section(run, "shards", raw=[...])) keeping the others."""
    run_dir = Path(run_dir)
    with _locked(run_dir):
        manifest = read_manifest(run_dir)
        current = manifest.get(section)
        manifest[section] = {**(current if isinstance(current, dict) else {}), **keys}
        write_json_atomic(manifest_path(run_dir), manifest)
    return manifest


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout synthecho runs from, or None when it is an installed wheel / no git."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def _cpu_capability() -> str | None:
    """The SIMD level torch's CPU kernels were dispatched for (AVX2, AVX512, ...): it changes float
    rounding."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return None


def _cpu_model() -> str | None:
    """The CPU model: float results of CPU kernels (and so generated pixels) can differ between models."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment_info() -> dict:
    """Versions, platform, device, synthecho version and git commit (for the manifest's "environment")."""
    import synthecho

    return {
        "python": sys.version.split()[0],
        **{name: _version(name) for name in VERSIONED_PACKAGES},
        "platform": platform.platform(),
        "device": _device_name(),
        "cpu_model": _cpu_model(),
        "cpu_capability": _cpu_capability(),
        "torch_threads": _torch_threads(),
        "synthecho": synthecho.__version__,
        "git_commit": _git_commit(),
    }


def recipe_sections(recipe) -> dict:
    """The "recipe" and "recipe_sha256" sections every stage refreshes."""
    return {"recipe": recipe.model_dump(mode="json"), "recipe_sha256": recipe.content_hash()}


# --- accessors: what the card and publish read from a manifest ---------------------------------------

PUBLISHED_SPLITS = ("train", "validation")


def require_manifest(run_dir: str | os.PathLike, before: str) -> dict:
    """The run's manifest, or an error saying which stages must run `before` the caller can."""
    manifest = read_manifest(run_dir)
    if not manifest:
        raise SynthechoError(
            f"{manifest_path(run_dir)} is missing or empty: run `synthecho build --recipe ...` (at least "
            f"prepare) before {before}."
        )
    return manifest


def manifest_get(mapping: Any, dotted: str, default: Any = None) -> Any:
    """`mapping["a"]["b"]` for "a.b", or `default` when any level is missing or None."""
    node = mapping
    for part in dotted.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return default
        node = node[part]
    return node


def dataset_section(recipe) -> dict:
    """The manifest's "dataset" section, from the recipe (the card and publish refresh it)."""
    return {
        "name": recipe.name,
        "version": recipe.version,
        "description": recipe.description.strip(),
        "license": recipe.license,
        "pretty_name": recipe.publish.pretty_name or recipe.name,
    }


def run_grid(run_dir: str | os.PathLike) -> Path:
    """The generator's sample grid as `train` copied it into the run's reports."""
    return RunLayout.of(run_dir).generator_grid


def article_rule(manifest: dict) -> str:
    """The prompt article rule of this corpus ("an" unless the recipe says otherwise)."""
    return manifest_get(manifest, "recipe.prompts.article_rule", "an")


def published_rows(manifest: dict) -> dict[str, int]:
    """Rows per published split, from the filter's `data` shards (counts.by_split as a fallback)."""
    rows = {split: 0 for split in PUBLISHED_SPLITS}
    shards = manifest_get(manifest, "shards.data")
    if shards:
        for shard in shards:
            if shard.get("split") in rows:
                rows[shard["split"]] += int(shard.get("rows") or 0)
    else:
        for split in rows:
            rows[split] = int(manifest_get(manifest, f"counts.by_split.{split}.passed", 0))
    return rows


def published_bytes(manifest: dict) -> dict[str, int]:
    """Parquet bytes per published split, from the filter's `data` shards."""
    sizes = {split: 0 for split in PUBLISHED_SPLITS}
    for shard in manifest_get(manifest, "shards.data", []):
        if shard.get("split") in sizes:
            sizes[shard["split"]] += int(shard.get("bytes") or 0)
    return sizes
