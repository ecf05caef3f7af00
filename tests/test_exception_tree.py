"""Every exception a user can meet is under the one documented root, `rtserve.RtserveError`,
and the tree drawn in rtserve/errors.py's docstring and docs/api.md names each of them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import rtserve
import rtserve.errors
from rtserve.errors import RtserveError

API_MD = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def public_exceptions() -> dict[str, type[BaseException]]:
    """`module.Name` of each exception class that a module of rtserve defines under a public
    name (private ones, `_Name`, are control flow that never leaves their module)."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(rtserve.__path__, "rtserve."):
        if module_info.name.rsplit(".", 1)[-1] == "__main__":  # runs the CLI when imported
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_public_exception_is_an_rtserve_error() -> None:
    exceptions = public_exceptions()
    assert len(exceptions) > 20  # the walk found the package's modules
    outside = sorted(name for name, cls in exceptions.items() if not issubclass(cls, RtserveError))
    assert outside == [], "derive these from rtserve.errors.RtserveError: " + ", ".join(outside)


def test_the_documented_tree_names_every_public_exception() -> None:
    tree = set(re.findall(r"\w+", rtserve.errors.__doc__ or ""))
    api = set(re.findall(r"\w+", API_MD.read_text()))
    names = sorted({cls.__name__ for cls in public_exceptions().values()})
    assert [n for n in names if n not in tree] == [], "missing from rtserve/errors.py's tree"
    assert [n for n in names if n not in api] == [], "missing from docs/api.md's tree"
