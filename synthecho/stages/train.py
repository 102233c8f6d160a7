"""Stage `train`: the generator and the segmenter, each trained once on the real train split.

1. Generator (`generator.kind`): trained into `<run>/generator/`; the generator module resumes from its
   own checkpoints when a previous run was interrupted.
2. Segmenter: a MONAI U-Net on real train, selected on real validation Dice, into `<run>/segmenter/`.
3. Manifest sections `generator` and `segmenter` (weights sha256, config, timings, validation Dice);
   the loss curve and sample grid are copied to `<run>/reports/`.

Each half writes its completion marker (`<folder>/.complete.json`) with its input hash when it has
finished, so an interruption during the segmenter does not retrain the generator.

Several processes (`accelerate launch`, `torchrun`): the generator trains data-parallel on all of them
(`synthecho.training`); only the main process writes (checkpoints, the generator folder, its grid, the
segmenter, markers, manifest). The segmenter is small and trains on the main process alone while the
others wait for the stage's marker by polling the file system, not at a collective barrier, which would
time out (NCCL's default is minutes) while the segmenter trains. The other processes return
`complete: False`, so only the main process's result marks the stage.

Outside inputs: a pretrained base (`generator.base_model`) and a text encoder folder
(`generator.text_encoder`) when the recipe names them. synthecho never downloads weights mid-build: a Hub
id must already be in the Hugging Face cache (`hf download <id>`), so a run never depends on the network
or fails hours in on a gated or renamed repository.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from synthecho.io import sha256_file, sha256_json, sha256_model_folder
from synthecho.layout import RunLayout
from synthecho.markers import current_info, remove_marker, write_marker
from synthecho.stages import invalidate, is_current, stage_input_hash

log = logging.getLogger(__name__)
PIPELINE_INDEX = "model_index.json"  # what a diffusers pipeline folder or Hub repo holds at its root
POLL_SECONDS = 2.0  # how often a non-main process looks for the main process's stage marker


def missing_inputs(recipe) -> list[str]:
    """The pretrained base and text encoder the recipe names, when this machine lacks them."""
    generator = recipe.generator
    base_model = getattr(generator, "base_model", None)
    problems = []
    if base_model:
        problems += _pretrained_pipeline_problems(base_model, "generator.base_model")
    text_encoder = getattr(generator, "text_encoder", None)
    if text_encoder and not base_model and not Path(text_encoder).expanduser().is_dir():
        problems.append(
            f"generator.text_encoder {text_encoder!r} is not a folder: give a transformers text encoder "
            f"folder, or null for the bundled MiniLM."
        )
    return problems


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


def _train_once(recipe, run_dir: Path, part: str, train_fn, *, main: bool = True) -> dict:
    """Run `train_fn(folder)` unless the folder's marker records the same inputs; return its info.

    `main` False (a data-parallel peer): train, but leave the marker to the main process.
    """
    layout = RunLayout.of(run_dir)
    input_hash = sha256_json([stage_input_hash(recipe, run_dir, "train"), part])
    marker = layout.model_marker(part)
    if (done := current_info(marker, input_hash)) is not None:
        return done
    info = {
        key: value for key, value in train_fn(layout.root / part).items() if key not in ("losses", "history")
    }
    if main:
        write_marker(marker, "model", part, info, input_hash=input_hash)  # curves are in the PNGs
    return info


def _forget_models(layout: RunLayout) -> None:
    """What `--force` redoes: the models' markers and their checkpoints (else training would resume from
    its last checkpoint and redo nothing)."""
    for part in ("generator", "segmenter"):
        remove_marker(layout.model_marker(part))
        shutil.rmtree(layout.model_checkpoints(part), ignore_errors=True)


def _start_together(run_dir: Path, main: bool, force: bool) -> None:
    """Every process starts from the same markers: the main process clears what is redone, then all meet.

    The stage marker goes too, so the other processes can wait for the one the main process writes last.
    """
    from accelerate.utils import wait_for_everyone

    if main:
        if force:
            _forget_models(RunLayout.of(run_dir))
        invalidate(run_dir, "train")
    wait_for_everyone()


def _wait_for_main(recipe, run_dir: Path, rank: int) -> None:
    """Block until the main process has marked the stage (segmenter, manifest and marker written)."""
    log.info("process %d: the generator is trained; waiting for the main process to finish the stage", rank)
    while not is_current(recipe, run_dir, "train"):
        time.sleep(POLL_SECONDS)


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    from synthecho.generators import get_generator
    from synthecho.manifest import environment_info, update_manifest
    from synthecho.real import load_real
    from synthecho.segmenter import train_segmenter
    from synthecho.training import process_slot

    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)
    rank, processes = process_slot()
    if processes > 1:
        _start_together(run_dir, rank == 0, force)
    elif force:
        _forget_models(layout)
    real_train, real_validation = load_real(run_dir, "train"), load_real(run_dir, "validation")

    generator = get_generator(recipe.generator.kind)
    generator_info = _train_once(
        recipe,
        run_dir,
        "generator",
        lambda out: generator.train(
            recipe, real_train, out, real_validation=real_validation, progress=progress
        ),
        main=rank == 0,
    )
    if rank != 0:
        _wait_for_main(recipe, run_dir, rank)
        return {"complete": False, "process": rank, "generator": generator_info}
    segmenter_info = _train_once(
        recipe,
        run_dir,
        "segmenter",
        lambda out: train_segmenter(
            recipe.segmenter, real_train, real_validation, out, seed=recipe.seed, progress=progress
        ),
    )

    layout.reports.mkdir(parents=True, exist_ok=True)
    for name in ("loss_curve.png", "sample_grid.png"):
        if (layout.generator / name).is_file():
            shutil.copyfile(layout.generator / name, layout.reports / f"generator_{name}")
    if (layout.segmenter / "training_curve.png").is_file():
        shutil.copyfile(
            layout.segmenter / "training_curve.png", layout.reports / "segmenter_training_curve.png"
        )

    generator_sha = sha256_model_folder(layout.generator)
    config = recipe.generator.model_dump(mode="json")
    update_manifest(
        run_dir,
        recipe=recipe.model_dump(mode="json"),
        recipe_sha256=recipe.content_hash(),
        environment=environment_info(),
        generator={
            "kind": recipe.generator.kind,
            "variant": config.get("variant"),
            "sha256": generator_sha,
            "config": config,
            "train": {**recipe.train.model_dump(mode="json"), **generator_info},
            "base_model": config.get("base_model"),
            "base_license": config.get("base_license"),
        },
        segmenter={
            "sha256": sha256_file(layout.segmenter / "model.safetensors"),
            "config": recipe.segmenter.model_dump(mode="json"),
            **segmenter_info,
        },
    )
    return {"generator_sha256": generator_sha, "generator": generator_info, "segmenter": segmenter_info}
