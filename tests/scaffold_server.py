"""A scaffolded project served as a user serves it: `rtserve new TEMPLATE DIR`, then
`rtserve run DIR` in a process of its own, its log (the access log too) kept in a file."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from rtserve.cli.main import main
from tests.support.net import free_port

ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/1\.[01]" (?P<status>\d{3}) ')


@dataclass
class ScaffoldServer:
    url: str  # the page: http://127.0.0.1:PORT/
    folder: Path  # the project
    log: Path  # what `rtserve run` printed

    def requests(self) -> list[tuple[str, int]]:
        """(target, status) of every request in the access log so far."""
        lines = self.log.read_text(errors="replace")
        return [(m["target"], int(m["status"])) for m in ACCESS_LINE.finditer(lines)]

    def wait_for_request(self, target: str, timeout: float = 10) -> int:
        """The status of the first request for `target`, once the access log has it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [status for path, status in self.requests() if path == target]
            if statuses:
                return statuses[0]
            time.sleep(0.05)  # the log is a file of another process: nothing to wait on
        raise AssertionError(f"no request for {target} in {timeout} s:\n{self.log.read_text()}")


@contextlib.contextmanager
def serve_scaffold(template: str, tmp_path: Path) -> Iterator[ScaffoldServer]:
    folder = tmp_path / template
    result = CliRunner().invoke(main, ["new", template, str(folder)])
    assert result.exit_code == 0, result.output
    port = free_port()
    log = tmp_path / f"{template}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "rtserve.cli.main", "run", str(folder), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield ScaffoldServer(f"http://127.0.0.1:{port}/", folder, log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
