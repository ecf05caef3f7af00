"""Brokers carry channel publications between nodes: `MemoryBroker` in one process."""

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
    "StreamPosition",
]
