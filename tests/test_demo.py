"""End to end: the README's main job (`synthecho build --recipe demo`) from nothing, interrupted and resumed.

This is the slow test of the suite (a few minutes on 2 cores): it is the product as a newcomer meets it,
and it checks the committed demo manifest and card against a fresh build.

What must match the committed manifest exactly: the prepared real data (numpy/Pillow only) and the
plan (row counts per split). The generated pixels come out of float CPU kernels whose results can
differ between CPU models and thread counts, so the shard content hashes are compared exactly when the
build runs on the same CPU model, torch version and thread count as the committed run, and otherwise the
quality figures must agree within a stated tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KID_TOLERANCE = 0.05  # absolute, domain features; real-vs-noise KID is > 1 on the phantom
PASS_RATE_TOLERANCE = 0.15


def committed_demo_manifest() -> dict:
    from synthecho.recipe import load_recipe

    version = load_recipe("demo").version
    return json.loads((REPO / "manifests" / "demo" / f"{version}.json").read_text())


def build_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "synthecho", "build", "--recipe", "demo", "--run-dir", str(run_dir)]


def start_and_kill_during_generate(run_dir: Path, log: Path, timeout: float = 1500) -> None:
    """Run `build` until the first generated shard is complete, then kill it (SIGKILL: no clean-up)."""
    with open(log, "wb") as out:
        process = subprocess.Popen(build_command(run_dir), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.time() + timeout
        try:
            while not list((run_dir / "shards" / "raw").glob(".markers/*.json")):
                if process.poll() is not None:
                    pytest.fail(f"build ended before generating a shard:\n{log.read_text()[-3000:]}")
                if time.time() > deadline:
                    pytest.fail("no shard was generated in time")
                time.sleep(0.5)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()


def shard_hashes(manifest: dict, kind: str) -> dict[str, str]:
    return {Path(s["path"]).name: s["content_hash"] for s in manifest["shards"][kind]}


def same_float_environment(a: dict, b: dict) -> bool:
    keys = ("cpu_model", "cpu_capability", "torch", "torch_threads")
    return all(a["environment"].get(k) == b["environment"].get(k) for k in keys)


@pytest.mark.slow
def test_demo_build_resumes_and_matches_the_committed_manifest(tmp_path):
    run_dir = tmp_path / "demo"

    # 1. Interrupt during generate, then rerun: prepare and train are not redone.
    start_and_kill_during_generate(run_dir, tmp_path / "first.log")
    train_marker = (run_dir / "stages" / "train.json").read_text()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    rerun = subprocess.run(build_command(run_dir), capture_output=True, text=True, cwd=REPO, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "prepare   skipped" in rerun.stdout and "train     skipped" in rerun.stdout, rerun.stdout
    assert (run_dir / "stages" / "train.json").read_text() == train_marker

    # 2. The outputs a newcomer is promised.
    for path in ("README.md", "manifest.json", "reports/generator_sample_grid.png", "reports/quality.md"):
        assert (run_dir / path).is_file(), path
    import datasets

    # The run's data/ folder loads as it is (shard markers live in a hidden folder datasets skips).
    corpus = datasets.load_dataset(str(run_dir / "data"), cache_dir=str(run_dir.parent / "hf_cache"))
    assert set(corpus) == {"train", "validation"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert corpus["train"].num_rows + corpus["validation"].num_rows == manifest["counts"]["passed"] > 0
    row = corpus["train"][0]
    assert row["image"].mode == "L" and row["mask"].mode == "P" and row["mask"].size == row["image"].size
    assert (
        manifest["generation"]["rows_planned"]
        and manifest["counts"]["planned"] == manifest["counts"]["generated"]
    )

    # 3. The committed manifest: exact where the computation is exact, tolerant where floats may differ.
    committed = committed_demo_manifest()
    assert manifest["source"]["real_content_sha256"] == committed["source"]["real_content_sha256"]
    assert manifest["generation"]["rows_planned"] == committed["generation"]["rows_planned"]
    if same_float_environment(manifest, committed):
        assert shard_hashes(manifest, "raw") == shard_hashes(committed, "raw")
        assert shard_hashes(manifest, "data") == shard_hashes(committed, "data")
    else:
        passed = manifest["counts"]["passed"] / manifest["counts"]["generated"]
        committed_passed = committed["counts"]["passed"] / committed["counts"]["generated"]
        assert abs(passed - committed_passed) <= PASS_RATE_TOLERANCE
        for split, values in committed["metrics"]["domain"].items():
            assert abs(manifest["metrics"]["domain"][split]["kid_mean"] - values["kid_mean"]) <= KID_TOLERANCE


def test_committed_cards_are_current():
    from typer.testing import CliRunner

    from synthecho.cli import app

    result = CliRunner().invoke(app, ["card", "--check", "--repo-root", str(REPO)])
    assert result.exit_code == 0, result.output
    assert (REPO / "cards" / "demo" / "README.md").is_file()
