"""The import directions of STYLE.md: ml/ knows neither node/ nor storage/ (nor pynetdicom);
storage/ knows neither node/ nor ml/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"ml": {"node", "storage", "pynetdicom"}, "storage": {"node", "ml"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    wrong = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package]) for p in files}
    assert {p: names for p, names in wrong.items() if names} == {}
