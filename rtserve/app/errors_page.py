"""Error responses: JSON for API clients, a small HTML page for browsers."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from rtserve.app.response import HTMLResponse, JSONResponse, Response
from rtserve.errors import HTTPError

if TYPE_CHECKING:
    from rtserve.app.request import Request


def wants_html(request: Request) -> bool:
    """True when the client prefers HTML (a browser), judged from its Accept header."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept


def error_response(request: Request, error: HTTPError, traceback: str | None = None) -> Response:
    """The response for `error`; `traceback` is included only when given (debug mode)."""
    if wants_html(request):
        title = f"{error.status} {html.escape(error.detail)}"
        trace = f"<pre>{html.escape(traceback)}</pre>" if traceback else ""
        page = (
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>{title}</title></head><body><h1>{title}</h1>{trace}</body></html>\n"
        )
        response: Response = HTMLResponse(page, error.status, error.headers)
    else:
        body: dict[str, object] = {"status": error.status, "detail": error.detail}
        if traceback:
            body["traceback"] = traceback
        response = JSONResponse({"error": body}, error.status, error.headers)
    return response
