"""Path routing: literal and typed parameter segments, 404/405, automatic HEAD, url_for.

Literal paths resolve with one dict lookup; paths with parameters walk a segment tree, so the
cost of a match grows with the path's depth, not with the number of routes. Patterns:
`/rooms/{room}` (one segment), `{id:int}`, `{key:uuid}`, `{rest:path}` (the remainder, last).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from rtserve.errors import HTTPError, RouteError

if TYPE_CHECKING:
    from rtserve.app.websocket import WebSocketRoute

Converter = Callable[[str], Any]


def _to_str(segment: str) -> str:
    if not segment:
        raise ValueError("empty segment")
    return segment


def _to_int(segment: str) -> int:
    if not segment.isascii() or not segment.isdigit():
        raise ValueError("not an int")
    return int(segment)


CONVERTERS: dict[str, Converter] = {
    "str": _to_str,
    "int": _to_int,
    "uuid": uuid.UUID,
    "path": str,
}
# Tried in this order when several parameter kinds sit at the same place.
_SPECIFICITY = {"int": 0, "uuid": 1, "str": 2}


@dataclass(slots=True)
class Param:
    name: str
    kind: str


Segment = str | Param


def parse_pattern(pattern: str) -> list[Segment]:
    """Split `/a/{b:int}` into ['a', Param('b', 'int')]; raises RouteError when malformed."""
    if not pattern.startswith("/"):
        raise RouteError(f"route {pattern!r} must start with '/'")
    segments: list[Segment] = []
    names: set[str] = set()
    parts = pattern[1:].split("/")
    for index, part in enumerate(parts):
        if part.startswith("{") and part.endswith("}"):
            name, _, kind = part[1:-1].partition(":")
            kind = kind or "str"
            if not name.isidentifier():
                raise RouteError(f"route {pattern!r}: bad parameter name {name!r}")
            if kind not in CONVERTERS:
                raise RouteError(
                    f"route {pattern!r}: unknown type {kind!r} (one of {', '.join(CONVERTERS)})"
                )
            if kind == "path" and index != len(parts) - 1:
                raise RouteError(f"route {pattern!r}: a path parameter must come last")
            if name in names:
                raise RouteError(f"route {pattern!r}: parameter {name!r} appears twice")
            names.add(name)
            segments.append(Param(name, kind))
        elif "{" in part or "}" in part:
            raise RouteError(f"route {pattern!r}: a parameter must fill a whole segment")
        else:
            segments.append(part)
    return segments


@dataclass(slots=True)
class Endpoint:
    """What answers one method on one route, and how: the flags the app reads per request.

    is_class: `handler` is a Handler subclass (instantiated per request). stream: dispatched at
    the head, the body read as it arrives. xsrf_exempt: no XSRF token checked (the route
    authenticates otherwise). websocket: a WebSocket route's own options (None: an HTTP
    route). direct: `handler(exchange)` answers from the exchange alone, as a mounted
    component does (no Request, no path parameters, no XSRF check); it returns None or a
    coroutine, which runs as an `async def` handler's does.
    """

    handler: Any
    pattern: str
    segments: list[Segment]
    name: str | None = None
    is_class: bool = False
    stream: bool = False
    xsrf_exempt: bool = False
    websocket: WebSocketRoute | None = None
    direct: bool = False
    param_names: tuple[str, ...] = field(init=False)
    is_websocket: bool = field(init=False)

    def __post_init__(self) -> None:
        self.param_names = tuple(s.name for s in self.segments if isinstance(s, Param))
        self.is_websocket = self.websocket is not None


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    params: list[tuple[str, Converter, _Node]] = field(default_factory=list)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # method -> endpoint
    rest: dict[str, Endpoint] = field(default_factory=dict)  # {x:path} endpoints here

    def child_param(self, kind: str) -> _Node:
        for existing, _, node in self.params:
            if existing == kind:
                return node
        node = _Node()
        self.params.append((kind, CONVERTERS[kind], node))
        self.params.sort(key=lambda item: _SPECIFICITY.get(item[0], 9))
        return node


Match = tuple[Endpoint, dict[str, Any]]
RECENT_MATCHES = 1024


class Router:
    """Maps (method, path) to an Endpoint and its converted path parameters."""

    def __init__(self) -> None:
        self._literal: dict[str, dict[str, Endpoint]] = {}
        self._root = _Node()
        self._names: dict[str, Endpoint] = {}
        # Parameterised paths matched lately -> (method table, converted values).
        self._recent: dict[str | bytes, tuple[dict[str, Endpoint], tuple[Any, ...]]] = {}
        self.endpoints: list[tuple[str, Endpoint]] = []

    def add(
        self,
        pattern: str,
        methods: list[str],
        handler: Any,
        *,
        name: str | None = None,
        is_class: bool = False,
        stream: bool = False,
        xsrf_exempt: bool = False,
        websocket: WebSocketRoute | None = None,
        direct: bool = False,
    ) -> Endpoint:
        """Register `handler` for `methods` on `pattern` (the flags: see Endpoint); RouteError
        on any clash."""
        segments = parse_pattern(pattern)
        endpoint = Endpoint(
            handler, pattern, segments, name, is_class, stream, xsrf_exempt, websocket, direct
        )
        if name is not None:
            if name in self._names and self._names[name].pattern != pattern:
                raise RouteError(
                    f"route name {name!r} is used by {self._names[name].pattern!r} and {pattern!r}"
                )
            self._names[name] = endpoint
        if all(isinstance(s, str) for s in segments):
            table = self._literal.setdefault(pattern, {})
        else:
            node = self._root
            for segment in segments[:-1]:
                node = self._step(node, segment)
            last = segments[-1]
            if isinstance(last, Param) and last.kind == "path":
                table = node.rest
            else:
                table = self._step(node, last).endpoints
        self._recent.clear()
        for method in methods:
            method = method.upper()
            if method in table:
                raise RouteError(
                    f"{method} {pattern!r} conflicts with {method} {table[method].pattern!r}"
                )
            table[method] = endpoint
            self.endpoints.append((method, endpoint))
        return endpoint

    @staticmethod
    def _step(node: _Node, segment: Segment) -> _Node:
        if isinstance(segment, str):
            return node.literals.setdefault(segment, _Node())
        return node.child_param(segment.kind)

    def match(self, method: str, path: str, raw_path: bytes | None = None) -> Match:
        """Find the endpoint for a request; raises HTTPError 404 or 405 (with Allow)."""
        # An encoded slash belongs inside one segment, so such a path is never a literal match.
        table = self._literal.get(path)
        # 0x25 is "%": an int is looked for with memchr, where `b"%" in` raises and clears a
        # TypeError inside and `find` parses its arguments, both several times the cost.
        encoded = raw_path is not None and 0x25 in raw_path
        if table is not None and not encoded:
            endpoint = table.get(method)
            if endpoint is not None:
                return endpoint, {}
        key: str | bytes = path
        if encoded and raw_path is not None:
            key = raw_path
            if table is not None and b"%2F" in raw_path.upper():
                table = None
        values: tuple[Any, ...] = ()
        if table is None:
            cached = self._recent.get(key)
            if cached is not None:
                table, values = cached
            else:
                if type(key) is bytes:
                    parts = [unquote(p) for p in key.decode("latin-1")[1:].split("/")]
                else:
                    parts = path[1:].split("/")
                found: list[Any] = []
                table = _walk(self._root, parts, 0, found)
                if table is None:
                    raise HTTPError(404)
                values = tuple(found)
                if len(self._recent) >= RECENT_MATCHES:
                    self._recent.clear()  # bounded: a flood of distinct paths only resets it
                self._recent[key] = (table, values)
        endpoint = table.get(method)
        if endpoint is None:
            endpoint = table.get("GET") if method == "HEAD" else None
            if endpoint is None:
                raise HTTPError(405, headers={"Allow": ", ".join(_allowed(table))})
        if not values or endpoint.direct:  # a direct handler takes no parameters
            return endpoint, {}
        # Methods sharing a node may name their parameters differently: bind per endpoint.
        names = endpoint.param_names
        if len(values) == 1 == len(names):
            return endpoint, {names[0]: values[0]}
        return endpoint, dict(zip(names, values, strict=True))

    def url_for(self, name: str, **params: Any) -> str:
        """The path of the route called `name` with `params` filled in (and checked)."""
        endpoint = self._names.get(name)
        if endpoint is None:
            raise RouteError(f"no route named {name!r}")
        wanted = {s.name for s in endpoint.segments if isinstance(s, Param)}
        if set(params) != wanted:
            raise RouteError(
                f"route {name!r} needs parameters {sorted(wanted)}, got {sorted(params)}"
            )
        out = []
        for segment in endpoint.segments:
            if isinstance(segment, str):
                out.append(quote(segment))
                continue
            value = str(params[segment.name])
            if segment.kind != "path":
                try:
                    CONVERTERS[segment.kind](value)
                except ValueError:
                    raise RouteError(
                        f"route {name!r}: {segment.name}={value!r} is not a {segment.kind}"
                    ) from None
            out.append(quote(value, safe="/" if segment.kind == "path" else ""))
        return "/" + "/".join(out)


def _walk(
    node: _Node, parts: list[str], index: int, values: list[Any]
) -> dict[str, Endpoint] | None:
    """Depth-first match of `parts[index:]` below `node`; converted values go to `values`."""
    if index == len(parts):
        return node.endpoints or None
    part = parts[index]
    child = node.literals.get(part)
    if child is not None:
        found = _walk(child, parts, index + 1, values)
        if found is not None:
            return found
    for _, convert, param_child in node.params:
        try:
            value = convert(part)
        except ValueError:
            continue
        values.append(value)
        found = _walk(param_child, parts, index + 1, values)
        if found is not None:
            return found
        values.pop()
    if node.rest:
        values.append("/".join(parts[index:]))
        return node.rest
    return None


def _allowed(table: dict[str, Endpoint]) -> list[str]:
    methods = set(table)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
