"""Compact errors for reload: `file:line: Error: message` and the offending line."""

from __future__ import annotations

import linecache
import re
import traceback
from collections.abc import Iterable
from pathlib import Path

from rtserve.config.loader import ConfigErrors, ConfigIssue
from rtserve.errors import ConfigError

_PY_WHERE = re.compile(r"(?P<file>\S+?\.py):(?P<line>\d+): (?P<error>.+)$")


def compact_issues(issues: Iterable[ConfigIssue], folder: Path) -> list[str]:
    """Config problems, one line each; a Python error behind one (a handler module that does
    not import) as `file:line: Error: message` and that line of source, once."""
    lines: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for issue in issues:
        match = _PY_WHERE.search(issue.message)
        if match is None:
            lines.append(str(issue))
            continue
        key = (match["file"], match["line"], match["error"])
        if key not in seen:
            seen.add(key)
            lines.extend(_located(match["file"], int(match["line"]), match["error"], folder))
    return lines


def compact_exception(exc: BaseException, folder: Path) -> list[str]:
    """`file:line: Error: message` (the innermost frame in the project, else the innermost
    frame) and that line of source."""
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        # The line as the compiler read it: the file may have changed again since.
        error = f"{type(exc).__name__}: {exc.msg}"
        return _located(exc.filename, exc.lineno, error, folder, exc.text)
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return [error]
    mine = [f for f in frames if _inside(Path(f.filename), folder)]
    frame = (mine or frames)[-1]
    return _located(frame.filename, frame.lineno or 0, error, folder)


def _located(
    filename: str, line: int, error: str, folder: Path, text: str | None = None
) -> list[str]:
    out = [f"{_short(filename, folder)}:{line}: {error}"]
    source = (text or (linecache.getline(filename, line) if line else "")).strip()
    if source:
        out.append(f"    {source}")
    return out


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
    except (ValueError, OSError):
        return False
    return True


def _short(filename: str, folder: Path) -> str:
    path = Path(filename)
    for base in (Path.cwd(), folder):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except (ValueError, OSError):
            continue
    return filename


def plain_error(exc: BaseException, folder: Path) -> str:
    """The error as `error: ...` lines, for the supervisor's own messages."""
    if isinstance(exc, ConfigErrors):
        return "\n".join(f"error: {line}" for line in compact_issues(exc.issues, folder))
    if isinstance(exc, ConfigError):
        return f"error: {exc}"
    return "\n".join(f"error: {line}" for line in compact_exception(exc, folder))
