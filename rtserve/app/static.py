"""Static files: a folder or one file, with content types, validators, ranges and sendfile.

Paths are checked twice against traversal: no `..`/`.` segment, backslash or NUL is accepted,
and the resolved path must lie inside the folder. Bodies above a small size go out with the
kernel's sendfile (or a worker-thread read under TLS), never a blocking read on the loop.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes

from rtserve.app.conditional import (
    format_http_date,
    if_range_allows,
    is_not_modified,
    make_etag,
    parse_range,
)
from rtserve.app.response import Response, check_header
from rtserve.errors import HTTPError
from rtserve.server.exchange import Exchange

if TYPE_CHECKING:
    from rtserve.app.request import Request

INLINE_LIMIT = 64 * 1024  # smaller files are read and sent in one write
# JSON has no charset parameter (RFC 8259 section 11): it is always UTF-8.
_TEXT_TYPES = ("text/", "application/javascript", "image/svg+xml")
# The types that matter most on the web, pinned so they do not depend on the machine's
# /etc/mime.types (which, for example, may or may not know .mjs or .wasm).
_WEB_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".pdf": "application/pdf",
}


def content_type_for(path: str) -> str:
    """The Content-Type for a file name (UTF-8 for text types)."""
    kind = _WEB_TYPES.get(os.path.splitext(path)[1].lower())
    if kind is None:
        kind, _ = mimetypes.guess_type(path, strict=True)
    if kind is None:
        return "application/octet-stream"
    if kind.startswith(_TEXT_TYPES) and "charset" not in kind:
        kind += "; charset=utf-8"
    return kind


# Errors that mean "there is no such file to serve": missing, a folder, a symlink loop, a
# name too long, or a special file that cannot be opened.
_NOT_FOUND = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO}
)


class FileResponse(Response):
    """A file from disk, honouring If-None-Match/If-Modified-Since, Range and HEAD."""

    __slots__ = ("path", "request")

    def __init__(self, path: str | Path, request: Request, headers: Any = None) -> None:
        super().__init__(b"", 200, headers, content_type_for(str(path)))
        self.path = str(path)
        self.request = request

    def send(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        # O_NONBLOCK: opening a FIFO for reading would otherwise block the event loop until
        # some writer appears; for regular files it changes nothing.
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags)
        except PermissionError:
            raise HTTPError(403) from None
        except OSError as exc:
            if exc.errno in _NOT_FOUND:
                raise HTTPError(404) from None
            raise  # EMFILE, EIO, ...: a server problem, not a missing file
        file = os.fdopen(fd, "rb")
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise HTTPError(404)
            pending = self._send_open(exchange, file, info)
        except BaseException:
            file.close()
            raise
        if pending is None:
            file.close()
        return pending

    def _send_open(
        self, exchange: Exchange, file: Any, info: os.stat_result
    ) -> Coroutine[Any, Any, None] | None:
        headers = self.request.headers
        size = info.st_size
        etag = make_etag(size, info.st_mtime_ns)
        self.set_header("etag", etag)
        self.set_header("last-modified", format_http_date(info.st_mtime))
        self.set_header("accept-ranges", "bytes")
        if is_not_modified(
            etag=etag,
            mtime=info.st_mtime,
            if_none_match=headers.get("if-none-match"),
            if_modified_since=headers.get("if-modified-since"),
        ):
            exchange.respond(304, self.raw_headers(exchange.client_and_scheme[1]))
            return None
        start, end = 0, size - 1
        status = 200
        byte_range = None
        if if_range_allows(headers.get("if-range"), etag, info.st_mtime):
            byte_range = parse_range(headers.get("range"), size)
        if byte_range is not None:
            start, end = byte_range
            status = 206
            self.set_header("content-range", f"bytes {start}-{end}/{size}")
        count = end - start + 1 if size else 0
        raw = self.raw_headers(exchange.client_and_scheme[1])
        if count <= INLINE_LIMIT or exchange.head_only:
            if exchange.head_only:
                exchange.start(status, raw, count)
                exchange.end()
            else:
                exchange.respond(status, raw, os.pread(file.fileno(), count, start))
            return None
        return self._sendfile(exchange, file, status, raw, start, count)

    async def _sendfile(
        self,
        exchange: Exchange,
        file: Any,
        status: int,
        raw: list[tuple[bytes, bytes]],
        start: int,
        count: int,
    ) -> None:
        try:
            exchange.start(status, raw, count)
            await exchange.sendfile(file, start, count)
            exchange.end()
        finally:
            file.close()


def safe_join(root: Path, relative: str) -> Path | None:
    """`root/relative` if it stays inside `root` and is not a dotfile; None otherwise."""
    if "\0" in relative or "\\" in relative:
        return None
    parts = [p for p in relative.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    if any(p.startswith(".") and p != ".well-known" for p in parts):
        return None  # dotfiles (.env, .git) are private unless under /.well-known
    try:
        candidate = (root / "/".join(parts)).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return None
    if candidate != root and root not in candidate.parents:
        return None
    return candidate


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except (OSError, ValueError):
        return False


def header_list(headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """`headers` as fields to send, each checked (ValueError for one that cannot be sent)."""
    fields = list((headers or {}).items())
    for name, value in fields:
        check_header(name, value)
    return fields


class StaticFiles:
    """A route target serving every file below `directory` (index.html for folders), each
    with `headers` added."""

    def __init__(self, directory: str | Path, headers: Mapping[str, str] | None = None) -> None:
        self.root = Path(directory).resolve()
        if not self.root.is_dir():
            raise ValueError(f"static folder {str(directory)!r} does not exist")
        self.headers = header_list(headers)

    def __call__(self, request: Request, path: str) -> Response:
        target = safe_join(self.root, path)
        if target is None:
            raise HTTPError(404)
        if _is_dir(target):
            if path and not path.endswith("/"):
                return _add_slash(request)
            target = target / "index.html"
        elif path.endswith("/") or not path:
            raise HTTPError(404)  # `file.txt/` names a folder, and there is none
        return FileResponse(target, request, self.headers)


def _add_slash(request: Request) -> Response:
    """301 to the folder's URL with a trailing slash, keeping the path's encoding and query."""
    from rtserve.app.response import RedirectResponse

    head = request.exchange.head
    location = quote_from_bytes(head.raw_path, safe="/%:@!$&'()*+,;=~-._") + "/"
    # `//host/` would be a protocol-relative URL pointing at another site.
    location = "/" + location.lstrip("/")
    if head.query_string:
        location += "?" + quote_from_bytes(head.query_string, safe="/%:@!$&'()*+,;=?~-._")
    return RedirectResponse(location, 301)


class StaticFile:
    """A route target serving one file, with `headers` added."""

    def __init__(self, file: str | Path, headers: Mapping[str, str] | None = None) -> None:
        self.file = Path(file).resolve()
        if not self.file.is_file():
            raise ValueError(f"static file {str(file)!r} does not exist")
        self.headers = header_list(headers)

    def __call__(self, request: Request) -> Response:
        return FileResponse(self.file, request, self.headers)


RTSERVE_JS = Path(__file__).resolve().parent.parent / "static" / "rtserve.js"


def rtserve_js(request: Request) -> Response:
    """`GET /rtserve.js`: the browser client of the channels (rtserve/static/rtserve.js).

    Cached by browsers and revalidated with its ETag, so a new rtserve version is picked up.
    """
    response = FileResponse(RTSERVE_JS, request)
    response.set_header("content-type", "application/javascript; charset=utf-8")
    response.set_header("cache-control", "no-cache")
    return response
