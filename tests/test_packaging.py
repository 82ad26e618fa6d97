"""The package boundaries: setup.py ships every subpackage, evaluations/ stands alone (pagoda may use it, never the
reverse), and no entry point edits sys.path (scripts import the installed package)."""

import ast
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_setup_ships_every_subpackage():
    setup = (REPO / "setup.py").read_text()
    assert 'find_packages(include=["pagoda", "pagoda.*", "evaluations", "evaluations.*"])' in setup
    shipped = find_packages(where=str(REPO), include=["pagoda", "pagoda.*", "evaluations", "evaluations.*"])
    assert sorted(shipped) == ["evaluations", "pagoda", "pagoda.methods"]


def test_evaluations_imports_nothing_from_pagoda():
    offenders = {f"{path.name}: {module}" for path in sorted((REPO / "evaluations").glob("*.py"))
                 for module in _imported_modules(path) if module.split(".")[0] == "pagoda"}
    assert offenders == set()


def test_no_entry_point_or_module_edits_sys_path():
    folders = ("pagoda", "evaluations", "scripts", "bench", "tests")
    offenders = [str(path.relative_to(REPO)) for folder in folders for path in sorted((REPO / folder).rglob("*.py"))
                 if "sys.path.insert" in path.read_text() and path.name != "test_packaging.py"]
    assert offenders == []
