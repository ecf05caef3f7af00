"""A WSGI app (Flask) hosted through a2wsgi: in its bounded thread pool, never on the loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from flask import Flask, Response, request, stream_with_context
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from rtserve import App
from rtserve.testing import ThreadedServer
from tests.support.waiting import until

WAIT = 5.0


def build_flask(release: threading.Event, inside: list[str], lock: threading.Lock) -> Flask:
    flask = Flask("hosted")

    @flask.get("/hello/<name>")
    def hello(name: str) -> dict[str, Any]:
        return {"hello": name, "script_name": request.script_root, "path": request.path}

    @flask.post("/form")
    def form() -> str:
        return f"{request.form['a']}+{request.form['b']}"

    @flask.post("/upload")
    def upload() -> str:
        return str(len(request.get_data()))

    @flask.get("/lines")
    def lines() -> Response:
        def generate() -> Iterator[str]:
            for n in range(3):
                yield f"line {n}\n"

        return Response(stream_with_context(generate()), mimetype="text/plain")

    @flask.get("/block")
    def block() -> str:
        with lock:
            inside.append(threading.current_thread().name)
        release.wait(WAIT)
        return "released"

    return flask


@pytest.fixture
def served() -> Iterator[tuple[ThreadedServer[App], threading.Event, list[str]]]:
    release = threading.Event()
    inside: list[str] = []
    app = App()
    app.mount("/legacy", build_flask(release, inside, threading.Lock()), threads=2)

    @app.route("/ping")
    def ping(request: Any) -> str:
        return "pong"

    with ThreadedServer(app, access_log=False) as server:
        yield server, release, inside
        release.set()


def test_flask_routes_forms_and_streams(served: tuple[ThreadedServer[App], Any, Any]) -> None:
    server = served[0]
    with httpx.Client(base_url=f"{server.url}/legacy") as client:
        assert client.get("/hello/ada").json() == {
            "hello": "ada",
            "script_name": "/legacy",
            "path": "/hello/ada",
        }
        assert client.post("/form", data={"a": "1", "b": "2"}).text == "1+2"
        assert client.post("/upload", content=b"u" * 200_000).text == "200000"
        assert client.get("/lines").text == "line 0\nline 1\nline 2\n"
        assert client.get("/missing").status_code == 404


def test_blocked_wsgi_threads_leave_the_loop_free(
    served: tuple[ThreadedServer[App], threading.Event, list[str]],
) -> None:
    """Four requests on a pool of two: two run, two wait; rtserve's own route answers."""
    server, release, inside = served
    with ThreadPoolExecutor(4) as pool:
        url = f"{server.url}/legacy/block"
        pending = [pool.submit(httpx.get, url, timeout=WAIT * 2) for _ in range(4)]
        until(lambda: len(inside) >= 2, WAIT, "two requests inside the pool")
        assert httpx.get(f"{server.url}/ping", timeout=1.0).text == "pong"
        assert len(inside) == 2  # the pool's bound: the others wait their turn
        release.set()
        assert [f.result().text for f in pending] == ["released"] * 4
    assert len(set(inside)) <= 2


def test_a_websocket_to_a_wsgi_app_is_refused(served: tuple[ThreadedServer[App], Any, Any]) -> None:
    server = served[0]
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{server.port}/legacy/ws")
    assert refused.value.response.status_code == 403
