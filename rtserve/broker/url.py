"""A broker named by a string, as `broker:` in rtserve.yaml says it: `memory`, or a Redis URL
(`redis://[[user]:password@]host[:port][/db]`, `rediss://` for TLS, `unix://` for a socket,
`redis+cluster://host:port[,host:port...]` for a Redis Cluster; `?prefix=NAME` sets the key
prefix, default `rtserve`).

The names are a table, `BROKER_KINDS`: a scheme maps to the `module:function` that builds the
broker from its URL (imported only when that broker is used) and to the extra that installs
what it needs. A new broker is one module with a `from_url(url) -> Broker` and one line here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from urllib.parse import urlsplit

from rtserve.broker.base import Broker
from rtserve.imports import import_object


@dataclass(frozen=True, slots=True)
class BrokerKind:
    """One family of broker URLs: `build` is the `module:function` making the broker from its
    URL; `needs` the modules it imports, installed by `pip install 'rtserve[extra]'`."""

    build: str
    extra: str | None = None
    needs: tuple[str, ...] = ()
    host_required: bool = False


_REDIS = BrokerKind("rtserve.broker.redis:from_url", "redis", ("redis",), host_required=True)
_CLUSTER = BrokerKind(
    "rtserve.broker.redis_cluster:from_url", "redis", ("redis",), host_required=True
)

BROKER_KINDS: dict[str, BrokerKind] = {
    "memory": BrokerKind("rtserve.broker.memory:from_url"),
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": BrokerKind("rtserve.broker.redis:from_url", "redis", ("redis",)),
    "redis+cluster": _CLUSTER,
    "rediss+cluster": _CLUSTER,
}


def _kind_name(text: str) -> str:
    """The key of BROKER_KINDS `text` falls under ('' for none): `memory` is a plain name."""
    if text == "memory":
        return "memory"
    scheme = urlsplit(text).scheme
    return "" if scheme == "memory" else scheme


def check_broker_url(text: str) -> None:
    """ValueError when `text` names no broker this version has, one whose extra is not
    installed (the message says which `pip install` brings it), or one its kind refuses (a
    bad node or option: the broker is made, not started)."""
    kind = BROKER_KINDS.get(_kind_name(text))
    if kind is None:
        raise ValueError(f"must be 'memory' or a Redis URL (redis://host:port/db), not {text!r}")
    if text == "memory":
        return
    parts = urlsplit(text)
    if kind.host_required and not parts.hostname:
        raise ValueError(f"the Redis URL {parts.scheme}://… names no host")
    try:
        for node in parts.netloc.rpartition("@")[2].split(","):  # a cluster names several
            urlsplit(f"//{node}").port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise ValueError("the Redis URL's port is not a number from 0 to 65535") from None
    missing = [name for name in kind.needs if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"the {parts.scheme}:// broker needs the {missing[0]} package, which is not "
            f"installed: pip install 'rtserve[{kind.extra}]'"
        )
    import_object(kind.build)(text)  # the kind's own checks (nodes, options); no I/O


def checked_broker_url(text: str) -> str:
    """`text` when it names a broker this installation can make (see check_broker_url)."""
    check_broker_url(text)
    return text


def broker_from_url(text: str) -> Broker:
    """The Broker `text` names (see the module docstring)."""
    check_broker_url(text)
    build = import_object(BROKER_KINDS[_kind_name(text)].build)
    broker: Broker = build(text)
    return broker


def is_shared(text: str | None) -> bool:
    """Whether the broker `text` names is shared between processes (not `memory`)."""
    return text not in (None, "memory")
