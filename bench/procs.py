"""What the standalone bench scripts share: a server process pinned to the server core (stopped
with its whole process group), its CPU time and memory read from /proc, and one-shot HTTP
requests to it. Standard library only; loopback only; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SERVER_CORE, LOAD_CORE = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid`, KiB."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB


def cpu_ms(pid: int) -> float:
    """User plus system CPU time of process `pid` so far, ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK


async def http_request(
    port: int, method: str, path: str, body: bytes = b"", timeout: float = 30.0
) -> bytes:
    """The body of one request on a connection of its own (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1]


async def wait_for_count(port: int, path: str, n: int, what: str, timeout: float) -> None:
    """Poll `GET path` (a number in its body) until it reaches `n`; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while int(await http_request(port, "GET", path)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} {what} not reached in {timeout} s")
        await asyncio.sleep(0.1)


def start_pinned(
    command: list[str], port: int, cwd: Path, name: str, timeout: float = 15.0
) -> subprocess.Popen[bytes]:
    """Start `command` on the server core (`taskset` execs it, so its pid is the server's) in
    a session of its own, and return once `port` accepts; RuntimeError if it never does."""
    pinned = ["taskset", "-c", str(SERVER_CORE), *command]
    proc = subprocess.Popen(pinned, cwd=cwd, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop_server(proc)
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.05)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def prepare_load_process(sockets: int) -> None:
    """Pin this (the load) process to LOAD_CORE and let it open `sockets` descriptors and a
    thousand more, as far as the hard limit allows."""
    os.sched_setaffinity(0, {LOAD_CORE})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, sockets + 1000)), hard))


def alternated(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name) for `rounds` rounds of `names`, in reverse order every other round, so
    that no server always runs first (or after the same one)."""
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            yield round_, name


def serve_until_stdin_closes(app: Any) -> None:
    """Serve `app` on 127.0.0.1 and a free port (uvloop, no access log), print the port, and
    run until stdin closes: the server half of a bench whose load runs in the parent."""
    from rtserve.server.listener import Server, new_event_loop
    from rtserve.server.settings import ServerSettings

    async def main() -> None:
        server = Server(app, ServerSettings(host="127.0.0.1", port=0, access_log=False))
        await app.startup()
        await server.start()
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.shutdown(grace=1.0)
        await app.shutdown()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
