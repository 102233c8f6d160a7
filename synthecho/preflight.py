"""What `build` checks before it starts: every outside input its pending stages need, all at once.

A build that prepares CAMUS for minutes and then stops because the Stable Diffusion weights are not on
this machine has wasted the minutes, and one that reports missing inputs one at a time wastes a rerun
per input. So `build` asks `missing_inputs` first and refuses to start, with one line per missing input
naming the recipe key and the fix. Stages already done need nothing: a trained generator can go on
generating on a machine without the base weights or CAMUS.

Outside inputs: the CAMUS root (`source.root` / $SYNTHECHO_CAMUS_ROOT) for `prepare`; the pretrained
base (`generator.base_model`) and a text encoder folder (`generator.text_encoder`) for `train`. Weights
are not downloaded mid-build: a Hub id must already be in the Hugging Face cache (`hf download <id>`),
so a run never depends on the network or fails hours in on a gated or renamed repository. Optional
weights (Inception for FID, CLIPSeg for the downstream study) are not inputs: their absence is reported
in the outputs, not refused.
"""

from __future__ import annotations

from pathlib import Path

from synthecho.errors import SynthechoError

PIPELINE_INDEX = "model_index.json"  # what a diffusers pipeline folder or Hub repo holds at its root


def missing_inputs(recipe, pending: set[str]) -> list[str]:
    """One message per outside input that a stage in `pending` needs and this machine lacks."""
    problems = []
    if "prepare" in pending and recipe.source.kind == "camus":
        try:
            recipe.source.resolve_root()
        except SynthechoError as error:
            problems.append(str(error))
    if "train" in pending:
        generator = recipe.generator
        base_model = getattr(generator, "base_model", None)
        if base_model:
            problems += _pretrained_pipeline_problems(base_model, "generator.base_model")
        text_encoder = getattr(generator, "text_encoder", None)
        if text_encoder and not base_model and not Path(text_encoder).expanduser().is_dir():
            problems.append(
                f"generator.text_encoder {text_encoder!r} is not a folder: give a transformers text encoder "
                f"folder, or null for the bundled MiniLM."
            )
    return problems


def check(recipe, pending: set[str]) -> None:
    """Raise one SynthechoError listing every missing input (nothing has been written yet)."""
    problems = missing_inputs(recipe, pending)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise SynthechoError(
            f"recipe {recipe.name!r} needs inputs this machine does not have; nothing was started:\n{listed}"
        )


def _pretrained_pipeline_problems(base_model: str, key: str) -> list[str]:
    path = Path(base_model).expanduser()
    if path.exists():
        if not (path / PIPELINE_INDEX).is_file():
            return [f"{key} {base_model!r} has no {PIPELINE_INDEX}: it must be a diffusers pipeline folder."]
        return []
    if _looks_like_path(base_model):
        return [f"{key} {base_model!r} does not exist: point it at a diffusers pipeline folder or a Hub id."]
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    if isinstance(try_to_load_from_cache(base_model, PIPELINE_INDEX), str):
        return []
    return [
        f"{key} {base_model!r} is not in the Hugging Face cache ({HF_HUB_CACHE}): download it first "
        f"(`hf download {base_model}`), or set {key} to a local copy of the pipeline folder."
    ]


def _looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, ./, ~, deeper) is meant as a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
