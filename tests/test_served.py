"""The `Served` contract of live connections, as stats read it: `describe()` and the protocol,
on in-process connections over a stand-in transport (no socket)."""

from __future__ import annotations

import asyncio
from typing import Any

from rtserve.app.app import App
from rtserve.app.request import Request
from rtserve.server.connection import HTTPConnection
from rtserve.server.settings import ServerSettings
from rtserve.server.state import ServerState
from rtserve.stats.metrics import describe, list_connections


class _Transport:
    """Takes every write and holds it as unsent; records a close."""

    def __init__(self) -> None:
        self.buffered = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.buffered += len(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _served(loop: asyncio.AbstractEventLoop) -> tuple[ServerState, HTTPConnection, _Transport]:
    app = App()

    @app.route("/hello")
    def hello(request: Request) -> str:
        return "hello"

    state = ServerState(app, ServerSettings(access_log=False), loop)
    state.opened = {}
    conn = HTTPConnection(state)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return state, conn, transport


def test_an_http_connection_describes_its_phase_path_and_queue() -> None:
    loop = asyncio.new_event_loop()
    try:
        _, conn, transport = _served(loop)
        assert conn.describe().state == "head"  # a new connection owes its first head
        conn.data_received(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        told = conn.describe()
        assert (told.state, told.path) == ("idle", None)
        assert told.queued_bytes == transport.buffered > 0
        assert conn.queued() == transport.buffered
        assert (conn.kind, conn.handler) == ("http", None)
    finally:
        loop.close()


def test_an_http_connection_whose_client_takes_nothing_is_listed_as_sending() -> None:
    loop = asyncio.new_event_loop()
    try:
        state, conn, _ = _served(loop)
        conn.pause_writing()  # the write buffer is over its high-water mark
        row = describe(conn, state.now, state.now)
        assert row["state"] == "send"  # was "?": the phase had no name
        assert row["transport"] == "http"
        assert row["peer"] == "127.0.0.1:40000"
    finally:
        loop.close()


def test_the_admin_disconnects_an_http_connection_through_the_contract() -> None:
    loop = asyncio.new_event_loop()
    try:
        state, conn, transport = _served(loop)
        page = list_connections(state)
        assert page["total"] == 1
        assert page["connections"][0]["state"] == "head"
        conn.disconnect(4005, "disconnected by the admin")
        assert conn.closed and transport.closed
    finally:
        loop.close()
