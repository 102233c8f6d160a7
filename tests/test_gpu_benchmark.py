"""benchmarks/gpu_generate.py at toy sizes on the CPU (the GPU run's code paths), and its report."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def module(name: str):
    spec = importlib.util.spec_from_file_location(f"synthecho_{name}", BENCHMARKS / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


report = module("gpu_report")


# The GPU machine has none of these (torchvision is version-locked to torch): the dry run runs as if
# they were not installed here either.
ABSENT = ("torchvision", "SimpleITK", "cleanfid")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> list[dict]:
    """Every job of the GPU run at toy sizes on the CPU (compile through the eager backend: no C++ build)."""
    out = tmp_path_factory.mktemp("gpu-dry-run")
    arguments = ["--tiny", "--device", "cpu", "--out", str(out), "--compile-backend", "eager"]
    script = (
        f"import runpy, sys; sys.modules.update(dict.fromkeys({ABSENT!r})); "
        f"sys.argv = [{str(BENCHMARKS / 'gpu_generate.py')!r}, *{arguments!r}]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return report.load_results(out / "results.jsonl")


@pytest.mark.slow
def test_dry_run_measures_every_job(dry_run):
    jobs = module("gpu_generate").JOBS
    ended = {r["job"]: r for r in dry_run if r["event"] in ("done", "failed", "skipped", "crashed")}
    assert {job: r["event"] for job, r in ended.items()} == dict.fromkeys(jobs, "done")

    generates = {f["case"]: f for f in report.figures(dry_run, "generate")}
    assert set(generates) == {case for case, _ in report.PLANNED}
    for figure in generates.values():
        assert figure["raw_images_per_second"] > 0 and figure["generate_images_per_second"] > 0
        assert figure["flops_per_image"] > 0
        assert figure["rows"] == figure["batch_size"] * figure["timed_iterations"]
    assert generates["controlnet-512"]["attention"] == "sdpa" and not generates["controlnet-512"]["compiled"]
    assert generates["controlnet-512-compiled"]["compiled"] == ["controlnet", "unet"]
    assert generates["controlnet-512-classic-attention"]["attention"] == "classic"
    assert generates["controlnet-512-channels-last"]["channels_last"] is True
    assert generates["sdm-256"]["attention"] == "classic"  # as synthecho builds MONAI's SPADE UNet
    assert generates["sdm-256-sdpa"]["attention"] == "sdpa"

    trains = {(f["recipe"], f["part"]): f for f in report.figures(dry_run, "train")}
    assert set(trains) == set(report.TRAIN_PARTS)
    assert all(f["seconds_per_step"] > 0 and f["timed_steps"] >= 1 for f in trains.values())

    fidelity = {(f["case"], f["variant"]): f for f in report.figures(dry_run, "fidelity")}
    assert ("controlnet-512", "fp32-compiled") in fidelity  # against the 512 px fp32 reference
    assert {("sdm-256", "fp16"), ("sd-256", "fp16"), ("ddpm-128", "fp16"), ("controlnet-256", "fp16")} <= set(
        fidelity
    )
    for figure in fidelity.values():
        assert figure["psnr_mean"] >= figure["psnr_min"] > 0 and 0 <= figure["mask_dice_difference"] <= 1

    # The ControlNet jobs (the first two) import no monai; nothing imports the packages the machine lacks.
    assert ended["controlnet-512-compiled"]["loaded"]["monai"] is False
    assert not any(ended["sdm-256-sdpa"]["loaded"][name] for name in ABSENT)


@pytest.mark.slow
def test_dry_run_renders_as_a_dry_run(dry_run):
    page = report.render(dry_run)
    assert "no GPU figures yet: not measured" in page and "DRY RUN" in page
    assert "Status: measured on" not in page and "not measured |" not in page.split("## Training")[0]


def test_report_skeleton_is_the_committed_page():
    """benchmarks/RESULTS.md is what gpu_report.py renders: the skeleton until GPU results are committed."""
    results = BENCHMARKS / "gpu_results.jsonl"
    records = report.load_results(results) if results.is_file() else []
    assert (BENCHMARKS / "RESULTS.md").read_text(encoding="utf-8") == report.render(records)
    if not records:
        assert "no GPU figures yet: not measured" in report.render([])


def test_device_command_fits_the_device_tool():
    assert len(report.DEVICE_COMMAND) <= 2000
    assert report.DEVICE_COMMAND.endswith("bash benchmarks/gpu_run.sh")
    assert (BENCHMARKS / "gpu_run.sh").is_file()
    wheels = report.wheel_list()
    assert wheels and all("==" in wheel for wheel in wheels)  # one pinned version each
    names = {wheel.split("==")[0].lower() for wheel in wheels}
    assert {"diffusers", "datasets", "monai", "pydantic", "num2words"} <= names
    assert not names & {"torch", "torchvision", "simpleitk", "clean-fid"}


def test_projected_hours_is_train_plus_generate():
    hours = report.projected_hours(30000, 0.3, 20000, 0.09, 9000, 20.0)
    assert hours["generator"] == pytest.approx(30000 * 0.3 / 3600)
    assert hours["segmenter"] == pytest.approx(20000 * 0.09 / 3600)
    assert hours["generate"] == pytest.approx(9000 / 20.0 / 3600)
    assert hours["total"] == pytest.approx((30000 * 0.3 + 20000 * 0.09 + 9000 / 20.0) / 3600)
    missing = report.projected_hours(30000, None, 20000, 0.09, 9000, 20.0)
    assert missing["total"] is None and missing["generate"] is not None
    assert report.recipe_facts("controlnet-9k")["rows"] == 9000  # 8000 train + 1000 validation


def test_safety_check_thresholds():
    safe = {"psnr_mean": 35.0, "psnr_min": 28.0, "mask_dice_difference": 0.005}
    assert report.is_safe(safe)
    assert not report.is_safe({**safe, "psnr_min": 20.0})
    assert not report.is_safe({**safe, "mask_dice_difference": 0.02})
