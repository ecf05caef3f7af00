"""The admin interface: stats, connections, channels, disconnect and /metrics, over a unix
socket (no token) and HTTP (Bearer token); `admin:` in rtserve.yaml.

Requests go through the standard library's http.client (in a thread, so the server keeps
running on the test's loop); channel clients are `tests.channel_peer.Peer` (the `websockets`
package).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import stat
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

from rtserve import App, ConnectResult, WebSocketHandler, testing
from rtserve.config.loader import ConfigErrors
from rtserve.config.project import AdminConfig, build_app, load_project
from rtserve.server.state import Application
from rtserve.stats.admin import AdminServer, enable_admin
from tests.channel_peer import Peer

TOKEN = "an-admin-token-of-32-characters!"
TIMEOUT = 10.0


def serve_app(app: Application, **overrides: Any) -> Any:
    """`rtserve.testing.serve_app` with the admin interface at the addresses the test sets
    (by default a test server serves it on private ones)."""
    return testing.serve_app(app, private_admin=False, **overrides)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, path: str | Path) -> None:
        super().__init__("localhost", timeout=5)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _fetch(
    conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str]
) -> Reply:
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


class AdminClient:
    """The admin interface of a running app, over its unix socket and its HTTP address."""

    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin

    async def unix(self, path: str, method: str = "GET") -> Reply:
        assert self.admin.socket_path is not None
        conn = UnixHTTPConnection(self.admin.socket_path)
        return await self._run(conn, method, path, {})

    async def over_http(
        self,
        path: str,
        method: str = "GET",
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin.port, timeout=5)
        sent = {} if token is None else {"Authorization": f"Bearer {token}"}
        return await self._run(conn, method, path, sent | (headers or {}))

    async def _run(
        self, conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str]
    ) -> Reply:
        return await asyncio.wait_for(
            asyncio.to_thread(_fetch, conn, method, path, headers), TIMEOUT
        )

    async def get(self, path: str) -> Any:
        reply = await self.unix(path)
        assert reply.status == 200, reply
        assert reply.headers["content-type"] == "application/json"
        return reply.json()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(100):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 5 s")


class Echo(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.send(message)


def make_app(tmp_path: Path, **admin: Any) -> tuple[App, AdminServer]:
    app = App()
    app.channel("chat:*", publish="clients")
    app.channel("news")
    app.websocket("/echo")(Echo)

    @app.on_connect
    def who(ctx: Any) -> ConnectResult:
        return ConnectResult(user=(ctx.data or {}).get("user"))

    @app.route("/hello")
    def hello(request: Any) -> str:
        return "hi"

    options: dict[str, Any] = {
        "socket": tmp_path / "run" / "admin.sock",
        "listen": "127.0.0.1:0",
        "token": TOKEN,
        "metrics": True,
    }
    options.update(admin)
    return app, enable_admin(app, **options)


Scenario = Callable[[Any, AdminClient], Awaitable[None]]


def run(app: App, admin: AdminServer, scenario: Scenario) -> None:
    async def main() -> None:
        async with serve_app(app) as server:
            await asyncio.wait_for(scenario(server, AdminClient(admin)), 30)

    asyncio.run(main())


async def open_http(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain keep-alive HTTP connection that has had one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    assert await asyncio.wait_for(reader.readexactly(length), 5) == b"hi"
    return reader, writer


# --- stats, connections, channels, disconnect ----------------------------------------------


def test_stats_connections_channels_and_disconnect(tmp_path: Path) -> None:
    app, admin = make_app(tmp_path)

    async def scenario(server: Any, client: AdminClient) -> None:
        before = await client.get("/rt/admin/stats")
        assert set(before) == {
            "pid",
            "started_at",
            "uptime_seconds",
            "serving",
            "open",
            "totals",
            "hub",
            "channels",
            "loop_lag_seconds",
            "latency_seconds",
            "process",
        }
        assert before["pid"] == os.getpid() and before["serving"] is True
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", before["started_at"])
        assert before["open"] == {"http": 0, "websocket": 0, "channel": 0, "sse": 0, "poll": 0}
        assert set(before["totals"]) == {
            "connections",
            "connections_refused",
            "h2_connections",
            "h2_streams",
            "requests",
            "responses",
            "websockets",
            "limit_hits",
            "ws_dropped",
            "ws_slow_closed",
            "bytes_received",
            "bytes_sent",
            "ws_messages_received",
            "ws_frames_sent",
        }
        assert set(before["latency_seconds"]) == {"http", "broker_publish"}
        for histogram in before["latency_seconds"].values():
            assert histogram["count"] == 0 and histogram["p99"] is None
            assert len(histogram["counts"]) == len(histogram["bounds"]) + 1
        assert list(before["totals"]["responses"]) == ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
        assert before["hub"]["subscriptions"] == 0 and "deliveries" in before["hub"]
        assert before["channels"] == {"count": 0, "subscribers": 0, "users": 0}
        assert set(before["loop_lag_seconds"]) == {"last", "max"}
        assert before["process"]["rss_bytes"] > 0 and "cpu_user_seconds" in before["process"]
        assert before["process"]["open_fds"] > 0 and before["process"]["tasks"] > 0

        url = f"ws://127.0.0.1:{server.port}/rt/ws"
        alice = await Peer.open(url, data={"user": "alice"})
        await alice.call("subscribe", channel="chat:lobby")
        await alice.call("subscribe", channel="news")
        bob = await Peer.open(url, data={"user": "bob"})
        await bob.call("subscribe", channel="chat:lobby")
        echo = await ws_connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=5)
        reader, writer = await open_http(server.port)

        stats = await client.get("/rt/admin/stats")
        assert stats["open"] == {"http": 1, "websocket": 1, "channel": 2, "sse": 0, "poll": 0}
        totals = stats["totals"]
        assert totals["bytes_received"] > before["totals"]["bytes_received"]
        assert totals["bytes_sent"] > before["totals"]["bytes_sent"]
        assert stats["totals"]["connections"] == before["totals"]["connections"] + 4
        assert stats["totals"]["websockets"] == 3
        assert stats["totals"]["responses"]["1xx"] == 3  # the 101s
        assert stats["totals"]["responses"]["2xx"] >= 1
        assert stats["hub"]["subscriptions"] == 3
        assert stats["channels"] == {"count": 2, "subscribers": 3, "users": 2}

        listing = await client.get("/rt/admin/connections")
        assert listing["total"] == 4 and listing["limit"] == 100 and listing["offset"] == 0
        conns = listing["connections"]
        assert [c["transport"] for c in conns] == ["channel", "channel", "websocket", "http"]
        first = conns[0]
        assert set(first) >= {
            "id",
            "transport",
            "peer",
            "user",
            "client",
            "channels",
            "age_seconds",
            "queued_bytes",
            "bytes_in",
            "bytes_out",
        }
        assert first["user"] == "alice" and first["client"] == alice.info["client"]
        assert first["channels"] == ["chat:lobby", "news"]
        assert first["peer"].startswith("127.0.0.1:") and first["path"] == "/rt/ws"
        assert first["age_seconds"] >= 0 and first["queued_bytes"] == 0
        assert conns[2]["user"] is None and conns[2]["channels"] == []
        assert conns[3]["state"] == "idle"
        # the handshake and three calls each way, at least
        assert first["bytes_in"] > 100 and first["bytes_out"] > 100
        plain = conns[3]  # one GET /hello and its answer, exactly
        assert plain["bytes_in"] == len(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n")
        assert plain["bytes_out"] > len(b"hi")

        # filters, each with the total of what matches
        by_user = await client.get("/rt/admin/connections?user=alice")
        assert by_user["total"] == 1 and by_user["connections"][0]["id"] == first["id"]
        on_news = await client.get("/rt/admin/connections?channel=news")
        assert [c["user"] for c in on_news["connections"]] == ["alice"]
        lobby = await client.get("/rt/admin/connections?channel=chat:lobby&transport=channel")
        assert lobby["total"] == 2
        for transport, count in (("http", 1), ("websocket", 1), ("channel", 2)):
            only = await client.get(f"/rt/admin/connections?transport={transport}")
            assert only["total"] == count
            assert {c["transport"] for c in only["connections"]} == {transport}
        nobody = await client.get("/rt/admin/connections?user=carol")
        assert nobody == {"total": 0, "offset": 0, "limit": 100, "connections": []}

        # paging: pages of one give the same connections, in the same order
        pages = [await client.get(f"/rt/admin/connections?limit=1&offset={i}") for i in range(5)]
        assert [p["total"] for p in pages] == [4] * 5
        assert [c["id"] for p in pages for c in p["connections"]] == [c["id"] for c in conns]
        assert pages[4]["connections"] == []
        capped = await client.get("/rt/admin/connections?limit=5000")
        assert capped["limit"] == 1000
        by_queued = await client.get("/rt/admin/connections?sort=queued&limit=2")
        assert by_queued["total"] == 4 and len(by_queued["connections"]) == 2
        assert {c["id"] for c in by_queued["connections"]} <= {c["id"] for c in conns}
        for bad in ("limit=abc", "limit=0", "offset=-1", "transport=sse", "sort=size"):
            reply = await client.unix(f"/rt/admin/connections?{bad}")
            assert reply.status == 400 and "error" in reply.json(), bad

        channels = await client.get("/rt/admin/channels")
        assert channels == {
            "total": 2,
            "offset": 0,
            "limit": 100,
            "channels": [
                {"name": "chat:lobby", "subscribers": 2, "publications": 0},
                {"name": "news", "subscribers": 1, "publications": 0},
            ],
        }
        news = await client.get("/rt/admin/channels?prefix=ne")
        assert news["total"] == 1 and news["channels"][0]["name"] == "news"
        second = await client.get("/rt/admin/channels?limit=1&offset=1")
        assert second["total"] == 2 and [c["name"] for c in second["channels"]] == ["news"]

        # disconnect: a channel client sees 4005, a plain HTTP connection is closed
        path = f"/rt/admin/connections/{first['id']}/disconnect"
        reply = await client.unix(path, "POST")
        assert reply.status == 200 and reply.json() == {"disconnected": True}
        assert await alice.closed_with() == (4005, "disconnected by admin")

        async def alice_gone() -> bool:
            stats = await client.get("/rt/admin/stats")
            return bool(stats["open"]["channel"] == 1 and stats["channels"]["subscribers"] == 1)

        await eventually(alice_gone)
        assert (await client.unix(path, "POST")).status == 404
        assert (await client.unix("/rt/admin/connections/abc/disconnect", "POST")).status == 404
        assert (await client.unix(path)).status == 405

        reply = await client.over_http(f"/rt/admin/connections/{conns[3]['id']}/disconnect", "POST")
        assert reply.status == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

        # bob is untouched, and still receives
        await bob.call("publish", channel="chat:lobby", data="still here")
        assert (await bob.next_push("pub"))["data"] == "still here"
        await bob.close()
        await echo.close()

    run(app, admin, scenario)


def test_http_needs_the_token_and_the_unix_socket_does_not(tmp_path: Path) -> None:
    app, admin = make_app(tmp_path)

    async def scenario(server: Any, client: AdminClient) -> None:
        for token in (None, "wrong-token-of-enough-length", TOKEN[:-1], TOKEN + "x"):
            reply = await client.over_http("/rt/admin/stats", token=token)
            assert reply.status == 401, token
            assert reply.json() == {"error": "unauthorized"}
            assert reply.headers["www-authenticate"].startswith("Bearer")
        # checked before routing: nothing about the routes shows without it
        assert (await client.over_http("/nothing-here", token=None)).status == 401
        assert (await client.over_http("/metrics", token=None)).status == 401
        basic = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
        reply = await client._run(basic, "GET", "/rt/admin/stats", {"Authorization": TOKEN})
        assert reply.status == 401
        lower = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
        headers = {"authorization": f"bearer {TOKEN}"}
        assert (await client._run(lower, "GET", "/rt/admin/stats", headers)).status == 200

        reply = await client.over_http("/rt/admin/stats")
        assert reply.status == 200 and reply.json()["pid"] == os.getpid()
        assert (await client.over_http("/nothing-here")).status == 404
        assert (await client.unix("/rt/admin/stats")).status == 200
        # the admin's own requests are not the app's
        stats = (await client.unix("/rt/admin/stats")).json()
        assert stats["totals"]["requests"] == 0 and stats["open"]["http"] == 0

    run(app, admin, scenario)
    assert admin.addresses == []


def test_tokenless_http_reads_only_for_its_own_address(tmp_path: Path) -> None:
    """Without a token, the HTTP address is read-only and only for a Host naming it: a page
    of another site that rebinds its DNS name to 127.0.0.1 gets nothing."""
    app, admin = make_app(tmp_path, token=None)

    async def scenario(server: Any, client: AdminClient) -> None:
        port = admin.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            reply = await client.over_http("/rt/admin/stats", token=None, headers={"Host": host})
            assert reply.status == 200, host
        for host in (
            f"evil.example:{port}",
            "127.0.0.1:1",
            "127.0.0.1",
            f"127.0.0.1.nip.io:{port}",
        ):
            for path in ("/rt/admin/stats", "/rt/admin/", "/metrics", "/nothing-here"):
                reply = await client.over_http(path, token=None, headers={"Host": host})
                assert reply.status == 403, (host, path)
                assert "not this admin interface's address" in reply.json()["error"]
                assert "token" in reply.json()["error"]

        peer = await Peer.open(f"ws://127.0.0.1:{server.port}/rt/ws")
        conn_id = (await client.get("/rt/admin/connections"))["connections"][0]["id"]
        path = f"/rt/admin/connections/{conn_id}/disconnect"
        reply = await client.over_http(path, "POST", token=None)
        assert reply.status == 403
        assert "admin.token" in reply.json()["error"] and "socket" in reply.json()["error"]
        assert (await client.get("/rt/admin/stats"))["open"]["channel"] == 1  # still there
        assert (await client.unix(path, "POST")).status == 200  # the unix socket may
        assert await peer.closed_with() == (4005, "disconnected by admin")

    run(app, admin, scenario)


@pytest.mark.parametrize(
    ("method", "headers", "authority", "has_token", "refused"),
    [
        ("GET", [(b"Host", b"127.0.0.1:9100")], None, False, None),
        ("GET", [(b"host", b"[::1]:9100")], None, False, None),
        ("GET", [(b"host", b"localhost:9100")], None, False, None),
        ("HEAD", [(b"host", b"127.0.0.2:9100")], None, False, None),
        ("GET", [(b"host", b"[::1]")], None, False, "address"),  # port 80
        ("GET", [], None, False, "address"),  # no Host at all
        ("GET", [(b"host", b"evil.example:9100")], b"127.0.0.1:9100", False, None),
        ("GET", [(b"host", b"127.0.0.1:9100")], b"evil.example:9100", False, "address"),
        ("GET", [(b"host", b"admin.example.com")], None, True, None),  # behind a proxy
        ("POST", [(b"host", b"127.0.0.1:9100")], None, False, "token"),
        ("DELETE", [(b"host", b"127.0.0.1:9100")], None, False, "token"),
        ("POST", [(b"host", b"127.0.0.1:9100")], None, True, None),
        ("POST", [(b"host", b"h:1"), (b"origin", b"http://h:1")], None, True, None),
        ("POST", [(b"host", b"h:1"), (b"origin", b"https://h:1")], None, True, None),
        ("POST", [(b"host", b"h:1"), (b"origin", b"http://h:2")], None, True, "cross-site"),
        ("POST", [(b"host", b"h:1"), (b"Sec-Fetch-Site", b"Cross-Site")], None, True, "cross-site"),
        (
            "POST",
            [
                (b"host", b"h:1"),
                (b"sec-fetch-mode", b"navigate"),
                (b"sec-fetch-site", b"cross-site"),
            ],
            None,
            True,
            "cross-site",
        ),
        (
            "GET",
            [
                (b"host", b"h:1"),
                (b"sec-fetch-mode", b"navigate"),
                (b"sec-fetch-site", b"cross-site"),
            ],
            None,
            True,
            None,
        ),
    ],
)
def test_admin_guard_table(
    method: str,
    headers: list[tuple[bytes, bytes]],
    authority: bytes | None,
    has_token: bool,
    refused: str | None,
) -> None:
    """admin_guard.refusal, case by case: None to serve, else a word of why."""
    from rtserve.stats.admin_guard import refusal

    why = refusal(method, headers, authority, has_token=has_token, port=9100)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why, why


def test_cross_site_requests_are_refused(tmp_path: Path) -> None:
    """A form on another site cannot post to the admin address, with or without a token;
    the admin page's own requests and a typed address go through."""

    async def scenario(server: Any, client: AdminClient) -> None:
        port = admin.port
        token = admin.token
        cross = [
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": f"http://127.0.0.1:{port + 1}"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ]
        for headers in cross:
            for method, path in (
                ("POST", "/rt/admin/connections/x/disconnect"),
                ("GET", "/rt/admin/stats"),
            ):
                reply = await client.over_http(path, method, token=token, headers=headers)
                assert reply.status == 403, (headers, method, token)
                assert "cross-site" in reply.json()["error"]
        same = [
            {},
            {"Origin": f"http://127.0.0.1:{port}"},
            {"Sec-Fetch-Site": "same-origin"},
            {"Sec-Fetch-Site": "none"},  # the address typed in the browser
            {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},  # a link to the page
        ]
        for headers in same:
            reply = await client.over_http("/rt/admin/", token=token, headers=headers)
            assert reply.status == 200, (headers, token)
        if token is not None:
            reply = await client.over_http(
                "/rt/admin/connections/x/disconnect",
                "POST",
                headers={"Origin": f"http://127.0.0.1:{port}"},
            )
            assert reply.status == 404  # through the checks: no such connection

    for options in ({}, {"token": None}):
        app, admin = make_app(tmp_path, **options)
        run(app, admin, scenario)


def test_unix_socket_is_private_and_removed(tmp_path: Path) -> None:
    app, admin = make_app(tmp_path, listen=None, token=None)
    sock = tmp_path / "run" / "admin.sock"

    async def scenario(server: Any, client: AdminClient) -> None:
        mode = os.stat(sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
        assert admin.addresses == [f"unix:{sock}"]
        assert [p.name for p in sock.parent.iterdir()] == ["admin.sock"]  # no temporary left
        assert (await client.unix("/rt/admin/stats")).status == 200

    run(app, admin, scenario)
    assert not sock.parent.exists()  # the folder it made, with the socket

    async def in_a_folder_of_mine(server: Any, client: AdminClient) -> None:
        assert sorted(p.name for p in sock.parent.iterdir()) == ["admin.sock", "mine"]

    sock.parent.mkdir()
    (sock.parent / "mine").write_text("")
    run(*make_app(tmp_path, listen=None, token=None), in_a_folder_of_mine)
    assert [p.name for p in sock.parent.iterdir()] == ["mine"]  # left as it was


def test_a_new_process_takes_the_socket_over(tmp_path: Path) -> None:
    """As on a reload: the new worker binds before the old one stops, and the old one does
    not remove the new one's socket."""
    path = tmp_path / "admin.sock"
    old_app, old = make_app(tmp_path, socket=path, listen=None, token=None)
    new_app, new = make_app(tmp_path, socket=path, listen=None, token=None)

    async def main() -> None:
        async with serve_app(old_app):
            async with serve_app(new_app) as server:
                url = f"ws://127.0.0.1:{server.port}/rt/ws"
                peer = await Peer.open(url)
                await peer.call("subscribe", channel="news")
                await old.stop()
                stats = (await AdminClient(new).unix("/rt/admin/stats")).json()
                assert stats["channels"]["subscribers"] == 1  # the new app's
                await peer.close()
            assert not path.exists()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_second_instance_that_cannot_listen_leaves_the_first_ones_socket(
    tmp_path: Path,
) -> None:
    """A second `rtserve run` of the same project whose port is taken starts its admin, fails
    to bind and stops: the first instance's socket is at the path again afterwards (as when a
    reload's new worker fails to start)."""
    from rtserve.server.listener import Server
    from rtserve.server.settings import ServerSettings

    path = tmp_path / "run" / "admin.sock"
    first_app, first = make_app(tmp_path, socket=path, listen=None, token=None)
    second_app, _ = make_app(tmp_path, socket=path, listen=None, token=None)

    async def main() -> None:
        async with serve_app(first_app) as server:
            peer = await Peer.open(f"ws://127.0.0.1:{server.port}/rt/ws")
            await peer.call("subscribe", channel="news")
            # as listener.serve() does: the startup hooks, a bind that fails, the shutdown hooks
            await second_app.startup()
            taken = ServerSettings(host="127.0.0.1", port=server.port, access_log=False)
            with pytest.raises(OSError):
                await Server(second_app, taken).start()
            await second_app.shutdown()
            stats = (await AdminClient(first).unix("/rt/admin/stats")).json()
            assert stats["channels"]["subscribers"] == 1  # the first app's, still reachable
            assert sorted(p.name for p in path.parent.iterdir()) == ["admin.sock"]
            await peer.close()
        assert not path.parent.exists()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_test_server_serves_the_admin_on_private_addresses(tmp_path: Path) -> None:
    """rtserve.testing never binds the app's own admin addresses (a running `rtserve run` of
    the project owns them): a socket in a temporary folder and another port instead."""
    path = tmp_path / "run" / "admin.sock"
    app, admin = make_app(tmp_path, socket=path, listen="127.0.0.1:0", token=TOKEN)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    admin.listen = f"127.0.0.1:{taken.getsockname()[1]}"  # where a running server's would be

    async def main() -> None:
        async with testing.serve_app(app):
            assert admin.socket_path is not None and admin.socket_path != path
            assert not path.parent.exists()
            assert admin.port != taken.getsockname()[1]
            assert (await AdminClient(admin).unix("/rt/admin/stats")).status == 200
            assert (await AdminClient(admin).over_http("/rt/admin/stats")).status == 200
            private = admin.socket_path
        assert (admin.socket_path, admin.listen) == (path, f"127.0.0.1:{taken.getsockname()[1]}")
        assert not private.parent.exists()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        taken.close()


def test_a_socket_path_too_long_for_sun_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    app, admin = make_app(tmp_path, socket=deep / "admin.sock", listen=None, token=None)

    async def scenario(server: Any, client: AdminClient) -> None:
        assert stat.S_IMODE(os.stat(deep / "admin.sock").st_mode) == 0o600
        # a client gets there the same way: through a descriptor of the folder
        fd = os.open(deep, os.O_RDONLY)
        try:
            conn = UnixHTTPConnection(f"/proc/self/fd/{fd}/admin.sock")
            reply = await client._run(conn, "GET", "/rt/admin/stats", {})
        finally:
            os.close(fd)
        assert reply.status == 200

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    run(app, admin, scenario)
    assert not (deep / "admin.sock").exists()


# --- /metrics ------------------------------------------------------------------------------

SAMPLE = re.compile(
    r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})? (\S+)'
)


def parse_metrics(text: str) -> dict[str, float]:
    helps, types, samples = set(), {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name = match.group(1)
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if types.get(family) == "histogram":
                name = family  # its samples: _bucket{le=...}, _sum, _count
            assert name in helps and name in types, f"{name} has no HELP or TYPE"
            if types[name] == "counter":
                assert name.endswith("_total"), name
            name = match.group(1)
            samples[name + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics(tmp_path: Path) -> None:
    app, admin = make_app(tmp_path)

    async def scenario(server: Any, client: AdminClient) -> None:
        peer = await Peer.open(f"ws://127.0.0.1:{server.port}/rt/ws")
        await peer.call("subscribe", channel="news")
        reply = await client.over_http("/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = parse_metrics(reply.body.decode())
        assert samples['rtserve_open_connections{transport="channel"}'] == 1
        assert samples['rtserve_open_connections{transport="http"}'] == 0
        assert samples['rtserve_open_connections{transport="sse"}'] == 0
        assert samples['rtserve_open_connections{transport="poll"}'] == 0
        assert samples["rtserve_bytes_received_total"] > 0
        assert samples["rtserve_bytes_sent_total"] > 0
        assert samples['rtserve_responses_total{class="1xx"}'] == 1
        assert samples["rtserve_connections_total"] == 1
        assert samples["rtserve_websockets_total"] == 1
        assert samples["rtserve_channel_subscriptions_total"] == 1
        assert samples["rtserve_channels"] == 1 and samples["rtserve_channel_subscribers"] == 1
        assert samples["rtserve_event_loop_lag_seconds"] >= 0
        assert samples["process_resident_memory_bytes"] > 0
        assert samples["process_cpu_seconds_total"] > 0
        assert (await client.unix("/metrics")).status == 200
        await peer.close()

    run(app, admin, scenario)


def test_no_metrics_unless_asked(tmp_path: Path) -> None:
    app, admin = make_app(tmp_path, metrics=False)

    async def scenario(server: Any, client: AdminClient) -> None:
        assert (await client.over_http("/metrics")).status == 404
        assert (await client.unix("/metrics")).status == 404
        assert (await client.unix("/rt/admin/stats")).status == 200

    run(app, admin, scenario)


def test_loop_lag_is_measured(tmp_path: Path) -> None:
    app, admin = make_app(tmp_path, listen=None, token=None)
    admin.lag.interval = 0.05

    async def scenario(server: Any, client: AdminClient) -> None:
        await asyncio.sleep(0.12)
        time.sleep(0.2)  # hold the loop
        await asyncio.sleep(0.12)
        lag = (await client.get("/rt/admin/stats"))["loop_lag_seconds"]
        assert 0.1 <= lag["max"] < 5

    run(app, admin, scenario)


# --- configuration -------------------------------------------------------------------------


def test_listen_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text("broker: memory\nadmin:\n  listen: 0.0.0.0:9100\n")
    with pytest.raises(ConfigErrors) as info:
        load_project(tmp_path)
    [issue] = info.value.issues
    assert (issue.line, issue.column, issue.keypath) == (3, 3, "admin")
    assert "0.0.0.0:9100" in issue.message and "token" in issue.message
    assert ":3:3: admin: listen '0.0.0.0:9100' is not a loopback address" in str(issue)


def test_admin_config_checks() -> None:
    for ok in (
        AdminConfig(listen="127.0.0.1:9100"),
        AdminConfig(listen="127.3.4.5:0"),
        AdminConfig(listen="[::1]:9100"),
        AdminConfig(listen="localhost:9100", socket=None),
        AdminConfig(listen="0.0.0.0:9100", token=TOKEN),
        AdminConfig(enabled=False, socket=None),
    ):
        assert ok.enabled in (True, False)
    for kwargs, message in (
        ({"listen": "0.0.0.0:9100"}, "not a loopback address"),
        ({"listen": "[::]:9100"}, "not a loopback address"),
        ({"listen": "admin.example.com:9100"}, "not a loopback address"),
        ({"listen": "0.0.0.0:9100", "enabled": False}, "not a loopback address"),
        ({"listen": "9100"}, "host:port"),
        ({"listen": "127.0.0.1:99999"}, "host:port"),
        ({"listen": "127.0.0.1:9100", "token": "short"}, "at least 16"),
        ({"socket": None}, "nothing to serve"),
    ):
        with pytest.raises(ValueError, match=message):
            AdminConfig(**kwargs)
    with pytest.raises(ValueError, match="not a loopback"):
        enable_admin(App(), listen="10.0.0.1:9100")


def test_a_project_serves_the_admin_socket_by_default(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text('channels:\n  rules:\n    - pattern: "chat:*"\nadmin:\n')
    config, folder = load_project(tmp_path)
    assert config.admin == AdminConfig()
    app = build_app(config, folder)
    assert app.admin is not None
    sock = tmp_path / ".rtserve" / "admin.sock"
    assert not sock.exists()  # built, not started

    async def main() -> None:
        async with serve_app(app) as server:
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            assert isinstance(app.admin, AdminServer)
            client = AdminClient(app.admin)
            peer = await Peer.open(f"ws://127.0.0.1:{server.port}/rt/ws")
            await peer.call("subscribe", channel="chat:x")
            channels = await client.get("/rt/admin/channels")
            assert channels["channels"] == [{"name": "chat:x", "subscribers": 1, "publications": 0}]
            await peer.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert not sock.parent.exists()


def test_a_project_without_admin(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text("admin:\n  enabled: false\n")
    config, folder = load_project(tmp_path)
    app = build_app(config, folder)
    assert app.admin is None

    async def main() -> None:
        async with serve_app(app):
            assert not (tmp_path / ".rtserve").exists()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_enable_admin_again_replaces_the_settings(tmp_path: Path) -> None:
    app = App()
    first = enable_admin(app, socket=tmp_path / "one.sock")
    second = enable_admin(app, socket=tmp_path / "two.sock")
    assert app.admin is second and first.start not in app.on_startup
    assert app.on_startup == [second.start] and app.on_shutdown == [second.stop]

    async def main() -> None:
        async with serve_app(app):
            assert (tmp_path / "two.sock").exists() and not (tmp_path / "one.sock").exists()
            with pytest.raises(RuntimeError):
                enable_admin(app, socket=tmp_path / "three.sock")

    asyncio.run(asyncio.wait_for(main(), 30))


def test_an_unusable_socket_path_does_not_stop_the_app(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    app, admin = make_app(tmp_path, socket=tmp_path / "taken" / "admin.sock")

    async def scenario(server: Any, client: AdminClient) -> None:
        assert admin.addresses == [f"http://127.0.0.1:{admin.port}"]
        assert (await client.over_http("/rt/admin/stats")).status == 200

    run(app, admin, scenario)
    assert "admin socket" in caplog.text and "not available" in caplog.text


# --- /metrics read by the Prometheus client's own parser -----------------------------------

# The families docs/projects.md names, as samples (counters with their `_total`).
DOCUMENTED_SAMPLES = {
    "rtserve_requests_total",
    "rtserve_responses_total",
    "rtserve_open_connections",
    "rtserve_bytes_received_total",
    "rtserve_bytes_sent_total",
    "rtserve_channel_deliveries_total",
    "rtserve_event_loop_lag_seconds",
    "process_resident_memory_bytes",
    "rtserve_http_latency_seconds_bucket",
    "rtserve_http_latency_seconds_count",
    "rtserve_broker_publish_latency_seconds_bucket",
    "rtserve_ws_messages_received_total",
    "rtserve_ws_frames_sent_total",
}


def test_metrics_parse_with_prometheus_client(tmp_path: Path) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    app, admin = make_app(tmp_path)

    async def scenario(server: Any, client: AdminClient) -> None:
        peer = await Peer.open(f"ws://127.0.0.1:{server.port}/rt/ws")
        await peer.call("subscribe", channel="news")
        text = (await client.over_http("/metrics")).body.decode()
        await peer.close()
        families = list(parser.text_string_to_metric_families(text))
        assert families
        samples: dict[str, float] = {}
        for family in families:
            assert family.type in ("counter", "gauge", "histogram"), family
            assert family.documentation, family.name
            assert family.samples, family.name
            for sample in family.samples:
                assert sample.name.startswith(("rtserve_", "process_")), sample
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        names = {key.partition("{")[0] for key in samples}
        assert names >= DOCUMENTED_SAMPLES, DOCUMENTED_SAMPLES - names
        # the same numbers as the test's own reading of the text
        assert samples == parse_metrics(text)
        for transport in ("http", "websocket", "channel", "sse", "poll"):
            assert f'rtserve_open_connections{{transport="{transport}"}}' in samples
        assert samples['rtserve_open_connections{transport="channel"}'] == 1
        assert samples["rtserve_bytes_received_total"] > 0
        assert samples["rtserve_bytes_sent_total"] > 0
        # the one 101 so far; its histogram's buckets are cumulative and end at +Inf
        assert samples["rtserve_http_latency_seconds_count"] == 1
        assert samples['rtserve_http_latency_seconds_bucket{le="+Inf"}'] == 1
        assert samples["rtserve_ws_messages_received_total"] == 2  # connect, subscribe

    run(app, admin, scenario)


# --- exact figures after scripted traffic --------------------------------------------------

CHANNEL_CLIENTS, SSE_STREAMS, POLLS, K = 50, 20, 10, 5


class _SSEReader:
    """An SSE stream over http.client (blocking: used from threads)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.conn.request("GET", "/rt/sse?channel=feed")
        self.response = self.conn.getresponse()
        assert self.response.status == 200

    def pubs(self, n: int) -> list[Any]:
        """The data of the next `n` `pub` events."""
        out: list[Any] = []
        kind, data = "", ""
        while len(out) < n:
            line = self.response.readline()
            if not line:
                raise EOFError("stream ended")
            text = line.decode("utf-8").rstrip("\n")
            if text == "":
                if kind == "pub":
                    out.append(json.loads(data)["data"])
                kind, data = "", ""
            elif text.startswith("event: "):
                kind = text[7:]
            elif text.startswith("data: "):
                data = text[6:]
        return out

    def close(self) -> None:
        self.response.close()
        self.conn.close()


def _poll(port: int) -> Any:
    url = f"http://127.0.0.1:{port}/rt/poll?channel=feed&timeout=30"
    with urllib.request.urlopen(url, timeout=TIMEOUT * 2) as response:
        assert response.status == 200
        return json.loads(response.read())


def _in_thread(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> asyncio.Future[Any]:
    """Run `fn(*args)` in a new daemon thread; its result as a Future of `loop`."""
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, daemon=True).start()
    return future


def test_exact_figures_after_scripted_traffic(tmp_path: Path) -> None:
    app, admin = make_app(tmp_path)
    app.channel("feed", history=100)

    async def scenario(server: Any, client: AdminClient) -> None:
        port = server.port
        before = await client.get("/rt/admin/stats")
        assert before["hub"]["deliveries"] == 0 and before["hub"]["subscriptions"] == 0

        url = f"ws://127.0.0.1:{port}/rt/ws"
        peers = await asyncio.gather(*(Peer.open(url) for _ in range(CHANNEL_CLIENTS)))
        await asyncio.gather(*(p.call("subscribe", channel="feed") for p in peers))
        streams = await asyncio.gather(
            *(asyncio.to_thread(_SSEReader, port) for _ in range(SSE_STREAMS))
        )
        loop = asyncio.get_running_loop()
        polls: list[asyncio.Future[Any]] = []
        try:

            async def subscribed(n: int) -> bool:
                return bool(app.hub.subscriber_count("feed") == n)

            await eventually(lambda: subscribed(CHANNEL_CLIENTS + SSE_STREAMS))
            for i in range(K):
                await app.publish("feed", {"i": i})
            # every subscriber got all K, in order
            expected = [{"i": i} for i in range(K)]
            for peer in peers:
                assert [m["data"] for m in await peer.pubs(K)] == expected
            got = await asyncio.gather(*(asyncio.to_thread(s.pubs, K) for s in streams))
            assert got == [expected] * SSE_STREAMS

            # polls started after the publishes: they have nothing yet, so they wait
            # (each in a thread of its own: they would fill the loop's default executor)
            polls = [_in_thread(loop, _poll, port) for _ in range(POLLS)]

            async def waiting() -> bool:
                return bool((await client.get("/rt/admin/stats"))["open"]["poll"] == POLLS)

            await eventually(waiting)
            stats = await client.get("/rt/admin/stats")
            assert stats["open"] == {
                "http": SSE_STREAMS + POLLS,  # each SSE stream and poll is an HTTP connection
                "websocket": 0,
                "channel": CHANNEL_CLIENTS,
                "sse": SSE_STREAMS,
                "poll": POLLS,
            }
            hub = stats["hub"]
            # each publication reached each channel client and each stream, and no poller
            assert hub["publications"] == K
            assert stats["latency_seconds"]["broker_publish"]["count"] == K
            # every response head written, and the SSE streams' heads (not finished yet)
            http_latency = stats["latency_seconds"]["http"]
            assert http_latency["count"] == stats["totals"]["requests"] + SSE_STREAMS
            assert sum(http_latency["counts"]) == http_latency["count"]
            assert http_latency["p99"] is not None
            totals = stats["totals"]
            # each channel client sent connect and subscribe, and got their replies and K pubs
            assert totals["ws_messages_received"] == 2 * CHANNEL_CLIENTS
            assert totals["ws_frames_sent"] == (2 + K) * CHANNEL_CLIENTS
            assert hub["deliveries"] == K * CHANNEL_CLIENTS + K * SSE_STREAMS
            assert hub["subscriptions"] == CHANNEL_CLIENTS + SSE_STREAMS + POLLS
            assert hub["dropped"] == hub["conflated"] == hub["slow_disconnected"] == 0
            assert stats["channels"]["count"] == 1
            assert stats["channels"]["subscribers"] == CHANNEL_CLIENTS + SSE_STREAMS + POLLS
            assert app.hub.subscriber_count("feed") == stats["channels"]["subscribers"]
            listing = await client.get("/rt/admin/channels")
            assert listing["channels"] == [
                {
                    "name": "feed",
                    "subscribers": CHANNEL_CLIENTS + SSE_STREAMS + POLLS,
                    "publications": K,
                }
            ]
            conns = (await client.get("/rt/admin/connections?transport=channel"))["connections"]
            assert len(conns) == CHANNEL_CLIENTS
            assert all(c["bytes_in"] > 0 and c["bytes_out"] > 0 for c in conns)
            assert stats["totals"]["bytes_sent"] >= sum(c["bytes_out"] for c in conns)

            # one more publication releases the polls: each answers with it alone
            await app.publish("feed", "last")
            answers = await asyncio.wait_for(asyncio.gather(*polls), TIMEOUT)
            for answer in answers:
                assert [p["data"] for p in answer["channels"]["feed"]["publications"]] == ["last"]
            after = await client.get("/rt/admin/stats")
            total = (K + 1) * (CHANNEL_CLIENTS + SSE_STREAMS) + POLLS
            assert after["hub"]["deliveries"] == total
            assert after["open"]["poll"] == 0 and after["open"]["sse"] == SSE_STREAMS
        finally:
            for peer in peers:
                await peer.close()
            await asyncio.gather(*(asyncio.to_thread(s.close) for s in streams))
            if polls:  # released by the publication above, or by the server's shutdown
                await asyncio.wait(polls, timeout=TIMEOUT)

        async def all_closed() -> bool:
            stats = await client.get("/rt/admin/stats")
            return bool(
                stats["open"] == dict.fromkeys(("http", "websocket", "channel", "sse", "poll"), 0)
                and stats["channels"]["subscribers"] == 0
            )

        await eventually(all_closed)

    run(app, admin, scenario)
