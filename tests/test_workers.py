"""`rtserve run --workers N` as real processes on the real Redis: workers share the port and
the channels, a killed worker is restarted while the others keep serving, SIGHUP replaces them
one by one, the admin address sums them, SIGTERM stops everything; the memory broker is
refused with several workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.net import free_port
from tests.support.project_run import ROOT, Run, alive, answer, get, make_project
from tests.support.waiting import until

TIMEOUT = 10.0
CHANNEL_CONFIG = """\
channels:
  rules:
    - pattern: "room:*"
      publish: clients
broker: {broker}
"""


@pytest.fixture
def workers_project(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Callable[..., Run]]:
    started: list[Run] = []

    def start(*args: str, broker: str | None = None) -> Run:
        folder = make_project(tmp_path / "proj")
        url = broker or f"{redis_url}?prefix={redis_prefix}"
        with open(folder / "rtserve.yaml", "a") as config:
            config.write(CHANNEL_CONFIG.format(broker=url))
        run = Run(folder, free_port(), "--no-reload", *args)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.stop()


def stats(run: Run) -> dict[str, Any]:
    """`rtserve stats --json` of the run's project (the supervisor's summed figures)."""
    done = subprocess.run(
        [sys.executable, "-m", "rtserve.cli.main", "stats", str(run.folder), "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def channel_client(port: int, name: str) -> Any:
    ws = await connect(f"ws://127.0.0.1:{port}/rt/ws", open_timeout=TIMEOUT)
    await ws.send(json.dumps({"id": 1, "op": "connect", "data": {"user": name}}))
    await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "room:1"}))
    for _ in range(2):
        reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert "result" in reply, reply
    return ws


async def next_pub(ws: Any) -> Any:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if message.get("push") == "pub":
            return message["data"]


def test_workers_share_the_port_and_the_channels(workers_project: Callable[..., Run]) -> None:
    run = workers_project("--workers", "2")
    run.wait_for(r"worker \d \(pid \d+\) ready in", count=2, timeout=20)
    assert "2 workers; SIGHUP reloads them one by one" in run.output
    pids = until(lambda: len(run.note_workers()) == 2 and run.note_workers(), 5, "2 workers")

    async def scenario() -> dict[str, Any]:
        clients = [await channel_client(run.port, f"u{i}") for i in range(20)]
        try:
            await clients[0].send(
                json.dumps({"id": 9, "op": "publish", "channel": "room:1", "data": "hi"})
            )
            # every client gets it, whichever worker holds it: the workers meet in Redis
            assert await asyncio.gather(*(next_pub(ws) for ws in clients)) == ["hi"] * 20
            return await asyncio.to_thread(stats, run)
        finally:
            for ws in clients:
                await ws.close()

    summed = asyncio.run(scenario())
    assert summed["pid"] == run.proc.pid  # the supervisor answers for all
    assert sorted(w["pid"] for w in summed["workers"]) == sorted(pids)
    assert sum(w["connections"] for w in summed["workers"]) == 20
    # SO_REUSEPORT spreads them (all 20 on one worker: a chance of 2 in a million)
    assert all(w["connections"] > 0 for w in summed["workers"])
    assert summed["open"]["channel"] == 20
    assert summed["channels"]["count"] == 1 and summed["channels"]["subscribers"] == 20
    assert summed["hub"]["client_publications"] == 1
    assert summed["hub"]["deliveries"] == 20
    assert summed["latency_seconds"]["broker_publish"]["count"] == 1

    run.proc.send_signal(signal.SIGTERM)  # drains every worker, then the supervisor exits
    assert run.proc.wait(TIMEOUT) == 0
    assert not any(alive(pid) for pid in pids)
    assert answer(run.port) is None


def test_a_killed_worker_is_restarted_and_sighup_replaces_them_one_by_one(
    workers_project: Callable[..., Run],
) -> None:
    run = workers_project("--workers", "2")
    run.wait_for(r"worker \d \(pid \d+\) ready in", count=2, timeout=20)
    first = until(lambda: len(run.note_workers()) == 2 and run.note_workers(), 5, "2 workers")

    os.kill(first[0], signal.SIGKILL)
    run.wait_for(r"worker \d \(pid \d+\) was killed by SIGKILL; restarting in 0.5 s")
    assert answer(run.port) == "v1"  # the other worker serves meanwhile
    run.wait_for(r"worker \d \(pid \d+\) restarted in")
    second = until(
        lambda: len(pids := run.note_workers()) == 2 and first[0] not in pids and pids,
        5,
        "the replacement",
    )
    assert first[1] in second

    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(r"2 workers reloaded in \d+ ms \(SIGHUP\)", timeout=20)
    third = until(
        lambda: len(pids := run.note_workers()) == 2 and not set(pids) & set(second) and pids,
        10,
        "two new workers",
    )
    assert len(third) == 2
    assert answer(run.port) == "v1"
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(TIMEOUT) == 0


def test_several_workers_need_a_shared_broker(workers_project: Callable[..., Run]) -> None:
    run = workers_project("--workers", "3", broker="memory")
    assert run.proc.wait(TIMEOUT) == 2
    assert "3 workers need a broker they share" in run.output
    assert "broker: redis://" in run.output


@pytest.mark.parametrize("workers", ["1", "2"])  # one process serving, or a supervisor
def test_an_unreachable_redis_stops_the_start_with_status_2(
    workers_project: Callable[..., Run], workers: str
) -> None:
    port = free_port()  # nothing listens there
    run = workers_project("--workers", workers, broker=f"redis://127.0.0.1:{port}/0")
    assert run.proc.wait(20) == 2
    assert "cannot start:" in run.output and f"127.0.0.1:{port}" in run.output


def test_an_app_without_channels_needs_no_shared_broker(tmp_path: Path) -> None:
    folder = make_project(tmp_path / "plain")  # routes only: no channel rules, no app:
    run = Run(folder, free_port(), "--no-reload", "--workers", "2")
    try:
        run.wait_for(r"worker \d \(pid \d+\) ready in", count=2, timeout=20)
        assert answer(run.port) == "v1"
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(TIMEOUT) == 0
    finally:
        run.stop()


def test_workers_that_cannot_load_the_project_without_reload_exit_2(tmp_path: Path) -> None:
    """With reload off nothing would ever retry: the errors are printed and the run ends."""
    folder = make_project(tmp_path / "broken")
    with open(folder / "app.py", "a") as app:
        app.write("\nimport no_such_module_of_the_test\n")
    run = Run(folder, free_port(), "--no-reload", "--workers", "2")
    try:
        assert run.proc.wait(20) == 2
        assert "No module named 'no_such_module_of_the_test'" in run.output
        assert "waiting for a change" not in run.output
    finally:
        run.stop()


def test_each_worker_knows_its_index(tmp_path: Path) -> None:
    """RTSERVE_WORKER (0..N-1) and RTSERVE_WORKERS (N) in each worker's environment."""
    folder = make_project(tmp_path / "indexed")
    with open(folder / "app.py", "a") as app:
        app.write(
            "\n\ndef which(request):\n"
            "    return f\"{os.environ['RTSERVE_WORKER']}/{os.environ['RTSERVE_WORKERS']}\"\n"
        )
    with open(folder / "rtserve.yaml", "a") as config:
        config.write("  - path: /which\n    handler: app:which\n")
    run = Run(folder, free_port(), "--no-reload", "--workers", "2")
    try:
        run.wait_for(r"worker \d \(pid \d+\) ready in", count=2, timeout=20)
        seen: set[str] = set()
        for _ in range(200):  # new connections spread over both workers (SO_REUSEPORT)
            seen.add(get(run.port, "/which"))
            if len(seen) == 2:
                break
        assert seen == {"0/2", "1/2"}
    finally:
        run.stop()
