"""The rtserve command: version, help, errors, and `run` as a real process with signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtserve import App, Request, ServerSettings, __version__
from rtserve.cli.main import main
from rtserve.testing import serve_app
from tests.rawhttp import RawClient, get

ROOT = Path(__file__).resolve().parent.parent


def test_version_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "run" in result.output
    result = runner.invoke(main, ["run", "--help"])
    assert "--no-access-log" in result.output and "--reload" in result.output


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:app", "cannot import module"),
        ("tests.apps.slow:nope", "has no attribute"),
        ("tests.apps.slow:asyncio", "not an rtserve App"),
    ],
)
def test_run_bad_target_exits_2(target: str, message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rtserve", "run", target, "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_on_a_port_in_use_says_so_in_one_line(workers: str) -> None:
    """In one process and under the supervisor alike: exit 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        command = [sys.executable, "-m", "rtserve", "run", "tests.apps.slow:app"]
        proc = subprocess.run(
            [*command, "--port", port, "--workers", workers, "--no-reload"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


class Served:
    """`rtserve run` in a child process; the port is read from its log."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtserve", "run", "tests.apps.slow:app", "--port", "0", *args],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.port_found = threading.Event()
        self.port = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.port_found.wait(20):
            self.proc.kill()
            raise AssertionError("server did not report its address: " + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self.port_found.set()

    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 10) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: text in self.log(), timeout), self.log()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait(10)


def test_run_serves_and_logs_access(served: Served) -> None:
    with RawClient(served.port) as c:
        c.send(get())
        assert c.response().body == b"ok"
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(20) == 0
    served.reader.join(5)
    assert '"GET / HTTP/1.1" 200' in served.log()


def test_sigterm_lets_in_flight_requests_finish(served: Served) -> None:
    idle = RawClient(served.port)
    idle.send(get())
    assert idle.response().status == 200  # now an idle keep-alive connection
    busy = RawClient(served.port, timeout=10)
    busy.send(get("/slow?s=0.5"))
    served.wait_for("slow request started")
    served.proc.send_signal(signal.SIGTERM)
    response = busy.response()
    assert response.status == 200 and response.body == b"finished"
    assert response.headers.get("connection") == "close"
    assert idle.wait_closed()
    assert served.proc.wait(20) == 0
    with pytest.raises(OSError):
        RawClient(served.port, timeout=2).send(get())
    busy.close()
    idle.close()


def test_second_signal_stops_at_once() -> None:
    s = Served()
    try:
        busy = RawClient(s.port, timeout=30)
        busy.send(get("/slow?s=60"))
        s.wait_for("slow request started")
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.wait_for("shutting down")
        s.proc.send_signal(signal.SIGTERM)  # a second signal closes everything at once
        assert s.proc.wait(20) == 0
        assert time.monotonic() - start < 10
        assert busy.wait_closed()
        busy.close()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_shutdown_grace_period_is_bounded() -> None:
    async def scenario() -> float:
        app = App()
        started = asyncio.Event()

        @app.route("/slow")
        async def slow(request: Request) -> str:
            started.set()
            await asyncio.sleep(30)
            return "never"

        async with serve_app(app, access_log=False) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(get("/slow"))
            await asyncio.wait_for(started.wait(), 5)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await server.shutdown(grace=0.2)
            elapsed = loop.time() - start
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no response
            writer.close()
            return elapsed

    elapsed = asyncio.run(scenario())
    assert 0.15 < elapsed < 2


def test_run_options_come_from_the_settings_schema() -> None:
    from rtserve.cli.options import RUN_SETTINGS, _field, apply_options

    text = " ".join(CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output.split())
    for key in RUN_SETTINGS:
        found, _ = _field(key)
        assert "--" + key.replace(".", "-").replace("_", "-") in text
        assert " ".join(found.metadata["help"].split()) in text
    settings = apply_options(
        ServerSettings(),
        {"host": ("::1", "127.0.0.1"), "port": 9, "tls_cert": "c.pem", "debug": False},
    )
    assert settings.host == ["::1", "127.0.0.1"] and settings.port == 9
    assert settings.tls.cert == "c.pem" and settings.debug is False


def test_check_names_the_line_of_a_failing_app_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `app:` factory raising is a problem of the project, reported as one (no traceback),
    at the line of the project's code that raised, not rtserve's."""
    (tmp_path / "rtserve.yaml").write_text("app: shop_factory:create_app\n")
    (tmp_path / "shop_factory.py").write_text(
        "from rtserve import App\n\n\ndef create_app():\n    app = App()\n"
        '    app.static_file("/x", "missing.html")\n    return app\n'
    )
    monkeypatch.chdir(tmp_path)
    for command in ("check", "routes"):
        result = CliRunner().invoke(main, [command])
        assert result.exit_code == 2, result.output
        assert "app: create_app() failed:" in result.output
        assert "shop_factory.py:6: ValueError: static file 'missing.html' does not exist" in (
            result.output
        )
        assert "Traceback" not in result.output


def test_check_warns_about_websocket_settings_that_contradict_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message limit above the outbound budget is valid alone but breaks an echo of a large
    message: `check` says so (exit 0), for the server's settings and a route's overrides."""
    (tmp_path / "rtserve.yaml").write_text(
        "server:\n  websocket:\n    max_message_size: 64MiB\n"
        "routes:\n"
        "  - path: /ws/echo\n    websocket: ws_checked_handlers:Echo\n"
        "    options: {max_queued_bytes: 128MiB}\n"
        "  - path: /ws/small\n    websocket: ws_checked_handlers:Echo\n"
        "    options: {max_message_size: 2MiB, max_queued_bytes: 1MiB}\n"
    )
    (tmp_path / "ws_checked_handlers.py").write_text(
        "from rtserve import WebSocketHandler\n\n\nclass Echo(WebSocketHandler):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    # a module name no other test imports, dropped afterwards: modules stay cached
    monkeypatch.delitem(sys.modules, "ws_checked_handlers", raising=False)
    result = CliRunner().invoke(main, ["check"])
    sys.modules.pop("ws_checked_handlers", None)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.output
    assert warnings[0].startswith("warning: server.websocket: max_queued_bytes (1 MiB)")
    assert "max_message_size (64 MiB)" in warnings[0]
    assert warnings[1].startswith("warning: route /ws/small: max_queued_bytes (1 MiB)")
    assert "ok: 2 route(s)" in result.output


def test_websocket_route_options_read_sizes_and_durations_and_refuse_unknown_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`options: {max_message_size: 2MiB, ping_interval: 5s}` reach the route as 2097152 and
    5.0 (they reached it as strings, which failed on the first connection); an unknown option
    is a problem `check` lists with its line, not a traceback."""
    from rtserve.config.project import build_app, find_config, load_project

    (tmp_path / "ws_checked_handlers.py").write_text(
        "from rtserve import WebSocketHandler\n\n\nclass Echo(WebSocketHandler):\n    pass\n"
    )
    route = "routes:\n  - path: /ws\n    websocket: ws_checked_handlers:Echo\n    options: {%s}\n"
    (tmp_path / "rtserve.yaml").write_text(route % "max_message_size: 2MiB, ping_interval: 5s")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ws_checked_handlers", raising=False)
    try:
        app = build_app(*load_project(find_config(None)))
    finally:
        sys.modules.pop("ws_checked_handlers", None)
    (endpoint,) = [e for _, e in app.router.endpoints if e.is_websocket]
    assert endpoint.websocket is not None
    options = endpoint.websocket.overrides
    assert options == {"max_message_size": 2 * 1024 * 1024, "ping_interval": 5.0}

    (tmp_path / "rtserve.yaml").write_text(route % "max_mesage_size: 2MiB")
    result = CliRunner().invoke(main, ["check"])
    sys.modules.pop("ws_checked_handlers", None)
    assert result.exit_code == 2, result.output
    assert "rtserve.yaml:2" in result.output and "max_mesage_size" in result.output, result.output
    assert "Traceback" not in result.output


# --- the first hour: what a new user hits on the command line --------------------------------


@pytest.mark.parametrize("port", ["99999", "65536", "-5"])
def test_a_port_out_of_range_is_a_usage_error(port: str) -> None:
    """Not a port wrapped around to another (99999 served on 34463), nor 'Unknown error -8'."""
    result = CliRunner().invoke(main, ["run", "tests.apps.slow:nope", "--port", port])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--port'" in result.output
    assert "0<=x<=65535" in result.output


def test_a_port_out_of_range_in_rtserve_yaml_names_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rtserve.yaml").write_text("server:\n  host: 127.0.0.1\n  port: 99999\n")
    monkeypatch.chdir(tmp_path)
    expected = "rtserve.yaml:3:9: server.port: expected a port (0 to 65535), got 99999"
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 2 and expected in result.output, result.output
    proc = subprocess.run(
        [sys.executable, "-m", "rtserve", "run", "--no-reload"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    for command in (["publish", "news", "1"], ["subscribe", "news"]):  # they read it too
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and f"error: {expected}" in result.output, result.output
    (tmp_path / "rtserve.yaml").write_text("server:\n  port: 65535\n")
    assert CliRunner().invoke(main, ["check"]).exit_code == 0


API_KEY = "an-api-key-of-some-length"


def test_publish_and_subscribe_find_the_projects_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a project both reach the server its rtserve.yaml describes (not port 8000), and
    both take the same base URL; subscribe still takes the old ws://…/rt/ws."""
    from rtserve import ChannelSettings
    from rtserve.testing import ThreadedServer

    app = App(channels=ChannelSettings(api_key=API_KEY))
    app.channel("news", history=10)
    runner = CliRunner(env={"RTSERVE_API_KEY": API_KEY})
    with ThreadedServer(app, access_log=False) as server:
        (tmp_path / "rtserve.yaml").write_text(
            f"server:\n  host: 0.0.0.0\n  port: ${{NEWS_PORT:-{server.port}}}\n"
        )
        monkeypatch.chdir(tmp_path)
        published = runner.invoke(main, ["publish", "news", '"from the project"'])
        assert published.exit_code == 0, published.output
        position = json.loads(published.output)
        assert position["offset"] == 1
        since = f"0:{position['epoch']}"
        got = runner.invoke(main, ["subscribe", "news", "--since", since, "--count", "1"])
        assert got.exit_code == 0, got.output
        assert json.loads(got.stdout) == {"offset": 1, "data": "from the project"}

        base = f"http://127.0.0.1:{server.port}"
        monkeypatch.chdir(ROOT)  # not a project: --url says where
        assert runner.invoke(main, ["publish", "news", "2", "--url", base]).exit_code == 0
        for url in (base, base + "/", f"ws://127.0.0.1:{server.port}/rt/ws"):
            args = ["subscribe", "news", "--since", since, "--count", "2", "--url", url]
            got = runner.invoke(main, args)
            assert got.exit_code == 0, (url, got.output)
            assert [json.loads(line)["data"] for line in got.stdout.splitlines()] == [
                "from the project",
                2,
            ]
        bad = runner.invoke(main, ["publish", "news", "3", "--url", "ftp://example.com"])
        assert bad.exit_code == 2 and "http://host:port" in bad.output


def test_messages_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rtserve import ChannelSettings
    from rtserve.testing import ThreadedServer

    app = App(channels=ChannelSettings(api_key=API_KEY))
    app.channel("news")
    with ThreadedServer(app, access_log=False) as server:
        result = CliRunner(env={"RTSERVE_API_KEY": None}).invoke(
            main, ["publish", "news", "1", "--url", server.url]
        )
    assert result.exit_code == 1
    assert "set RTSERVE_API_KEY or pass --api-key" in result.output
    assert "Authorization" not in result.output

    monkeypatch.chdir(tmp_path)  # no rtserve.yaml, no admin socket: not a project
    result = CliRunner().invoke(main, ["stats", "--once"])
    assert result.exit_code == 1
    assert f"no rtserve.yaml in {tmp_path}" in result.output
    assert "--url" in result.output and "no running server" not in result.output

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    (tmp_path / "rtserve.yaml").write_text(f"server:\n  port: {port}\n")
    for command in (["publish", "news", "1", "--api-key", API_KEY], ["subscribe", "news"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, result.output
        assert f"127.0.0.1:{port}" in result.output
        assert "the address rtserve.yaml gives; pass --url" in result.output, result.output


@pytest.mark.parametrize("group", [[], ["token"]])
def test_help_lists_each_command_with_a_whole_sentence(group: list[str]) -> None:
    """At 80 columns, click cuts a summary that does not fit with '...'."""
    result = CliRunner().invoke(main, [*group, "--help"], terminal_width=80)
    assert result.exit_code == 0
    listing = result.output.split("Commands:\n", 1)[1].splitlines()
    assert len(listing) >= 2
    for line in listing:
        assert not line.rstrip().endswith("..."), line
        assert line.rstrip().endswith((".", ")")), line


def test_routes_prints_whole_paths_when_piped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = "/api/v1/organisations/{organisation}/projects/{project}/environments/{environment}"
    module = "long_route_handlers"  # a name no other test imports (modules stay cached)
    (tmp_path / f"{module}.py").write_text("def show(request, **params):\n    return params\n")
    (tmp_path / "rtserve.yaml").write_text(
        f"routes:\n  - path: {path}\n    handler: {module}:show\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        result = CliRunner().invoke(main, ["routes"])  # stdout is not a terminal here
    finally:
        sys.modules.pop(module, None)
    assert result.exit_code == 0, result.output
    assert path in result.output
    assert f"{module}.show ({module}.py:1)" in result.output


def test_new_says_how_to_get_pytest(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["new", "minimal", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    steps = result.output.split("Next steps:", 1)[1].splitlines()
    install = next(i for i, line in enumerate(steps) if "pip install pytest" in line)
    run_tests = next(i for i, line in enumerate(steps) if line.strip().startswith("pytest"))
    assert install < run_tests, result.output
