"""What a worker serves when the project does not start and nothing else serves: every request
gets a 503 with the error (file:line and the offending line), as a page for a browser and as
plain text for anything else, until a change lets a new worker start."""

from __future__ import annotations

import html
from typing import Any

from rtserve.app.app import App
from rtserve.app.errors_page import wants_html
from rtserve.app.request import Request
from rtserve.app.response import HTMLResponse, Response
from rtserve.errors import HTTPError
from rtserve.server.settings import ServerSettings

TITLE = "rtserve: the project does not start"
HINT = "Fix it and save: the server reloads by itself. Until then every request gets this 503."
NO_STORE = {"cache-control": "no-store"}


def error_app(lines: list[str], settings: ServerSettings) -> App:
    """An app with no routes whose every answer (its 404s and 405s) is the 503 of `lines`."""
    app = App(settings)
    plain = f"503 {TITLE}\n\n" + "\n".join(lines) + f"\n\n{HINT}\n"
    page = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>503 {html.escape(TITLE)}</title></head><body>"
        f"<h1>{html.escape(TITLE)}</h1><pre>{html.escape(chr(10).join(lines))}</pre>"
        f"<p>{html.escape(HINT)}</p></body></html>\n"
    )

    @app.error_page
    def answer(request: Request, error: HTTPError) -> Any:
        if wants_html(request):
            return HTMLResponse(page, 503, NO_STORE)
        return Response(plain, 503, NO_STORE)  # text/plain

    return app
