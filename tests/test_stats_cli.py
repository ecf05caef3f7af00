"""`rtserve stats`: the admin interface of a running server, through the CLI (click's
CliRunner, so stdout is not a terminal: plain text and NDJSON).

The app runs in a thread (`ThreadedServer`); its channel clients (`tests.channel_peer.Peer`)
run on the server's loop through `ThreadedServer.call`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rtserve import App, ConnectResult
from rtserve.cli.main import main
from rtserve.stats.admin import AdminServer, enable_admin
from rtserve.testing import ThreadedServer
from tests.channel_peer import Peer

TOKEN = "an-admin-token-of-32-characters!"


class Running:
    def __init__(self, server: ThreadedServer, admin: AdminServer, project: Path) -> None:
        self.server = server
        self.admin = admin
        self.project = project

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin.port}"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "rtserve.yaml").write_text("admin:\n  socket: .rtserve/admin.sock\n")
    app = App()
    app.channel("chat:*", publish="clients")
    app.channel("news")

    @app.on_connect
    def who(ctx: Any) -> ConnectResult:
        return ConnectResult(user=(ctx.data or {}).get("user"))

    admin = enable_admin(
        app, socket=project / ".rtserve" / "admin.sock", listen="127.0.0.1:0", token=TOKEN
    )
    with ThreadedServer(app) as server:
        url = f"ws://127.0.0.1:{server.port}/rt/ws"
        peers: list[Peer] = []
        try:
            for user, channels in (("alice", ["chat:lobby", "news"]), ("bob", ["chat:lobby"])):
                peer = server.call(lambda user=user: Peer.open(url, data={"user": user}))
                peers.append(peer)
                for channel in channels:
                    server.call(lambda p=peer, c=channel: p.call("subscribe", channel=c))
            yield Running(server, admin, project)
        finally:
            for peer in peers:
                server.call(peer.close)


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["stats", *args], env=env)


def test_once_shows_connections_and_channels(running: Running) -> None:
    result = invoke(str(running.project), "--once")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "open: http 0, websocket 0, channel 2, total 2, sse 0, poll 0" in out
    assert "chat:lobby  2" in out and "news  1" in out
    assert "2 channels, 3 subscribers, 2 users" in out
    assert "alice" in out and "bob" in out
    # The project's rtserve.yaml itself works as PATH too.
    again = invoke(str(running.project / "rtserve.yaml"), "--once")
    assert again.exit_code == 0 and "channel 2" in again.output


def test_json_prints_the_stats(running: Running) -> None:
    result = invoke(str(running.project), "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert {"pid", "uptime_seconds", "open", "totals", "hub", "channels", "process"} <= set(stats)
    assert stats["open"]["channel"] == 2
    assert stats["channels"] == {"count": 2, "subscribers": 3, "users": 2}


def test_json_watch_prints_ndjson_with_rates(running: Running) -> None:
    result = invoke(str(running.project), "--json", "--watch", "--interval", "0.1", "--ticks", "3")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["open"]["channel"] == 2
        assert set(line["rates"]) == {
            "requests",
            "publications",
            "deliveries",
            "connections",
            "interval_seconds",
        }
        assert line["rates"]["interval_seconds"] > 0
    # Not a terminal and no mode given: NDJSON too.
    default = invoke(str(running.project), "--interval", "0.1", "--ticks", "2")
    assert default.exit_code == 0, default.output
    assert len([json.loads(line) for line in default.output.splitlines()]) == 2


def test_url_with_the_token(running: Running) -> None:
    result = invoke("--url", running.admin_url, "--token", TOKEN, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["open"]["channel"] == 2
    from_env = invoke("--url", running.admin_url, "--once", env={"RTSERVE_ADMIN_TOKEN": TOKEN})
    assert from_env.exit_code == 0 and "channel 2" in from_env.output


def test_url_with_a_wrong_or_missing_token(running: Running) -> None:
    wrong = invoke("--url", running.admin_url, "--token", "x" * 20, "--once")
    assert wrong.exit_code == 1
    assert "token" in wrong.output and "401" in wrong.output
    missing = invoke("--url", running.admin_url, "--once", env={"RTSERVE_ADMIN_TOKEN": ""})
    assert missing.exit_code == 1 and "needs a token" in missing.output


def test_not_an_admin_interface(running: Running) -> None:
    result = invoke("--url", running.server.url, "--once")
    assert result.exit_code == 1
    assert "not an rtserve admin interface" in result.output


def test_no_running_server(tmp_path: Path) -> None:
    result = invoke(str(tmp_path), "--once")
    assert result.exit_code == 1
    assert str(tmp_path / ".rtserve" / "admin.sock") in result.output
    assert "no running server" in result.output and "rtserve run" in result.output
    # A stale socket file nobody listens on: refused.
    import socket

    (tmp_path / ".rtserve").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / ".rtserve" / "admin.sock"))
    stale.close()
    refused = invoke(str(tmp_path), "--json")
    assert refused.exit_code == 1 and "refused" in refused.output
    nothing = invoke("--url", "http://127.0.0.1:1", "--once")
    assert nothing.exit_code == 1 and "http://127.0.0.1:1" in nothing.output


def test_socket_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text("admin:\n  socket: ${SOCK:-run/a.sock}\n")
    result = invoke(str(tmp_path), "--once")
    assert result.exit_code == 1 and str(tmp_path / "run" / "a.sock") in result.output
    (tmp_path / "rtserve.yaml").write_text("admin:\n  enabled: false\n")
    off = invoke(str(tmp_path), "--once")
    assert off.exit_code == 1 and "off" in off.output
