"""Brokers named by URL: the table of kinds, the checks, and the Redis extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rtserve.broker.memory import MemoryBroker
from rtserve.broker.url import BROKER_KINDS, broker_from_url, check_broker_url
from rtserve.config.project import load_project
from rtserve.errors import ConfigError


def test_every_kind_in_the_table_builds_its_broker() -> None:
    from rtserve.broker.redis import RedisBroker
    from rtserve.broker.redis_cluster import RedisClusterBroker

    urls = {
        "memory": "memory",
        "redis": "redis://127.0.0.1:6379/0?prefix=shop",
        "rediss": "rediss://:secret@127.0.0.1:6380/1",
        "unix": "unix:///run/redis.sock?db=0",
        "redis+cluster": "redis+cluster://127.0.0.1:7000,127.0.0.1:7001?prefix=shop",
        "rediss+cluster": "rediss+cluster://u:p%40ss@[::1]:7000",
    }
    assert set(urls) == set(BROKER_KINDS)
    assert type(broker_from_url(urls["memory"])) is MemoryBroker
    for scheme in ("redis", "rediss", "unix"):
        assert type(broker_from_url(urls[scheme])) is RedisBroker
    assert broker_from_url(urls["redis"])._key("a", "meta") == "shop:{a}:meta"  # type: ignore[attr-defined]
    cluster = broker_from_url(urls["redis+cluster"])
    assert type(cluster) is RedisClusterBroker
    assert cluster._nodes == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]
    assert cluster._key("a", "meta") == "shop:{a}:meta"
    tls = broker_from_url(urls["rediss+cluster"])
    assert isinstance(tls, RedisClusterBroker)
    assert (tls._nodes, tls._tls) == ([("::1", 7000)], True)
    assert (tls._username, tls._password) == ("u", "p@ss")


def test_a_cluster_url_with_a_bad_node_is_refused() -> None:
    with pytest.raises(ValueError, match="node is host:port, not 'cache'"):
        broker_from_url("redis+cluster://cache,127.0.0.1:7001")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://127.0.0.1", "must be 'memory' or a Redis URL"),
        ("memory://", "must be 'memory' or a Redis URL"),
        ("redis://", "names no host"),
        ("redis://127.0.0.1:99999", "port is not a number from 0 to 65535"),
        ("redis+cluster://127.0.0.1:7000?wait=x", "wait is a number of replicas"),
        ("redis+cluster://cache,127.0.0.1:7001", "node is host:port, not 'cache'"),
    ],
)
def test_a_url_that_names_no_broker_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_broker_url(url)


def test_a_redis_url_without_the_redis_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis were not installed
    with pytest.raises(ValueError, match=r"pip install 'rtserve\[redis\]'"):
        check_broker_url("redis://127.0.0.1:6379/0")
    (tmp_path / "rtserve.yaml").write_text("server:\n  port: 0\nbroker: redis://127.0.0.1/0\n")
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert ":3:9: broker: the redis:// broker needs the redis package" in str(caught.value)
    check_broker_url("memory")  # the embedded default needs nothing of it


def test_an_app_on_the_memory_broker_does_not_import_redis() -> None:
    code = textwrap.dedent(
        """
        import sys
        from rtserve import App
        from rtserve.broker.url import broker_from_url
        app = App()
        app.channel("chat:*", history=10)
        broker_from_url("memory")
        print("redis" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_rtserve_check_names_a_bad_broker_option_where_it_is_written(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text(
        "server:\n  port: 0\nbroker: redis+cluster://127.0.0.1:7000?wait=all\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert ":3:9: broker: wait is a number of replicas (0 or more), not 'all'" in str(caught.value)
