"""Redis for tests: the machine's Redis (`redis_url` + a key prefix per test) and a private
`redis-server` that a test may kill and start again (`private_redis`).

Loaded by tests/conftest.py as a pytest plugin. Without a Redis at 127.0.0.1:6379 the tests
that need it are skipped, or fail when the CI environment variable is set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
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


CLUSTER_START_TIMEOUT = 30.0  # seconds for a new cluster to say cluster_state:ok everywhere


class LocalCluster:
    """A Redis Cluster of `masters` masters with one replica each, on free ports of
    127.0.0.1, its files in `directory` (no persistence: a killed master's data lives on in
    its replica). `url` names every node: ``redis+cluster://h:p,h:p,...``."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.size = masters * 2
        self.masters = masters
        self.processes: dict[int, subprocess.Popen[bytes]] = {}  # by port
        self.buses: dict[int, int] = {}  # cluster bus port, by port
        self.ports: list[int] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def _spawn(self, port: int, bus: int) -> subprocess.Popen[bytes]:
        options = {
            "port": str(port),
            "cluster-port": str(bus),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "repl-diskless-sync-delay": "0",  # replicas in sync at once (5 s by default)
            "cluster-enabled": "yes",
            "cluster-node-timeout": "1000",  # ms before a silent master fails over
            "cluster-config-file": f"nodes-{port}.conf",
            "dir": str(self.directory),
            "logfile": f"redis-{port}.log",
        }
        return subprocess.Popen(
            ["redis-server", *(arg for k, v in options.items() for arg in (f"--{k}", v))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Start the servers, make them one cluster and wait until every node says ok."""
        try:
            self._spawn_all()
            subprocess.run(
                ["redis-cli", "--cluster", "create"]
                + [f"127.0.0.1:{port}" for port in self.ports]
                + ["--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=CLUSTER_START_TIMEOUT,
            )
            self.wait_ok()
            deadline = time.monotonic() + CLUSTER_START_TIMEOUT
            while self._replicas_in_sync() < self.masters:
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster's replicas did not sync with their masters")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _spawn_all(self, attempts: int = 3) -> None:
        """Start the servers on free ports and wait for their PING; new ports when one
        exited at start (another process took its port after it was chosen)."""
        for attempt in range(attempts):
            ports = distinct_free_ports(2 * self.size)
            for port, bus in zip(ports[::2], ports[1::2], strict=True):
                self.processes[port] = self._spawn(port, bus)
                self.buses[port] = bus
                self.ports.append(port)
            deadline = time.monotonic() + START_TIMEOUT
            for port in self.ports:
                while not _ping(f"redis://127.0.0.1:{port}/0", timeout=0.5):
                    if self.processes[port].poll() is not None and attempt + 1 < attempts:
                        break
                    if time.monotonic() > deadline or self.processes[port].poll() is not None:
                        raise RuntimeError(f"cluster node on port {port} did not start")
                    time.sleep(0.02)
                else:
                    continue
                break  # a node exited: start them all again on other ports
            else:
                return
            self.stop()
            self.processes.clear()
            self.buses.clear()
            self.ports.clear()

    def cluster_info(self, port: int) -> dict[str, str]:
        import redis

        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            text = client.execute_command("CLUSTER INFO")
        finally:
            client.close()
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).split() if ":" in line)

    def _replicas_in_sync(self) -> int:
        """How many running replicas have their link to their master up (one that never
        synced cannot be promoted when its master fails)."""
        return sum(self._in_sync(port) for port in self.running())

    def running(self) -> list[int]:
        """The ports of the nodes whose process runs."""
        return [port for port, process in self.processes.items() if process.poll() is None]

    def replication(self, port: int) -> dict[str, object]:
        """``INFO replication`` of the node on `port`."""
        import redis

        client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            info: dict[str, object] = client.info("replication")
        finally:
            client.close()
        return info

    def wait_ok(self, timeout: float = CLUSTER_START_TIMEOUT) -> None:
        """Wait until every running node says cluster_state:ok with all slots served."""
        import redis

        deadline = time.monotonic() + timeout
        for port, process in self.processes.items():
            if process.poll() is not None:
                continue
            while True:
                try:
                    info = self.cluster_info(port)
                    if (
                        info.get("cluster_state") == "ok"
                        and info.get("cluster_slots_ok") == "16384"
                    ):
                        break
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node on port {port} is not ok after {timeout} s")
                time.sleep(0.05)

    def replica_of(self, master: int) -> int:
        """The port of the replica of the master on port `master`."""
        for port in self.running():
            info = self.replication(port)
            if port != master and info.get("role") == "slave" and info.get("master_port") == master:
                return port
        raise AssertionError(f"no replica of the master on port {master}")

    def cut_replication(self, master: int) -> int:
        """Freeze the replica of `master` (SIGSTOP) and drop its link, so that what the master
        writes from now on reaches no replica; returns the replica's port (`thaw` it)."""
        import redis

        replica = self.replica_of(master)
        self.processes[replica].send_signal(signal.SIGSTOP)
        client = redis.Redis(port=master, socket_timeout=2)
        try:
            client.execute_command("CLIENT KILL TYPE replica")
        finally:
            client.close()
        return replica

    def thaw(self, port: int) -> None:
        """SIGCONT the node on `port` (frozen by `cut_replication`)."""
        self.processes[port].send_signal(signal.SIGCONT)

    def take_over(self, replica: int) -> None:
        """Make the replica on `replica` the master of its shard at once (CLUSTER FAILOVER
        TAKEOVER: no vote, its master may be dead) and wait until it says so."""
        import redis

        client = redis.Redis(port=replica, socket_timeout=2)
        try:
            client.execute_command("CLUSTER FAILOVER TAKEOVER")
            deadline = time.monotonic() + START_TIMEOUT
            while client.info("replication").get("role") != "master":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the replica on port {replica} did not take over")
                time.sleep(0.02)
        finally:
            client.close()

    def rejoin(self, port: int) -> None:
        """Start the (killed) node on `port` again with its cluster config: a master that was
        replaced comes back as the new master's replica. Waits until it replicates."""
        assert self.processes[port].poll() is not None, "still running"
        self.processes[port] = self._spawn(port, self.buses[port])
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT
        while not self._in_sync(port):
            if time.monotonic() > deadline or self.processes[port].poll() is not None:
                raise RuntimeError(f"the node on port {port} did not rejoin as a replica")
            time.sleep(0.05)

    def _in_sync(self, port: int) -> bool:
        import redis

        try:
            info = self.replication(port)
        except (redis.RedisError, OSError):
            return False
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` and wait for it to be gone."""
        process = self.processes.get(port)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free ports of 127.0.0.1 (each bound until all are chosen, so the
    kernel cannot hand one out twice; other processes, pytest-xdist workers too, get others
    while they are held)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of the test session (3 masters, 3 replicas), stopped at its end."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        _require("redis-server and redis-cli are not installed (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        _require("the redis package is not installed (pip install -e '.[dev]')")
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalCluster) -> str:
    """The URL (redis+cluster://...) of the session's cluster."""
    return redis_cluster.url


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A Redis Cluster of this test alone (3 masters, 3 replicas), for tests that kill or
    move parts of it; stopped at teardown."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        _require("redis-server and redis-cli are not installed (apt-get install redis-server)")
    cluster = LocalCluster(tmp_path)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def migrate_slot(cluster: LocalCluster, slot: int, source: int, target: int) -> None:
    """Move `slot` with its keys from the master on port `source` to the one on `target`,
    as `redis-cli --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE, SETSLOT NODE)."""
    import redis

    clients = {port: redis.Redis(port=port, socket_timeout=5) for port in (source, target)}
    try:
        ids = {port: client.execute_command("CLUSTER MYID") for port, client in clients.items()}
        clients[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        clients[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        while keys := clients[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            clients[source].execute_command(
                "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys
            )
        for port in (target, source):
            clients[port].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    finally:
        for client in clients.values():
            client.close()
