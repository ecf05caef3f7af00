"""What `rtserve run --reload` watches: the project's files a change to which reloads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WATCHED_SUFFIXES = (".py", ".yaml", ".yml")
WATCHED_NAMES = (".env",)


class ProjectFilter:
    """What a change must touch to reload: .py, .yaml/.yml, .env and static route files;
    never in .git, __pycache__, node_modules, .pytest_cache (and the like) or a virtualenv."""

    def __init__(self, folder: Path) -> None:
        from watchfiles import DefaultFilter

        self.folder = folder
        self.static: list[Path] = []
        self._default = DefaultFilter()
        self._venvs: set[Path] = set()

    def __call__(self, change: Any, path: str) -> bool:
        if not self._default(change, path):
            return False
        p = Path(path)
        if not (
            p.suffix in WATCHED_SUFFIXES
            or p.name in WATCHED_NAMES
            or any(p == s or s in p.parents for s in self.static)
        ):
            return False
        return not self._in_virtualenv(p)

    def _in_virtualenv(self, path: Path) -> bool:
        for parent in path.parents:
            if parent == self.folder or self.folder not in parent.parents:
                return False
            if parent in self._venvs:
                return True
            if (parent / "pyvenv.cfg").exists():
                self._venvs.add(parent)
                return True
        return False


def changed_suffix(changed: list[str]) -> str:
    """ " (a.py, b.py changed)", the first three of `changed` named; "" for none."""
    if not changed:
        return ""
    shown = ", ".join(changed[:3])
    if len(changed) > 3:
        shown += f" and {len(changed) - 3} more"
    return f" ({shown} changed)"


def relative(path: Path, base: Path) -> str:
    """`path` relative to `base` when under it, else as it is."""
    try:
        return str(path.resolve().relative_to(base.resolve())) or "."
    except ValueError:
        return str(path)
