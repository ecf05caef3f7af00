"""The runnable examples of docs/migrating-from-tornado.md, served and checked as the guide says.

Convention in the guide:

- `<!-- test: NAME -->` on the line right before a fenced ```python block marks that block as
  runnable. It is written to `app.py` in a fresh folder and run with `runpy`; it must define
  `app` (or, for the `testing` example, `test_*` functions, which are called).
- `<!-- file: PATH -->` right before any fenced block writes that block's text to PATH inside
  every example's folder (static files, templates), so `Path(__file__).parent / PATH` works.

Each runnable block has a checker below (`CHECKS[NAME]`) that serves the app with
`rtserve.testing.ThreadedServer` on 127.0.0.1 and checks the behaviour the guide's text
describes; a block without a checker, or a checker without a block, fails the test.
"""

from __future__ import annotations

import asyncio
import re
import runpy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from rtserve.testing import SyncClient, ThreadedServer

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "migrating-from-tornado.md"
BLOCK = re.compile(r"<!-- (test|file): (\S+) -->\n```[a-z]*\n(.*?)```", re.S)


def marked_blocks() -> tuple[dict[str, str], dict[str, str]]:
    """The runnable blocks by name, and the files to write, by path."""
    tests: dict[str, str] = {}
    files: dict[str, str] = {}
    for kind, name, code in BLOCK.findall(GUIDE.read_text(encoding="utf-8")):
        target = tests if kind == "test" else files
        assert name not in target, f"{kind} {name} is marked twice"
        target[name] = code
    return tests, files


def load(name: str, folder: Path) -> dict[str, Any]:
    """Run the example `name` as `folder/app.py` and return its globals."""
    tests, files = marked_blocks()
    for path, text in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    app_py = folder / "app.py"
    app_py.write_text(tests[name], encoding="utf-8")
    return runpy.run_path(str(app_py), run_name=f"guide_{name}")


def cookie_header(response: Any) -> str:
    """The cookies a response set, as a Cookie request header."""
    pairs = [value.split(";", 1)[0] for value in response.headers.getall("set-cookie")]
    return "; ".join(pairs)


# --- checkers: one per runnable block -------------------------------------------------------


def check_handler(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    key = {"X-API-Key": "let-me-in"}
    response = client.get("/items/1?verbose=1", headers=key)
    assert response.status == 200
    assert response.json() == {"id": 1, "name": "apple", "url": "/items/1"}
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    response = client.request("PUT", "/items/2", json={"name": "pear"}, headers=key)
    assert (response.status, response.json()) == (201, {"id": 2})
    assert client.get("/items/2", headers=key).json()["name"] == "pear"
    assert client.get("/items/1").status == 401
    assert client.request("PUT", "/items/3", json={"name": "x"}).status == 401
    assert client.get("/items/9", headers=key).status == 404
    assert client.get("/items/abc", headers=key).status == 404  # {id:int}
    assert client.request("DELETE", "/items/1", headers=key).status == 405
    assert ("GET", "/items/1") in ns["finished"]  # on_finish ran
    response = client.get("/hello?name=Ann")
    assert (response.status, response.text) == (200, "Hello, Ann!\n")
    assert client.get("/hello").status == 400


def check_cookies(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = client.post("/login", body="user=alice", headers=form)
    assert (response.status, response.text) == (200, "welcome\n")
    cookies = cookie_header(response)
    assert "user=" in cookies and "theme=dark" in cookies
    me = client.get("/me", headers={"Cookie": cookies})
    assert me.json() == {"user": "alice", "theme": "dark"}
    assert client.get("/me").json() == {"user": None, "theme": None}
    signed = dict(pair.split("=", 1) for pair in cookies.split("; "))["user"]
    forged = signed.replace(signed[-2], "A" if signed[-2] != "A" else "B")
    assert client.get("/me", headers={"Cookie": f"user={forged}"}).json()["user"] is None


def check_xsrf(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    page = client.get("/form")
    assert page.status == 200
    cookies = cookie_header(page)
    assert cookies.startswith("_xsrf=")
    found = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert found is not None
    token = found.group(1)
    form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookies}
    ok = client.post("/submit", body=f"_xsrf={token}&text=hi", headers=form)
    assert (ok.status, ok.json()) == (200, {"got": "hi"})
    header = client.post("/submit", body="text=hi", headers={**form, "X-XSRFToken": token})
    assert header.status == 200
    assert client.post("/submit", body="text=hi", headers=form).status == 403


def check_errors(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    assert client.get("/rooms/lobby").json() == {"room": "lobby"}
    response = client.get("/rooms/kitchen")
    assert response.status == 404
    assert response.json() == {"error": {"status": 404, "detail": "no such room"}}
    page = client.get("/rooms/kitchen", headers={"Accept": "text/html"})
    assert page.status == 404 and page.headers["content-type"].startswith("text/html")
    assert "no such room" in page.text
    assert page.text == "<h1>404</h1><p>no such room</p>"  # the app's error page
    html = {"Accept": "text/html"}
    lost = client.get("/nowhere", headers=html)
    assert (lost.status, lost.text) == (404, "<h1>404</h1><p>Not Found</p>")
    wrong = client.post("/rooms/lobby", headers=html)
    assert wrong.status == 405 and wrong.headers["allow"] == "GET, HEAD"
    assert wrong.text == "<h1>405</h1><p>Method Not Allowed</p>"
    assert client.get("/nowhere").json() == {"error": {"status": 404, "detail": "Not Found"}}


def check_static(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    response = client.get("/static/hello.txt")
    assert (response.status, response.text) == (200, "hello from a static file\n")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "last-modified" in response.headers
    etag = response.headers["etag"]
    assert client.get("/static/hello.txt", headers={"If-None-Match": etag}).status == 304
    assert client.get("/static/../app.py").status == 404
    assert client.get("/robots.txt").text == "hello from a static file\n"
    assert client.get("/download").text == "hello from a static file\n"


def check_templates(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    for path in ("/hello/%3Cb%3EAnn%3C%2Fb%3E", "/plain/%3Cb%3EAnn%3C%2Fb%3E"):
        response = client.get(path)
        assert response.status == 200, response.text
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert "<h1>Hello, &lt;b&gt;Ann&lt;/b&gt;!</h1>" in response.text
        assert 'name="_xsrf" value="' in response.text


def check_websocket_echo(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    url = f"ws://127.0.0.1:{server.port}/echo"
    for origin in (None, Origin("https://example.com")):
        with ws_connect(url, origin=origin, open_timeout=5) as ws:
            assert ws.recv(timeout=5) == "hello"
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
            ws.send(b"\x00\x01")
            assert ws.recv(timeout=5) == b"\x00\x01"
    with pytest.raises(InvalidStatus, match="403"):
        ws_connect(url, origin=Origin("https://evil.example"), open_timeout=5)
    assert client.get("/echo").status == 426


def check_websocket_broadcast(
    ns: dict[str, Any], server: ThreadedServer, client: SyncClient
) -> None:
    url = f"ws://127.0.0.1:{server.port}/chat"
    with ws_connect(url, open_timeout=5) as one, ws_connect(url, open_timeout=5) as two:
        assert one.recv(timeout=5) == "joined"
        assert two.recv(timeout=5) == "joined"
        one.send("hello all")
        assert one.recv(timeout=5) == "hello all"
        assert two.recv(timeout=5) == "hello all"
    for _ in range(100):  # the closes reach on_close shortly after
        if not server.call(len, ns["waiters"]):
            break
        server.call(asyncio.sleep, 0.02)
    assert server.call(len, ns["waiters"]) == 0  # on_close left the set


def check_websocket_stream(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    with ws_connect(f"ws://127.0.0.1:{server.port}/export", open_timeout=5) as ws:
        ws.send("1000")
        assert [ws.recv(timeout=5) for _ in range(1001)] == [
            *(f"row {row}" for row in range(1000)),
            "done",
        ]


def check_longpoll(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    empty = client.get("/updates?cursor=0&timeout=0.1")
    assert empty.json() == {"messages": [], "cursor": 0}
    result: dict[str, Any] = {}

    def poll() -> None:
        with server.client() as poller:
            result["response"] = poller.get("/updates?cursor=0&timeout=10")

    waiter = threading.Thread(target=poll)
    waiter.start()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert client.post("/new", body="text=hi", headers=form).json() == {"cursor": 1}
    waiter.join(10)
    assert result["response"].json() == {"messages": ["hi"], "cursor": 1}


def check_channels_poll(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    first = client.get("/rt/poll?channel=updates&timeout=0")
    assert first.status == 200
    state = first.json()["channels"]["updates"]
    assert (state["publications"], state["offset"]) == ([], 0)
    since = f"updates:0:{state['epoch']}"
    result: dict[str, Any] = {}

    def poll() -> None:
        with server.client() as poller:
            result["response"] = poller.get(f"/rt/poll?channel=updates&since={since}&timeout=10")

    waiter = threading.Thread(target=poll)
    waiter.start()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert client.post("/new", body="text=hi", headers=form).json() == {"offset": 1}
    waiter.join(10)
    state = result["response"].json()["channels"]["updates"]
    assert state["publications"] == [{"offset": 1, "data": {"text": "hi"}}]
    assert state["offset"] == 1
    # published while nobody polled: answered at once from the history
    assert client.post("/new", body="text=again", headers=form).json() == {"offset": 2}
    since = f"updates:1:{state['epoch']}"
    later = client.get(f"/rt/poll?channel=updates&since={since}&timeout=10").json()
    assert later["channels"]["updates"]["publications"] == [
        {"offset": 2, "data": {"text": "again"}}
    ]


def check_periodic(ns: dict[str, Any], server: ThreadedServer, client: SyncClient) -> None:
    first = client.get("/ticks").json()["ticks"]
    assert first >= 1  # the startup hook ran before the server listened
    for _ in range(100):
        if client.get("/ticks").json()["ticks"] > first:
            break
        server.call(asyncio.sleep, 0.02)
    else:
        raise AssertionError("the periodic task does not tick")
    assert len(ns["tasks"]) == 1


CHECKS: dict[str, Callable[[dict[str, Any], ThreadedServer, SyncClient], None]] = {
    "handler": check_handler,
    "cookies": check_cookies,
    "xsrf": check_xsrf,
    "errors": check_errors,
    "static": check_static,
    "templates": check_templates,
    "websocket_echo": check_websocket_echo,
    "websocket_broadcast": check_websocket_broadcast,
    "websocket_stream": check_websocket_stream,
    "longpoll": check_longpoll,
    "channels_poll": check_channels_poll,
    "periodic": check_periodic,
}


def test_every_runnable_block_has_a_check() -> None:
    tests, files = marked_blocks()
    assert set(tests) == set(CHECKS) | {"testing"}
    assert len(tests) >= 6
    assert set(files) == {"static/hello.txt", "templates/hello.html"}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_guide_example(name: str, tmp_path: Path) -> None:
    if name == "templates":
        pytest.importorskip("jinja2")
    ns = load(name, tmp_path)
    with ThreadedServer(ns["app"]) as server, server.client() as client:
        CHECKS[name](ns, server, client)


def test_guide_testing_example(tmp_path: Path) -> None:
    ns = load("testing", tmp_path)
    functions = [fn for key, fn in ns.items() if key.startswith("test_") and callable(fn)]
    assert functions
    for fn in functions:
        fn()


def test_periodic_task_stops_on_shutdown(tmp_path: Path) -> None:
    ns = load("periodic", tmp_path)
    with ThreadedServer(ns["app"]) as server, server.client() as client:
        assert client.get("/ticks").status == 200
    (task,) = ns["tasks"]
    assert task.cancelled()
