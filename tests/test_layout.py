"""The test suite's own layout: helpers live in tests/support/ (and the helper modules beside
the tests), so no test module imports from another test module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(source: Path) -> list[str]:
    """Every module that `source` imports (absolute names; relative ones as written)."""
    tree = ast.parse(source.read_text(), filename=str(source))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            if node.module is None:  # `from . import test_x`
                names += [base + alias.name for alias in node.names]
    return names


def imports_of_test_modules(folder: Path) -> list[str]:
    """`file: module` for each import of a test module (test_*.py) under `folder`."""
    found: list[str] = []
    for source in sorted(folder.rglob("*.py")):
        if ".venv" in source.parts:
            continue
        for name in imported_modules(source):
            if name.rsplit(".", 1)[-1].startswith("test_"):
                found.append(f"{source.relative_to(folder)}: {name}")
    return found


def test_no_test_module_imports_another() -> None:
    found = imports_of_test_modules(ROOT / "tests") + imports_of_test_modules(ROOT / "examples")
    assert found == [], "move the shared helper to tests/support/:\n" + "\n".join(found)
