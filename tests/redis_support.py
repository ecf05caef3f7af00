"""Redis for tests: the machine's Redis (`redis_url` + a key prefix per test) and a private
`redis-server` that a test may kill and start again (`private_redis`).

Loaded by tests/conftest.py as a pytest plugin. Without a Redis at 127.0.0.1:6379 the tests
that need it are skipped, or fail when the CI environment variable is set.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.net import free_port

REDIS_URL = os.environ.get("RTSERVE_TEST_REDIS", "redis://127.0.0.1:6379/0")
START_TIMEOUT = 10.0  # seconds for a redis-server to answer PING


def _require(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and Redis tests are required in CI")
    pytest.skip(reason)


def _ping(url: str, timeout: float = 1.0) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def _redis_available() -> str:
    try:
        import redis  # noqa: F401
    except ImportError:
        _require("the redis package is not installed (pip install -e '.[dev]')")
    if not _ping(REDIS_URL):
        _require(f"no Redis answers at {REDIS_URL} (start redis-server)")
    return REDIS_URL


@pytest.fixture
def redis_url(_redis_available: str) -> str:
    """The URL of the machine's Redis (skip, or fail in CI, when it does not answer)."""
    return _redis_available


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    import redis

    prefix = f"rtserve-test-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


class PrivateRedis:
    """A redis-server of one test on 127.0.0.1:`port`, with an append-only file in
    `directory` so that a restart keeps the streams."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.url, timeout=0.5):
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone (no error when not running)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started redis-server of this test alone; killed at teardown."""
    executable = shutil.which("redis-server")
    if executable is None:
        _require("redis-server is not installed (apt-get install redis-server)")
    server = PrivateRedis(executable, tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()
