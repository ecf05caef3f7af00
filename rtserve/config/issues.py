"""The errors of a config source: one ConfigIssue per problem (file:line:col, key path,
message), all of a source in one ConfigErrors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rtserve.errors import ConfigError

__all__ = ["ConfigErrors", "ConfigIssue"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config source; `line` and `column` are 1-based (None: unknown)."""

    file: str
    line: int | None
    column: int | None
    keypath: str
    message: str

    @property
    def where(self) -> str:
        """`file`, `file:line` or `file:line:column`."""
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"

    def __str__(self) -> str:
        if self.keypath:
            return f"{self.where}: {self.keypath}: {self.message}"
        return f"{self.where}: {self.message}"


class ConfigErrors(ConfigError):
    """Every problem found in one config source; str() is one line per issue."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
        self.where = self.issues[0].file if self.issues else None
