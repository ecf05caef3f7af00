"""Parse HTML form bodies into a `FormData`.

Contract:
- `parse_form` dispatches on the Content-Type: `application/x-www-form-urlencoded` goes to
  `parse_urlencoded`, `multipart/form-data` to `parse_multipart` (RFC 7578); any other type
  is `HTTPError(415)`.
- Parsing is pure and linear in the size of the body: the body is searched with `bytes.find`,
  never with a regular expression.
- On any input a parser either returns a `FormData` or raises `HTTPError`: 400 for malformed
  input, 413 when a limit (number of fields, size of a file) is exceeded. Nothing else escapes.
  Error details never echo client input.
- Text is UTF-8. Multipart parts without a filename become `str`; parts with a filename (even
  an empty one, as browsers send for an empty file input) become `UploadFile`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeAlias, TypeVar, overload
from urllib.parse import unquote_to_bytes

from rtserve.errors import HTTPError, MissingArgument

__all__ = [
    "DEFAULT_MAX_FIELDS",
    "DEFAULT_MAX_FILE_SIZE",
    "DEFAULT_MAX_PART_HEADERS",
    "FormData",
    "FormValue",
    "UploadFile",
    "parse_content_type",
    "parse_form",
    "parse_multipart",
    "parse_urlencoded",
]

DEFAULT_MAX_FIELDS = 1000
DEFAULT_MAX_FILE_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_PART_HEADERS = 8 * 1024

_T = TypeVar("_T")

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# RFC 2046 section 5.1.1 `bchars`.
_BOUNDARY_CHARS = frozenset(_ALNUM + "'()+_,-./:=? ")
# RFC 9110 section 5.6.2 `tchar`.
_TOKEN_CHARS = frozenset(_ALNUM + "!#$%&'*+-.^_`|~")


class UploadFile:
    """One uploaded file of a multipart form, held in memory.

    `filename` is whatever the client sent: never use it as a path without sanitising it.
    `headers` holds the part's headers with lower-case names.
    """

    __slots__ = ("content_type", "data", "filename", "headers", "name")

    def __init__(
        self,
        name: str,
        filename: str,
        content_type: str,
        headers: dict[str, str],
        data: bytes,
    ) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.headers = headers
        self.data = data

    def __repr__(self) -> str:
        return (
            f"UploadFile(name={self.name!r}, filename={self.filename!r}, "
            f"content_type={self.content_type!r}, size={len(self.data)})"
        )


FormValue: TypeAlias = str | UploadFile


class FormData:
    """An ordered, multi-valued mapping of field name to `str` or `UploadFile`.

    Indexing and `get` give the first value of a name, `getall` every value in order.
    Iteration and `len` cover unique names; `items` keeps every pair in submission order.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, FormValue]] = ()) -> None:
        self._items: list[tuple[str, FormValue]] = list(items)
        self._index: dict[str, list[FormValue]] = {}
        for name, value in self._items:
            self._index.setdefault(name, []).append(value)

    def __getitem__(self, name: str) -> FormValue:
        """The first value of `name`; MissingArgument (a KeyError that answers 400) if none."""
        try:
            return self._index[name][0]
        except KeyError:
            raise MissingArgument("form field", name) from None

    @overload
    def get(self, name: str) -> FormValue | None: ...

    @overload
    def get(self, name: str, default: _T) -> FormValue | _T: ...

    def get(self, name: str, default: object = None) -> object:
        """Return the first value of `name`, or `default` if there is none."""
        values = self._index.get(name)
        return values[0] if values else default

    def getall(self, name: str) -> list[FormValue]:
        """Return every value of `name` in order (an empty list if there is none)."""
        return list(self._index.get(name, ()))

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def items(self) -> list[tuple[str, FormValue]]:
        """Return every (name, value) pair in submission order, repeated names included."""
        return list(self._items)

    def files(self) -> list[tuple[str, UploadFile]]:
        """Return the (name, UploadFile) pairs in submission order."""
        return [(name, value) for name, value in self._items if isinstance(value, UploadFile)]

    def __repr__(self) -> str:
        return f"FormData({self._items!r})"


def parse_urlencoded(body: bytes, *, max_fields: int = DEFAULT_MAX_FIELDS) -> FormData:
    """Parse an `application/x-www-form-urlencoded` body: UTF-8, `+` is a space.

    A pair without `=` gets an empty value; empty pairs (`a=1&&b=2`) are skipped.
    Raises HTTPError 413 for more than `max_fields` pairs, 400 for text that is not UTF-8.
    """
    pairs: list[tuple[str, FormValue]] = []
    for chunk in body.split(b"&"):
        if not chunk:
            continue
        if len(pairs) >= max_fields:
            raise HTTPError(413, f"too many form fields (limit {max_fields})")
        name, _, value = chunk.partition(b"=")
        pairs.append((_decode_urlencoded(name), _decode_urlencoded(value)))
    return FormData(pairs)


def _decode_urlencoded(raw: bytes) -> str:
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "form data is not valid UTF-8") from None


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type-like header value into a lower-cased type and its parameters.

    Parameter names are lower-cased; quoted-string values are unquoted with backslash escapes
    honoured; the first of repeated parameters wins; malformed parameters are skipped.
    """
    media_type, _, rest = value.partition(";")
    return media_type.strip(" \t").lower(), _parse_params(rest)


def _parse_params(text: str) -> dict[str, str]:
    # A character scanner rather than split(";"): quoted values may contain ";" and "=".
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        start = i
        while i < n and text[i] not in "=;":
            i += 1
        name = text[start:i].strip(" \t").lower()
        if i >= n or text[i] == ";":
            i += 1
            continue
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            value = "".join(chars)
            while i < n and text[i] != ";":
                i += 1
        else:
            start = i
            while i < n and text[i] != ";":
                i += 1
            value = text[start:i].strip(" \t")
        i += 1
        if name and name not in params:
            params[name] = value
    return params


def parse_multipart(
    body: bytes,
    boundary: str,
    *,
    max_fields: int = DEFAULT_MAX_FIELDS,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    max_part_headers: int = DEFAULT_MAX_PART_HEADERS,
) -> FormData:
    """Parse a `multipart/form-data` body (RFC 7578) delimited by `boundary`.

    Raises HTTPError 400 for malformed input and 413 for more than `max_fields` parts or a
    file larger than `max_file_size` bytes. The preamble and epilogue are ignored.
    """
    if not _valid_boundary(boundary):
        raise HTTPError(400, "invalid multipart boundary")
    dash_boundary = b"--" + boundary.encode("ascii")
    delimiter = b"\r\n" + dash_boundary
    if body.startswith(dash_boundary):
        pos = len(dash_boundary)
    else:
        found = body.find(delimiter)
        if found < 0:
            raise HTTPError(400, "multipart body does not contain the boundary")
        pos = found + len(delimiter)

    parts: list[tuple[str, FormValue]] = []
    while True:
        if pos >= len(body):
            raise HTTPError(400, "multipart body is missing its closing boundary")
        if body.startswith(b"--", pos):
            return FormData(parts)
        start = _skip_boundary_line_end(body, pos)
        end = body.find(delimiter, start)
        if end < 0:
            raise HTTPError(400, "multipart body is missing its closing boundary")
        if len(parts) >= max_fields:
            raise HTTPError(413, f"too many form fields (limit {max_fields})")
        parts.append(_parse_part(body, start, end, max_file_size, max_part_headers))
        pos = end + len(delimiter)


def _valid_boundary(boundary: str) -> bool:
    return (
        0 < len(boundary) <= 70
        and all(c in _BOUNDARY_CHARS for c in boundary)
        and not boundary.endswith(" ")
    )


def _skip_boundary_line_end(body: bytes, pos: int) -> int:
    """Skip RFC 2046 transport padding and the CRLF that end a boundary line."""
    n = len(body)
    while pos < n and body[pos] in b" \t":
        pos += 1
    if not body.startswith(b"\r\n", pos):
        raise HTTPError(400, "malformed multipart boundary line")
    return pos + 2


def _parse_part(
    body: bytes, start: int, end: int, max_file_size: int, max_part_headers: int
) -> tuple[str, FormValue]:
    if body.startswith(b"\r\n", start, end):
        headers_end, content_start = start, start + 2
    else:
        # The header block (its final CRLF included) may hold at most max_part_headers bytes.
        limit = min(end, start + max_part_headers + 2)
        blank = body.find(b"\r\n\r\n", start, limit)
        if blank < 0:
            if end > limit:
                raise HTTPError(400, "multipart part headers too large")
            raise HTTPError(400, "multipart part headers not followed by a blank line")
        headers_end, content_start = blank + 2, blank + 4
    headers = _parse_part_headers(body[start:headers_end])

    disposition = headers.get("content-disposition")
    if disposition is None:
        raise HTTPError(400, "multipart part without Content-Disposition")
    kind, params = parse_content_type(disposition)
    if kind != "form-data":
        raise HTTPError(400, "multipart part is not form-data")
    name = params.get("name")
    if name is None:
        raise HTTPError(400, "multipart part without a field name")
    filename = _part_filename(params)

    if filename is None:
        try:
            return name, body[content_start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "form field is not valid UTF-8") from None
    if end - content_start > max_file_size:
        raise HTTPError(413, f"uploaded file too large (limit {max_file_size} bytes)")
    content_type = headers.get("content-type") or "application/octet-stream"
    return name, UploadFile(name, filename, content_type, headers, body[content_start:end])


def _parse_part_headers(raw: bytes) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "multipart part headers are not valid UTF-8") from None
    headers: dict[str, str] = {}
    for line in text.split("\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(":")
        if (
            not colon
            or not name
            or not all(c in _TOKEN_CHARS for c in name)
            or "\r" in value
            or "\n" in value
        ):
            raise HTTPError(400, "malformed multipart part header")
        name = name.lower()
        if name in headers:
            raise HTTPError(400, "duplicate multipart part header")
        headers[name] = value.strip(" \t")
    return headers


def _part_filename(params: dict[str, str]) -> str | None:
    extended = params.get("filename*")
    if extended is not None:
        decoded = _decode_ext_value(extended)
        if decoded is not None:
            return decoded
    plain = params.get("filename")
    if plain is None and extended is not None:
        raise HTTPError(400, "invalid filename* parameter")
    return plain


def _decode_ext_value(value: str) -> str | None:
    """Decode an RFC 8187 ext-value (`UTF-8'lang'percent%20encoded`); None if invalid."""
    charset, quote1, rest = value.partition("'")
    _language, quote2, encoded = rest.partition("'")
    charset = charset.lower()
    if not (quote1 and quote2) or charset not in ("utf-8", "iso-8859-1"):
        return None
    try:
        return unquote_to_bytes(encoded).decode(charset)
    except UnicodeError:
        return None


def parse_form(
    content_type: str,
    body: bytes,
    *,
    max_fields: int = DEFAULT_MAX_FIELDS,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    max_part_headers: int = DEFAULT_MAX_PART_HEADERS,
) -> FormData:
    """Parse `body` as the form its `content_type` announces.

    Raises HTTPError 415 for a type other than urlencoded or multipart/form-data, 400 for a
    multipart type without a boundary, and whatever the chosen parser raises.
    """
    media_type, params = parse_content_type(content_type)
    if media_type == "application/x-www-form-urlencoded":
        return parse_urlencoded(body, max_fields=max_fields)
    if media_type == "multipart/form-data":
        boundary = params.get("boundary")
        if not boundary:
            raise HTTPError(400, "multipart/form-data without a boundary")
        return parse_multipart(
            body,
            boundary,
            max_fields=max_fields,
            max_file_size=max_file_size,
            max_part_headers=max_part_headers,
        )
    raise HTTPError(415, "expected an urlencoded or multipart/form-data body")
