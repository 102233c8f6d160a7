"""The `synthecho` command line: a thin Typer layer over the library's stage functions.

Heavy libraries (torch, diffusers, datasets, SimpleITK) are imported inside the commands, so
`synthecho --help` and a skipped stage answer in about a second.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from synthecho.errors import SynthechoError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help=(
        "Synthetic echocardiography corpora: prepare -> train -> generate -> filter -> evaluate -> card "
        "-> publish."
    ),
)

RecipeOption = Annotated[
    str, typer.Option("--recipe", "-r", help="recipe name (recipes/NAME.yaml) or YAML path")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a recipe value, e.g. --set train.steps=100 (repeatable)"),
]
RunDirOption = Annotated[Path | None, typer.Option("--run-dir", help="default: runs/<recipe name>")]
ForceOption = Annotated[bool, typer.Option("--force", help="redo the stage even if its inputs are unchanged")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="torch CPU threads for every stage (recipe key `threads`; default: torch's, one per core)",
    ),
]


def friendly_errors(command):
    """Print SynthechoError as one clear line (no traceback) and exit with status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SynthechoError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def _load(recipe: str, overrides: list[str] | None, run_dir: Path | None, threads: int | None = None):
    """The recipe with its --set overrides (and --threads, which is the recipe key `threads`)."""
    from synthecho.recipe import load_recipe

    overrides = [*(overrides or []), *([f"threads={threads}"] if threads is not None else [])]
    loaded = load_recipe(recipe, overrides)
    return loaded, loaded.resolve_run_dir(run_dir)


def _run_stage(stage: str, recipe: str, overrides, run_dir, force: bool, threads=None, **options) -> None:
    """Load the recipe and run one stage through the runner `build` uses (skip / time / mark)."""
    from synthecho.stages import run_stage

    loaded, folder = _load(recipe, overrides, run_dir, threads)
    _report(stage, run_stage(stage, loaded, folder, force=force, **options))


def _report(stage: str, result: dict) -> None:
    if result.get("skipped"):
        typer.echo(f"{stage}: up to date, skipped (use --force to redo)")
    else:
        typer.echo(f"{stage}: done in {result.get('seconds', 0):.1f} s")


@app.command()
@friendly_errors
def phantom(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the CAMUS-format tree into")],
    patients: Annotated[int, typer.Option(help="number of simulated patients")] = 12,
    seed: Annotated[int, typer.Option(help="same seed -> byte-identical files")] = 0,
    layout: Annotated[str, typer.Option(help="2023 (NIfTI, CAMUS_public) or 2019 (.mhd challenge)")] = "2023",
    test_patients: Annotated[
        int | None, typer.Option(help="patients in the test split (default ~15%); their truth goes to truth/")
    ] = None,
) -> None:
    """Write the built-in CAMUS-format phantom (simulated apical echo views with labels)."""
    from synthecho.sources.phantom import write_phantom

    if layout not in ("2023", "2019"):
        raise SynthechoError(f"--layout must be 2023 or 2019, got {layout!r}")
    root = write_phantom(out_dir, patients=patients, seed=seed, layout=layout, test_patients=test_patients)
    typer.echo(f"phantom ({patients} patients, layout {layout}) written to {root}")


@app.command()
@friendly_errors
def prepare(
    recipe: RecipeOption, set: SetOption = None, run_dir: RunDirOption = None, force: ForceOption = False
):
    """Source dataset -> resized frames, masks, sectors, attributes and prompts in <run>/real/."""
    _run_stage("prepare", recipe, set, run_dir, force)


@app.command()
@friendly_errors
def train(
    recipe: RecipeOption,
    set: SetOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    threads: ThreadsOption = None,
):
    """Train the generator and the segmenter on the real train split (resumes after interruption).

    Under `accelerate launch` the generator trains data-parallel on every process (README: Several GPUs).
    """
    _run_stage("train", recipe, set, run_dir, force, threads)


@app.command()
@friendly_errors
def generate(
    recipe: RecipeOption,
    set: SetOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    shard_index: Annotated[int | None, typer.Option(help="this worker's index (job arrays)")] = None,
    num_shards: Annotated[int | None, typer.Option(help="number of workers sharing the shards")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: recipe)")] = None,
    threads: ThreadsOption = None,
):
    """Mass-produce triplets into <run>/shards/raw/ (skips completed shards)."""
    _run_stage(
        "generate",
        recipe,
        set,
        run_dir,
        force,
        threads,
        shard_index=shard_index,
        num_shards=num_shards,
        device=device,
    )


@app.command(name="filter")
@friendly_errors
def filter_(
    recipe: RecipeOption,
    set: SetOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    threads: ThreadsOption = None,
):
    """Score every row (mask consistency, near-copies, degenerate output), FID/KID, keep what passes."""
    _run_stage("filter", recipe, set, run_dir, force, threads)


@app.command()
@friendly_errors
def evaluate(
    recipe: RecipeOption,
    set: SetOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    threads: ThreadsOption = None,
):
    """Downstream baselines: segmentation and classification trained on real / synthetic / both."""
    _run_stage("evaluate", recipe, set, run_dir, force, threads)


@app.command()
@friendly_errors
def card(
    recipe: Annotated[
        str | None, typer.Option("--recipe", "-r", help="render the card of this recipe's run")
    ] = None,
    set: SetOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    check: Annotated[
        bool, typer.Option("--check", help="fail if a committed card differs from its manifest")
    ] = False,
    repo_root: Annotated[Path, typer.Option(help="repository holding cards/ and manifests/")] = Path("."),
    commit: Annotated[
        bool,
        typer.Option(
            "--commit", help="also write manifests/<name>/<version>.json and cards/<name>/ in --repo-root"
        ),
    ] = False,
    push: Annotated[
        bool,
        typer.Option(
            "--push",
            help="upload each published dataset's card (+ grid) to its Hub repo when it differs (CI)",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="with --push: print the Hub calls, change nothing")] = False,
):
    """Render the dataset card from the manifest, --check every committed card, or --push them to the Hub.

    --check and --push read only manifests/ and cards/ (no run, no torch or datasets): a CI job.
    """
    from synthecho import card as cards

    if check:
        stale = cards.check_cards(repo_root)
        for entry in stale:
            typer.echo(entry)
        if stale:
            raise SynthechoError(
                f"{len(stale)} committed card(s) are stale: re-render with `synthecho card --recipe ...` "
                f"and commit cards/ and manifests/."
            )
        typer.echo("cards: all committed cards match their manifests")
    if push:
        from synthecho.card_push import push_cards

        push_cards(repo_root, dry_run=dry_run, echo=typer.echo)
    if check or push:
        return
    if dry_run:
        raise SynthechoError("--dry-run goes with --push (card rendering itself changes only the run)")
    if recipe is None:
        raise SynthechoError(
            "pass --recipe to render a card, --check to verify the committed cards, or --push to upload them"
        )
    from synthecho.stages import run_stage

    loaded, folder = _load(recipe, set, run_dir)
    _report("card", run_stage("card", loaded, folder, force=force))
    if commit:
        manifest_path, card_path = cards.export_committed(folder, repo_root)
        typer.echo(f"committed copies: {manifest_path}, {card_path}")


@app.command()
@friendly_errors
def publish(
    recipe: RecipeOption,
    set: SetOption = None,
    run_dir: RunDirOption = None,
    to: Annotated[Path | None, typer.Option("--to", help="lay the Hub repo out in this local folder")] = None,
    repo_id: Annotated[
        str | None, typer.Option("--repo-id", help="push to this Hub dataset repo (ORG/NAME)")
    ] = None,
    private: Annotated[bool, typer.Option(help="create the Hub repo private")] = False,
    with_generator: Annotated[
        bool, typer.Option(help="also push the generator weights as a model repo")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="print what would be uploaded, change nothing")] = False,
):
    """Publish the filtered corpus (card, data/, prompts config, manifest) to a folder or the Hub."""
    from synthecho.stages import run_stage

    loaded, folder = _load(recipe, set, run_dir)
    if to is None and repo_id is None and loaded.publish.repo_id is None:
        raise SynthechoError(
            "say where to publish: --to DIR, --repo-id ORG/NAME, or publish.repo_id in the recipe"
        )
    result = run_stage(
        "publish",
        loaded,
        folder,
        to=to,
        repo_id=repo_id or (None if to else loaded.publish.repo_id),
        private=private or loaded.publish.private,
        with_generator=with_generator,
        dry_run=dry_run,
    )
    for key, value in result.items():
        typer.echo(f"{key}: {value}")


@app.command()
@friendly_errors
def build(
    recipe: RecipeOption,
    set: SetOption = None,
    run_dir: RunDirOption = None,
    force: ForceOption = False,
    from_stage: Annotated[str | None, typer.Option("--from", help="redo from this stage on")] = None,
    threads: ThreadsOption = None,
):
    """prepare -> train -> generate -> filter -> evaluate -> card, skipping stages whose inputs are unchanged."""  # noqa: E501
    from synthecho.stages import build as pipeline

    loaded, folder = _load(recipe, set, run_dir, threads)
    summary = pipeline.build(loaded, folder, force=force, from_stage=from_stage)
    typer.echo(summary)


@app.command()
@friendly_errors
def compare(
    comparison: Annotated[str, typer.Argument(help="phantom (built-in, CPU) or 9k (CAMUS, GPU recipes)")],
    set: SetOption = None,
    run_root: Annotated[
        Path | None, typer.Option("--run-root", help="members go to ROOT/<recipe>; default runs/<comparison>")
    ] = None,
    check_only: Annotated[bool, typer.Option("--check", help="run nothing; list missing inputs")] = False,
    commit: Annotated[
        bool, typer.Option("--commit", help="also write manifests/<name>/<version>.json and cards/<name>/")
    ] = False,
    repo_root: Annotated[Path, typer.Option(help="repository holding cards/ and manifests/")] = Path("."),
    threads: ThreadsOption = None,
):
    """Build the four generators' corpora with shared settings and compare them (table, grid, sweep)."""
    import shutil

    from synthecho.stages import build as pipeline
    from synthecho.stages import compare as comparing

    if comparison not in comparing.COMPARISONS:
        raise SynthechoError(f"comparison {comparison!r}: expected one of {', '.join(comparing.COMPARISONS)}")
    spec = comparing.COMPARISONS[comparison]
    root = run_root or Path("runs") / spec.name
    overrides = [*comparing.SHARED_SETTINGS, *spec.settings, *(set or [])]
    members = {}
    for name, folder in comparing.member_run_dirs(spec, root).items():
        loaded, _ = _load(name, overrides, folder, threads)
        members[name] = (loaded, folder)
    from synthecho.comparison import check_recipes_fair

    check_recipes_fair({name: loaded.model_dump(mode="json") for name, (loaded, _) in members.items()})
    problems = []  # every member's missing inputs at once, before anything is built
    for name, (loaded, folder) in members.items():
        try:
            pipeline.check(loaded, {*pipeline.pending_stages(loaded, folder)})
        except SynthechoError as error:
            problems.append(f"{name}: {error}")
    if problems:
        raise SynthechoError(f"comparison {spec.name} cannot start:\n" + "\n".join(problems))
    if check_only:
        typer.echo(f"{spec.name}: every member's outside inputs are here ({', '.join(members)})")
        return
    for loaded, folder in members.values():
        typer.echo(pipeline.build(loaded, folder))
    command = f"synthecho compare {comparison}" + "".join(f" --set {o}" for o in set or [])
    manifest = comparing.run(spec, members, root, command=command)
    typer.echo(f"{spec.name}: {root / 'README.md'} ({manifest['seconds'] / 60:.1f} min in all)")
    if commit:
        manifests = repo_root / "manifests" / spec.name
        cards_dir = repo_root / "cards" / spec.name
        manifests.mkdir(parents=True, exist_ok=True)
        cards_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "comparison.json", manifests / f"{spec.version}.json")
        for name in ("README.md", "comparison_grid.png", "sampler_sweep.png", "downstream_effects.png"):
            shutil.copyfile(root / name, cards_dir / name)
        typer.echo(f"committed copies: {manifests / f'{spec.version}.json'}, {cards_dir}")


@app.command()
@friendly_errors
def check(
    recipe: RecipeOption, set: SetOption = None, run_dir: RunDirOption = None, force: ForceOption = False
):
    """Run nothing; check that this machine has every outside input `build` still needs (CAMUS, weights)."""
    from synthecho.stages import build as pipeline

    loaded, folder = _load(recipe, set, run_dir)
    pending = pipeline.pending_stages(loaded, folder, force=force)
    pipeline.check(loaded, {*pending})
    todo = ", ".join(pending) if pending else "nothing (every stage is up to date)"
    typer.echo(f"{loaded.name}: every outside input is here; build would run {todo}")


@app.command()
@friendly_errors
def regenerate(
    row: Annotated[
        list[str],
        typer.Option("--row", help="a row id (demo/train/3) or plan index; repeatable, or comma-separated"),
    ],
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="regenerate from this run folder")] = None,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="regenerate from this published folder (publish --to)")
    ] = None,
    generator: Annotated[
        Path | None,
        typer.Option(help="the generator's model folder (publish --to DIR --with-generator: DIR-generator)"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="default: the device the rows were generated on")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16, fp16 (default: as generated)")] = None,
):
    """Re-sample rows (their whole planned batch) and compare them with the corpus pixel for pixel.

    Exit status 1 when a row differs on the recorded device and precision (not reproduced).
    """
    from synthecho.stages import regenerate as regen

    names = [name.strip() for value in row for name in value.split(",") if name.strip()]
    result = regen.run(
        rows=names, run_dir=run_dir, dataset=dataset, generator=generator, device=device, precision=precision
    )
    for entry in result["rows"]:
        where = f"{entry['id']} (batch {entry['batch']} of {entry['split']})"
        if entry["status"] == "not published":
            typer.echo(f"{where}: regenerated; not published (rejected by the filter), nothing to compare")
        elif entry["status"] == "identical":
            typer.echo(f"{where}: identical ({entry['pixels']} pixels)")
        else:
            typer.echo(
                f"{where}: differs, largest pixel difference {entry['max_abs_diff']} "
                f"({entry['pixels_differing']} of {entry['pixels']} pixels)"
            )
    used, recorded = result["used"], result["recorded"]
    differ = [entry["id"] for entry in result["rows"] if entry["status"] == "differs"]
    typer.echo(
        f"regenerate: {len(result['rows'])} row(s), {result['batches']} batch(es) "
        f"({result['rows_sampled']} rows sampled) on {used['device']} {used['precision']}; generated on "
        f"{recorded['device']} {recorded['precision']} ({recorded['cpu_model'] or 'CPU not recorded'}, "
        f"{recorded['torch_threads'] or '?'} torch threads)"
    )
    if differ and result["same_setup"]:
        typer.secho(
            f"regenerate: {len(differ)} row(s) differ on the recorded device and precision: "
            f"{', '.join(differ)} (another CPU kind or thread count also changes float results)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1)


@app.command()
def recipes() -> None:
    """List the shipped recipes."""
    from synthecho.recipe import available_recipes, load_recipe

    for name in available_recipes():
        description = load_recipe(name).description.strip().splitlines()
        typer.echo(f"{name:20s} {description[0] if description else ''}")


def main() -> None:  # pragma: no cover - console entry for `python -m synthecho`
    sys.exit(app())
