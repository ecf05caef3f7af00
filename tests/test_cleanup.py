"""Closed connections are freed when they close, not at the next cyclic GC: with tens of
thousands of connections (and gc.freeze after start) every cycle left behind is memory that
waits, and work for a collection later. Each kind of answer is checked with the GC off."""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from rtserve import App, HTTPError, Request
from rtserve.realtime.sse import SSEStream
from rtserve.server.connection import HTTPConnection
from rtserve.server.exchange import Exchange
from rtserve.server.websocket import WebSocketConnection
from rtserve.testing import ThreadedServer

REQUESTS = {
    "ok": b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    "no route (404)": b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n",
    "wrong method (405)": b"DELETE / HTTP/1.1\r\nHost: t\r\n\r\n",
    "handler's HTTPError": b"GET /refused HTTP/1.1\r\nHost: t\r\n\r\n",
    "handler fails (500)": b"GET /fails HTTP/1.1\r\nHost: t\r\n\r\n",
    "malformed (400)": b"GARBAGE\r\n\r\n",
    "pipelined": b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 3,
}
KINDS = (HTTPConnection, Exchange, WebSocketConnection, SSEStream)


def make_app() -> App:
    app = App()
    app.channel("news", history=10)

    @app.route("/")
    def index(request: Request) -> str:
        return "ok"

    @app.route("/refused")
    async def refused(request: Request) -> str:
        raise HTTPError(403, "no")

    @app.route("/fails")
    async def fails(request: Request) -> str:
        raise RuntimeError("a bug")

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(make_app(), access_log=False) as srv:
        yield srv


def alive(server: ThreadedServer) -> int:
    return int(server.call(lambda: sum(1 for o in gc.get_objects() if type(o) in KINDS)))


def settle(server: ThreadedServer, baseline: int) -> int:
    """The count of connection objects once the server has seen the closes (bounded wait)."""
    count = alive(server)
    for _ in range(50):
        if count <= baseline:
            break
        time.sleep(0.02)
        count = alive(server)
    return count


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_a_closed_http_connection_is_freed_at_once(server: ThreadedServer, name: str) -> None:
    gc.collect()
    gc.disable()
    # pytest keeps every log record, and a logged error's traceback holds the exchange.
    logging.disable(logging.CRITICAL)
    try:
        baseline = alive(server)
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(REQUESTS[name])
                assert sock.recv(65536).startswith(b"HTTP/1.1 ")
        assert settle(server, baseline) == baseline
    finally:
        logging.disable(logging.NOTSET)
        gc.enable()


def test_a_closed_channel_connection_is_freed_at_once(server: ThreadedServer) -> None:
    async def session() -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/rt/ws") as ws:
            await ws.send(json.dumps({"id": 1, "op": "connect"}))
            await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "news"}))
            for _ in range(2):
                await asyncio.wait_for(ws.recv(), 5)

    gc.collect()
    gc.disable()
    try:
        baseline = alive(server)
        for _ in range(10):
            asyncio.run(session())
        assert settle(server, baseline) == baseline
    finally:
        gc.enable()


def test_a_closed_sse_stream_is_freed_at_once(server: ThreadedServer) -> None:
    def stream() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/rt/sse?channel=news")
        response = conn.getresponse()
        assert response.status == 200
        while b"event: subscribed" not in response.readline():
            pass
        conn.close()

    gc.collect()
    gc.disable()
    try:
        baseline = alive(server)
        for _ in range(10):
            stream()
        assert settle(server, baseline) == baseline
    finally:
        gc.enable()
