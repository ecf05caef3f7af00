"""`rtserve run PROJECT --port 0 --no-reload` in a process of its own, for tests that need a
project's server and its admin socket as a user starts them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.project_run import ROOT
from tests.support.waiting import until

# Seconds for the server, then its admin socket, to show up: a Python process starting on a
# machine busy with other tests (two workers, and whatever else runs) can take 10 s and more.
TIMEOUT = 30.0


class LiveProject:
    """`python -m rtserve.cli.main run PROJECT --port 0 --no-reload`, its output collected."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.socket = project / ".rtserve" / "admin.sock"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "rtserve.cli.main", "run", str(project)]
        self.proc = subprocess.Popen(
            [*argv, "--port", "0", "--no-reload"],
            cwd=project.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.port = int(until(self._port, TIMEOUT, "the server to listen"))
        until(self.socket.exists, TIMEOUT, f"the admin socket {self.socket}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _port(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"rtserve run exited {self.proc.returncode}:\n{self.output}")
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.output)
        return match.group(1) if match else None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
