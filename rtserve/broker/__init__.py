"""Brokers carry channel publications between nodes: `MemoryBroker` in one process,
`RedisBroker` across processes and machines (imported, with redis, only when asked for)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtserve.broker.base import (
    Broker,
    BrokerError,
    BrokerEvents,
    ClientInfo,
    HistoryResult,
    PresenceStats,
    Publication,
    PublishOptions,
    StreamPosition,
)
from rtserve.broker.memory import MemoryBroker

if TYPE_CHECKING:
    from rtserve.broker.redis import RedisBroker

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerEvents",
    "ClientInfo",
    "HistoryResult",
    "MemoryBroker",
    "PresenceStats",
    "Publication",
    "PublishOptions",
    "RedisBroker",
    "StreamPosition",
]


def __getattr__(name: str) -> Any:
    """`RedisBroker` on first use, so that importing rtserve does not import redis."""
    if name == "RedisBroker":
        from rtserve.broker.redis import RedisBroker

        return RedisBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
