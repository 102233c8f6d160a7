"""Per-stage CPU benchmark: a recipe built from nothing, stage by stage, and where each stage's time goes.

    python benchmarks/cpu.py                                      # the demo, in a temporary run dir
    python benchmarks/cpu.py --json before.json                   # ... and keep the figures
    python benchmarks/cpu.py --json after.json --compare before.json    # a change's per-stage delta
    python benchmarks/cpu.py --compare before.json after.json     # compare two saved runs, run nothing
    python benchmarks/cpu.py --run-dir runs/b --stages prepare    # then, to time train alone:
    python benchmarks/cpu.py --run-dir runs/b --stages train
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu.py    # an AVX2-only CPU, roughly

Every stage runs through `synthecho.stages.run_stage` (forced, so nothing is skipped) with
`synthecho.profiling` enabled. Printed as Markdown:

1. a header line: CPU model, torch's CPU capability and thread count, torch version, whether
   ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA are set, and the load average (the machine may be shared);
2. per stage: wall and CPU seconds (all threads, and worker processes once they end) and the stage's own
   figures: generator and segmenter s/step (train), img/s (generate), rows passed and rejected (filter);
3. the evaluate stage's seconds per task and strategy (training and testing of each model);
4. the split of each stage into the profiled sections (data, forward, backward + optimizer step,
   validation, checkpoint, sampling, PNG encoding, Parquet writing, ...) and the time outside them.

`--json` writes all of it; `--compare BEFORE.json` prints before / after / delta per stage and section.
Sections on the shard writer's thread overlap the main thread and are not part of "outside sections".
A stage pays for the imports it is the first to make (train: diffusers, accelerate, MONAI), as a build
does. On a shared machine, read the load average in the header and compare CPU seconds as well as wall.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEMA = 1
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
UNIT_PREFIX = "evaluate/"  # evaluate/<task>/<strategy>: whole units, which enclose downstream/* sections


# --- measuring ------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its ended children (the phantom's renderers, the
    filter's classifier fits run in worker processes)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def environment() -> dict:
    import torch

    from synthecho.manifest import environment_info

    info = environment_info()
    return {
        "cpu_model": info.get("cpu_model"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        **{name: os.environ.get(name) for name in ISA_VARIABLES},
        "python": info.get("python"),
        "git_commit": info.get("git_commit"),
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


def select_stages(recipe, run_dir: Path, requested: str | None) -> list[str]:
    """The stages to run, in build order; an error when one's upstream stage is neither run nor done."""
    from synthecho.stages import BUILD_ORDER, BY_NAME, read_stage_marker
    from synthecho.stages.build import stages_to_run

    if requested is None:
        return stages_to_run(recipe)
    names = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = [name for name in names if name not in BUILD_ORDER]
    if unknown:
        raise SystemExit(f"--stages: unknown {', '.join(unknown)}; expected some of {', '.join(BUILD_ORDER)}")
    chosen = [name for name in BUILD_ORDER if name in names]
    for position, name in enumerate(chosen):
        for upstream in BY_NAME[name].upstream:
            if upstream not in chosen[:position] and read_stage_marker(run_dir, upstream) is None:
                raise SystemExit(
                    f"--stages {name}: its input stage {upstream!r} has not run in {run_dir}; add it to "
                    f"--stages or point --run-dir at a run where it has."
                )
    checkpoints = run_dir / "generator" / "checkpoints"
    if "train" in chosen and checkpoints.is_dir() and any(checkpoints.iterdir()):
        # train_loop resumes from them: the stage would time the few (or no) steps left, not training.
        raise SystemExit(f"{checkpoints} holds checkpoints of an earlier training: delete it to time train.")
    return chosen


def stage_figures(name: str, info: dict, sections: dict) -> dict:
    """The figures of one stage that say more than its seconds (s/step, img/s, per task/strategy)."""
    from synthecho.downstream import STRATEGIES

    figures: dict = {}
    if name == "train":
        for part in ("generator", "segmenter"):
            part_info = info.get(part) or {}
            if part_info.get("seconds_per_step") is not None:
                figures[f"{part}_seconds_per_step"] = part_info["seconds_per_step"]
                figures[f"{part}_steps"] = part_info.get("steps")
                figures[f"{part}_seconds"] = part_info.get("seconds")
    elif name == "generate":
        figures["images_per_second"] = info.get("images_per_second")
        figures["rows"] = info.get("rows_generated")
    elif name == "filter":
        figures["passed"] = info.get("passed")
        figures["rejected"] = sum((info.get("rejected") or {}).values())
    elif name == "evaluate":
        units: dict[str, dict[str, float]] = {}
        for section, value in sections.items():
            if section.startswith(UNIT_PREFIX):
                task, strategy = section[len(UNIT_PREFIX) :].split("/", 1)
                units.setdefault(task, {})[strategy] = value["seconds"]
        figures["units"] = units
        figures["per_task"] = {task: sum(by.values()) for task, by in units.items()}
        strategies = [s for s in STRATEGIES if any(s in by for by in units.values())]
        figures["per_strategy"] = {s: sum(by.get(s, 0.0) for by in units.values()) for s in strategies}
    return figures


def outside_sections(seconds: float, sections: dict) -> float:
    """Main-thread time of a stage not in any leaf section (model building, loading, metrics, ...)."""
    inside = sum(
        value["seconds"]
        for name, value in sections.items()
        if not value.get("worker_thread") and not name.startswith(UNIT_PREFIX)
    )
    return seconds - inside


def run_benchmark(args) -> None:
    """Run and time the stages; then write --json and print (`finished`), also after a failed stage."""
    from synthecho import profiling
    from synthecho.recipe import load_recipe
    from synthecho.stages import run_stage

    recipe = load_recipe(args.recipe, args.set)
    temporary = args.run_dir is None
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="synthecho-cpu-bench-"))
    if not temporary and args.stages is None and run_dir.is_dir() and any(run_dir.iterdir()):
        raise SystemExit(f"{run_dir} is not empty: the benchmark builds from nothing (or pass --stages)")
    stages = select_stages(recipe, run_dir, args.stages)
    result = {
        "schema": SCHEMA,
        "recipe": recipe.name,
        "recipe_version": recipe.version,
        "sets": list(args.set),
        "run_dir": None if temporary else str(run_dir),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "stages": {},
    }
    print(header(result), file=sys.stderr, flush=True)
    profiling.enable()
    try:
        for number, name in enumerate(stages, 1):
            result["failed"] = name  # until it returns: a failed run still reports the stages before it
            print(f"[{number}/{len(stages)}] {name} ...", file=sys.stderr, flush=True)
            profiling.reset()
            wall, cpu = time.perf_counter(), cpu_seconds()
            info = run_stage(name, recipe, run_dir, force=True, progress=args.progress)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            sections = profiling.report()
            result["stages"][name] = {
                "seconds": round(wall, 3),
                "cpu_seconds": round(cpu, 3),
                "outside_sections_seconds": round(outside_sections(wall, sections), 3),
                "sections": sections,
                "figures": stage_figures(name, info, sections),
            }
            print(f"[{number}/{len(stages)}] {name}: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr)
        del result["failed"]
    finally:
        profiling.disable()
        if temporary and not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        result["environment"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
        result["total"] = {
            "seconds": round(sum(stage["seconds"] for stage in result["stages"].values()), 3),
            "cpu_seconds": round(sum(stage["cpu_seconds"] for stage in result["stages"].values()), 3),
        }
        finished(result, args)


def finished(result: dict, args) -> None:
    """Write --json and print the tables (also when a stage failed: the stages before it are measured)."""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    if "failed" in result:
        print(
            f"\nstage {result['failed']} FAILED (traceback on stderr); "
            "the figures above are of the stages before it"
        )
    elif args.compare:
        print()
        print(compare(json.loads(Path(args.compare[0]).read_text()), result))


# --- printing -------------------------------------------------------------------------------------------


def header(result: dict) -> str:
    env = result["environment"]
    isa = ", ".join(f"{name}={env.get(name) or 'unset'}" for name in ISA_VARIABLES)
    load = f"load average {env.get('load_average_at_start')}"
    if env.get("load_average_at_end") is not None:
        load += f" -> {env['load_average_at_end']}"
    return (
        f"**{result['recipe']} {result.get('recipe_version', '')}** on {env.get('cpu_model')} "
        f"({env.get('cpus')} CPUs) | torch {env.get('torch')}, CPU capability {env.get('cpu_capability')}, "
        f"{env.get('torch_threads')} threads | {isa} | {load}"
    )


def describe(name: str, figures: dict) -> str:
    if name == "train":
        parts = [
            f"{part} {figures[f'{part}_seconds_per_step']:.3f} s/step ({figures[f'{part}_steps']} steps)"
            for part in ("generator", "segmenter")
            if f"{part}_seconds_per_step" in figures
        ]
        return ", ".join(parts)
    if name == "generate" and figures.get("images_per_second"):
        return f"{figures['images_per_second']:.2f} img/s ({figures['rows']} rows)"
    if name == "filter":
        return f"{figures.get('passed')} passed, {figures.get('rejected')} rejected"
    if name == "evaluate" and figures.get("per_task"):
        return ", ".join(f"{task} {seconds:.1f} s" for task, seconds in figures["per_task"].items())
    return ""


def render(result: dict) -> str:
    lines = [header(result), "", "| stage | wall s | CPU s | CPU / wall | figures |", "|---|--:|--:|--:|---|"]
    for name, stage in result["stages"].items():
        ratio = stage["cpu_seconds"] / stage["seconds"] if stage["seconds"] else 0.0
        lines.append(
            f"| {name} | {stage['seconds']:.1f} | {stage['cpu_seconds']:.1f} | {ratio:.2f} | "
            f"{describe(name, stage['figures'])} |"
        )
    total = result["total"]
    lines.append(f"| **total** | {total['seconds']:.1f} | {total['cpu_seconds']:.1f} | | |")

    units = result["stages"].get("evaluate", {}).get("figures", {}).get("units")
    if units:
        strategies = list(result["stages"]["evaluate"]["figures"]["per_strategy"])
        lines += ["", "evaluate, seconds per task and strategy (training + testing, all seeds):", ""]
        lines += ["| task | " + " | ".join(strategies) + " | all |", "|---|" + "--:|" * (len(strategies) + 1)]
        for task, by in units.items():
            cells = " | ".join(f"{by[s]:.1f}" if s in by else "" for s in strategies)
            lines.append(f"| {task} | {cells} | {sum(by.values()):.1f} |")
        per_strategy = result["stages"]["evaluate"]["figures"]["per_strategy"]
        cells = " | ".join(f"{per_strategy[s]:.1f}" for s in strategies)
        lines.append(f"| all | {cells} | {sum(per_strategy.values()):.1f} |")

    lines += ["", "split inside each stage (`synthecho.profiling` sections):", ""]
    lines += ["| stage | section | s | calls | ms / call | % of stage |", "|---|---|--:|--:|--:|--:|"]
    for name, stage in result["stages"].items():
        wall = stage["seconds"] or 1.0
        for section, value in stage["sections"].items():
            if section.startswith(UNIT_PREFIX):
                continue  # in the table above
            label = f"{section} (writer thread, overlaps)" if value.get("worker_thread") else section
            lines.append(
                f"| {name} | {label} | {value['seconds']:.2f} | {value['count']} | "
                f"{1000 * value['seconds'] / max(value['count'], 1):.2f} | "
                f"{100 * value['seconds'] / wall:.0f} |"
            )
        outside = stage["outside_sections_seconds"]
        lines.append(f"| {name} | outside sections | {outside:.2f} | | | {100 * outside / wall:.0f} |")
    return "\n".join(lines)


def _delta(before: float | None, after: float | None) -> list[str]:
    if before is None or after is None:
        return ["" if before is None else f"{before:.3g}", "" if after is None else f"{after:.3g}", "", ""]
    change = after - before
    percent = f"{100 * change / before:+.1f} %" if before else ""
    return [f"{before:.3g}", f"{after:.3g}", f"{change:+.3g}", percent]


def compare(before: dict, after: dict) -> str:
    """Before / after / delta of every stage's wall and CPU seconds, rates and sections."""
    lines = ["before: " + header(before), "after:  " + header(after), ""]
    keys = ("cpu_model", "cpu_capability", "torch_threads", "torch", *ISA_VARIABLES)
    differs = [k for k in keys if before["environment"].get(k) != after["environment"].get(k)]
    if differs:
        lines += [f"NOTE: the environments differ in {', '.join(differs)}", ""]
    if before.get("sets") != after.get("sets") or before.get("recipe") != after.get("recipe"):
        lines += ["NOTE: the recipes (or --set overrides) differ", ""]
    lines += ["| stage | measure | before | after | delta | delta % |", "|---|---|--:|--:|--:|--:|"]
    stages = list(dict.fromkeys([*before["stages"], *after["stages"]]))
    for name in stages:
        old, new = before["stages"].get(name, {}), after["stages"].get(name, {})
        rows = [("wall s", old.get("seconds"), new.get("seconds")),
                ("CPU s", old.get("cpu_seconds"), new.get("cpu_seconds"))]  # fmt: skip
        old_figures, new_figures = old.get("figures", {}), new.get("figures", {})
        for key in ("generator_seconds_per_step", "segmenter_seconds_per_step", "images_per_second"):
            if key in old_figures or key in new_figures:
                rows.append((key.replace("_seconds_per_step", " s/step")
                             .replace("images_per_second", "img/s"),
                             old_figures.get(key), new_figures.get(key)))  # fmt: skip
        for task in dict.fromkeys([*old_figures.get("per_task", {}), *new_figures.get("per_task", {})]):
            rows.append((f"{task} s", old_figures.get("per_task", {}).get(task),
                         new_figures.get("per_task", {}).get(task)))  # fmt: skip
        old_sections, new_sections = old.get("sections", {}), new.get("sections", {})
        for section in dict.fromkeys([*old_sections, *new_sections]):
            if not section.startswith(UNIT_PREFIX):
                rows.append((f"{section} s", old_sections.get(section, {}).get("seconds"),
                             new_sections.get(section, {}).get("seconds")))  # fmt: skip
        rows.append(("outside sections s", old.get("outside_sections_seconds"),
                     new.get("outside_sections_seconds")))  # fmt: skip
        for measure, old_value, new_value in rows:
            lines.append(f"| {name} | {measure} | " + " | ".join(_delta(old_value, new_value)) + " |")
    for measure, key in (("wall s", "seconds"), ("CPU s", "cpu_seconds")):
        cells = _delta(before["total"][key], after["total"][key])
        lines.append(f"| **total** | {measure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="demo", help="recipe name or YAML path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--run-dir", default=None, help="run dir (default: a temporary one, removed after)")
    parser.add_argument("--stages", default=None, help="comma-separated stages to run (default: the build's)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write the figures here")
    parser.add_argument(
        "--compare", nargs="+", default=None, metavar="JSON",
        help="BEFORE.json: run, then print before/after/delta; BEFORE.json AFTER.json: compare, run nothing",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary run dir")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args()

    if args.compare and len(args.compare) > 2:
        parser.error("--compare takes BEFORE.json, or BEFORE.json AFTER.json")
    if args.compare and len(args.compare) == 2:
        before, after = (json.loads(Path(path).read_text()) for path in args.compare)
        print(compare(before, after))
        return
    run_benchmark(args)


if __name__ == "__main__":
    main()
