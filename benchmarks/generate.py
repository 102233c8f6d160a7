"""Benchmark `synthecho generate` against a raw sampling loop over the same model, batches and steps.

    python benchmarks/generate.py                       # builds a small phantom run (demo recipe), CPU
    python benchmarks/generate.py --run-dir runs/demo --rows 256 --device cuda

Reports, in one run:
1. images/s of a raw loop calling `sampler.sample` on the plan's batches (conditioning maps precomputed);
2. images/s of `generate.run` end to end over the same rows (real data loading, plan, mask perturbation,
   sampling, shape words, PNG encoding, Parquet writing, markers, manifest), with the same loaded sampler;
3. their ratio (how much of the sampler's speed the stage keeps), best of --repeats alternating runs,
   and the process CPU time per image of each (steadier than wall time on a shared machine);
4. peak RSS of a fresh `generate.run` process (loading the generator itself) for N and 10*N rows: with
   the bounded writer queue it should barely grow with the row count.

Without --run-dir (or when it has no trained generator) a small run is built first: the phantom is
prepared and the recipe's SDM is trained for --train-steps steps (speed does not depend on how well
trained the weights are).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load(args, rows: int):
    """The recipe, overridden so the plan holds about `rows` train rows at the benchmark's settings."""
    from synthecho.real import load_real
    from synthecho.recipe import load_recipe

    overrides = [f"prepare.resolution={args.resolution}", f"source.phantom.patients={args.patients}"]
    overrides += [
        f"train.steps={args.train_steps}",
        "train.checkpoint_every=1000",
        "train.grid_sampler_steps=2",
    ]
    base = load_recipe(args.recipe, overrides)
    records = len(load_real(args.run_dir, "train")) if (Path(args.run_dir) / "real").is_dir() else None
    generate = ["generate.splits=[train]", f"generate.steps={args.steps or base.generate.steps}"]
    generate.append(f"generate.device={args.device}")
    if args.batch_size:
        generate.append(f"generate.batch_size={args.batch_size}")
    if records:
        variants = math.ceil(rows / records)
        generate += [
            f"generate.variants={variants}",
            f"generate.max_records_per_split={math.ceil(rows / variants)}",
        ]
    return load_recipe(args.recipe, overrides + generate)


def ensure_trained(args) -> None:
    """Prepare the phantom and train the generator into --run-dir unless it already holds them."""
    from synthecho.generators import get_generator
    from synthecho.real import load_real
    from synthecho.stages import run_stage

    run_dir = Path(args.run_dir)
    recipe = load(args, args.rows)
    if not (run_dir / "real" / "train.parquet").is_file():
        run_stage("prepare", recipe, run_dir, progress=False)
    if not any((run_dir / "generator").glob("*.json")):
        print(
            f"training {recipe.generator.kind} for {args.train_steps} steps into {run_dir}/generator",
            flush=True,
        )
        get_generator(recipe.generator.kind).train(
            recipe, load_real(run_dir, "train"), run_dir / "generator", progress=False
        )


@contextlib.contextmanager
def scratch_run(run_dir: Path) -> Iterator[Path]:
    """A throwaway run dir sharing real/ and generator/ (so benchmark shards never touch the real run)."""
    with tempfile.TemporaryDirectory(prefix="synthecho-bench-") as folder:
        scratch = Path(folder)
        for name in ("real", "generator"):
            (scratch / name).symlink_to((run_dir / name).resolve())
        yield scratch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(args) -> None:
    """--child ROWS: one fresh process running generate.run (generator loaded from disk); prints JSON."""
    from synthecho.stages import generate

    recipe = load(args, args.child)
    with scratch_run(Path(args.run_dir)) as scratch:
        started = time.perf_counter()
        info = generate.run(recipe, scratch, progress=False, device=args.device)
        seconds = time.perf_counter() - started
    print(json.dumps({"rows": info["rows_generated"], "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def compare(args) -> dict:
    """Raw sampling loop vs generate.run over the same batches with the same loaded sampler."""
    import torch

    from synthecho.generators import get_generator
    from synthecho.generators.base import resolve_device
    from synthecho.plan import build_plan, shards_of
    from synthecho.real import load_real
    from synthecho.stages import generate

    recipe = load(args, args.rows)
    config = recipe.generate
    device = resolve_device(args.device)
    _, dtype = generate.resolve_precision(config.precision, device)
    sampler = get_generator(recipe.generator.kind).load(
        Path(args.run_dir) / "generator", device=device, dtype=dtype
    )
    real = {"train": load_real(args.run_dir, "train")}
    batches = [batch for shard in shards_of(build_plan(recipe, real)) for batch in shard.batches]
    labels = [generate.conditioning(batch, real)[1] for batch in batches]
    rows = sum(len(batch) for batch in batches)

    def sample(batch, label_maps):
        return sampler.sample(
            label_maps,
            [row.prompt for row in batch],
            [row.seed for row in batch],
            sampler=config.sampler,
            steps=config.steps,
            guidance_scale=config.guidance_scale,
        )

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def raw_loop() -> dict:
        for batch, label_maps in zip(batches, labels, strict=True):
            sample(batch, label_maps)
        return {"rows_generated": rows}

    def stage() -> dict:
        with scratch_run(Path(args.run_dir)) as scratch:
            return generate.run(recipe, scratch, progress=False, device=device, sampler=sampler)

    def timed(function) -> tuple[float, float, dict]:
        synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        info = function()
        synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu, info

    sample(batches[0], labels[0])  # warm-up: allocator, kernels, thread pools
    # Alternate the two and keep each one's best: on a shared machine, load from other processes
    # comes and goes, and the best of a few runs is the closest to what the code itself costs.
    raw_runs, stage_runs = [], []
    for _ in range(args.repeats):
        raw_runs.append(timed(raw_loop))
        stage_runs.append(timed(stage))
    raw_seconds, raw_cpu, _ = min(raw_runs, key=lambda run: run[0])
    stage_seconds, stage_cpu, info = min(stage_runs, key=lambda run: run[0])
    assert info["rows_generated"] == rows, info
    return {
        "rows": rows,
        "batch_size": config.batch_size,
        "steps": config.steps,
        "sampler": config.sampler,
        "device": device,
        "precision": str(dtype).replace("torch.", ""),
        "resolution": sampler.resolution,
        "raw_images_per_second": rows / raw_seconds,
        "generate_images_per_second": rows / stage_seconds,
        "ratio": raw_seconds / stage_seconds,
        "raw_cpu_seconds_per_image": raw_cpu / rows,
        "generate_cpu_seconds_per_image": stage_cpu / rows,
        "repeats": args.repeats,
    }


def measure_rss(args, rows: int) -> dict:
    command = [sys.executable, __file__, "--child", str(rows)] + [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in ("child", "rss_scale", "repeats") and value is not None
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"child run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="demo", help="recipe name or YAML (its generator and sampler)")
    parser.add_argument(
        "--run-dir", default=None, help="run dir with real/ and generator/ (built if missing)"
    )
    parser.add_argument(
        "--rows", type=int, default=32, help="N: rows of the speed comparison and the small RSS run"
    )
    parser.add_argument("--rss-scale", type=int, default=10, help="the large RSS run has rss_scale * N rows")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating runs of each; the best is reported"
    )
    parser.add_argument("--resolution", type=int, default=64, help="prepare.resolution when building a run")
    parser.add_argument("--patients", type=int, default=12, help="phantom patients when building a run")
    parser.add_argument("--train-steps", type=int, default=20, help="generator steps when building a run")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return

    if args.run_dir is None:
        args.run_dir = str(Path(tempfile.mkdtemp(prefix="synthecho-bench-run-")))
    ensure_trained(args)
    speed = compare(args)
    print(
        f"\n{speed['rows']} rows, {speed['resolution']} px, batch {speed['batch_size']}, {speed['steps']} "
        f"{speed['sampler']} steps, {speed['device']} {speed['precision']}, best of {speed['repeats']}\n"
    )
    print("| measurement | value |\n|---|---|")
    print(f"| raw `sampler.sample` loop | {speed['raw_images_per_second']:.2f} img/s |")
    print(f"| `generate.run` end to end | {speed['generate_images_per_second']:.2f} img/s |")
    print(f"| generate / raw (images/s) | {speed['ratio']:.2f} |")
    print(f"| process CPU time per image, raw loop | {speed['raw_cpu_seconds_per_image']:.3f} s |")
    print(
        f"| process CPU time per image, `generate.run` | {speed['generate_cpu_seconds_per_image']:.3f} s |",
        flush=True,
    )
    for rows in (args.rows, args.rows * args.rss_scale):
        run = measure_rss(args, rows)
        print(
            f"| peak RSS, {run['rows']} rows (fresh process) | {run['peak_rss_mb']:.0f} MiB "
            f"({run['rows'] / run['seconds']:.2f} img/s incl. start-up) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
