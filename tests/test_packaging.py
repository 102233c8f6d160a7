"""The wheel holds what an installed synthecho needs: every recipe, every template, py.typed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a copy of the sources (the checkout is left without build/ or egg-info)."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(REPO / "synthecho", source / "synthecho", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: setuptools is already installed, and the suite must not need the network.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("synthecho-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_recipes_templates_and_py_typed(wheel):
    names = set(wheel.namelist())
    recipes = {p.name for p in (REPO / "synthecho" / "recipes").glob("*.yaml")}
    templates = {p.name for p in (REPO / "synthecho" / "templates").glob("*.md")}
    assert recipes and templates
    assert {f"synthecho/recipes/{name}" for name in recipes} <= names
    assert {f"synthecho/templates/{name}" for name in templates} <= names
    assert "synthecho/py.typed" in names
    for name in recipes:  # the shipped recipe is the one in the repository, byte for byte
        assert wheel.read(f"synthecho/recipes/{name}") == (REPO / "synthecho" / "recipes" / name).read_bytes()


def test_the_root_recipes_folder_is_the_packaged_one():
    """`recipes/` at the repository root (what the README shows users) is the folder that ships."""
    assert (REPO / "recipes").resolve() == (REPO / "synthecho" / "recipes").resolve()
