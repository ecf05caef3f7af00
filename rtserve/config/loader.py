"""YAML onto settings dataclasses: the dataclass fields are the schema, nothing else.

`load_file(path, Schema, section="server")` parses the YAML with positions, substitutes
`${VAR}` / `${VAR:-default}` in string values (see `rtserve.config.env`), and walks the
nodes against the fields of `Schema`, building the dataclass with its own constructor (so
`__post_init__` checks run). Keys absent from the file keep the dataclass defaults. Every
problem found is collected; the caller gets one `ConfigErrors` listing all of them, one line
each, in file order:

    rtserve.yaml:5:5: server.hander: unknown key 'hander' — did you mean 'handler'?

What a field accepts follows from its type and metadata:

    int                 a YAML integer (or a float with no fraction); never true/false
    float               a YAML number; never true/false, never NaN
    bool                true/false (YAML 1.1 spellings: yes/no/on/off too)
    str                 any scalar but null, taken as written (`port: 8080` gives "8080")
    Literal[...]        one of the choices; the error lists them
    X | None            null gives None; otherwise as X
    list[X]             a YAML sequence
    dict[str, X]        a YAML mapping with any keys
    a dataclass         a YAML mapping of its fields; unknown keys are errors
    Any                 whatever the YAML holds, as plain Python values
    A | B               by the kind of node (scalar, list, mapping); the first that fits

Field metadata `size=True` (int fields) also takes sizes such as `64KiB` or `1MB`
(`parse_size`); `duration=True` (float fields) also takes durations such as `250ms` or `1.5m`
(`parse_duration`). Metadata of a list or dict field applies to its items.

A null (or empty) value of a field whose type is a dataclass, list or dict (not a union)
means "nothing here": the dataclass defaults, an empty list, an empty dict. Quoted values are
strings: `port: "8080"` is refused for an int field (the message says why). After `${...}`
substitution an unquoted value is read again as YAML would read it, so `port: ${PORT}` with
PORT=8080 is the integer 8080 and `cert: ${CERT:-}` is null when CERT is unset. Keys are never
substituted. Merge keys (`<<: *base`) work; a key given twice in one mapping is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, TypeVar, cast

import yaml

from rtserve.config.env import DotenvError, has_references, parse_dotenv, substitute
from rtserve.config.issues import ConfigErrors, ConfigIssue
from rtserve.config.schema_types import (
    NONE_TYPE,
    container_kind,
    describe,
    describe_members,
    field_types,
    init_fields,
    is_dataclass_type,
    is_scalar_type,
    is_union,
    required,
)
from rtserve.config.units import parse_duration, parse_size
from rtserve.schema import PORT_RANGE, OptionError

__all__ = [
    "ConfigErrors",
    "ConfigIssue",
    "SchemaKey",
    "load_file",
    "load_mapping",
    "schema_keys",
]

T = TypeVar("T")

_NULL = "tag:yaml.org,2002:null"
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_MERGE = "tag:yaml.org,2002:merge"
_NAME_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*", re.ASCII)


# A schema dataclass with this field (init=False) is told which of its keys the YAML set, so
# that what the YAML leaves out can keep a value set elsewhere (in code, say).
KEYS_GIVEN = "keys_given"


class SchemaKey(NamedTuple):
    """A leaf setting of a schema: dotted key, its dataclass field and its resolved type."""

    key: str
    field: dataclasses.Field[Any]
    type: Any


def schema_keys(schema: type[Any], prefix: str = "") -> list[SchemaKey]:
    """Every leaf setting of a settings dataclass, in declaration order.

    Fields whose type is a dataclass are sections and are descended into (their keys are
    `section.key`); every other field is a leaf. Fields with `init=False` are left out.
    """
    keys: list[SchemaKey] = []
    hints = field_types(schema)
    for f in init_fields(schema):
        tp = hints[f.name]
        if is_dataclass_type(tp):
            keys.extend(schema_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(SchemaKey(prefix + f.name, f, tp))
    return keys


def load_file(
    path: str | os.PathLike[str],
    schema: type[T],
    *,
    section: str | None = None,
    env: Mapping[str, str] | None = None,
    dotenv: bool | str | os.PathLike[str] = True,
) -> T:
    """Load `schema` from the YAML file at `path` (from its top-level key `section` if given).

    `${VAR}` references are looked up in `env` (default: os.environ), then in the `.env` file
    beside `path` when there is one (`dotenv=True`), or in the file `dotenv` names (which
    must exist); `dotenv=False` reads none. Raises ConfigErrors, listing every problem.
    """
    display = os.fspath(path)
    text = _read_text(Path(path), display)
    variables: Mapping[str, str] = os.environ if env is None else env
    if dotenv is not False:
        explicit = dotenv is not True
        dotenv_path = Path(path).parent / ".env" if dotenv is True else Path(dotenv)
        if explicit or dotenv_path.is_file():
            dotenv_display = os.fspath(dotenv_path)
            dotenv_text = _read_text(dotenv_path, dotenv_display)
            try:
                values = parse_dotenv(dotenv_text, path=dotenv_display, env=variables)
            except DotenvError as exc:
                raise ConfigErrors(
                    [ConfigIssue(exc.path, exc.line, None, "", exc.message)]
                ) from None
            variables = {**values, **variables}
    return load_mapping(text, schema, section=section, env=variables, filename=display)


def load_mapping(
    source: str | yaml.Node | None,
    schema: type[T],
    *,
    section: str | None = None,
    env: Mapping[str, str] | None = None,
    filename: str = "<string>",
) -> T:
    """Load `schema` from YAML text (or an already composed node; None: empty).

    `section` picks a top-level key (absent or null: the schema's defaults); without it the
    whole document is the schema's mapping. `filename` is what issues name as their file.
    `env` (default: os.environ) resolves `${VAR}`. Raises ConfigErrors.
    """
    if not is_dataclass_type(schema):
        raise TypeError(f"schema must be a dataclass type, not {schema!r}")
    node = _compose(source, filename) if isinstance(source, str) else source
    walker = _Walker(filename, os.environ if env is None else env)
    try:
        value = walker.load(node, schema, section)
    except RecursionError:
        raise ConfigErrors([ConfigIssue(filename, None, None, "", _TOO_DEEP)]) from None
    if walker.issues:
        issues = sorted(walker.issues, key=lambda issue: (issue.line or 0, issue.column or 0))
        raise ConfigErrors(issues)
    return cast(T, value)


def _read_text(path: Path, display: str) -> str:
    def fail(message: str) -> ConfigErrors:
        return ConfigErrors([ConfigIssue(display, None, None, "", message)])

    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None


def _compose(text: str, filename: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
        if exc.problem and exc.context:
            context = exc.context
            start = exc.context_mark
            if start is not None and mark is not None and start.line != mark.line:
                context += f", at line {start.line + 1}, column {start.column + 1}"
            message += f" ({context})"
        line = None if mark is None else mark.line + 1
        column = None if mark is None else mark.column + 1
        raise ConfigErrors([ConfigIssue(filename, line, column, "", message)]) from None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"invalid YAML: the character U+{code:04X} is not allowed in YAML"
        raise ConfigErrors([ConfigIssue(filename, line, column, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigErrors(
            [ConfigIssue(filename, None, None, "", f"invalid YAML: {exc}")]
        ) from None
    except RecursionError:  # PyYAML composes nested collections by recursion
        raise ConfigErrors([ConfigIssue(filename, None, None, "", _TOO_DEEP)]) from None


_TOO_DEEP: Final = "invalid YAML: collections nested too deeply"


# --- schema introspection -------------------------------------------------------------------


def _value_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The node of `key`'s value in a mapping node, or None."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return cast(yaml.Node, value_node)
    return None


def _child(keypath: str, key: str) -> str:
    if not _NAME_SEGMENT.fullmatch(key):
        escaped = key.replace("\\", "\\\\").replace('"', '\\"')
        return f'{keypath}["{escaped}"]'
    return f"{keypath}.{key}" if keypath else key


def _unknown_key(key: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if match:
        return f"unknown key {key!r} — did you mean {match[0]!r}?"
    if not known:
        return f"unknown key {key!r} (no keys are expected here)"
    return f"unknown key {key!r} (expected one of: {', '.join(known)})"


# --- the walk ---------------------------------------------------------------------------------


class _Fail:
    """The marker of a value that could not be built (its issues are already recorded)."""


_FAIL: Any = _Fail()


class _Invalid(Exception):
    """A scalar that does not fit the type; the message says why."""


@dataclass(slots=True)
class _Scalar:
    node: yaml.ScalarNode
    text: str  # after ${...} substitution
    tag: str  # after substitution, as YAML would resolve the new text of a plain scalar
    substituted: bool


class _Walker:
    def __init__(self, filename: str, env: Mapping[str, str]) -> None:
        self.filename = filename
        self.env = env
        self.issues: list[ConfigIssue] = []
        self._yaml = yaml.SafeLoader("")
        self._active: set[int] = set()  # collections being converted (aliases can loop)
        self._merging: set[int] = set()

    # -- issues

    def issue(self, node: yaml.Node | None, keypath: str, message: str) -> None:
        mark = None if node is None else node.start_mark
        line = None if mark is None else mark.line + 1
        column = None if mark is None else mark.column + 1
        self.issues.append(ConfigIssue(self.filename, line, column, keypath, message))

    def trial(self, attempt: Callable[[], Any]) -> tuple[Any, list[ConfigIssue]]:
        saved, self.issues = self.issues, []
        try:
            value = attempt()
        finally:
            found, self.issues = self.issues, saved
        return value, found

    # -- entry point

    def load(self, node: yaml.Node | None, schema: type[Any], section: str | None) -> Any:
        if section is None:
            return self.convert(node, schema, "", {})
        if node is None or _is_null_node(node):
            return self.instance(None, schema, section)
        if not isinstance(node, yaml.MappingNode):
            self.issue(
                node,
                "",
                f"the top level must be a mapping of sections ({section}: ...), "
                f"got {self.shown_node(node)}",
            )
            return _FAIL
        entries, _ = self.entries(node, "", check_duplicates=False)
        given = [key for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
        repeats = [key for key in given if key.value == section][1:]
        for repeat in repeats:
            self.issue(repeat, section, f"duplicate key {section!r}")
        found = entries.get(section)
        return self.convert(None if found is None else found[1], schema, section, {})

    # -- dispatch

    def convert(
        self, node: yaml.Node | None, tp: Any, keypath: str, meta: Mapping[str, Any]
    ) -> Any:
        if not isinstance(node, yaml.CollectionNode):
            return self.convert_node(node, tp, keypath, meta)
        if id(node) in self._active:
            self.issue(node, keypath, "a value that contains itself (an alias inside its anchor)")
            return _FAIL
        self._active.add(id(node))
        try:
            return self.convert_node(node, tp, keypath, meta)
        finally:
            self._active.discard(id(node))

    def convert_node(
        self, node: yaml.Node | None, tp: Any, keypath: str, meta: Mapping[str, Any]
    ) -> Any:
        converter = meta.get("convert")
        if converter is not None and node is not None:
            return self.converted(node, converter, keypath)
        if is_dataclass_type(tp):
            return self.instance(node, tp, keypath)
        assert node is not None, "only a dataclass stands for an absent node"
        if is_union(tp):
            return self.union(node, typing.get_args(tp), keypath, meta)
        if tp is Any or tp is object:
            return self.plain(node, keypath)
        container = container_kind(tp)
        if container is not None:
            if isinstance(node, yaml.ScalarNode):
                scalar = self.scalar(node, keypath)
                if scalar is None:
                    return _FAIL
                if scalar.tag == _NULL:
                    return container()
            args = typing.get_args(tp)
            if container is list:
                return self.sequence(node, args[0] if args else Any, keypath, meta)
            if args and args[0] is not str and args[0] is not Any:
                raise TypeError(f"unsupported mapping key type {args[0]!r} at {keypath!r}")
            return self.mapping(node, args[1] if args else Any, keypath, meta)
        if not is_scalar_type(tp):
            raise TypeError(f"unsupported field type {tp!r} at {keypath!r}")
        if not isinstance(node, yaml.ScalarNode):
            self.issue(node, keypath, f"expected {describe(tp, meta)}, got {self.shown_node(node)}")
            return _FAIL
        scalar = self.scalar(node, keypath)
        if scalar is None:
            return _FAIL
        try:
            return self.scalar_value(scalar, tp, meta)
        except _Invalid as exc:
            self.issue(node, keypath, str(exc))
            return _FAIL

    def converted(self, node: yaml.Node, converter: Callable[[str], Any], keypath: str) -> Any:
        """A string field whose metadata names a `convert` function (an import reference,
        say): its errors become issues at the value's position; null stays None."""
        if not isinstance(node, yaml.ScalarNode):
            self.issue(node, keypath, f"expected a string, got {self.shown_node(node)}")
            return _FAIL
        scalar = self.scalar(node, keypath)
        if scalar is None:
            return _FAIL
        if scalar.tag == _NULL:
            return None
        try:
            return converter(str(self.construct(scalar)))
        except Exception as exc:
            self.issue(node, keypath, str(exc) or type(exc).__name__)
            return _FAIL

    def union(
        self, node: yaml.Node, members: tuple[Any, ...], keypath: str, meta: Mapping[str, Any]
    ) -> Any:
        others = [member for member in members if member is not NONE_TYPE]
        if isinstance(node, yaml.ScalarNode):
            scalar = self.scalar(node, keypath)
            if scalar is None:
                return _FAIL
            if scalar.tag == _NULL and len(others) < len(members):
                return None
            candidates = [m for m in others if is_scalar_type(m) or m is Any or m is object]
            candidates.sort(key=lambda m: m is str or m is Any or m is object)
            failures: list[str] = []
            for member in candidates:
                try:
                    return self.scalar_value(scalar, member, meta)
                except _Invalid as exc:
                    failures.append(str(exc))
            if len(others) == 1 and failures:
                message = failures[0]
            else:
                expected = describe_members(members, meta)
                message = f"expected {expected}, got {self.shown(scalar)}"
            self.issue(node, keypath, message)
            return _FAIL
        if isinstance(node, yaml.SequenceNode):
            candidates = [m for m in others if container_kind(m) is list or m is Any or m is object]
        else:
            candidates = [
                m
                for m in others
                if is_dataclass_type(m) or container_kind(m) is dict or m is Any or m is object
            ]
        if not candidates:
            expected = describe_members(members, meta)
            self.issue(node, keypath, f"expected {expected}, got {self.shown_node(node)}")
            return _FAIL
        if len(candidates) == 1:
            return self.convert_node(node, candidates[0], keypath, meta)
        first: list[ConfigIssue] | None = None
        for member in candidates:
            value, found = self.trial(partial(self.convert_node, node, member, keypath, meta))
            if not found:
                return value
            first = found if first is None else first
        self.issues.extend(first or [])
        return _FAIL

    # -- mappings

    def entries(
        self, node: yaml.MappingNode, keypath: str, *, check_duplicates: bool = True
    ) -> tuple[dict[str, tuple[yaml.Node, yaml.Node]], bool]:
        """The keys of a mapping with `<<` merges applied; False when something was wrong."""
        if id(node) in self._merging:
            self.issue(node, keypath, "a mapping that merges itself")
            return {}, False
        self._merging.add(id(node))
        try:
            ok = True
            merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
            explicit: dict[str, tuple[yaml.Node, yaml.Node]] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                    sources = (
                        [value_node]
                        if isinstance(value_node, yaml.MappingNode)
                        else value_node.value
                        if isinstance(value_node, yaml.SequenceNode)
                        else None
                    )
                    if sources is None or not all(
                        isinstance(source, yaml.MappingNode) for source in sources
                    ):
                        self.issue(
                            value_node, keypath, "a merge (<<) takes a mapping or a list of them"
                        )
                        ok = False
                        continue
                    for source in sources:
                        found, source_ok = self.entries(source, keypath)
                        ok = ok and source_ok
                        for key, pair in found.items():
                            merged.setdefault(key, pair)  # earlier sources win
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    self.issue(key_node, keypath, "a key must be a plain name, not a collection")
                    ok = False
                    continue
                key = key_node.value
                if key in explicit:
                    if check_duplicates:
                        line = explicit[key][0].start_mark.line + 1
                        self.issue(
                            key_node,
                            _child(keypath, key),
                            f"duplicate key {key!r} (first given at line {line})",
                        )
                        ok = False
                    continue
                explicit[key] = (key_node, value_node)
            return {**merged, **explicit}, ok
        finally:
            self._merging.discard(id(node))

    def instance(self, node: yaml.Node | None, cls: type[Any], keypath: str) -> Any:
        null: yaml.Node | None = None  # an explicit null stands for an empty mapping
        if node is not None and isinstance(node, yaml.ScalarNode):
            scalar = self.scalar(node, keypath)
            if scalar is None:
                return _FAIL
            if scalar.tag == _NULL:
                null, node = node, None
        if node is None:
            missing = [f.name for f in init_fields(cls) if required(f)]
            for name in missing:  # `routes: [null]` names what the item lacks, where it is
                self.issue(null, _child(keypath, name), f"missing required key {name!r}")
            return _FAIL if missing else self.build(cls, {}, null, keypath)
        if not isinstance(node, yaml.MappingNode):
            self.issue(node, keypath, f"expected a mapping, got {self.shown_node(node)}")
            return _FAIL
        entries, ok = self.entries(node, keypath)
        known = {f.name: f for f in init_fields(cls)}
        hints = field_types(cls)
        kwargs: dict[str, Any] = {}
        for key, (key_node, value_node) in entries.items():
            path = _child(keypath, key)
            known_field = known.get(key)
            if known_field is None:
                self.issue(key_node, path, _unknown_key(key, list(known)))
                ok = False
                continue
            value = self.convert(value_node, hints[key], path, known_field.metadata)
            if value is _FAIL:
                ok = False
            else:
                kwargs[key] = value
        for name, f in known.items():
            if name not in entries and required(f):
                self.issue(node, _child(keypath, name), f"missing required key {name!r}")
                ok = False
        if not ok:
            return _FAIL
        return self.build(cls, kwargs, node, keypath)

    def build(
        self, cls: type[Any], kwargs: dict[str, Any], node: yaml.Node | None, keypath: str
    ) -> Any:
        try:
            made = cls(**kwargs)
        except OptionError as exc:
            self.issue(_value_node(node, exc.option) or node, _child(keypath, exc.option), str(exc))
            return _FAIL
        except ValueError as exc:
            self.issue(node, keypath, str(exc))
            return _FAIL
        if any(f.name == KEYS_GIVEN for f in dataclasses.fields(cls) if not f.init):
            setattr(made, KEYS_GIVEN, frozenset(kwargs))
        return made

    def mapping(
        self, node: yaml.Node, value_type: Any, keypath: str, meta: Mapping[str, Any]
    ) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.issue(node, keypath, f"expected a mapping, got {self.shown_node(node)}")
            return _FAIL
        entries, ok = self.entries(node, keypath)
        result: dict[str, Any] = {}
        for key, (_, value_node) in entries.items():
            value = self.convert(value_node, value_type, _child(keypath, key), meta)
            if value is _FAIL:
                ok = False
            else:
                result[key] = value
        return result if ok else _FAIL

    def sequence(
        self, node: yaml.Node, item_type: Any, keypath: str, meta: Mapping[str, Any]
    ) -> Any:
        if not isinstance(node, yaml.SequenceNode):
            self.issue(node, keypath, f"expected a list, got {self.shown_node(node)}")
            return _FAIL
        items = [
            self.convert(item, item_type, f"{keypath}[{index}]", meta)
            for index, item in enumerate(node.value)
        ]
        return _FAIL if any(item is _FAIL for item in items) else items

    def plain(self, node: yaml.Node, keypath: str) -> Any:
        """Any YAML as plain Python values (env substituted in strings)."""
        if isinstance(node, yaml.ScalarNode):
            scalar = self.scalar(node, keypath)
            if scalar is None:
                return _FAIL
            try:
                return self.scalar_value(scalar, Any, {})
            except _Invalid as exc:
                self.issue(node, keypath, str(exc))
                return _FAIL
        if isinstance(node, yaml.SequenceNode):
            return self.sequence(node, Any, keypath, {})
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, Any, keypath, {})
        self.issue(node, keypath, f"unexpected YAML node {node!r}")
        return _FAIL

    # -- scalars

    def scalar(self, node: yaml.ScalarNode, keypath: str) -> _Scalar | None:
        """The scalar after ${...} substitution; None (issue recorded) when that fails."""
        text, tag = node.value, node.tag
        if tag != _STR or not has_references(text):
            return _Scalar(node, text, tag, False)
        try:
            text = substitute(text, self.env)
        except ValueError as exc:
            self.issue(node, keypath, str(exc))
            return None
        if node.style is None:
            tag = self.resolve_plain(text)
        return _Scalar(node, text, tag, True)

    def resolve_plain(self, text: str) -> str:
        """The tag YAML gives `text` written as a plain (unquoted) scalar."""
        resolver: Any = self._yaml
        return cast(str, resolver.resolve(yaml.ScalarNode, text, (True, False)))

    def construct(self, scalar: _Scalar) -> Any:
        if scalar.tag == _STR:
            return scalar.text
        node = yaml.ScalarNode(scalar.tag, scalar.text, style=scalar.node.style)
        try:
            return self._yaml.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            raise _Invalid(
                f"cannot read {scalar.text!r} as {scalar.tag.rsplit(':', 1)[-1]}"
            ) from None

    def scalar_value(self, scalar: _Scalar, tp: Any, meta: Mapping[str, Any]) -> Any:
        """The value of `scalar` as `tp` (a scalar type, Literal or Any); _Invalid if it is not."""
        if typing.get_origin(tp) is Literal:
            return self.literal(scalar, typing.get_args(tp))
        if tp is Any or tp is object:
            return self.construct(scalar)
        if tp is NONE_TYPE:
            if scalar.tag == _NULL:
                return None
            raise _Invalid(f"expected null, got {self.shown(scalar)}")
        if tp is str:
            if scalar.tag == _NULL and not scalar.substituted:
                raise _Invalid("expected a string, got null (write '' for an empty string)")
            return scalar.text
        expected = f"expected {describe(tp, meta)}, got {self.shown(scalar)}"
        if scalar.tag == _NULL:
            raise _Invalid(expected)
        value = self.construct(scalar)
        if isinstance(value, bool):
            if tp is bool:
                return value
            raise _Invalid(expected)
        if tp is int:
            if meta.get("size") and isinstance(value, str | int | float):
                try:
                    return parse_size(value)
                except ValueError as exc:
                    raise _Invalid(str(exc)) from None
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int):
                if meta.get("port") and not PORT_RANGE[0] <= value <= PORT_RANGE[1]:
                    raise _Invalid(f"expected {describe(tp, meta)}, got {value}")
                return value
            if isinstance(value, float) and math.isfinite(value):
                raise _Invalid(f"expected an integer, got {scalar.text} (not a whole number)")
            raise _Invalid(expected)
        if tp is float:
            if meta.get("duration") and isinstance(value, str | int | float):
                try:
                    return parse_duration(value)
                except ValueError as exc:
                    raise _Invalid(str(exc)) from None
            if isinstance(value, int | float) and not math.isnan(value):
                return float(value)
            raise _Invalid(expected)
        raise _Invalid(expected)  # bool, given something else

    def literal(self, scalar: _Scalar, choices: tuple[Any, ...]) -> Any:
        value: Any = None
        if scalar.tag not in (_STR, _NULL):
            try:
                value = self.construct(scalar)
            except _Invalid:
                value = None
        for choice in choices:
            if choice is None:
                if scalar.tag == _NULL:
                    return None
            elif isinstance(choice, bool):
                if isinstance(value, bool) and value == choice:
                    return choice
            elif isinstance(choice, int | float):
                if not isinstance(value, bool) and isinstance(value, int | float):
                    if value == choice:
                        return choice
            elif isinstance(choice, str):
                if scalar.tag != _NULL and scalar.text == choice:
                    return choice
        listed = ", ".join(repr(choice) for choice in choices)
        message = f"expected one of {listed}, got {self.shown(scalar)}"
        words = [choice for choice in choices if isinstance(choice, str)]
        match = difflib.get_close_matches(scalar.text, words, n=1, cutoff=0.6)
        if match and scalar.tag != _NULL:
            message += f" — did you mean {match[0]!r}?"
        raise _Invalid(message)

    # -- showing what was found

    def shown(self, scalar: _Scalar) -> str:
        if scalar.tag == _NULL:
            return "null"
        if scalar.tag != _STR:
            return scalar.text
        shown = repr(scalar.text)
        if scalar.node.style in ("'", '"') and not scalar.substituted:
            plain_tag = self.resolve_plain(scalar.text)
            if plain_tag in (_INT, _FLOAT, _BOOL):
                shown += " (a string, because it is quoted)"
        return shown

    def shown_node(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if isinstance(node, yaml.ScalarNode):
            return self.shown(_Scalar(node, node.value, node.tag, False))
        return "something else"


def _is_null_node(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL
