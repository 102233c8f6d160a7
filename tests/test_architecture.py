"""The architecture as checked facts: import layers, independent stages, no private imports, small files.

`lint-imports` reads the two contracts in pyproject.toml (layers: cli -> stages -> generators | quality |
downstream | sources -> core modules; independence of the stage modules). The other checks walk the
source with `ast`, so they hold for code that is never run by a test.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "synthecho"
MAX_LINES = 500
LONG_ALLOWED = {"sources/camus.py"}  # a reader with many cases


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` over the package under `root` (PYTHONPATH first, so a copy shadows the install)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        ["lint-imports", "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def test_import_contracts_are_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "injected", "contract"),
    [
        (
            "stages/filter.py",
            "from synthecho.stages import generate  # noqa",
            "stage modules are independent",
        ),
        ("quality/scores.py", "import synthecho.stages.build  # noqa", "layers"),
        ("io.py", "import synthecho.generators  # noqa", "layers"),
    ],
)
def test_an_injected_import_breaks_a_contract(tmp_path, module, injected, contract):
    """The contracts fire: a forbidden import in a temporary copy of the package fails `lint-imports`."""
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "synthecho", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    target = copy / "synthecho" / module
    target.write_text(target.read_text() + f"\n{injected}\n")
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and contract in result.stdout, result.stdout


def private_imports(path: Path) -> list[str]:
    """`from x import _name`, and `alias._name` where `alias` is a synthecho module imported here."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, module_aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            internal = node.level > 0 or (node.module or "").startswith("synthecho")
            for alias in node.names:
                if internal and alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                elif internal:
                    module_aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("synthecho"):
                    module_aliases.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_a_private_name_of_another():
    offenders = {
        path.relative_to(REPO).as_posix(): hits for path in modules() if (hits := private_imports(path))
    }
    assert offenders == {}


def test_the_private_import_check_fires(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from synthecho.io import _UMASK\nfrom synthecho import io\nio._UMASK\n")
    assert len(private_imports(sample)) == 2


def test_modules_are_readable_in_one_sitting():
    long = {
        path.relative_to(PACKAGE).as_posix(): lines
        for path in modules()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert set(long) <= LONG_ALLOWED, long


# Citations of documents that are not in this repository, and wording about the machines the project
# was developed on (users' machines are fine: "this machine has every outside input").
FORBIDDEN = re.compile(
    r"DESIGN\s*§|seed-papers|shared/reference|(?<!docs/)camus-format\.md|CONTRACTS\.md|these machines"
    r"|cannot be downloaded here"
    r"|can(?:not|'t) download here|on this machine\W+(?:it )?cannot be downloaded",
    re.IGNORECASE,
)


def shipped_text_files() -> list[Path]:
    files = [*modules(), REPO / "README.md"]
    files += sorted((PACKAGE / "recipes").glob("*.yaml")) + sorted((PACKAGE / "templates").glob("*.md"))
    return files


def test_no_reference_to_documents_outside_the_repository():
    hits = []
    for path in shipped_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == []


def prose_fstrings(path: Path, min_words: int = 5) -> list[str]:
    """f-strings whose literal text holds a sentence (>= `min_words` words), outside error messages."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_raise = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.Raise) for node in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and id(node) not in in_raise:
            text = " ".join(part.value for part in node.values if isinstance(part, ast.Constant))
            if len(re.findall(r"[A-Za-z]{2,}", text)) >= min_words:
                found.append(f"line {node.lineno}: {text.strip()[:60]!r}")
    return found


def test_the_card_prose_lives_in_the_template():
    for name in ("card.py", "card_context.py"):
        assert prose_fstrings(PACKAGE / name) == [], name


def test_the_prose_check_fires(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'n = 3\ntext = f"The corpus holds {n} rows that passed the filter."\nshort = f"{n} rows"\n'
    )
    assert len(prose_fstrings(sample)) == 1
