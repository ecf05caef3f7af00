"""What a settings dataclass's field types mean to the config loader and its reference:
type introspection (hints, unions, containers, literals) and the words for what a type takes."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from rtserve.schema import PORT_RANGE

__all__ = [
    "NONE_TYPE",
    "container_kind",
    "describe",
    "describe_members",
    "field_types",
    "init_fields",
    "is_dataclass_type",
    "is_scalar_type",
    "is_union",
    "required",
]

NONE_TYPE = type(None)

_HINTS: dict[type[Any], dict[str, Any]] = {}


def field_types(cls: type[Any]) -> dict[str, Any]:
    """The resolved type of each field of dataclass `cls` (cached)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def init_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of `cls` its constructor takes."""
    return [f for f in dataclasses.fields(cls) if f.init]


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def is_union(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is typing.Union or origin is types.UnionType


def container_kind(tp: Any) -> type | None:
    """list or dict when `tp` is one (bare or parameterized), else None."""
    origin = typing.get_origin(tp) or tp
    if origin is list or origin is dict:
        return cast(type, origin)
    return None


def required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def describe(tp: Any, meta: Mapping[str, Any]) -> str:
    if tp is NONE_TYPE:
        return "null"
    if is_union(tp):
        return describe_members(typing.get_args(tp), meta)
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(tp))
    if is_dataclass_type(tp) or container_kind(tp) is dict:
        return "a mapping"
    if container_kind(tp) is list:
        return "a list"
    if tp is bool:
        return "true or false"
    if tp is int:
        if meta.get("port"):
            return f"a port ({PORT_RANGE[0]} to {PORT_RANGE[1]})"
        return "a size (bytes, or 64KiB, 1MiB, 64KB, ...)" if meta.get("size") else "an integer"
    if tp is float:
        if meta.get("duration"):
            return "a duration (seconds, or 250ms, 10s, 1.5m, 2h, ...)"
        return "a number"
    if tp is str:
        return "a string"
    return "a value"


def describe_members(members: Sequence[Any], meta: Mapping[str, Any]) -> str:
    return " or ".join(dict.fromkeys(describe(member, meta) for member in members))


def is_scalar_type(tp: Any) -> bool:
    return tp in (int, float, bool, str, NONE_TYPE) or typing.get_origin(tp) is Literal
