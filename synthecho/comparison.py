"""Generators compared side by side: which runs may be compared, and the comparison's card.

A comparison puts several corpora next to each other (DiffEcho's question: which generator makes the
most useful echo data). Its numbers mean something only where everything but the generator is the same,
so `check_fair` refuses members that differ in any shared part (`SHARED_PARTS`), naming the part and the
runs. The parts are read from the members' manifests: the prepared real data by content hash, the
filter segmenter by its weights' hash (trained from the same data and seed, it is the same file), and
the recipe sections of the filter, the conditioning plan and the downstream study.

The comparison's own manifest (`manifests/<name>/<version>.json`, `"kind": "comparison"`) copies what
its table shows from each member's manifest, so `card --check` re-renders the card from it alone.
"""

from __future__ import annotations

from synthecho.errors import SynthechoError
from synthecho.formatting import effect_interval
from synthecho.layout import cap_label

COMPARISON_KIND = "comparison"

# Part name -> how to read it from a member's manifest. Anything the generator does not decide.
SHARED_PARTS = {
    "source (prepared real data)": lambda m: (m["source"].get("real_content_sha256"),
                                              m["source"].get("resolution")),
    "filter segmenter (weights)": lambda m: m.get("segmenter", {}).get("sha256"),
    "filter settings (recipe.filter)": lambda m: m["recipe"].get("filter"),
    "conditioning plan (recipe.generate: perturbation, variants, splits, seed)": lambda m: {
        key: m["recipe"]["generate"].get(key) for key in ("perturb", "variants", "splits", "seed")
    },
    "downstream settings (recipe.evaluate)": lambda m: m["recipe"].get("evaluate"),
}  # fmt: skip


# The same parts as recipe sections, checked before any member is built (a mismatch found after the
# builds would have cost their GPU hours): part name -> how to read it from a recipe's model_dump().
RECIPE_PARTS = {
    "source and preparation (recipe.source, recipe.prepare, recipe.seed)": lambda r: (
        r["source"], r["prepare"], r["seed"]),
    "filter segmenter (recipe.segmenter)": lambda r: r["segmenter"],
    "filter settings (recipe.filter)": lambda r: r["filter"],
    "conditioning plan (recipe.generate: perturbation, variants, splits, seed)": lambda r: {
        key: r["generate"].get(key) for key in ("perturb", "variants", "splits", "seed")
    },
    "downstream settings (recipe.evaluate)": lambda r: r["evaluate"],
}  # fmt: skip


def check_fair(manifests: dict[str, dict]) -> None:
    """Raise a SynthechoError naming every shared part in which the member runs differ."""
    _refuse_differences(manifests, SHARED_PARTS, "these runs cannot be compared")


def check_recipes_fair(recipes: dict[str, dict]) -> None:
    """As `check_fair`, on the members' recipes (`model_dump(mode="json")`), before anything is built."""
    _refuse_differences(recipes, RECIPE_PARTS, "these recipes cannot be compared")


def _refuse_differences(members: dict[str, dict], parts: dict, what: str) -> None:
    problems = []
    for part, read in parts.items():
        values = {name: read(member) for name, member in members.items()}
        distinct = []
        for name, value in values.items():
            if all(value != seen for seen, _ in distinct):
                distinct.append((value, [name]))
            else:
                next(names for seen, names in distinct if seen == value).append(name)
        if len(distinct) > 1:
            groups = "; ".join(", ".join(names) for _, names in distinct)
            problems.append(f"  - {part} differs between: {groups}")
    if problems:
        raise SynthechoError(
            f"{what}: the generator must be the only difference, and\n"
            + "\n".join(problems)
            + "\nbuild every member with the same source, segmenter, filter, generate and evaluate settings "
            "(`synthecho compare` applies the comparison's shared settings to every member)."
        )


EFFECT_FIELDS = ("metric", "mean_difference", "ci_low", "ci_high", "n", "improved", "worse")


def member_summary(manifest: dict) -> dict:
    """What the comparison table shows of one member, copied from its manifest."""
    metrics = manifest.get("metrics") or {}
    counts = manifest.get("counts") or {}
    generation = manifest.get("generation") or {}
    judge = ((metrics.get("attribute_fidelity") or {}).get("independent") or {}).get("generated") or {}
    downstream = manifest.get("downstream") or {}
    effects = {}
    for cap_name, cap in downstream.get("caps", {}).items():
        for task, found in cap.get("tasks", {}).items():
            for effect in found.get("effects", []):
                key = f"{cap_name}/{task}/{effect['a']}-vs-{effect['b']}"
                effects[key] = {name: effect.get(name) for name in EFFECT_FIELDS}
    train = (manifest.get("generator") or {}).get("train") or {}
    return {
        "dataset": manifest["dataset"]["name"],
        "version": manifest["dataset"]["version"],
        "recipe_sha256": manifest.get("recipe_sha256"),
        # the published rows: equal to a committed version's exactly when the rows are that version's
        "data_content_hashes": [
            shard["content_hash"] for shard in manifest.get("shards", {}).get("data", [])
        ],
        "generator": generation.get("generator"),
        "kind": (manifest.get("generator") or {}).get("kind"),
        "mask_source": generation.get("mask_source"),
        "conditioned_on": generation.get("conditioned_on"),
        "sampler": f"{generation.get('sampler')} {generation.get('steps')} steps",
        "generated": counts.get("generated"),
        "passed": counts.get("passed"),
        "near_copy": (counts.get("rejected") or {}).get("near_copy"),
        "mask_dice": (metrics.get("mask_fidelity") or {}).get("mean_dice"),
        "view_agreement": judge.get("view"),
        "phase_agreement": judge.get("phase"),
        "inception": metrics.get("inception"),
        "train_seconds": ((manifest.get("stages") or {}).get("train") or {}).get("seconds"),
        "train_steps": train.get("steps"),
        "images_per_second": generation.get("images_per_second"),
        "downstream_effects": effects,
        "downstream_metric_note": "segmentation: per-patient foreground Dice; phase, view: per-patient "
        "mean probability of the true class (differences in points of 100)",
    }


# --- the card ----------------------------------------------------------------------------------------

EFFECT_COLUMNS = (  # (label, strategy a, strategy b)
    ("synthetic only vs real only", "synthetic", "real"),
    ("synthetic pretrain -> real vs real only", "pretrain_finetune", "real"),
    (
        "synthetic pretrain -> real vs warped pretrain -> real",
        "pretrain_finetune",
        "warped_pretrain_finetune",
    ),
)


def _rate(found: dict | None) -> str:
    if not found or found.get("rate") is None:
        return "n/a"
    low, high = found["ci95"]
    return f"{found['rate']:.3f} [{low:.3f}, {high:.3f}]"


def _auc(found: dict | None) -> str:
    if not found:
        return "n/a"
    low, high = found["ci95"]
    return f"{found['auc']:.3f} [{low:.3f}, {high:.3f}]"


def _effect(effect: dict | None) -> str:
    if not effect or effect.get("mean_difference") is None or effect.get("ci_low") is None:
        return "n/a"
    return effect_interval(effect)


def _dice(member: dict) -> str:
    if member["mask_source"] == "segmenter":
        return "n/a (masks from the segmenter)"
    dice = member.get("mask_dice") or {}
    return " / ".join(f"{dice[k]:.2f}" for k in ("lv", "myo", "la")) if dice else "n/a"


def render_comparison(manifest: dict) -> str:
    """The comparison card (Markdown), from the comparison manifest alone."""
    # Members in the comparison's order: `order`, since manifests are written with sorted keys.
    members = {name: manifest["members"][name] for name in manifest["order"]}
    realism = manifest["realism"]
    cap = manifest["downstream_cap"]
    lines = [
        f"# {manifest['name']} {manifest['version']}: {len(members)} generators compared",
        "",
        manifest["description"].strip(),
        "",
        f"Built with `{manifest['command']}` in {manifest['seconds'] / 60:.0f} min on {manifest['machine']}. "
        "A member's rows are its published version's where that version was built on the same CPU model; "
        "elsewhere they differ by floating point (the generator trains to other weights).",
        "Every member shares the parts below (checked from the manifests; a comparison of runs that differ "
        "in any of them is refused):",
        "",
        *(f"- {part}" for part in manifest["shared_parts"]),
        "",
        "## Generators",
        "",
        "Realism is the classifier two-sample test (`synthecho.quality.realism`): the held-out-patient ROC "
        "AUC of a small CNN telling generated train rows from real train frames (0.5: indistinguishable). "
        f"Real against real (two halves of the patients) scores {_auc(realism['reference'])}. Mask Dice is "
        "the filter segmenter's on the generated frames against their masks (LV / MYO / LA). View and phase "
        "agreement are the independent judge's on every generated row, before filtering. Intervals are 95 %.",
        "",
        "| generator | mask source | conditioned on | rows kept | realism AUC | Inception FID/KID "
        "| mask Dice | view agreement | phase agreement | copies rejected | training | images/s |",
        "|---|---|---|--:|---|---|---|---|---|--:|--:|--:|",
    ]
    for name, member in members.items():
        inception = member.get("inception") or {}
        fid = (
            f"{inception['fid']:.1f} / {inception['kid_mean']:.4f}"
            if inception.get("fid") is not None
            else "n/a (no weights)"
        )
        lines.append(
            f"| {name} {member['version']} ({member['generator']}) | {member['mask_source']} "
            f"| {', '.join(member.get('conditioned_on') or []) or 'nothing'} "
            f"| {member['passed']} / {member['generated']} | {_auc(realism['members'].get(name))} | {fid} "
            f"| {_dice(member)} | {_rate(member.get('view_agreement'))} "
            f"| {_rate(member.get('phase_agreement'))} | {member.get('near_copy', 'n/a')} "
            f"| {member['train_steps']} steps, {member['train_seconds'] / 60:.1f} min "
            f"| {member['images_per_second']:.1f} |"
        )
    lines += [
        "",
        f"## Downstream ({int(100 * float(cap))} % of the real train patients)",
        "",
        "Mean per-patient difference (points of 100) with its 95 % BCa interval over the test patients; "
        + members[next(iter(members))]["downstream_metric_note"]
        + ". The warped control pretrains on the rows' source frames moved by the rows' own mask "
        "transforms: beating it is what a generator adds beyond the perturbed label maps.",
        "",
        "| generator | task | " + " | ".join(label for label, _, _ in EFFECT_COLUMNS) + " |",
        "|---|---|" + "---|" * len(EFFECT_COLUMNS),
    ]
    cap_key = cap_label(float(cap))
    for name, member in members.items():
        for task in manifest["tasks"]:
            cells = [_effect(member["downstream_effects"].get(f"{cap_key}/{task}/{a}-vs-{b}"))
                     for _, a, b in EFFECT_COLUMNS]  # fmt: skip
            lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    control = manifest["realism"]["positive_control"]
    lines += [
        "",
        "## The realism measure's positive control",
        "",
        "Real frames of half the patients against the other half degraded: the AUC must rise with the "
        f"strength (reference, undegraded: {_auc(control['reference'])}).",
        "",
        "| degradation | " + " | ".join(f"strength {i + 1}" for i in range(3)) + " | monotone |",
        "|---|---|---|---|---|",
    ]
    for kind, monotone in control["monotone"].items():
        cells = [f"{point['strength']:g}: {point['auc']:.3f}" for point in control[kind]]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {'yes' if monotone else 'NO'} |")
    lines += _sweep_lines(manifest["sweep"], manifest["order"])
    lines += [
        "",
        "## Pictures",
        "",
        "- `comparison_grid.png`: the same conditioning maps (rows) through every generator (columns), "
        'beside the real frame; generators that take no map get the same prompt and class ("(no map)").',
        "- `sampler_sweep.png`: mask Dice, view agreement and realism against images/s per solver steps.",
        "- `downstream_effects.png`: the downstream effects above as bars with their intervals.",
        "",
        "Phantom figures are pipeline evidence, not effect sizes: the phantom's anatomy, speckle and label "
        "noise are simulated, and how far any ranking carries over to CAMUS is unknown until the `*-9k` "
        "comparison runs on it.",
        "",
    ]
    return "\n".join(lines)


def _sweep_lines(sweep: dict, order: list[str]) -> list[str]:
    lines = [
        "",
        f"## Sampler sweep (the same {sweep['rows']} validation maps per setting, `{sweep['sampler']}`)",
        "",
        "Rows are validation-patient maps; agreement is the filter's judge's (out of patient); realism "
        "(from 16 rows up) tests them against the real train frames.",
        "",
        "| generator | steps | rows | images/s | mask Dice (LV / MYO / LA) | view agreement "
        "| phase agreement | realism AUC |",
        "|---|--:|--:|--:|---|---|---|---|",
    ]
    for name in order:
        for point in sweep["members"][name]:
            dice = point.get("mask_dice")
            dice_text = " / ".join(f"{dice[k]:.2f}" for k in ("lv", "myo", "la")) if dice else "n/a"
            lines.append(
                f"| {name} | {point['label']} | {point['rows']} | {point['images_per_second']:.2f} "
                f"| {dice_text} | {_rate(point['view'])} | {_rate(point['phase'])} "
                f"| {_auc(point.get('realism'))} |"
            )
    return lines


def require_comparison(manifest: dict, where: str) -> None:
    if manifest.get("kind") != COMPARISON_KIND:
        raise SynthechoError(f'{where} is not a comparison manifest (no "kind": "{COMPARISON_KIND}")')
