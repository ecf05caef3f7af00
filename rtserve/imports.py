"""Import references: `module:name` strings in configuration naming Python objects (any layer)."""

from __future__ import annotations

import difflib
import importlib
import traceback
from pathlib import Path
from typing import Any


def import_object(reference: str) -> Any:
    """The object `module:name` names (`name` may be dotted); ValueError saying what is wrong.

    The project folder is expected on sys.path (the project loader puts it there).
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{reference!r} is not a reference like 'app:hello' (module:name)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ValueError(f"no module named {module_name!r} in the project") from None
        raise ValueError(f"importing {module_name!r} failed: {where_raised(exc)}") from None
    except Exception as exc:
        raise ValueError(f"importing {module_name!r} failed: {where_raised(exc)}") from None
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{module_name!r} has no {attribute!r}{hint}") from None
    return obj


def where_raised(exc: BaseException, folder: Path | None = None) -> str:
    """`file:line: Error: message` of the innermost frame of the error (for a broken edit):
    the innermost one inside `folder` (the project's own code) when there is one."""
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(exc.__traceback__))
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}"
    if folder is not None:
        base = folder.resolve()
        mine = [f for f in frames if Path(f.filename).resolve().is_relative_to(base)]
        frames = mine or frames
    if frames:
        last = frames[-1]
        return f"{last.filename}:{last.lineno}: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"
