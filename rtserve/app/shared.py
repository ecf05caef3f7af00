"""One response many requests are answered with as is (every long poll one publication
releases): its fields checked and encoded once, its gzipped form compressed once.

`App.respond_shared(request, shared)` sends it; each form is a `PreparedAnswer`, whose
HTTP/1.1 framing the connections share too.
"""

from __future__ import annotations

from rtserve.app.response import Response
from rtserve.protocol.http11 import encode_headers
from rtserve.server.prepared import PreparedAnswer


class SharedResponse:
    """A status, headers and body, the same for every request it answers (no cookies; a
    status with a body: not 1xx, 204 or 304)."""

    __slots__ = ("_encoded", "plain", "response", "size")

    def __init__(self, response: Response) -> None:
        if type(response).send is not Response.send or response.cookies:
            raise ValueError("a shared response is sent whole and sets no cookies")
        self.response = response
        self.size = len(response.body)
        self.plain = _prepared(response)  # as it is (below the app's gzip threshold)
        self._encoded: dict[bool, PreparedAnswer] = {}  # by whether the client takes gzip

    def copy(self) -> Response:
        """A response of its own, for a request that adds to it (a cookie)."""
        response = self.response
        return Response(response.body, response.status, response.headers)

    def encoded(self, gzip: bool) -> PreparedAnswer | None:
        """The form for clients that take gzip (or not) over the gzip threshold, once made."""
        return self._encoded.get(gzip)

    def keep_encoded(self, gzip: bool, response: Response) -> PreparedAnswer:
        """Keep `response`, made from `copy()` for a client that takes gzip (or not), as the
        form every such client gets."""
        prepared = self._encoded[gzip] = _prepared(response)
        return prepared


def _prepared(response: Response) -> PreparedAnswer:
    fields = encode_headers(response.raw_headers("http"))  # no cookies: the scheme is moot
    return PreparedAnswer(response.status, fields, response.body)
