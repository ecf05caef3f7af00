"""The live dashboard end to end: the collector's samples (from this machine's /proc and from a
fake one), the collector publishing over the HTTP API to a subscriber, the server's own
figures, history for a new page, a crowd of raw subscribers getting every message, the page,
and the project's rtserve.yaml. Every wait is bounded; nothing sleeps to wait for an event.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from rtserve.testing import ThreadedServer

HERE = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
KEY = "a-test-key-for-the-live-dashboard"
FIELDS = {
    "host",
    "seq",
    "time",
    "interval",
    "cpu_percent",
    "cpus",
    "load1",
    "load5",
    "load15",
    "mem_total",
    "mem_available",
    "mem_used_percent",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "lo_bytes_per_s",
}


def load(name: str) -> ModuleType:
    """One of the example's modules, under a name of its own (projects share `app`)."""
    spec = importlib.util.spec_from_file_location(f"live_dashboard_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dashboard = load("app")
collector = load("collector")
crowd = load("crowd")


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, TIMEOUT))


async def subscribe(port: int, tag_filter: Any = None) -> ClientConnection:
    """A WebSocket subscribed to the metrics channel, with `tag_filter` if given (the
    subscribe reply read)."""
    ws = await connect(f"ws://127.0.0.1:{port}/rt/ws")
    await ws.send(json.dumps({"id": 1, "op": "connect"}))
    command = {"id": 2, "op": "subscribe", "channel": dashboard.CHANNEL}
    if tag_filter is not None:
        command["filter"] = tag_filter
    await ws.send(json.dumps(command))
    while True:
        message = json.loads(await ws.recv())
        if message.get("id") == 2:
            assert "result" in message, message
            return ws


async def next_pub(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if message.get("push") == "pub":
            return dict(message)


def publish_in_thread(port: int, count: int, host: str = "test-host") -> threading.Thread:
    """collector.run publishing `count` samples of `host`, from a thread (it blocks)."""
    publisher = collector.Publisher(f"http://127.0.0.1:{port}", KEY)

    def work() -> None:
        try:
            collector.run(publisher, collector.Sampler(host), interval=0.01, count=count)
        finally:
            publisher.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


# --- the collector's samples -------------------------------------------------------------


def test_a_sample_of_this_machine_has_every_field() -> None:
    sampler = collector.Sampler("box")
    first, second = sampler.sample(), sampler.sample()
    assert set(first) == set(second) == FIELDS
    assert (first["host"], first["seq"], second["seq"]) == ("box", 1, 2)
    assert second["time"] >= first["time"] > 0
    if Path("/proc/stat").exists():  # Linux: everything is known
        assert second["mem_total"] > second["mem_available"] > 0
        assert 0 <= second["mem_used_percent"] <= 100
        assert len(second["cpus"]) >= 1
        assert second["lo_bytes_per_s"] is not None and second["net_rx_bytes_per_s"] is not None
    json.dumps(second)  # publishable as it is


def test_rates_are_computed_between_two_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(busy: int, idle: int, rx: int, tx: int, lo: int) -> None:
        (tmp_path / "stat").write_text(
            f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n"
            f"cpu0 {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu1 0 0 0 {idle} 0 0 0 0 0 0\nintr 1 2\n"
        )
        (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 250 kB\n")
        (tmp_path / "net").mkdir(exist_ok=True)
        (tmp_path / "net" / "dev").write_text(
            "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n"
            f"    lo: {lo} 1 0 0 0 0 0 0 {lo} 1 0 0 0 0 0 0\n"
            f"  eth0: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n"
        )

    clock = iter([100.0, 102.0])
    monkeypatch.setattr(collector.time, "monotonic", lambda: next(clock))
    write(busy=100, idle=100, rx=1000, tx=500, lo=0)
    sampler = collector.Sampler("fake", proc=tmp_path)
    write(busy=150, idle=150, rx=3000, tx=900, lo=100)
    sample = sampler.sample()
    assert sample["interval"] == 2.0
    assert sample["cpu_percent"] == 50.0  # 50 busy of 100 jiffies
    assert sample["cpus"] == [50.0, 0.0]
    assert (sample["mem_total"], sample["mem_available"]) == (1000 * 1024, 250 * 1024)
    assert sample["mem_used_percent"] == 75.0
    assert sample["net_rx_bytes_per_s"] == 1000.0  # 2000 bytes in 2 s
    assert sample["net_tx_bytes_per_s"] == 200.0
    assert sample["lo_bytes_per_s"] == 100.0  # 100 in + 100 out, apart from the others


def test_without_proc_the_figures_are_none(tmp_path: Path) -> None:
    sample = collector.Sampler("elsewhere", proc=tmp_path / "missing").sample()
    assert set(sample) == FIELDS
    assert sample["cpu_percent"] is None and sample["cpus"] == []
    assert sample["mem_total"] is None and sample["mem_used_percent"] is None
    assert sample["net_rx_bytes_per_s"] is None and sample["lo_bytes_per_s"] is None


def test_a_publish_slower_than_the_interval_shortens_the_wait() -> None:
    class SlowPublisher:  # stands for a server that answers late
        def __init__(self) -> None:
            self.keys: list[str] = []

        def publish(
            self, channel: str, data: Any, idempotency_key: str, tags: Any = None
        ) -> dict[str, Any]:
            threading.Event().wait(0.01)
            self.keys.append(idempotency_key)
            return {"offset": len(self.keys), "epoch": "e"}

    publisher = SlowPublisher()
    accepted = collector.run(publisher, collector.Sampler("slow"), interval=0.001, count=4)
    assert accepted == 4
    assert len(set(publisher.keys)) == 4  # one idempotency key per sample
    for n, key in enumerate(publisher.keys, 1):
        assert key.startswith("slow:") and key.endswith(f":{n}")


# --- the server --------------------------------------------------------------------------


def test_the_channel_rule_conflates_by_host_and_keeps_history() -> None:
    app = dashboard.create_app(api_key=KEY)
    found = app.hub.rules.match(dashboard.CHANNEL)
    assert found is not None
    rule = found[0]
    assert (rule.slow_consumer, rule.conflate_key, rule.publish) == ("conflate", "host", "server")
    assert rule.history == dashboard.HISTORY > 0
    assert rule.delta == "fossil"


def test_the_collector_reaches_a_subscriber_over_the_publish_api() -> None:
    app = dashboard.create_app(api_key=KEY, server_stats_interval=0)
    with ThreadedServer(app) as server:

        async def scenario() -> list[dict[str, Any]]:
            async with await subscribe(server.port) as ws:
                thread = publish_in_thread(server.port, 3)
                pubs = [await next_pub(ws) for _ in range(3)]
                await asyncio.to_thread(thread.join, TIMEOUT)
                return pubs

        pubs = run(scenario())
    assert [p["data"]["seq"] for p in pubs] == [1, 2, 3]
    assert all(p["data"]["host"] == "test-host" and set(p["data"]) == FIELDS for p in pubs)
    assert all("info" not in p for p in pubs)  # published by the API, as the server
    offsets = [p["offset"] for p in pubs]
    assert offsets == list(range(offsets[0], offsets[0] + 3))


def test_a_page_of_one_host_gets_that_hosts_samples_and_the_servers() -> None:
    app = dashboard.create_app(api_key=KEY, server_stats_interval=0.05)
    only_b = {"or": [{"eq": ["host", "host-b"]}, {"eq": ["kind", "server"]}]}  # ?host=host-b
    with ThreadedServer(app) as server:

        async def scenario() -> list[dict[str, Any]]:
            async with await subscribe(server.port, only_b) as ws:
                threads = [publish_in_thread(server.port, 3, host) for host in ("host-a", "host-b")]
                pubs: list[dict[str, Any]] = []
                while sum(p["data"].get("host") == "host-b" for p in pubs) < 3:
                    pubs.append(await next_pub(ws))
                for thread in threads:
                    await asyncio.to_thread(thread.join, TIMEOUT)
                return pubs

        pubs = run(scenario())
    machines = [p for p in pubs if p["tags"]["kind"] == "machine"]
    assert [p["data"]["seq"] for p in machines] == [1, 2, 3]
    assert all(p["tags"] == {"kind": "machine", "host": "host-b"} for p in machines)
    assert all(p["data"]["kind"] == "server" for p in pubs if p not in machines)


def test_a_wrong_key_is_refused() -> None:
    with ThreadedServer(dashboard.create_app(api_key=KEY, server_stats_interval=0)) as server:
        publisher = collector.Publisher(server.url, "not-the-key")
        try:
            with pytest.raises(collector.PublishRefused, match="401"):
                collector.run(publisher, collector.Sampler("x"), count=1)
        finally:
            publisher.close()


def test_each_server_process_publishes_its_own_figures() -> None:
    with ThreadedServer(dashboard.create_app(api_key=KEY, server_stats_interval=0.05)) as server:

        async def scenario() -> dict[str, Any]:
            async with await subscribe(server.port) as ws:
                return await next_pub(ws)

        pub = run(scenario())
    data = pub["data"]
    assert data["kind"] == "server" and data["host"].startswith("rtserve pid ")
    assert data["viewers"] == 1  # the subscriber above
    assert isinstance(data["conflated"], int)


def test_a_new_page_gets_the_recent_past_from_history() -> None:
    with ThreadedServer(dashboard.create_app(api_key=KEY, server_stats_interval=0)) as server:
        publish_in_thread(server.port, 4).join(TIMEOUT)
        url = f"{server.url}/rt/history?channel={dashboard.CHANNEL}&limit=120"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            history = json.load(answer)
    assert [p["data"]["seq"] for p in history["publications"]] == [1, 2, 3, 4]


def test_a_crowd_of_50_gets_every_message() -> None:
    with ThreadedServer(dashboard.create_app(api_key=KEY, server_stats_interval=0)) as server:
        threads: list[threading.Thread] = []

        def ready(offset: int) -> None:  # every subscriber has joined: publish
            threads.append(publish_in_thread(server.port, 5, host="crowd-test"))

        report = asyncio.run(
            crowd.watch(server.port, 50, messages=5, timeout=TIMEOUT, on_ready=ready)
        )
        for thread in threads:
            thread.join(TIMEOUT)
    assert report.joined == 50 and not report.errors
    assert report.complete and report.deliveries == report.expected == 250
    assert report.missed == report.subscribers_missing == report.closed == 0
    assert report.latency_p50_ms is not None and report.latency_p50_ms > 0
    assert report.to_last_p99_ms is not None and report.to_last_p99_ms >= report.latency_p50_ms
    assert "250 of 250 deliveries" in crowd.describe(report)


def test_a_crowd_without_messages_stops_at_its_timeout() -> None:
    with ThreadedServer(dashboard.create_app(api_key=KEY, server_stats_interval=0)) as server:
        report = asyncio.run(crowd.watch(server.port, 5, messages=1, timeout=0.5))
    assert report.joined == 5 and not report.complete and report.deliveries == 0
    assert any("timed out" in error for error in report.errors)


def test_the_page_is_served() -> None:
    with ThreadedServer(dashboard.create_app(api_key=KEY, server_stats_interval=0)) as server:
        with urllib.request.urlopen(f"{server.url}/", timeout=TIMEOUT) as page:
            html = page.read()
        assert b'<script src="/rtserve.js">' in html
        assert b'<script src="/static/dashboard.js">' in html
        with urllib.request.urlopen(f"{server.url}/static/dashboard.js", timeout=TIMEOUT) as js:
            assert b"rt.subscribe(CHANNEL" in js.read()
        with urllib.request.urlopen(f"{server.url}/rtserve.js", timeout=TIMEOUT) as script:
            assert b"class Rtserve" in script.read()


def test_the_project_checks() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "rtserve", "check", str(HERE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert "1 channel rule(s)" in checked.stdout


# --- the page in a browser, on each transport ----------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Chromium (Debian's) driven by Playwright; skipped when either is missing."""
    if importlib.util.find_spec("playwright") is None or not Path(CHROMIUM).exists():
        pytest.skip("needs Playwright and Chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"],
            timeout=30_000,
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_the_page_fills_from_history_then_goes_live(browser: Any, transport: str) -> None:
    with ThreadedServer(dashboard.create_app(api_key=KEY, server_stats_interval=0)) as server:
        publish_in_thread(server.port, 2, host=f"before-{transport}").join(TIMEOUT)
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT * 1000)
        try:
            page = context.new_page()
            page.goto(f"{server.url}/?transport={transport}")
            page.wait_for_function("document.getElementById('status').textContent === 'live'")
            assert page.text_content("#transport") == transport
            page.wait_for_selector(f".host h3 span:text-is('before-{transport}')")  # history
            publish_in_thread(server.port, 1, host=f"live-{transport}").join(TIMEOUT)
            page.wait_for_selector(f".host h3 span:text-is('live-{transport}')")
            assert page.text_content("#received") == "1"  # the live one (history is not counted)
            assert page.text_content("#skipped") == "0"
        finally:
            context.close()
