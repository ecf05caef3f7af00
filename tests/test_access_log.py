"""The access log over a real socket: one line per request, secrets in the query hidden."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request

import pytest

from rtserve import App
from rtserve.testing import ThreadedServer


def make_app() -> App:
    app = App()

    @app.route("/hello")
    async def hello(request: object) -> str:
        return "hi"

    return app


def test_each_request_is_logged_without_the_tokens_in_its_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rtserve.access")
    with ThreadedServer(make_app()) as server:
        targets = ["/hello?name=ann", "/hello?token=eyJsecret.part&x=1", "/missing?api_key=k3y"]
        for target in targets:
            try:
                urllib.request.urlopen(server.url + target, timeout=10).close()
            except urllib.error.HTTPError as error:
                assert error.code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "rtserve.access"]
    assert len(lines) == 3
    assert '"GET /hello?name=ann HTTP/1.1" 200' in lines[0]
    assert '"GET /hello?token=[redacted]&x=1 HTTP/1.1" 200' in lines[1]
    assert '"GET /missing?api_key=[redacted] HTTP/1.1" 404' in lines[2]
    assert not any("secret" in line or "k3y" in line for line in lines)
