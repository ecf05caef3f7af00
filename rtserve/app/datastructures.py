"""Multi-valued mappings for headers, query strings and cookies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from http.cookies import SimpleCookie
from typing import TypeVar, overload
from urllib.parse import parse_qsl, unquote

from rtserve.errors import MissingArgument

T = TypeVar("T")


class MultiDict:
    """An ordered mapping where a key may repeat; `[key]` and `get` give the first value."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)
        self._map: dict[str, list[str]] = {}
        for key, value in self._items:
            self._map.setdefault(self._key(key), []).append(value)

    @staticmethod
    def _key(key: str) -> str:
        return key

    def __getitem__(self, key: str) -> str:
        return self._map[self._key(key)][0]

    @overload
    def get(self, key: str) -> str | None: ...
    @overload
    def get(self, key: str, default: T) -> str | T: ...
    def get(self, key: str, default: object = None) -> object:
        values = self._map.get(self._key(key))
        return values[0] if values else default

    def getall(self, key: str) -> list[str]:
        """Every value of `key`, in order (empty if absent)."""
        return list(self._map.get(self._key(key), ()))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._key(key) in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def keys(self) -> list[str]:
        return list(self._map)

    def items(self) -> list[tuple[str, str]]:
        """All pairs in arrival order, repeats included."""
        return list(self._items)

    def to_dict(self) -> dict[str, str]:
        """First value of each key."""
        return {k: v[0] for k, v in self._map.items()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MultiDict):
            return self._items == other._items
        if isinstance(other, dict):
            return self.to_dict() == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


class Headers(MultiDict):
    """Request headers: case-insensitive names, repeated fields kept."""

    __slots__ = ()

    @staticmethod
    def _key(key: str) -> str:
        return key.lower()

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        return cls((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)


class QueryParams(MultiDict):
    """Query string parameters, blank values kept. `[name]` of a missing one raises
    MissingArgument (a KeyError that answers 400 when the handler lets it through)."""

    __slots__ = ()

    def __getitem__(self, key: str) -> str:
        try:
            return super().__getitem__(key)
        except KeyError:
            raise MissingArgument("query parameter", key) from None

    @classmethod
    def parse(cls, query_string: bytes | str) -> QueryParams:
        if isinstance(query_string, bytes):
            query_string = query_string.decode("latin-1")
        if not query_string:
            return cls()
        return cls(parse_qsl(query_string, keep_blank_values=True, encoding="utf-8"))


def parse_cookies(header_values: Iterable[str]) -> dict[str, str]:
    """Cookies from `Cookie` header values; malformed pairs are skipped, first value wins.

    Percent-escapes are decoded, mirroring `Response.set_cookie`, which encodes them.
    """
    cookies: dict[str, str] = {}
    for header in header_values:
        for chunk in header.split(";"):
            name, sep, value = chunk.partition("=")
            name = name.strip()
            if not sep or not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                try:
                    parsed = SimpleCookie()
                    parsed.load(f"{name}={value}")
                    value = parsed[name].value if name in parsed else value[1:-1]
                except Exception:
                    value = value[1:-1]
            elif "%" in value:
                # Response.set_cookie percent-encodes values; decode them symmetrically.
                value = unquote(value)
            cookies.setdefault(name, value)
    return cookies
