"""Stage `card`: the dataset card (`<run>/README.md`), rendered from the manifest alone.

The manifest's `dataset` section is refreshed from the recipe first (name, version, description,
licence, publish settings are what this stage reads). Rendering is cheap, so a card that is "current"
by its inputs is still re-rendered when the README differs from what the manifest gives now (e.g.
`evaluate` ran after the card): the README never lags its manifest (`outputs_current`).
"""

from __future__ import annotations

from pathlib import Path

from synthecho.card import render_card
from synthecho.io import write_text_atomic
from synthecho.layout import RunLayout
from synthecho.manifest import dataset_section, published_rows, require_manifest, update_manifest


def outputs_current(recipe, run_dir: Path) -> bool:
    readme = RunLayout.of(run_dir).card
    return readme.is_file() and readme.read_text(encoding="utf-8") == render_card(
        require_manifest(run_dir, "rendering the card")
    )


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    require_manifest(run_dir, "rendering the card")  # a clear error before the manifest is touched
    manifest = update_manifest(
        run_dir,
        dataset=dataset_section(recipe),
        recipe=recipe.model_dump(mode="json"),
        recipe_sha256=recipe.content_hash(),
    )
    readme = RunLayout.of(run_dir).card
    write_text_atomic(readme, render_card(manifest))
    info = {"card": str(readme), "rows": published_rows(manifest), "license": recipe.license}
    if not recipe.license:
        info["warning"] = "recipe key `license` is not set: publish will refuse"
    return info
