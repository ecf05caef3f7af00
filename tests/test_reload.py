"""`rtserve run` with reload, as real processes: a supervisor holding the port, workers that
take over only once ready, a broken save that leaves the previous version serving, WebSockets
closed with 1012 on a reload, and SIGTERM that stops everything and frees the port."""

from __future__ import annotations

import asyncio
import http.client
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rtserve.cli.watch import ProjectFilter
from rtserve.protocol.ws_client import ConnectionClosed
from rtserve.testing import websocket_connect
from tests.support.net import free_port
from tests.support.project_run import (
    APP,
    CONFIG,
    Run,
    alive,
    answer,
    children,
    get,
    make_project,
    write,
)
from tests.support.waiting import until

BROKEN_LINE = "def hello(request)\n"  # no colon: a SyntaxError on this line


@pytest.fixture
def run_project(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    started: list[Run] = []

    def start(*args: str, version: str = "v1") -> Run:
        folder = make_project(tmp_path / "proj", version)
        run = Run(folder, free_port(), *args)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.stop()


def test_reload_keeps_serving_through_edits_and_errors(run_project: Callable[..., Run]) -> None:
    run = run_project()
    folder = run.folder
    run.wait_for(r"ready in \d+ ms")
    assert f"rtserve serving http://127.0.0.1:{run.port}" in run.output
    assert "reload on: watching" in run.output
    assert get(run.port) == "v1"

    refused: list[BaseException] = []
    other: list[BaseException] = []
    polling = threading.Event()

    def poll() -> None:  # a GET after another, all through the reloads
        while not polling.is_set():
            try:
                get(run.port, timeout=5)
            except ConnectionRefusedError as exc:
                refused.append(exc)
            except (OSError, http.client.HTTPException) as exc:
                other.append(exc)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        write(folder / "app.py", APP.format(version="v2"))
        until(lambda: answer(run.port) == "v2", 10, "v2")
        run.wait_for(r"reloaded in \d+ ms \(app\.py changed\)")

        broken = APP.format(version="v3").replace("def hello(request):\n", BROKEN_LINE)
        line = broken.splitlines().index(BROKEN_LINE.strip()) + 1
        write(folder / "app.py", broken)
        run.wait_for(r"reload failed \(app\.py changed\); still serving the previous version:")
        run.wait_for(rf"app\.py:{line}: SyntaxError")
        run.wait_for(r"\n      def hello\(request\)\n")  # the offending line is shown
        assert get(run.port) == "v2"

        write(folder / "app.py", APP.format(version="v3"))
        until(lambda: answer(run.port) == "v3", 10, "v3")
        run.wait_for(r"reloaded in \d+ ms", count=2)
    finally:
        polling.set()
        poller.join(10)
    assert not refused, refused
    assert len(other) <= 1, other  # at most a rare race on a just-closed idle connection

    # one worker once the old ones retired; SIGTERM stops it and the supervisor, frees the port
    def one_worker() -> list[int]:
        pids = run.note_workers()
        return pids if len(pids) == 1 else []

    workers = until(one_worker, 5, "a single worker")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(15) == 0
    until(lambda: not alive(workers[0]), 10, "the worker to exit")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", run.port), timeout=2).close()


def test_reload_closes_websockets_with_1012_and_bounds_the_grace(
    run_project: Callable[..., Run],
) -> None:
    run = run_project("--reload-grace", "0.5")
    folder = run.folder
    run.wait_for(r"ready in \d+ ms")

    async def scenario() -> tuple[int, float, bytes, float]:
        ws = await websocket_connect(f"ws://127.0.0.1:{run.port}/ws")
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"
        # a request that would take 30 s: the reload grace (0.5 s) cuts it
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
        writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        write(folder / "app.py", APP.format(version="v2"))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 20)
        ws_at = time.monotonic()
        slow = await asyncio.wait_for(reader.read(), 20)
        slow_at = time.monotonic()
        writer.close()
        return closed.value.code, ws_at, slow, slow_at

    code, ws_at, slow, slow_at = asyncio.run(scenario())
    # Measured from the line the supervisor prints as it retires the old worker, so how long
    # the new one took to start (seconds on a busy machine) does not count.
    retired_at = run.read_at(r"reloaded in \d+ ms \(app\.py changed\)")
    assert code == 1012
    # closed at once, not after the close timeout (5 s) or the grace
    assert ws_at - retired_at < 3
    assert slow == b""  # the old worker closed it without an answer after its grace
    assert slow_at - retired_at < 0.5 + 3  # the grace, not the 30 s the request takes
    until(lambda: answer(run.port) == "v2", 10, "v2")


def test_crashed_worker_is_restarted(run_project: Callable[..., Run]) -> None:
    run = run_project()
    run.wait_for(r"ready in \d+ ms")
    with pytest.raises((OSError, http.client.HTTPException)):
        get(run.port, "/die")
    run.wait_for(r"the worker exited with code 3; restarting in 0\.5 s")
    run.wait_for(r"restarted in \d+ ms")
    assert get(run.port) == "v1"


def test_config_error_keeps_the_previous_version(run_project: Callable[..., Run]) -> None:
    run = run_project()
    folder = run.folder
    run.wait_for(r"ready in \d+ ms")
    write(folder / "rtserve.yaml", CONFIG.replace("handler: app:hello", "hander: app:hello"))
    run.wait_for(r"reload failed \(rtserve\.yaml changed\); still serving the previous version:")
    run.wait_for(r"rtserve\.yaml:5:5: routes\[0\]\.hander: unknown key 'hander'")
    assert get(run.port) == "v1"
    write(folder / "rtserve.yaml", CONFIG)
    run.wait_for(r"reloaded in \d+ ms \(rtserve\.yaml changed\)")
    assert get(run.port) == "v1"


def test_start_failure_then_fix(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "proj")
    write(folder / "app.py", "import no_such_module_xyz\n")
    run = Run(folder, free_port())
    try:
        run.wait_for(r"start failed; waiting for a change:")
        run.wait_for(r"app\.py:1: ModuleNotFoundError: No module named 'no_such_module_xyz'")
        # the port is held all along: a connection waits instead of being refused
        sock = socket.create_connection(("127.0.0.1", run.port), timeout=2)
        sock.close()
        write(folder / "app.py", APP.format(version="fixed"))
        run.wait_for(r"reloaded in \d+ ms \(app\.py changed\)")
        # the worker that answered with the error retires as the new one takes over
        until(lambda: answer(run.port) == "fixed", 10, "the fixed version")
    finally:
        run.stop()


def test_no_reload_serves_without_a_supervisor(run_project: Callable[..., Run]) -> None:
    run = run_project("--no-reload")
    until(lambda: answer(run.port) == "v1", 15, "the server")
    assert children(run.proc.pid) == []
    assert "reload on" not in run.output
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(15) == 0


def test_watch_filter(tmp_path: Path) -> None:
    from watchfiles import Change

    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "static").mkdir()
    accepts = ProjectFilter(tmp_path)
    accepts.static = [tmp_path / "static"]

    def watched(name: str) -> bool:
        return accepts(Change.modified, str(tmp_path / name))

    assert watched("app.py") and watched("pkg/mod.py") and watched("rtserve.yaml")
    assert watched("other.yml") and watched(".env") and watched("static/site.css")
    assert not watched("notes.txt") and not watched("app.py.tmp") and not watched("app.py~")
    for ignored in (".git", "__pycache__", "node_modules", ".pytest_cache", "env", ".venv"):
        assert not watched(f"{ignored}/x.py"), ignored
    assert not watched("env/lib/python3.11/site-packages/pkg/deep.py")
