"""A Django ASGI project (tests/apps/djsite) hosted by rtserve as the whole site (and again at
a prefix): a view, the admin's static files, a streaming response, and a view publishing to
rtserve's channels."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from rtserve import App
from rtserve.testing import ThreadedServer

WAIT = 5.0


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer[App]]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.djsite.settings")
    from tests.apps.djsite.asgi import application

    app = App()
    app.channel("news", history=10)
    app.mount("", application)
    # Again at a prefix: its views see it as their SCRIPT_NAME. (Django's static files handler
    # matches STATIC_URL against the whole path, so it serves them only without a prefix.)
    app.mount("/site", application)
    with ThreadedServer(app, access_log=False) as served:
        yield served


def test_a_view_sees_the_mount_as_its_script_name(server: ThreadedServer[App]) -> None:
    response = httpx.get(f"{server.url}/site/hello/ada")
    assert response.json() == {"hello": "ada", "script_name": "/site", "path": "/site/hello/ada"}
    assert httpx.get(f"{server.url}/site/nothing").status_code == 404
    whole = httpx.get(f"{server.url}/hello/bob").json()
    assert (whole["script_name"], whole["path"]) == ("", "/hello/bob")


def test_the_admins_static_files(server: ThreadedServer[App]) -> None:
    response = httpx.get(f"{server.url}/static/admin/css/base.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert b"body" in response.content


def test_a_streaming_response(server: ThreadedServer[App]) -> None:
    with httpx.stream("GET", f"{server.url}/numbers") as response:
        lines = list(response.iter_lines())
    assert lines == ["0", "1", "2", "3"]
    assert response.headers["transfer-encoding"] == "chunked"


def test_a_view_publishes_to_a_channel_subscriber(server: ThreadedServer[App]) -> None:
    with connect(f"ws://127.0.0.1:{server.port}/rt/ws") as ws:
        ws.send(json.dumps({"id": 1, "op": "connect"}))
        ws.recv(WAIT)
        ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "news"}))
        ws.recv(WAIT)
        answer = httpx.post(f"{server.url}/announce", content=b"from django")
        assert answer.status_code == 200
        assert answer.json() == {"offset": 1}
        pushed = json.loads(ws.recv(WAIT))
    assert (pushed["channel"], pushed["data"]) == ("news", {"text": "from django"})
