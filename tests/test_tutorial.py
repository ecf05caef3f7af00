"""docs/tutorial.md, command by command, as written.

Two walks: in a fresh virtualenv, where `pip install path/to/rtserve` installs this checkout
(slow: CI runs it), and in this test's own environment, where rtserve is installed already and
the virtualenv and `pip install` lines are checked to be there, not run.
"""

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

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
TEST_BIN = str(Path(sys.executable).parent)
PORT = 8000  # the tutorial's own
CHECKOUT = "path/to/rtserve"  # the tutorial's name for the reader's checkout of rtserve


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


def is_setup(words: list[str]) -> bool:
    """The lines that make the virtualenv and install into it."""
    return words[:3] == ["python3", "-m", "venv"] or words[:1] in (["."], ["pip"])


class Walk:
    """Runs the tutorial's lines one by one in `cwd` with `env`, the way a shell would for
    these lines, and stops everything it started at the end."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.background: list[subprocess.Popen[str]] = []
        self.subscriber: subprocess.Popen[str] | None = None

    def step(self, line: str) -> None:
        words = [str(ROOT) if word == CHECKOUT else word for word in shlex.split(line)]
        if words[0] == "cd":
            self.cwd = self.cwd / words[1]
        elif words[0] == "export":
            name, _, value = words[1].partition("=")
            self.env[name] = value
        elif words[0] == ".":
            venv = (self.cwd / words[1]).parent.parent
            assert (venv / "bin" / "activate").is_file(), f"{line}: no virtualenv there"
            self.env["VIRTUAL_ENV"] = str(venv)
            self.env["PATH"] = str(venv / "bin") + os.pathsep + self.env["PATH"]
        elif words[:2] == ["rtserve", "run"]:
            server = subprocess.Popen(
                words, cwd=self.cwd, env=self.env, text=True, start_new_session=True
            )
            self.background.append(server)
            wait_port(PORT, time.monotonic() + 30)
        elif words[:2] == ["rtserve", "subscribe"]:
            self.subscriber = subprocess.Popen(
                words, cwd=self.cwd, env=self.env, text=True, stdout=subprocess.PIPE
            )
            self.background.append(self.subscriber)
        elif words[:2] == ["rtserve", "publish"]:
            self.publish_until_received(words)
        else:
            done = subprocess.run(
                words, cwd=self.cwd, env=self.env, text=True, capture_output=True, timeout=300
            )
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if words[:2] == ["rtserve", "check"]:
                assert done.stdout.startswith("ok")
            if words[:1] == ["pytest"]:
                assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout

    def publish_until_received(self, words: list[str]) -> None:
        subscriber = self.subscriber
        assert subscriber is not None, "the tutorial publishes before anything subscribes"
        # The subscriber may not be subscribed yet: publish until it has one.
        deadline = time.monotonic() + 30
        while subscriber.poll() is None and time.monotonic() < deadline:
            done = subprocess.run(words, cwd=self.cwd, env=self.env, text=True, capture_output=True)
            assert done.returncode == 0, done.stderr
            assert '"offset"' in done.stdout
            with contextlib.suppress(subprocess.TimeoutExpired):
                subscriber.wait(0.5)
        out, _ = subscriber.communicate(timeout=5)
        assert subscriber.returncode == 0
        assert "hello from the server" in out

    def stop(self) -> None:
        for process in self.background:
            if process.poll() is not None:
                continue
            if process is self.subscriber:
                process.kill()
            else:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def walk(lines: list[str], cwd: Path, env: dict[str, str]) -> None:
    if not port_free(PORT):
        pytest.skip(f"port {PORT} is taken here, and the tutorial uses it as written")
    env.pop("RTSERVE_API_KEY", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    tutorial = Walk(cwd, env)
    try:
        for line in lines:
            tutorial.step(line)
    finally:
        tutorial.stop()


def test_tutorial_commands_work_as_written(tmp_path: Path) -> None:
    lines = commands()
    setup = [line for line in lines if is_setup(shlex.split(line))]
    assert setup[:3] == [
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        f"pip install {CHECKOUT}",
    ]
    env = dict(os.environ, PATH=TEST_BIN + os.pathsep + os.environ["PATH"])
    walk([line for line in lines if line not in setup], tmp_path, env)


@pytest.mark.slow
@pytest.mark.timeout(600)  # a virtualenv and rtserve's dependencies: ~2 min on a busy machine
def test_tutorial_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """`pip install path/to/rtserve` installs this checkout, and its dependencies from the
    package index, as a user's would."""
    home = tmp_path / "home"
    home.mkdir()
    # Nothing of this test's environment leaks in: not its virtualenv, not its Python path.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p) != Path(TEST_BIN)
    )
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    walk(commands(), home, env)
    assert (home / ".venv" / "bin" / "rtserve").is_file()  # the commands ran the new one
