"""Stage `train`: the generator and the segmenter, each trained once on the real train split.

1. Generator (`generator.kind`): trained into `<run>/generator/`; the generator module resumes from its
   own checkpoints when a previous run was interrupted.
2. Segmenter: a MONAI U-Net on real train, selected on real validation Dice, into `<run>/segmenter/`.
3. Manifest sections `generator` and `segmenter` (weights sha256, config, timings, validation Dice);
   the loss curve and sample grid are copied to `<run>/reports/`.

Each half writes a `.complete.json` holding its input hash when it has finished, so an interruption
during the segmenter does not retrain the generator.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from synthecho.io import read_json, sha256_bytes, sha256_file, sha256_json, write_json_atomic
from synthecho.stages import is_current, mark_done, read_marker, stage_input_hash


def weights_sha256(folder: Path) -> str:
    """Hash of the model files a sampler loads (checkpoints and reports excluded)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and "checkpoints" not in p.relative_to(folder).parts
        and p.suffix in {".safetensors", ".json", ".txt", ".model"}
        and not p.name.startswith(".")
    )
    listing = "\n".join(f"{p.relative_to(folder).as_posix()}:{sha256_file(p)}" for p in files)
    return sha256_bytes(listing.encode())


def _train_once(recipe, run_dir: Path, part: str, train_fn) -> dict:
    """Run `train_fn()` unless `<run>/<part>/.complete.json` records the same inputs; return its info."""
    folder = run_dir / part
    input_hash = sha256_json([stage_input_hash(recipe, run_dir, "train"), part])
    marker = folder / ".complete.json"
    if marker.is_file() and (done := read_json(marker)).get("input_hash") == input_hash:
        return done["info"]
    info = {key: value for key, value in train_fn(folder).items() if key not in ("losses", "history")}
    write_json_atomic(marker, {"input_hash": input_hash, "info": info})  # curves are in the PNGs
    return info


def run(recipe, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict:
    from synthecho.manifest import environment_info, update_manifest
    from synthecho.real import load_real

    run_dir = Path(run_dir)
    if not force and is_current(recipe, run_dir, "train"):
        return {"skipped": True, **read_marker(run_dir, "train")["info"]}
    if force:
        for folder in ("generator", "segmenter"):
            (run_dir / folder / ".complete.json").unlink(missing_ok=True)
    started = time.time()
    real_train, real_validation = load_real(run_dir, "train"), load_real(run_dir, "validation")

    from synthecho.generators import get_generator
    from synthecho.segmenter import train_segmenter

    generator = get_generator(recipe.generator.kind)
    generator_info = _train_once(
        recipe,
        run_dir,
        "generator",
        lambda out: generator.train(
            recipe, real_train, out, real_validation=real_validation, progress=progress
        ),
    )
    segmenter_info = _train_once(
        recipe,
        run_dir,
        "segmenter",
        lambda out: train_segmenter(
            recipe.segmenter, real_train, real_validation, out, seed=recipe.seed, progress=progress
        ),
    )

    reports = run_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    for name in ("loss_curve.png", "sample_grid.png"):
        if (run_dir / "generator" / name).is_file():
            shutil.copyfile(run_dir / "generator" / name, reports / f"generator_{name}")
    if (run_dir / "segmenter" / "training_curve.png").is_file():
        shutil.copyfile(
            run_dir / "segmenter" / "training_curve.png", reports / "segmenter_training_curve.png"
        )

    generator_sha = weights_sha256(run_dir / "generator")
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
            "sha256": sha256_file(run_dir / "segmenter" / "model.safetensors"),
            "config": recipe.segmenter.model_dump(mode="json"),
            **segmenter_info,
        },
    )
    info = {"generator_sha256": generator_sha, "generator": generator_info, "segmenter": segmenter_info}
    marker = mark_done(recipe, run_dir, "train", info, started)
    return {"skipped": False, "seconds": marker["seconds"], **info}
