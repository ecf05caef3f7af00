"""Environment variables in config values, and `.env` files.

`substitute(text, env)` replaces, anywhere in a string:

    ${NAME}            the value of NAME; an error naming NAME when it is not set
    ${NAME:-default}   the value of NAME, or `default` when NAME is unset or empty
    $${                a literal `${` (nothing is substituted)

A `$` not followed by `{` is left alone (`$HOME`, `a$b` and `$$` stay as written). The default
runs to the first `}` and is taken literally (no nested `${...}` inside it).

`load_dotenv(path)` reads `KEY=VALUE` lines:

    # comments and blank lines are skipped
    export KEY=value       `export ` is optional
    KEY=value  # comment   unquoted: trailing whitespace and ` #...` comments are dropped
    KEY='a ${literal}'     single quotes: taken as written, no substitution
    KEY="line\\n${OTHER}"   double quotes: \\n \\t \\r \\" \\\\ \\$ escapes, and ${...} substitution

Substitution in a `.env` file (unquoted and double-quoted values) looks names up in the
environment first, then in the keys defined above it in the same file.
"""

from __future__ import annotations

import os
import re
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path

from rtserve.errors import RtserveError

__all__ = [
    "DotenvError",
    "UnsetVariableError",
    "has_references",
    "load_dotenv",
    "parse_dotenv",
    "substitute",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_KEY_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", re.ASCII | re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class UnsetVariableError(RtserveError, ValueError):
    """`${NAME}` names a variable that is not set and gives no default."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"environment variable {name!r} is not set "
            f"(write ${{{name}:-default}} to give a default)"
        )


class DotenvError(RtserveError, ValueError):
    """A line of a `.env` file that cannot be read; `line` is 1-based."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}")


def has_references(text: str) -> bool:
    """Whether `substitute` could change `text` (it holds `${`)."""
    return "${" in text


def substitute(text: str, env: Mapping[str, str]) -> str:
    """`text` with every `${NAME}` / `${NAME:-default}` replaced and `$${` turned into `${`.

    Raises UnsetVariableError for an unset variable without a default, and ValueError for a
    reference that is not closed or whose name is not a valid variable name.
    """
    if "${" not in text:
        return text
    out: list[str] = []
    position = 0
    while True:
        start = text.find("${", position)
        if start < 0:
            out.append(text[position:])
            return "".join(out)
        if start > position and text[start - 1] == "$":
            out.append(text[position : start - 1])
            out.append("${")
            position = start + 2
            continue
        out.append(text[position:start])
        end = text.find("}", start + 2)
        if end < 0:
            raise ValueError(f"unclosed '${{' in {text!r} (write $${{ for a literal '${{')")
        body = text[start + 2 : end]
        name, separator, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"invalid variable reference '${{{body}}}': expected ${{NAME}} or "
                f"${{NAME:-default}} (write $${{ for a literal '${{')"
            )
        value = env.get(name)
        if separator:
            out.append(value if value else default)
        elif value is None:
            raise UnsetVariableError(name)
        else:
            out.append(value)
        position = end + 1


def load_dotenv(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables a `.env` file defines, in file order (see the module docstring).

    `env` (default: os.environ) is where `${NAME}` in the file's values is looked up first.
    Raises OSError when the file cannot be read and DotenvError for a bad line.
    """
    return parse_dotenv(Path(path).read_text(encoding="utf-8"), path=os.fspath(path), env=env)


def parse_dotenv(
    text: str, *, path: str = "<.env>", env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`load_dotenv` on text already read; `path` is what a DotenvError names."""
    values: dict[str, str] = {}
    lookup: Mapping[str, str] = ChainMap(dict(os.environ if env is None else env), values)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _KEY_LINE.fullmatch(line)
        if match is None:
            raise DotenvError(path, number, f"expected KEY=VALUE, got {raw!r}")
        key, rest = match.groups()
        try:
            values[key] = _dotenv_value(rest, lookup)
        except ValueError as exc:
            raise DotenvError(path, number, f"{key}: {exc}") from None
    return values


def _dotenv_value(rest: str, lookup: Mapping[str, str]) -> str:
    if rest.startswith("'"):
        end = rest.find("'", 1)
        if end < 0:
            raise ValueError("unclosed single quote")
        _trailing(rest[end + 1 :])
        return rest[1:end]
    if rest.startswith('"'):
        # Pieces between `\$` escapes are substituted apart, so an escaped `$` never starts
        # a reference; the pieces are then joined with literal dollars.
        pieces: list[list[str]] = [[]]
        index = 1
        while index < len(rest):
            char = rest[index]
            if char == '"':
                _trailing(rest[index + 1 :])
                return "$".join(substitute("".join(piece), lookup) for piece in pieces)
            if char == "\\" and index + 1 < len(rest) and rest[index + 1] in _ESCAPES:
                escaped = rest[index + 1]
                if escaped == "$":
                    pieces.append([])
                else:
                    pieces[-1].append(_ESCAPES[escaped])
                index += 2
                continue
            pieces[-1].append(char)
            index += 1
        raise ValueError("unclosed double quote")
    comment = re.search(r"\s#", rest)
    if comment is not None:
        rest = rest[: comment.start()]
    return substitute(rest.strip(), lookup)


def _trailing(after: str) -> None:
    after = after.strip()
    if after and not after.startswith("#"):
        raise ValueError(f"unexpected text after the closing quote: {after!r}")
