"""The admin interface's live page `/rt/admin/` (in headless Chromium) and its SSE stream
`/rt/admin/events`, behind the admin token (`?token=` or the Bearer header)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from rtserve import App
from rtserve.stats.admin import AdminServer, enable_admin
from rtserve.testing import ThreadedServer
from tests.channel_peer import Peer

TOKEN = "an-admin-token-of-32-characters!"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "admin-page.png"


def make_app() -> tuple[App, AdminServer]:
    app = App()
    app.channel("chat:*", publish="clients")
    admin = enable_admin(app, socket=None, listen="127.0.0.1:0", token=TOKEN)
    return app, admin


def read_event(response: http.client.HTTPResponse) -> tuple[str, Any]:
    """The next event of an SSE stream: (event name, decoded data)."""
    name, data = "message", []  # type: ignore[var-annotated]
    while True:
        line = response.readline()
        assert line, "the stream ended"
        text = line.decode("utf-8").rstrip("\r\n")
        if not text:
            if data:
                return name, json.loads("\n".join(data))
            continue
        field, _, value = text.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def test_events_need_the_token_and_stream_stats() -> None:
    app, admin = make_app()
    with ThreadedServer(app):
        conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
        conn.request("GET", "/rt/admin/events")
        denied = conn.getresponse()
        assert denied.status == 401 and denied.read() == b'{"error":"unauthorized"}'
        conn.close()
        for path, headers in (
            ("/rt/admin/events?token=wrong-token-of-enough-length", {}),
            ("/rt/admin/stats?token=" + TOKEN, {}),  # `?token=` only for the page and events
            ("/rt/admin/events?token=" + TOKEN, {"Authorization": "Bearer wrong"}),
        ):
            conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
            conn.request("GET", path, headers=headers)
            assert conn.getresponse().status == 401, path
            conn.close()

        for path, headers in (
            ("/rt/admin/events?token=" + TOKEN, {}),
            ("/rt/admin/events", {"Authorization": f"Bearer {TOKEN}"}),
        ):
            conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("content-type") == "text/event-stream; charset=utf-8"
            started = time.monotonic()
            name, first = read_event(response)
            assert name == "stats" and first["serving"] is True
            assert set(first) >= {"pid", "uptime_seconds", "open", "totals", "hub", "process"}
            name, second = read_event(response)  # one a second
            assert name == "stats" and second["uptime_seconds"] > first["uptime_seconds"]
            assert 0.5 < time.monotonic() - started < 3
            conn.close()

        conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
        conn.request("HEAD", "/rt/admin/events?token=" + TOKEN)  # the head only, at once
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""
        assert response.getheader("content-type") == "text/event-stream; charset=utf-8"
        conn.request("GET", "/rt/admin/?token=" + TOKEN)  # on the same connection
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200
        assert response.getheader("content-type") == "text/html; charset=utf-8"
        assert response.getheader("referrer-policy") == "no-referrer"
        assert b"EventSource" in body and b"<canvas" in body
        assert b"http://" not in body and b"https://" not in body  # nothing external
        conn.close()

    # The server shut down with a stream open: the stream ended (no hang above).


def test_events_end_on_shutdown() -> None:
    app, admin = make_app()
    server = ThreadedServer(app).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
        conn.request("GET", "/rt/admin/events?token=" + TOKEN)
        response = conn.getresponse()
        assert read_event(response)[0] == "stats"
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 3  # the stream did not hold the shutdown up
    rest = response.read()  # the end of the stream (the last chunk), not a timeout
    assert b"event: stats" in rest or rest == b""
    conn.close()


def test_live_page_in_chromium(page: Any, tmp_path: Path) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    app, admin = make_app()
    peers: list[Peer] = []
    with ThreadedServer(app) as server:
        url = f"ws://127.0.0.1:{server.port}/rt/ws"

        async def clients() -> None:
            for name, channel in (
                ("ada", "chat:lobby"),
                ("bob", "chat:lobby"),
                ("eve", "chat:help"),
            ):
                peer = await Peer.open(url, data={"user": name})
                await peer.call("subscribe", channel=channel)
                peers.append(peer)

        async def publish(count: int) -> None:
            for i in range(count):
                await peers[0].call("publish", channel="chat:lobby", data=f"hello {i}")

        async def close() -> None:
            for peer in peers:
                await peer.ws.close()

        server.call(clients)
        try:
            page.goto(f"http://127.0.0.1:{admin.port}/rt/admin/?token={TOKEN}")
            expect(page.locator("#status")).to_contain_text("live")
            # A few seconds of traffic for the chart (fewer pushes than a Peer queues unread,
            # 16, or closing it would wait).
            for _ in range(4):
                server.call(publish, 3)
                time.sleep(1)
            expect(page.locator("#open")).to_contain_text("channel3")
            expect(page.locator("#channels")).to_contain_text("chat:lobby2")
            expect(page.locator("#channels")).to_contain_text("chat:help1")
            text = page.locator("body").inner_text()
            assert "pid" in text and "uptime" in text and "RSS" in text
            assert "loop lag" in text and "deliveries" in text
            expect(page.locator("#rates")).to_contain_text("ws messages in")
            expect(page.locator("#latency")).to_contain_text("broker publish p99")
            expect(page.locator("#totals")).to_contain_text("ws messages received")
            expect(page.locator("#channels")).to_contain_text("pub/s")
            assert float(page.locator("#open-now").inner_text()) >= 3
            # Saved by every run; docs/images/admin-page.png is refreshed only when asked
            # (RTSERVE_UPDATE_SCREENSHOTS=1), so a test run leaves the checkout as it was.
            shot = tmp_path / "admin-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
            if os.environ.get("RTSERVE_UPDATE_SCREENSHOTS") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
        finally:
            server.call(close)
