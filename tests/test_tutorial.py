"""docs/tutorial.md, command by command, as written (in this test's environment, where rtserve
is installed already: the `pip install` line is checked to be there, not run)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
BIN = str(Path(sys.executable).parent)


def commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", TUTORIAL.read_text(), re.S)
    return [line for block in blocks for line in block.strip().splitlines()]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not port_free(port):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_tutorial_commands_work_as_written(tmp_path: Path) -> None:
    steps = commands()
    assert steps[0] == "pip install rtserve"
    if not port_free(8000):
        pytest.skip("port 8000 is taken here, and the tutorial uses it as written")
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], PYTHONDONTWRITEBYTECODE="1")
    env.pop("RTSERVE_API_KEY", None)
    cwd = tmp_path
    background: list[subprocess.Popen[str]] = []
    subscriber: subprocess.Popen[str] | None = None
    try:
        for step in steps[1:]:
            words = shlex.split(step)
            if words[0] == "cd":
                cwd = cwd / words[1]
            elif words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = value
            elif words[:2] == ["rtserve", "run"]:
                server = subprocess.Popen(
                    words, cwd=cwd, env=env, text=True, start_new_session=True
                )
                background.append(server)
                wait_port(8000, time.monotonic() + 20)
            elif words[:2] == ["rtserve", "subscribe"]:
                subscriber = subprocess.Popen(
                    words, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE
                )
                background.append(subscriber)
            elif words[:2] == ["rtserve", "publish"]:
                assert subscriber is not None
                # The subscriber may not be subscribed yet: publish until it has one.
                deadline = time.monotonic() + 20
                while subscriber.poll() is None and time.monotonic() < deadline:
                    done = subprocess.run(words, cwd=cwd, env=env, text=True, capture_output=True)
                    assert done.returncode == 0, done.stderr
                    assert '"offset"' in done.stdout
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        subscriber.wait(0.5)
                out, _ = subscriber.communicate(timeout=5)
                assert subscriber.returncode == 0
                assert "hello from the server" in out
            else:
                done = subprocess.run(
                    words, cwd=cwd, env=env, text=True, capture_output=True, timeout=120
                )
                assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
                if words[:2] == ["rtserve", "check"]:
                    assert done.stdout.startswith("ok")
    finally:
        for process in background:
            if process.poll() is None:
                os.killpg(
                    process.pid, signal.SIGTERM
                ) if process is not subscriber else process.kill()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
