"""Channel and transport tests on every broker: MemoryBroker, RedisBroker and
RedisClusterBroker. BACKENDS is
the one list of them; `broker_factory` makes a backend's brokers.

Loaded by tests/conftest.py as a pytest plugin. A test that uses the `app_broker` fixture
(usually through ``pytestmark = pytest.mark.usefixtures("app_broker")``) runs once per
backend, ids ``[memory]``, ``[redis]`` and ``[cluster]`` (``make_broker``, for tests of the Broker
interface itself, likewise); while it runs, an ``App()`` made without a broker
gets one of that backend (for Redis: the machine's Redis, with a key prefix of this test,
shared by every App of the test like nodes of one deployment; for the cluster: a Redis Cluster
of three masters and three replicas started once per session, tests/redis_support.py,
with a key prefix of this test). The Redis variants are skipped
without a reachable Redis, or fails when CI is set (see tests/redis_support.py).

``@pytest.mark.memory_only("why")`` keeps a test on the memory broker alone: for tests of
memory-only behaviour (injected clocks, MemoryBroker options, timing of its expiry).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from rtserve import App
from rtserve.broker.base import Broker
from rtserve.broker.memory import MemoryBroker

BACKENDS = ("memory", "redis", "cluster")
# Under pytest-xdist every worker would start a session cluster of its own (six
# redis-servers): the cluster variants share one worker, and so one cluster.
CLUSTER_GROUP = pytest.mark.xdist_group("redis-cluster")

BrokerFactory = Callable[..., Broker]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "memory_only(reason): run this broker-parametrised test on MemoryBroker only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "app_broker" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("memory_only")
    if marker is not None and not (marker.args or marker.kwargs.get("reason")):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: memory_only needs a reason")
    backends = ["memory"] if marker is not None else list(BACKENDS)
    metafunc.parametrize("app_broker", _params(backends), indirect=True)


def _params(backends: list[str]) -> list[Any]:
    """The backends as parameters, the cluster one in the cluster's xdist group."""
    return [pytest.param(b, marks=CLUSTER_GROUP) if b == "cluster" else b for b in backends]


def broker_factory(request: pytest.FixtureRequest, backend: str) -> BrokerFactory:
    """A factory of (not started) brokers of `backend` (one of BACKENDS); for Redis, the
    brokers of one test share its key prefix, like nodes of one deployment."""
    if backend == "memory":
        return MemoryBroker
    if backend == "cluster":
        from rtserve.broker.redis_cluster import from_url

        cluster_url = request.getfixturevalue("redis_cluster_url")
        prefix = f"rtserve-test-{secrets.token_hex(6)}"

        def cluster_factory(**kwargs: Any) -> Broker:
            broker = from_url(f"{cluster_url}?prefix={prefix}")
            return broker if not kwargs else type(broker)(broker._nodes, prefix=prefix, **kwargs)

        return cluster_factory
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    from rtserve.broker.redis import RedisBroker

    def factory(**kwargs: Any) -> Broker:
        return RedisBroker(url, prefix=prefix, **kwargs)

    return factory


@pytest.fixture(params=_params(list(BACKENDS)))
def make_broker(request: pytest.FixtureRequest) -> BrokerFactory:
    """A factory of (not started) brokers, once per backend: for tests of the Broker itself."""
    return broker_factory(request, request.param)


@pytest.fixture
def app_broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> BrokerFactory:
    """A factory of (not started) brokers of this test's backend, which ``App()`` also uses
    while the test runs when it is given no broker."""
    factory = broker_factory(request, request.param)
    original = App.__init__

    def init(self: App, *args: Any, broker: Broker | None = None, **kwargs: Any) -> None:
        original(self, *args, broker=factory() if broker is None else broker, **kwargs)

    monkeypatch.setattr(App, "__init__", init)
    return factory
