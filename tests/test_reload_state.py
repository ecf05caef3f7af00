"""What a reload under `rtserve run` keeps: the memory broker's streams (epochs, offsets,
history) go from the old worker to the new one, so a client resubscribing with its position
recovers exactly what it missed; and a project that cannot start answers every request with
a 503 development error page instead of hanging."""

from __future__ import annotations

import asyncio
import http.client
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rtserve.broker.base import BrokerError, ClientInfo, Publication, PublishOptions, StreamPosition
from rtserve.broker.memory import MemoryBroker
from rtserve.cli.reload_state import export_state, import_state
from tests.channel_peer import Peer
from tests.support.net import free_port
from tests.support.project_run import APP, Run, alive, answer, make_project, write
from tests.support.waiting import until

CHANNELS = """\
channels:
  rules:
    - pattern: "chat:*"
      history: 100
      publish: clients
"""


@pytest.fixture
def channel_project(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    started: list[Run] = []

    def start(*args: str) -> Run:
        folder = make_project(tmp_path / "proj")
        with open(folder / "rtserve.yaml", "a") as config:
            config.write(CHANNELS)
        run = Run(folder, free_port(), *args)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.stop()


def test_reload_keeps_the_memory_brokers_streams(channel_project: Callable[..., Run]) -> None:
    run = channel_project()
    run.wait_for(r"ready in \d+ ms")
    url = f"ws://127.0.0.1:{run.port}/rt/ws"

    async def scenario() -> None:
        peer = await Peer.open(url)
        sub = await peer.call("subscribe", channel="chat:room")
        for word in ("a", "b", "c"):
            await peer.call("publish", channel="chat:room", data=word)
        seen = await peer.pubs(3)
        assert [p["offset"] for p in seen] == [1, 2, 3]

        write(run.folder / "app.py", APP.format(version="v2"))  # any edit reloads
        await asyncio.to_thread(run.wait_for, r"reloaded in \d+ ms \(app\.py changed\)", 20)
        code, _ = await peer.closed_with()
        assert code == 1012  # the old worker retired

        other = await Peer.open(url)  # the new worker
        for word in ("d", "e"):
            position = await other.call("publish", channel="chat:room", data=word)
            assert position["epoch"] == sub["epoch"], position
        back = await Peer.open(url)
        result = await back.call(
            "subscribe", channel="chat:room", since={"offset": 3, "epoch": sub["epoch"]}
        )
        assert result["recovered"] is True, result
        assert [(p["offset"], p["data"]) for p in result["publications"]] == [(4, "d"), (5, "e")]
        fresh = await Peer.open(url)  # a new page gets the whole history
        await fresh.call("subscribe", channel="chat:room")
        history = await fresh.call("history", channel="chat:room")
        assert [p["data"] for p in history["publications"]] == ["a", "b", "c", "d", "e"]
        for p in (other, back, fresh):
            await p.close()

    asyncio.run(scenario())


FACTORY = """\
from rtserve import App


def make():
    app = App()

    def check():
        if {fail}:
            raise RuntimeError("the startup hook refused")

    app.on_startup.append(check)
    return app


def hello(request):
    return "hello"
"""


def test_a_reload_that_fails_after_the_handover_leaves_the_old_worker_publishing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    write(
        folder / "rtserve.yaml",
        "app: app:make\nroutes:\n  - path: /hello\n    handler: app:hello\n" + CHANNELS,
    )
    write(folder / "app.py", FACTORY.format(fail=False))
    run = Run(folder, free_port())
    url = f"ws://127.0.0.1:{run.port}/rt/ws"

    async def scenario() -> None:
        peer = await Peer.open(url)
        sub = await peer.call("subscribe", channel="chat:room")
        await peer.call("publish", channel="chat:room", data="a")
        # the new worker loads, takes the channels over, then its startup hook fails
        write(folder / "app.py", FACTORY.format(fail=True))
        await asyncio.to_thread(run.wait_for, r"still serving the previous version:", 20)
        run.wait_for(r"RuntimeError: the startup hook refused")
        position = await peer.call("publish", channel="chat:room", data="b")
        assert position == {"offset": 2, "epoch": sub["epoch"]}  # the old one took it back

        write(folder / "app.py", FACTORY.format(fail=False))
        await asyncio.to_thread(run.wait_for, r"reloaded in \d+ ms", 20)
        await peer.closed_with()
        back = await Peer.open(url)
        result = await back.call(
            "subscribe", channel="chat:room", since={"offset": 1, "epoch": sub["epoch"]}
        )
        assert result["recovered"] is True, result
        assert [(p["offset"], p["data"]) for p in result["publications"]] == [(2, "b")]
        await back.close()

    try:
        run.wait_for(r"ready in \d+ ms", 20)
        asyncio.run(scenario())
    finally:
        run.stop()


def fetch(port: int, path: str, accept: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET that asks for `accept`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"accept": accept, "connection": "close"})
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read().decode()
    finally:
        conn.close()


def test_a_project_that_cannot_start_answers_503_with_its_error(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "proj")
    broken_line = "def hello(request) <b>\n"  # a SyntaxError, and markup to escape
    broken = APP.format(version="v1").replace("def hello(request):\n", broken_line)
    line = broken.splitlines().index(broken_line.strip()) + 1
    write(folder / "app.py", broken)
    run = Run(folder, free_port())
    try:
        run.wait_for(r"start failed; waiting for a change:")
        run.wait_for(rf"rtserve waiting http://127\.0\.0\.1:{run.port}")
        assert "rtserve serving" not in run.output

        status, kind, page = fetch(run.port, "/hello", "text/html,application/xhtml+xml,*/*")
        assert (status, kind.split(";")[0]) == (503, "text/html"), (status, kind)
        assert f"app.py:{line}: SyntaxError" in page
        assert "def hello(request) &lt;b&gt;" in page and "<b>" not in page

        status, kind, text = fetch(run.port, "/anything/else?x=1", "*/*")  # curl's Accept
        assert (status, kind.split(";")[0]) == (503, "text/plain"), (status, kind)
        assert f"app.py:{line}: SyntaxError" in text and "def hello(request) <b>" in text

        write(folder / "app.py", APP.format(version="fixed"))
        run.wait_for(r"reloaded in \d+ ms \(app\.py changed\)", timeout=20)
        run.wait_for(rf"rtserve serving http://127\.0\.0\.1:{run.port}")
        # the worker that answered with the error retires as the new one takes over
        until(lambda: answer(run.port) == "fixed", 10, "the fixed version")
    finally:
        run.stop()


def test_a_config_that_does_not_parse_at_start_answers_503_too(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "proj")
    config = (folder / "rtserve.yaml").read_text()
    write(folder / "rtserve.yaml", config + "  bad: [\n")  # where to listen cannot be read
    run = Run(folder, free_port())
    try:
        run.wait_for(rf"rtserve waiting http://127\.0\.0\.1:{run.port}", 20)
        status, kind, text = fetch(run.port, "/hello", "*/*")
        assert (status, kind.split(";")[0]) == (503, "text/plain"), (status, kind)
        assert "rtserve.yaml:12:" in text and "invalid YAML" in text, text
        write(folder / "rtserve.yaml", config)
        run.wait_for(r"reloaded in \d+ ms \(rtserve\.yaml changed\)", timeout=20)
        until(lambda: answer(run.port) == "v1", 10, "the project")
        assert "where to listen" not in run.output  # the defaults were what it says
    finally:
        run.stop()


def test_sigterm_stops_the_worker_serving_the_error_page(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "proj")
    write(folder / "app.py", "import no_such_module_xyz\n")
    run = Run(folder, free_port())
    try:
        run.wait_for(r"start failed; waiting for a change:", 20)
        workers = until(run.note_workers, 5, "the worker")
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(15) == 0
        until(lambda: not alive(workers[0]), 10, "the worker to exit")
    finally:
        run.stop()


# --- the state itself, without processes ----------------------------------------------------


class Events:
    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None:
        pass

    def on_join(self, channel: str, info: ClientInfo) -> None:
        pass

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        pass

    def on_gap(self, channel: str) -> None:
        pass


def test_state_goes_from_one_broker_to_another(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = [100.0]
        old = MemoryBroker(clock=lambda: clock[0])
        await old.start(Events())
        keep = PublishOptions(history_size=3, history_ttl=60)
        once = PublishOptions(history_size=3, idempotency_key="k1")
        for i in range(5):
            info = ClientInfo("c1", "u1", {"n": 1})
            await old.publish("a", i, options=keep, info=info, tags={"n": str(i)})
        first = await old.publish("b", "x", options=once)
        waiting = await old.history("quiet")  # a subscriber told the epoch of a stream to be
        clock[0] += 50  # 'a' was kept for 60 s: 10 s left
        assert await export_state(old, tmp_path / "state.json")
        with pytest.raises(BrokerError, match="reloading"):
            await old.publish("a", "late", options=keep)

        new = MemoryBroker(clock=lambda: 7.0)  # another process's clock
        assert import_state(new, tmp_path / "state.json") == 2
        assert not (tmp_path / "state.json").exists()
        await new.start(Events())
        before = await old.history("a")
        after = await new.history("a")
        assert after == before and [p.offset for p in after.publications] == [3, 4, 5]
        assert after.publications[0].info == ClientInfo("c1", "u1", {"n": 1})
        assert [p.tags for p in after.publications] == [{"n": "2"}, {"n": "3"}, {"n": "4"}]
        assert await new.publish("b", "x", options=once) == first  # the key is remembered
        assert await new.publish("a", 5, options=keep) == StreamPosition(6, before.position.epoch)
        assert await new.publish("quiet", 1) == StreamPosition(1, waiting.position.epoch)

        old.freeze(False)  # a failed replacement: the old worker goes on
        assert (await old.publish("a", 5, options=keep)).offset == 6

    asyncio.run(scenario())


def test_a_state_that_cannot_move_gives_an_empty_broker_and_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        old = MemoryBroker()
        await old.start(Events())
        await old.publish("a", "x" * 1000, options=PublishOptions(history_size=10))
        state = tmp_path / "state.json"
        assert not await export_state(old, state, limit=500)
        assert "a reload carries" in caplog.text
        assert not state.exists()

        state.write_text('{"version": 1, "streams": [{"channel": "a"}]}')
        new = MemoryBroker()
        assert import_state(new, state) == 0
        assert "starting with empty channels" in caplog.text
        assert not state.exists()
        await new.start(Events())
        assert (await new.publish("a", 1)).offset == 1

    asyncio.run(scenario())
