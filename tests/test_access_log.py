"""The access log over a real socket: one line per request, secrets in the query hidden."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request

import pytest

from rtserve import App, Request
from rtserve.server.state import loggable_target
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


def test_percent_encoded_names_of_secret_parameters_are_redacted_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The app decodes query names before it reads them (?%74oken= is its `token`), so the log
    # must decode them before it decides what to hide.
    app = make_app()

    @app.route("/whoami")
    async def whoami(request: Request) -> str:
        return request.query.get("token", "") + "|" + request.query.get("api_key", "")

    caplog.set_level(logging.INFO, logger="rtserve.access")
    target = "/whoami?%74oken=eyJ.s3cret.sig&x=%74oken&api%5Fkey=k3y&tok%65n%3D=kept&a=1"
    with (
        ThreadedServer(app) as server,
        urllib.request.urlopen(server.url + target, timeout=10) as response,
    ):
        assert response.read() == b"eyJ.s3cret.sig|k3y"  # what the app took as secrets
    (line,) = [r.getMessage() for r in caplog.records if r.name == "rtserve.access"]
    assert "s3cret" not in line and "k3y" not in line
    assert (
        '"GET /whoami?%74oken=[redacted]&x=%74oken&api%5Fkey=[redacted]&tok%65n%3D=kept&a=1 '
        in line
    )


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        (b"/p", "/p"),
        (b"/p?a=1&b", "/p?a=1&b"),
        (b"/p?token=t&x=1", "/p?token=[redacted]&x=1"),
        (b"/p?TOKEN=t", "/p?TOKEN=t"),  # names are case-sensitive: not the app's `token`
        (b"/p?%74oken=t", "/p?%74oken=[redacted]"),
        (b"/p?%74%6F%6B%65%6E=t", "/p?%74%6F%6B%65%6E=[redacted]"),
        (b"/p?access%5ftoken=t&api_key=k", "/p?access%5ftoken=[redacted]&api_key=[redacted]"),
        (b"/p?x=1&token=a&token=b", "/p?x=1&token=[redacted]&token=[redacted]"),
        (b"/p?token", "/p?token"),  # no value to hide
        (b"/p?tok+en=t&%2Btoken=t", "/p?tok+en=t&%2Btoken=t"),  # other names once decoded
        (b"/p?a=%74oken&token=", "/p?a=%74oken&token=[redacted]"),
    ],
)
def test_loggable_target(target: bytes, logged: str) -> None:
    assert loggable_target(target) == logged
