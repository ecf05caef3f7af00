"""`rtserve run` of a small project in a process of its own, as a user runs it: the project
(`make_project`: /hello answers its version, /slow, /die, /ws echoes), its output collected
(`Run`), and probes of the server (`get`, `answer`) and of its processes (`alive`, `children`)."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# Seconds `wait_for` gives a line to show up: a worker process starting on a machine busy with
# other tests (two workers, and whatever else runs) can take 10 s and more.
START_TIMEOUT = 30.0

CONFIG = """\
server:
  access_log: false
routes:
  - path: /hello
    handler: app:hello
  - path: /slow
    handler: app:slow
  - path: /die
    handler: app:die
  - path: /ws
    websocket: app:Echo
"""

APP = """\
import asyncio
import os

from rtserve import WebSocketHandler


def hello(request):
    return "{version}"


async def slow(request):
    await asyncio.sleep(30)
    return "slow"


def die(request):
    os._exit(3)


class Echo(WebSocketHandler):
    def on_message(self, message):
        self.send(message)
"""


def write(path: Path, text: str) -> None:
    """Save as editors do: a temporary file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_project(folder: Path, version: str = "v1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "rtserve.yaml", CONFIG)
    write(folder / "app.py", APP.format(version=version))
    return folder


def get(port: int, path: str = "/hello", timeout: float = 5.0) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"connection": "close"})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def answer(port: int) -> str | None:
    try:
        return get(port, timeout=2)
    except (OSError, http.client.HTTPException):
        return None


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


class Run:
    """`python -m rtserve.cli.main run ...` with its output (stdout and stderr) collected."""

    def __init__(self, folder: Path, port: int, *args: str) -> None:
        self.folder = folder
        self.port = port
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtserve.cli.main",
                "run",
                str(folder),
                "--port",
                str(port),
                *args,
            ],
            cwd=folder.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line was read (time.monotonic)
        self.changed = threading.Condition()
        self.workers: set[int] = set()  # every worker seen, to clean up after a failure
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.times.append(time.monotonic())
                self.changed.notify_all()

    @property
    def output(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT, count: int = 1) -> list[str]:
        """The matches of the regex `pattern` once there are `count` of them in the output."""
        with self.changed:
            ok = self.changed.wait_for(
                lambda: len(re.findall(pattern, "".join(self.lines))) >= count, timeout
            )
            assert ok, f"no {pattern!r} (x{count}) in the output:\n{''.join(self.lines)}"
            return re.findall(pattern, "".join(self.lines))

    def read_at(self, pattern: str) -> float:
        """When the first line matching the regex `pattern` was read (time.monotonic)."""
        self.wait_for(pattern)
        with self.changed:
            lines = zip(self.times, self.lines, strict=True)
            return next(t for t, line in lines if re.search(pattern, line))

    def note_workers(self) -> list[int]:
        pids = children(self.proc.pid)
        self.workers.update(pids)
        return pids

    def stop(self) -> None:
        """Kill whatever is left (after a failed test): the supervisor and its workers."""
        self.note_workers()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.reader.join(5)
