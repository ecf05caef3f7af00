"""`rtserve stats`: the admin interface of a running server, through the CLI (click's
CliRunner, so stdout is not a terminal: plain text and NDJSON).

The app runs in a thread (`ThreadedServer`); its channel clients (`tests.channel_peer.Peer`)
run on the server's loop through `ThreadedServer.call`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rtserve import App, ConnectResult
from rtserve.cli import stats_cmd
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
    with ThreadedServer(app, private_admin=False) as server:
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


def test_once_with_json_prints_the_json_once(running: Running) -> None:
    result = invoke(str(running.project), "--once", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["open"]["channel"] == 2  # one document, one line
    assert invoke(str(running.project), "--once", "--watch").exit_code == 2  # still contrary


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
            "messages_in",
            "frames_out",
            "bytes_in",
            "bytes_out",
            "http_p50",
            "http_p99",
            "publish_p50",
            "publish_p99",
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


@pytest.fixture
def live_minimal(tmp_path: Path) -> Iterator[Any]:
    """`rtserve run` of a scaffolded minimal project (a process of its own)."""
    from tests.support.live_project import LiveProject

    project = tmp_path / "proj"
    assert CliRunner().invoke(main, ["new", "minimal", str(project)]).exit_code == 0
    live = LiveProject(project)
    try:
        yield live
    finally:
        live.stop()


def socket_identity(path: Path) -> tuple[int, int]:
    """The socket file's inode and change time: a takeover and its undoing change the time
    (the file is linked under a second name meanwhile)."""
    st = os.stat(path)
    return st.st_ino, st.st_ctime_ns


def served_by(live: Any) -> None:
    """`rtserve stats` in the project reaches the running server (its pid)."""
    result = invoke(str(live.project), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pid"] == live.proc.pid


def test_a_projects_test_server_leaves_the_running_servers_admin_socket(live_minimal: Any) -> None:
    """What the template's conftest and rtserve's pytest plugin do for each test, while
    `rtserve run` serves the project: the test server serves its admin elsewhere."""
    from rtserve.config.project import build_app, load_project

    socket_id = socket_identity(live_minimal.socket)
    served_by(live_minimal)
    with ThreadedServer(build_app(*load_project(live_minimal.project))) as server:
        assert server.client().get("/hello/x").status == 200
        assert socket_identity(live_minimal.socket) == socket_id
        served_by(live_minimal)
    assert os.listdir(live_minimal.socket.parent) == ["admin.sock"]
    served_by(live_minimal)


@pytest.mark.slow
def test_a_projects_own_suite_leaves_the_running_servers_admin_socket(live_minimal: Any) -> None:
    """`pytest` in the project (the template's own suite) while `rtserve run` serves it."""
    socket_id = socket_identity(live_minimal.socket)
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=live_minimal.project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert socket_identity(live_minimal.socket) == socket_id
    assert os.listdir(live_minimal.socket.parent) == ["admin.sock"]
    served_by(live_minimal)


def test_not_an_admin_interface(running: Running) -> None:
    result = invoke("--url", running.server.url, "--once")
    assert result.exit_code == 1
    assert "not an rtserve admin interface" in result.output


def test_no_running_server(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text("")  # a project, not running
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
    (tmp_path / "rtserve.yaml").write_text("admin:\n  enabled: [not, a, bool]\n")
    bad = invoke(str(tmp_path), "--once")
    assert bad.exit_code == 1 and "rtserve.yaml:2:12: admin.enabled" in bad.output


def test_the_admin_address_and_token_may_come_from_dot_env(running: Running) -> None:
    """As `rtserve run` reads them: the environment first, then .env beside rtserve.yaml."""
    (running.project / "rtserve.yaml").write_text(
        "admin:\n  socket: null\n  listen: ${ADMIN_LISTEN}\n  token: ${ADMIN_TOKEN}\n"
    )
    (running.project / ".env").write_text(
        f"ADMIN_LISTEN=127.0.0.1:{running.admin.port}\nADMIN_TOKEN={TOKEN}\n"
    )
    result = invoke(str(running.project), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["open"]["channel"] == 2


# --- figures computed by the CLI, without a server ------------------------------------------


def _histogram(counts: list[int]) -> dict[str, Any]:
    return {"bounds": [0.001, 0.01, 0.1], "counts": counts, "count": sum(counts)}


def test_rates_and_latency_quantiles_over_one_interval() -> None:
    before = {
        "pid": 7,
        "uptime_seconds": 10.0,
        "totals": {"requests": 100, "bytes_sent": 0},
        "hub": {"publications": 0, "deliveries": 0},
        "latency_seconds": {"http": _histogram([100, 0, 0, 0])},
    }
    after = {
        "pid": 7,
        "uptime_seconds": 12.0,
        "totals": {"requests": 300, "bytes_sent": 4096},
        "hub": {"publications": 10, "deliveries": 1000},
        "latency_seconds": {"http": _histogram([100, 0, 200, 0])},
    }
    rate = stats_cmd.rates(before, after)
    assert rate is not None
    assert rate["requests"] == 100.0 and rate["deliveries"] == 500.0
    assert rate["bytes_out"] == 2048.0
    # the 200 requests of the interval all fell in (0.01, 0.1]: the earlier 100 do not count
    assert rate["http_p50"] == pytest.approx(0.055)
    assert rate["http_p99"] == pytest.approx(0.0991)
    assert rate["publish_p99"] is None  # no histogram: nothing to say
    # another process (a restart) has no rates against the old one
    assert stats_cmd.rates(before, dict(after, pid=8)) is None


def test_channel_rates() -> None:
    previous = [{"name": "a", "publications": 10}, {"name": "gone", "publications": 3}]
    current = [{"name": "a", "publications": 30}, {"name": "new", "publications": 5}]
    assert stats_cmd.channel_rates(previous, current, 2.0) == {"a": 10.0}
    assert stats_cmd.channel_rates(None, current, 2.0) == {}


def test_dashboard_keys_sort_filter_and_quit() -> None:
    class FakeClient:
        where = "fake"
        asked: list[tuple[str | None, str]] = []

        def connections(
            self, transport: str | None = None, sort: str = "queued"
        ) -> list[dict[str, Any]]:
            self.asked.append((transport, sort))
            return []

    client = FakeClient()
    dashboard = stats_cmd.Dashboard(client)  # type: ignore[arg-type]
    assert dashboard.view().connections_title() == "top 10 by queued bytes"
    assert dashboard.key("s") and dashboard.key("f")
    assert dashboard.view().connections_title() == "top 10 by age, channel only"
    assert client.asked == [(None, "queued"), ("channel", "age")]
    assert dashboard.key("f") and dashboard.key("f") and dashboard.key("f")
    assert dashboard.view().transport is None
    assert not dashboard.key("q")


def test_histogram_buckets_and_quantiles() -> None:
    from rtserve.histogram import Histogram, quantile

    histogram = Histogram((0.001, 0.01))
    for value in (0.0005, 0.001, 0.002, 5.0):
        histogram.observe(value)
    # le semantics: 0.001 falls in the first bucket, 5.0 above every bound
    assert histogram.counts == [2, 1, 1]
    assert histogram.count == 4 and histogram.sum == pytest.approx(5.0035)
    assert quantile(histogram.bounds, histogram.counts, 0.5) == pytest.approx(0.001)
    assert quantile(histogram.bounds, histogram.counts, 1.0) == 0.01  # a floor above the last
    assert quantile(histogram.bounds, [0, 0, 0], 0.5) is None


def _one_channel_view(transport: str | None) -> stats_cmd.View:
    stats = {
        "pid": 7,
        "uptime_seconds": 5,
        "open": {"http": 0, "websocket": 0, "channel": 1},
        "channels": {"count": 1, "subscribers": 1, "users": 1},
    }
    where = "unix:/home/someone/projects/chat/.rtserve/admin.sock"
    channels = [{"name": "chat:lobby", "subscribers": 1, "publications": 0}]
    return stats_cmd.View(where, stats, channels, [], None, transport=transport)


def test_counts_are_singular_and_an_empty_listing_says_none() -> None:
    import io

    from rich.console import Console

    view = _one_channel_view("websocket")
    text = stats_cmd.plain(view)
    assert "channels: 1 channel, 1 subscriber, 1 user" in text
    assert text.endswith("connections (top 10 by queued bytes, websocket only):\n  none")
    console = Console(width=160, file=io.StringIO(), color_system=None)
    console.print(stats_cmd.rich_view(view))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    # the channels table's title on one line at 160 columns
    assert "top channels (1 channel, 1 subscriber, 1 user)" in [line.strip() for line in lines]
    title = next(i for i, line in enumerate(lines) if "websocket only" in line)
    assert any("none" in line for line in lines[title:])
    many = stats_cmd.View(
        "x", {"channels": {"count": 2, "subscribers": 0, "users": 3}}, [], [], None
    )
    assert many.channel_summary == "2 channels, 0 subscribers, 3 users"
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(stats_cmd.rich_view(many))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    channels = next(i for i, line in enumerate(lines) if line.startswith("top channels"))
    assert "none" in lines[channels + 4], lines  # title, top rule, header, rule, the row
