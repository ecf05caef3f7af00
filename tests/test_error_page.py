"""`@app.error_page`: the app's own answer to its HTTP errors, over a real socket."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from rtserve import App, HTMLResponse, HTTPError, JSONResponse, Request, Response
from rtserve.testing import ThreadedServer


def make_app(asynchronous: bool) -> App:
    app = App()

    @app.route("/")
    def index(request: Request) -> str:
        return "ok"

    @app.route("/teapot")
    def teapot(request: Request) -> str:
        raise HTTPError(418, "short and stout")

    @app.route("/bug")
    async def bug(request: Request) -> str:
        raise RuntimeError("a bug")

    @app.route("/page-fails")
    def page_fails(request: Request) -> str:
        raise HTTPError(409, "the page will fail on this one")

    def page(request: Request, error: HTTPError) -> Response | None:
        if error.status == 404:
            return HTMLResponse(f"<h1>Lost?</h1><p>{request.path} is not here.</p>")
        if error.status == 500:
            return JSONResponse({"oops": True}, status=503)  # a status of its own is kept
        if error.status == 405:
            return Response("not like that")
        if error.status == 409:
            raise ValueError("the error page has a bug too")
        return None  # the built-in page

    if asynchronous:

        @app.error_page
        async def async_page(request: Request, error: HTTPError) -> Response | None:
            return page(request, error)
    else:
        app.error_page(page)
    return app


@pytest.fixture(params=["sync", "async"], scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(request.param == "async"), access_log=False) as srv:
        yield srv


def test_the_apps_page_answers_its_errors(
    server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    with server.client() as c:
        assert c.get("/").text == "ok"
        lost = c.get("/nowhere")
        assert lost.status == 404 and "<p>/nowhere is not here.</p>" in lost.text
        assert lost.headers["content-type"] == "text/html; charset=utf-8"
        wrong = c.request("DELETE", "/")
        assert (wrong.status, wrong.text) == (405, "not like that")
        assert wrong.headers["allow"] == "GET, HEAD"  # the error's header, kept
        with caplog.at_level(logging.CRITICAL, logger="rtserve"):
            bug = c.get("/bug")
        assert (bug.status, bug.json()) == (503, {"oops": True})
        builtin = c.get("/teapot", headers={"Accept": "application/json"})
        assert builtin.status == 418 and builtin.json()["error"]["detail"] == "short and stout"
        with caplog.at_level(logging.ERROR, logger="rtserve"):
            failed = c.get("/page-fails", headers={"Accept": "application/json"})
        assert failed.status == 409 and "the page will fail" in failed.text  # built-in page
        assert "the error page failed" in caplog.text
