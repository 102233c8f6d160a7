"""A whole phantom study, shrunk to seconds: `build --recipe phantom-study` with tiny overrides produces
everything its committed card must show — every strategy beside its warped control at both real-data
caps, effects with intervals and k of n, the confirmatory family's raw and Holm p-values, convergence
flags — and the card exported from it passes `card --check`."""

from __future__ import annotations

import json

import pytest
from tiny_builds import TINY_BUILD

from synthecho.formatting import STRATEGY_TITLES
from synthecho.recipe import load_recipe

pytestmark = pytest.mark.slow  # a full build (two generators, two corpora, 84 small fits): ~1-3 min

# phantom-study at toy size (tests/tiny_builds.py); 6 test patients (the fewest that get a p-value), a
# filter that keeps every row, both real-data caps, tiny U-Nets.
TINY_STUDY = [
    *TINY_BUILD,
    "source.phantom.patients=14",
    "source.phantom.test_patients=6",
    "generate.max_records_per_split=4",
    "filter.attribute_threshold={view: null, phase: null}",
    "filter.copy_threshold=1.0",
    "evaluate.real_caps=[0.5, 1.0]",
    "evaluate.confirmatory.cap=0.5",
    "evaluate.patience=1",
    "evaluate.segmentation.channels=[4, 8, 8]",
    "evaluate.segmentation.strides=[2, 2]",
    "evaluate.segmentation.steps=4",
    "evaluate.segmentation.finetune_steps=2",
    "evaluate.classification.finetune_steps=2",
]


def test_a_tiny_phantom_study_builds_its_whole_card(tmp_path):
    from typer.testing import CliRunner

    from synthecho import card
    from synthecho.cli import app
    from synthecho.downstream import STRATEGIES

    run_dir = tmp_path / "run"
    overrides = [arg for item in TINY_STUDY for arg in ("--set", item)]
    result = CliRunner().invoke(
        app,
        ["build", "--recipe", "phantom-study", "--run-dir", str(run_dir), *overrides],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output

    manifest = json.loads((run_dir / "manifest.json").read_text())
    downstream = manifest["downstream"]
    assert manifest["recipe"]["version"] == load_recipe("phantom-study").version  # the recipe as committed
    assert downstream["test"]["patients"] == 6
    for cap in ("cap-0.5", "cap-1"):
        for task in ("segmentation", "phase", "view"):
            entry = downstream["caps"][cap]["tasks"][task]
            assert sorted(entry["strategies"]) == sorted(STRATEGIES)  # manifests sort their keys
            for strategy in entry["strategies"].values():
                assert "skipped" not in strategy, (cap, task, strategy)
                assert len(strategy["converged"]) == 1
            pairs = {(e["a"], e["b"]) for e in entry["effects"]}
            assert ("pretrain_finetune", "warped_pretrain_finetune") in pairs and len(pairs) == 9
    family = downstream["confirmatory"]
    assert len(family["tests"]) == 6 and family["missing"] == []
    assert all(t["n"] == 6 and t["p"] is not None and t["p_holm"] >= t["p"] for t in family["tests"])

    readme = (run_dir / "README.md").read_text(encoding="utf-8")
    for title in STRATEGY_TITLES.values():
        assert f"| {title} |" in readme
    assert (
        "**Effects, 50% of real train patients**" in readme
        and "**Effects, 100% of real train patients**" in readme
    )
    assert "| synthetic → real fine-tune − warped real → real fine-tune | 6 |" in readme
    assert "**Confirmatory family.**" in readme and "| Holm p |" in readme
    assert "| converged |" in readme
    assert "On the phantom this study can show" in readme and "cannot show" in readme
    assert (run_dir / "reports" / "downstream.md").read_text().count("## Real data:") == 2

    repo = tmp_path / "repo"
    card.export_committed(run_dir, repo)
    assert card.check_cards(repo) == []
