"""A real FastAPI app hosted by rtserve beside its channels: routing, dependency injection, a
streaming response, a WebSocket endpoint, a background task, lifespan state, and publishing
to a channel from a FastAPI route, with the caller named by an rtserve token."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request, WebSocket
from fastapi.responses import StreamingResponse
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rtserve import App, ChannelError, ChannelSettings
from rtserve.testing import ThreadedServer
from rtserve.tokens import mint

SECRET = "s" * 32
WAIT = 5.0


def rtserve_app(request: Request) -> App:
    """A FastAPI dependency: the rtserve App the API is mounted on."""
    return App.of(request.scope)


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """A FastAPI dependency: the user an rtserve token in Authorization names."""
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "a token, please")
    try:
        claims = App.of(request.scope).verify_token(authorization.removeprefix("Bearer "))
    except ChannelError as exc:
        raise HTTPException(401, str(exc)) from None
    return claims.user or "anonymous"


def build_api(done: threading.Event, log: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[dict[str, Any]]:
        log.append("startup")
        yield {"greeting": "hello from lifespan"}
        log.append("shutdown")

    api = FastAPI(lifespan=lifespan)

    @api.get("/items/{item_id}")
    async def item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @api.get("/greeting")
    async def greeting(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    @api.get("/numbers")
    async def numbers() -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            for n in range(5):
                yield f"{n}\n"

        return StreamingResponse(lines(), media_type="text/plain")

    @api.post("/notes")
    async def add_note(
        note: dict[str, str],
        background: BackgroundTasks,
        user: Annotated[str, Depends(caller)],
        rt: Annotated[App, Depends(rtserve_app)],
    ) -> dict[str, Any]:
        async def announce() -> None:
            await rt.publish("notes", {"by": user, "text": note["text"]})
            done.set()

        background.add_task(announce)
        return {"accepted": note["text"], "by": user}

    @api.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close(code=4000)
                return
            await websocket.send_text(text.upper())

    return api


@pytest.fixture
def served() -> Iterator[tuple[ThreadedServer[App], threading.Event, list[str]]]:
    done = threading.Event()
    log: list[str] = []
    app = App(channels=ChannelSettings(token_secret=SECRET))
    app.channel("notes", history=10)
    app.mount("/api", build_api(done, log))
    with ThreadedServer(app, access_log=False) as server:
        yield server, done, log
    assert log == ["startup", "shutdown"]


def test_routing_and_validation(served: tuple[ThreadedServer[App], Any, Any]) -> None:
    server = served[0]
    with httpx.Client(base_url=f"{server.url}/api") as client:
        assert client.get("/items/7", params={"q": "x"}).json() == {"item_id": 7, "q": "x"}
        assert client.get("/items/seven").status_code == 422
        assert client.get("/nothing").status_code == 404
        assert client.post("/items/7").status_code == 405
        docs = client.get("/openapi.json").json()
    assert "/items/{item_id}" in docs["paths"]


def test_lifespan_state(served: tuple[ThreadedServer[App], Any, Any]) -> None:
    server, _, log = served
    assert log == ["startup"]
    response = httpx.get(f"{server.url}/api/greeting")
    assert response.json() == {"greeting": "hello from lifespan"}


def test_streaming_response(served: tuple[ThreadedServer[App], Any, Any]) -> None:
    server = served[0]
    with httpx.stream("GET", f"{server.url}/api/numbers") as response:
        lines = list(response.iter_lines())
    assert lines == ["0", "1", "2", "3", "4"]
    assert response.headers["transfer-encoding"] == "chunked"


def test_dependency_injection_background_task_and_a_publication(
    served: tuple[ThreadedServer[App], threading.Event, Any],
) -> None:
    server, done, _ = served
    token = mint(SECRET, "ada")
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/api/notes", json={"text": "hi"}).status_code == 401
        response = client.post(
            "/api/notes", json={"text": "hi"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.json() == {"accepted": "hi", "by": "ada"}
        assert done.wait(WAIT)
        history = client.get("/rt/history", params={"channel": "notes"}).json()
    assert [p["data"] for p in history["publications"]] == [{"by": "ada", "text": "hi"}]


def test_a_channel_subscriber_sees_what_fastapi_publishes(
    served: tuple[ThreadedServer[App], threading.Event, Any],
) -> None:
    server = served[0]
    token = mint(SECRET, "bob")
    with connect(f"ws://127.0.0.1:{server.port}/rt/ws") as ws:
        ws.send(json.dumps({"id": 1, "op": "connect"}))
        ws.recv(WAIT)
        ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "notes"}))
        assert "error" not in json.loads(ws.recv(WAIT))
        httpx.post(
            f"{server.url}/api/notes",
            json={"text": "live"},
            headers={"Authorization": f"Bearer {token}"},
        )
        pushed = ws.recv(WAIT)
    assert isinstance(pushed, str) and '"live"' in pushed and '"bob"' in pushed


def test_websocket_endpoint(served: tuple[ThreadedServer[App], Any, Any]) -> None:
    server = served[0]
    with connect(f"ws://127.0.0.1:{server.port}/api/echo") as ws:
        ws.send("shout")
        assert ws.recv(WAIT) == "SHOUT"
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
