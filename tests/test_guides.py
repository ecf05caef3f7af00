"""The runnable examples of docs/guides/*.md and docs/cookbook.md, served and checked as the
pages say.

`<!-- test: NAME -->` right before a fenced ```python block marks it runnable (the convention
of tests/test_migration_guide.py): the block is run as a module and must define `app`; the
checker `CHECKS[NAME]` serves it on 127.0.0.1 and checks what the guide's text describes. A
marked block without a checker, or a checker without a block, fails. A checker may ask for
pytest fixtures (a browser page) through the request it is given; `PREPARE[NAME]`, where there
is one, sets up what the block needs before it is run (an upstream server, the environment).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import re
import runpy
import socket
import struct
import sys
import time
import types
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from websockets.asyncio.client import connect

from rtserve import App, HTTPError
from rtserve.testing import ThreadedServer

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [*sorted((DOCS / "guides").glob("*.md")), DOCS / "cookbook.md"]
BLOCK = re.compile(r"<!-- test: (\S+) -->\n```python\n(.*?)```", re.S)
TIMEOUT = 10.0
T = TypeVar("T")


def marked_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for guide in PAGES:
        for name, code in BLOCK.findall(guide.read_text(encoding="utf-8")):
            assert name not in blocks, f"test {name} is marked twice"
            blocks[name] = code
    return blocks


@pytest.fixture
def sensors() -> Iterator[None]:
    """The `sensors` module the streaming guide imports: a sine wave."""
    module = types.ModuleType("sensors")
    module.read_sensor = lambda name: math.sin(len(name))  # type: ignore[attr-defined]
    sys.modules["sensors"] = module
    yield
    del sys.modules["sensors"]


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` in a thread of its own: Playwright's sync API keeps an event loop
    running in the test's thread once a browser fixture is up."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def check_binary_stream(ns: dict[str, Any], server: ThreadedServer) -> None:
    """Packed (time, value) samples arrive as binary frames, 10 ms of time apart."""

    async def samples() -> list[tuple[float, float]]:
        async with connect(f"ws://127.0.0.1:{server.port}/sensor/abc", compression=None) as ws:
            frames = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(5)]
        assert all(isinstance(frame, bytes) for frame in frames)
        return [struct.unpack("<dd", frame) for frame in frames]  # type: ignore[arg-type]

    got = arun(samples())
    assert [round(t, 2) for t, _ in got] == [0.0, 0.01, 0.02, 0.03, 0.04]
    assert all(value == math.sin(3) for _, value in got)


def check_cookbook_json(ns: dict[str, Any], server: ThreadedServer, _: Any) -> None:
    """A function and a class handler answer JSON; a missing book is 404, POST is 405."""
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        listed = client.get("/books", params={"limit": "1"})
        assert listed.headers["content-type"].startswith("application/json")
        assert listed.json() == {"books": [{"id": "1", "title": "Dune"}]}
        assert client.get("/books/2").json() == {"id": "2", "title": "Emma"}
        put = client.put("/books/3", json={"title": "Ulysses"})
        assert (put.status_code, put.json()) == (201, {"id": "3", "title": "Ulysses"})
        assert client.get("/books/3").json()["title"] == "Ulysses"
        assert client.get("/books/9").status_code == 404
        refused = client.post("/books/1")
        assert refused.status_code == 405 and "GET" in refused.headers["allow"]


def check_cookbook_websocket(ns: dict[str, Any], server: ThreadedServer, fixtures: Any) -> None:
    """The handler greets and answers each message; the page does the same in a browser."""

    async def talk() -> list[str | bytes]:
        async with connect(f"ws://127.0.0.1:{server.port}/echo") as ws:
            greeting = await asyncio.wait_for(ws.recv(), TIMEOUT)
            await ws.send("hi")
            return [greeting, await asyncio.wait_for(ws.recv(), TIMEOUT)]

    assert arun(talk()) == ["connected", "you said: hi"]
    page = fixtures.getfixturevalue("page")
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('log').textContent.includes('connected')")
    page.click("#send")
    page.wait_for_function("document.getElementById('log').textContent.includes('you said: hello')")


def check_cookbook_channel(ns: dict[str, Any], server: ThreadedServer, fixtures: Any) -> None:
    """A page publishes to the channel and receives its own and the server's publications."""
    page = fixtures.getfixturevalue("page")
    page.goto(server.url + "/")
    log = "document.getElementById('log').textContent"
    page.click("#send")  # published once connected: it comes back to the subscribed page
    page.wait_for_function(f"{log}.includes('from the page')")
    answer = httpx.post(server.url + "/notes", json={"text": "from the server"}, timeout=TIMEOUT)
    assert answer.json() == {"offset": 2}
    page.wait_for_function(f"{log}.includes('from the server')")


class SlowUpstream:
    """The weather service of the cookbook's upstream example: a forecast takes a second;
    `held-*` ones wait until `release()`, `hang` outlasts the app's timeout, `nowhere` is 404
    and `broken` a 500."""

    def __init__(self) -> None:
        self.held = 0
        self.app = App()
        self.app.route("/forecast/{city}")(self.forecast)
        self._gate: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def forecast(self, request: Any, city: str) -> Any:
        if city in ("nowhere", "broken"):
            raise HTTPError(404 if city == "nowhere" else 500)
        if city.startswith("held-"):
            if self._gate is None:
                self._gate, self._loop = asyncio.Event(), asyncio.get_running_loop()
            self.held += 1
            await self._gate.wait()
        else:
            await asyncio.sleep(UPSTREAM_TIMEOUT + 2 if city == "hang" else 1.0)
        return {"city": city, "sky": "clear"}

    def release(self) -> None:
        assert self._gate is not None and self._loop is not None
        self._loop.call_soon_threadsafe(self._gate.set)


# The app's upstream timeout: longer than it takes, on a busy machine, to have 100 requests
# waiting on the upstream at once (the held phase), which took over 3 s with two test workers.
UPSTREAM_TIMEOUT = 8.0


@contextlib.contextmanager
def slow_upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowUpstream]:
    upstream = SlowUpstream()
    with ThreadedServer(upstream.app, access_log=False) as served:
        monkeypatch.setenv("WEATHER_API", served.url)
        monkeypatch.setenv("WEATHER_TIMEOUT", str(UPSTREAM_TIMEOUT))
        yield upstream


def check_cookbook_upstream(ns: dict[str, Any], server: ThreadedServer, fixtures: Any) -> None:
    """100 requests waiting on the upstream are all in flight at once while /health answers;
    100 whose upstream takes 1 s finish together; upstream failures map to 504/502/404."""
    upstream: SlowUpstream = fixtures.getfixturevalue("prepared")

    async def run() -> None:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            # Outlasts the app's upstream timeout: sent first, so that wait overlaps the rest.
            hang = asyncio.ensure_future(client.get("/forecast/hang"))
            held = [asyncio.ensure_future(client.get(f"/forecast/held-{i}")) for i in range(100)]
            for _ in range(3000):  # bounded: 30 s for the 100 upstream calls to be waiting
                if upstream.held == 100:
                    break
                await asyncio.sleep(0.01)
            assert upstream.held == 100, "the handlers did not wait concurrently"
            health = await client.get("/health")
            assert health.json() == {"ok": True}, "/health waited behind the upstream calls"
            assert not any(request.done() for request in held)
            upstream.release()
            answers = await asyncio.gather(*held)
            assert [a.status_code for a in answers] == [200] * 100
            assert answers[7].json() == {
                "city": "held-7",
                "forecast": {"city": "held-7", "sky": "clear"},
            }

            started = time.monotonic()
            timed = await asyncio.gather(*(client.get(f"/forecast/c{i}") for i in range(100)))
            elapsed = time.monotonic() - started
            assert [a.status_code for a in timed] == [200] * 100
            # About a second on a quiet machine; one at a time it would be 100 s. The bound
            # leaves room for a machine whose cores are busy with other work (the proof of
            # concurrency is the held phase above, which does not depend on time).
            assert elapsed < 50.0, f"100 one-second upstream calls took {elapsed:.1f} s"

            nowhere, broken = await asyncio.gather(
                *(client.get(f"/forecast/{city}") for city in ("nowhere", "broken"))
            )
            timed_out = await hang
            assert timed_out.status_code == 504 and "in time" in timed_out.text
            assert (nowhere.status_code, broken.status_code) == (404, 502)

    arun(run())
    unreachable = ns["WeatherAPI"](f"http://127.0.0.1:{closed_port()}", timeout=2.0)

    async def refused() -> int:
        await unreachable.open()
        try:
            await unreachable.forecast("x")
        except HTTPError as error:
            return error.status
        finally:
            await unreachable.close()
        return 200

    assert arun(refused()) == 502


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


POLLERS = 200


def check_cookbook_longpoll(ns: dict[str, Any], server: ThreadedServer, _: Any) -> None:
    """200 pending polls on one channel are all released by one publication, and each one's
    next poll (with the `since` it was given) gets the next publication: nothing lost."""
    assert server.server is not None and server.server.state is not None
    connections = server.server.state.connections

    async def run() -> None:
        limits = httpx.Limits(max_connections=POLLERS + 10)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            params = {"channel": "prices:ACME", "timeout": "20"}
            polls = [
                asyncio.ensure_future(client.get("/rt/poll", params=params)) for _ in range(POLLERS)
            ]
            hub = ns["app"].hub
            for _ in range(1000):  # bounded: 10 s for every poll to be waiting
                if hub.subscriber_count("prices:ACME") >= POLLERS:
                    break
                await asyncio.sleep(0.01)
            assert hub.subscriber_count("prices:ACME") == POLLERS
            assert len(connections) >= POLLERS
            await client.post("/tick/ACME", json={"price": 101})
            answers = [(await p).json()["channels"]["prices:ACME"] for p in polls]
            assert all([x["data"] for x in a["publications"]] == [{"price": 101}] for a in answers)
            since = {f"prices:ACME:{a['offset']}:{a['epoch']}" for a in answers}
            assert len(since) == 1
            await client.post("/tick/ACME", json={"price": 102})
            again = await asyncio.gather(
                *(client.get("/rt/poll", params={**params, "since": s}) for s in since)
            )
            got = again[0].json()["channels"]["prices:ACME"]
            assert [p["data"] for p in got["publications"]] == [{"price": 102}]
            assert got["recovered"] is True

    arun(run())


def check_cookbook_chat(ns: dict[str, Any], server: ThreadedServer, fixtures: Any) -> None:
    """Two people in the lobby: each sees the other join, talk and leave; no name is refused."""
    browser = fixtures.getfixturevalue("browser")
    ada, bob = browser.new_context(), browser.new_context()
    try:
        ada_page, bob_page = ada.new_page(), bob.new_page()
        messages = "document.getElementById('messages').textContent"
        ada_page.goto(server.url + "/?name=ada")
        ada_page.fill("#text", "hello")
        ada_page.click("#send")
        ada_page.wait_for_function(f"{messages}.includes('ada: hello')")
        bob_page.goto(server.url + "/?name=bob")
        ada_page.wait_for_function(f"{messages}.includes('bob joined')")
        bob_page.fill("#text", "hi ada")
        bob_page.click("#send")
        ada_page.wait_for_function(f"{messages}.includes('bob: hi ada')")
        bob.close()
        ada_page.wait_for_function(f"{messages}.includes('bob left')")
    finally:
        ada.close()
        with contextlib.suppress(Exception):
            bob.close()


def check_cookbook_middleware(ns: dict[str, Any], server: ThreadedServer, _: Any) -> None:
    """Every answer has the header; with maintenance on, all but the switch are 503 and the
    app's handler is not reached; off again, the app answers."""
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        hello = client.get("/")
        assert (hello.status_code, hello.text) == (200, "hello")
        assert hello.headers["x-content-type-options"] == "nosniff"
        assert client.post("/maintenance", json={"on": True}).json() == {"on": True}
        down = client.get("/")
        assert (down.status_code, down.text) == (503, "down for maintenance")
        assert down.headers["retry-after"] == "60"
        assert down.headers["x-content-type-options"] == "nosniff"
        assert client.get("/nowhere").status_code == 503  # not even routed
        assert client.post("/maintenance", json={"on": False}).json() == {"on": False}
        assert client.get("/").text == "hello"


async def first_push(url: str, channel: str, publish: Callable[[], object]) -> Any:
    """The first publication a /rt/ws subscriber of `channel` gets after `publish()`."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"id": 1, "op": "connect"}))
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": channel}))
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        await asyncio.to_thread(publish)
        return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["data"]


def check_existing_fastapi(ns: dict[str, Any], server: ThreadedServer, _: Any) -> None:
    """POST /api/orders with a token publishes the order, by the token's user, to `orders`;
    without one it is 401."""
    from rtserve.tokens import mint

    token = mint("change-me-to-32-characters-or-more", "ada")
    orders = f"{server.url}/api/orders"
    assert httpx.post(orders, json={"item": "tea"}, timeout=TIMEOUT).status_code == 401
    answers: list[httpx.Response] = []

    def order() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        answers.append(httpx.post(orders, json={"item": "tea"}, headers=headers, timeout=TIMEOUT))

    pushed = arun(first_push(f"ws://127.0.0.1:{server.port}/rt/ws", "orders", order))
    assert pushed == {"item": "tea", "by": "ada"}
    assert answers[0].json() == {"offset": 1}


@contextlib.contextmanager
def django_project(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`myproject` of the Django steps: the test project tests/apps/djsite under that name."""
    import tests.apps.djsite
    import tests.apps.djsite.settings

    monkeypatch.setitem(sys.modules, "myproject", tests.apps.djsite)
    monkeypatch.setitem(sys.modules, "myproject.settings", tests.apps.djsite.settings)
    yield


def check_existing_django(ns: dict[str, Any], server: ThreadedServer, _: Any) -> None:
    """The whole site is Django's: its view answers; its `announce` view publishes to `news`,
    which a channel subscriber of the same server gets."""
    assert httpx.get(f"{server.url}/hello/ada", timeout=TIMEOUT).json()["hello"] == "ada"

    def announce() -> None:
        answer = httpx.post(f"{server.url}/announce", content=b"hello", timeout=TIMEOUT)
        assert answer.status_code == 200

    pushed = arun(first_push(f"ws://127.0.0.1:{server.port}/rt/ws", "news", announce))
    assert pushed == {"text": "hello"}


Check = Callable[[dict[str, Any], ThreadedServer, pytest.FixtureRequest], None]

CHECKS: dict[str, Check] = {
    "binary_stream": lambda ns, server, _: check_binary_stream(ns, server),
    "cookbook_json": check_cookbook_json,
    "cookbook_websocket": check_cookbook_websocket,
    "cookbook_channel": check_cookbook_channel,
    "cookbook_upstream": check_cookbook_upstream,
    "cookbook_longpoll": check_cookbook_longpoll,
    "cookbook_chat": check_cookbook_chat,
    "cookbook_middleware": check_cookbook_middleware,
    "existing_fastapi": check_existing_fastapi,
    "existing_django": check_existing_django,
}
PREPARE: dict[str, Callable[[pytest.MonkeyPatch], contextlib.AbstractContextManager[Any]]] = {
    "cookbook_upstream": slow_upstream,
    "existing_django": django_project,
}


@pytest.fixture
def prepared(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """What PREPARE sets up for the example being checked (None when it needs nothing)."""
    name = request.node.callspec.params["name"]
    if name not in PREPARE:
        yield None
        return
    with PREPARE[name](monkeypatch) as value:
        yield value


def test_every_marked_block_has_a_checker() -> None:
    assert set(marked_blocks()) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
@pytest.mark.usefixtures("sensors", "prepared")
def test_guide_example(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    module = tmp_path / f"{name}.py"
    module.write_text(marked_blocks()[name], encoding="utf-8")
    ns = runpy.run_path(str(module), run_name=f"guide_{name}")
    with ThreadedServer(ns["app"]) as server:
        CHECKS[name](ns, server, request)
