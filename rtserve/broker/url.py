"""A broker named by a string, as `broker:` in rtserve.yaml says it: `memory`, or a Redis URL
(`redis://[[user]:password@]host[:port][/db]`, `rediss://` for TLS, `unix://` for a socket;
`?prefix=NAME` sets the key prefix, default `rtserve`)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rtserve.broker.base import Broker

REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_broker_url(text: str) -> None:
    """ValueError when `text` names no broker this version has."""
    if text == "memory":
        return
    parts = urlsplit(text)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"broker must be 'memory' or a Redis URL (redis://host:port/db), not {text!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"the Redis URL {parts.scheme}://… names no host")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise ValueError("the Redis URL's port is not a number from 0 to 65535") from None


def broker_from_url(text: str) -> Broker:
    """The Broker `text` names (see the module docstring)."""
    check_broker_url(text)
    if text == "memory":
        from rtserve.broker.memory import MemoryBroker

        return MemoryBroker()
    from rtserve.broker.redis import RedisBroker

    parts = urlsplit(text)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), None) or "rtserve"
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return RedisBroker(urlunsplit(parts._replace(query=rest)), prefix=prefix)


def is_shared(text: str | None) -> bool:
    """Whether the broker `text` names is shared between processes (not `memory`)."""
    return text not in (None, "memory")
