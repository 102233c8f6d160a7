"""benchmarks/cpu.py on a tiny demo build, and the `synthecho.profiling` accumulator it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_builds import TINY_BUILD

from synthecho import profiling

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmarks" / "cpu.py"

# The demo shrunk to seconds per stage (tests/tiny_builds.py), 4 rows per split.
TINY = [
    *TINY_BUILD,
    "source.phantom.patients=6",
    "generate.max_records_per_split=2",
    "evaluate.segmentation.steps=2",
    "evaluate.segmentation.finetune_steps=1",
    "evaluate.classification.finetune_steps=1",
]


@pytest.fixture
def clean_profiling():
    profiling.disable()
    profiling.reset()
    yield
    profiling.disable()
    profiling.reset()


def test_sections_accumulate_only_when_enabled(clean_profiling):
    with profiling.section("loop/forward"):
        time.sleep(0.001)
    profiling.add("loop/data", 1.0)
    assert profiling.report() == {}

    profiling.enable()
    for _ in range(3):
        with profiling.section("loop/forward"):
            time.sleep(0.002)
    profiling.add("loop/data", 0.5, count=2)
    worker = threading.Thread(target=lambda: profiling.add("loop/png", 0.25))
    worker.start()
    worker.join()
    found = profiling.report()
    assert found["loop/forward"]["count"] == 3 and found["loop/forward"]["seconds"] >= 0.006
    assert found["loop/data"] == {"seconds": 0.5, "count": 2, "worker_thread": False}
    assert found["loop/png"]["worker_thread"] is True

    profiling.reset()
    assert profiling.report() == {}
    profiling.disable()
    with profiling.section("loop/forward"):
        pass
    assert profiling.report() == {}


def test_a_section_counts_the_time_of_a_block_that_raised(clean_profiling):
    profiling.enable()
    with pytest.raises(ValueError), profiling.section("loop/backward"):
        raise ValueError("boom")
    assert profiling.report()["loop/backward"]["count"] == 1


def run_benchmark(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, str(BENCHMARK), *arguments], capture_output=True, text=True, cwd=REPO, env=env
    )


@pytest.mark.slow
def test_benchmark_times_every_stage_of_a_tiny_demo(tmp_path):
    out = tmp_path / "bench.json"
    sets = [part for value in TINY for part in ("--set", value)]
    done = run_benchmark("--recipe", "demo", *sets, "--json", str(out), "--no-progress")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    result = json.loads(out.read_text())
    assert list(result["stages"]) == ["prepare", "train", "generate", "filter", "evaluate", "card"]
    for name, stage in result["stages"].items():
        assert stage["seconds"] > 0 and stage["cpu_seconds"] > 0, name
    environment = result["environment"]
    assert environment["cpu_capability"] and environment["torch_threads"] >= 1
    assert "ATEN_CPU_CAPABILITY" in environment and "ONEDNN_MAX_CPU_ISA" in environment

    train = result["stages"]["train"]
    for loop in ("generator", "segmenter"):
        for part in ("data", "forward", "backward"):
            assert train["sections"][f"{loop}/{part}"]["count"] == 4, (loop, part)
        assert train["figures"][f"{loop}_seconds_per_step"] > 0
    assert train["sections"]["generator/checkpoint"]["count"] == 2  # steps 2 and 4
    assert train["sections"]["segmenter/validation"]["count"] == 2

    generate = result["stages"]["generate"]
    assert generate["figures"]["images_per_second"] > 0
    assert {"generate/sample", "shards/png", "shards/parquet"} <= set(generate["sections"])
    assert generate["sections"]["shards/png"]["worker_thread"] is True

    evaluate = result["stages"]["evaluate"]
    assert set(evaluate["figures"]["per_task"]) == {"segmentation", "phase", "view"}
    assert set(evaluate["figures"]["per_strategy"]) == {
        "real", "synthetic", "pretrain_finetune", "real_plus_synthetic"
    }  # fmt: skip
    assert {"downstream/data", "downstream/forward", "downstream/backward", "downstream/validation"} <= set(
        evaluate["sections"]
    )
    assert "attributes/forward" in result["stages"]["filter"]["sections"]

    assert "| stage | wall s | CPU s |" in done.stdout and "generator/forward" in done.stdout

    # Two saved runs compared without running anything: every delta of a run against itself is zero.
    compared = run_benchmark("--compare", str(out), str(out))
    assert compared.returncode == 0, compared.stderr
    assert "| train | generator s/step |" in compared.stdout
    assert "| **total** | wall s |" in compared.stdout and " +0 | +0.0 % |" in compared.stdout


def test_benchmark_refuses_a_stage_whose_inputs_are_missing(tmp_path):
    done = run_benchmark("--run-dir", str(tmp_path / "empty"), "--stages", "train")
    assert done.returncode != 0
    assert "input stage 'prepare' has not run" in done.stderr
