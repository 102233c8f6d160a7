"""Phase geometry: do the conditioning masks still show the phase their rows claim?

The perturbation moves the phase cues themselves: scale changes the LV cavity area, the elastic field the
wall's thickness. Each planned row's conditioning mask (its source mask under its `mask_transform`, at
full resolution) is compared with its source patient's own masks at both phases (same patient and view,
both in the real split): the row keeps its phase when its LV cavity / LV epicardium area ratio (scale-free:
the wall against the cavity) — and, separately, its cavity area — is closer to the patient's own value at
the claimed phase than at the other phase (`plan.phase_cues`). Measured on the plan the recipe's
`generate.perturb.phase_policy` drew and, on the same rows and seeds, on the plan the other policy draws,
so the cost of Echo from noise's exact ranges is on record whichever policy built the corpus.
"""

from __future__ import annotations

from synthecho.plan import PHASE_POLICIES, closer_to_claimed, other_phase_index, phase_cues
from synthecho.quality.attributes import proportion


def plan_phase_geometry(plan, real: dict) -> dict:
    """{"ratio": proportion, "cavity_area": proportion, "unpaired": rows whose record has no other phase}."""
    from synthecho.perturb import apply_transform

    cues = {name: [phase_cues(mask) for mask in split.masks] for name, split in real.items()}
    other = {name: other_phase_index(split.records) for name, split in real.items()}
    ratio = area = judged = unpaired = 0
    for row in plan:
        split, i = real[row.split], row.source_index
        j = other[row.split][i]
        if j is None:
            unpaired += 1
            continue
        found = phase_cues(apply_transform(split.masks[i], split.sectors[i], row.mask_transform))
        claimed, opposite = cues[row.split][i], cues[row.split][j]
        area += closer_to_claimed(found[0], claimed[0], opposite[0])
        ratio += closer_to_claimed(found[1], claimed[1], opposite[1])
        judged += 1
    return {"ratio": proportion(ratio, judged), "cavity_area": proportion(area, judged), "unpaired": unpaired}


def phase_geometry(recipe, real: dict, plan) -> dict:
    """The geometry of the recipe's plan and of the same plan under the other phase policy."""
    from synthecho.plan import build_plan

    used = recipe.generate.perturb.phase_policy
    other = next(policy for policy in PHASE_POLICIES if policy != used)
    return {
        "policy": used,
        "by_policy": {
            used: plan_phase_geometry(plan, real),
            other: plan_phase_geometry(build_plan(recipe, real, phase_policy=other), real),
        },
        "measure": "LV cavity / LV epicardium area ratio (and cavity area) of each conditioning mask closer "
        "to its source patient's own value at the claimed phase than at the other phase",
    }
