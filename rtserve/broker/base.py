"""The Broker interface: what the Hub needs from the engine between nodes.

A node is one server process. The Hub publishes through the broker; the broker appends the
publication to the channel's history (when the channel keeps one), gives it the next offset
of the channel, and hands it to every node subscribed to the channel, this one included, by
calling `BrokerEvents.on_publication`. Join and leave events travel the same way but are not
kept. Presence is a map per channel of client id to `ClientInfo`.

Offsets are per channel, start at 1 and only grow while the channel's epoch stays the same.
The epoch names one life of the channel's stream: when a broker loses the stream (restart,
expiry of its metadata) the next publication starts a new epoch, and a client that comes back
with the old epoch learns that its offset means nothing any more.

A stream exists from its channel's first publication: subscribing and reading keep nothing,
so a client cannot make the broker hold state for names nobody publishes to. A channel
without a stream reports offset 0 and the epoch its next stream will start with
(`empty_epoch`), so a client that subscribed before the first publication continues on it.
A stream lives `meta_ttl` seconds after its last publication, or its own history's
`history_ttl` when that is longer (`stream_lifetime`).

Every method is async so a networked backend (Redis) fits without changing the interface.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rtserve.errors import RtserveError


class BrokerError(RtserveError):
    """The broker could not do what was asked (unreachable, refused); never a silent drop."""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a client is, as presence and publications show it."""

    client: str
    user: str | None = None
    info: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client": self.client, "user": self.user}
        if self.info:
            out["info"] = self.info
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ClientInfo:
        return cls(value["client"], value.get("user"), value.get("info"))


@dataclass(frozen=True, slots=True)
class Publication:
    """One message of a channel: its offset, JSON data, from a client who sent it, and the
    publisher's tags (a small map of strings subscription filters match)."""

    offset: int
    data: Any
    info: ClientInfo | None = None
    tags: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's stream stands: the last offset given out, and the epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications with offsets above `since` (oldest first) and the stream's position."""

    publications: list[Publication]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class PublishOptions:
    """How a channel keeps what is published to it.

    history_size: publications kept (0: none). history_ttl: seconds a publication is kept.
    idempotency_key: a publish repeated with the same key within `idempotency_ttl` seconds
    lands once and returns the first position.
    """

    history_size: int = 0
    history_ttl: float = 0.0
    idempotency_key: str | None = None
    idempotency_ttl: float = 300.0


NO_OPTIONS = PublishOptions()


def stream_lifetime(meta_ttl: float, options: PublishOptions) -> float:
    """Seconds a stream is kept after a publication with `options`: `meta_ttl`, or the
    history's TTL when the publication is kept and that is longer."""
    if options.history_size > 0 and options.history_ttl > meta_ttl:
        return options.history_ttl
    return meta_ttl


def empty_epoch(seed: str, channel: str, now_ms: int, window_ms: int) -> str:
    """The epoch of `channel`'s stream when one starts at `now_ms`: every node (and every
    read before the first publication) agrees on it within one `window_ms` (the brokers use
    `meta_ttl`), and no two lives of a stream share it, since a stream lives at least
    `meta_ttl`. `seed` is new whenever the broker's streams are lost (a MemoryBroker's
    life, a Redis data set). RedisBroker's scripts compute the same in Lua."""
    slot = now_ms // max(1, window_ms)
    return hashlib.sha1(f"{seed}\0{channel}\0{slot}".encode()).hexdigest()[:8]


class BrokerEvents(Protocol):
    """What a broker calls on its node (the Hub) for channels the node subscribed to."""

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None: ...
    def on_join(self, channel: str, info: ClientInfo) -> None: ...
    def on_leave(self, channel: str, info: ClientInfo) -> None: ...
    def on_gap(self, channel: str) -> None:
        """Publications of `channel` were missed and cannot be delivered (a networked broker
        lost its connection and the history did not keep them)."""


@dataclass(slots=True)
class PresenceStats:
    """Counts of a channel's presence: clients, and distinct users among them."""

    clients: int = 0
    users: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Broker(abc.ABC):
    """The engine between nodes. One instance per App; `start` before use, `close` after.

    A channel's history TTL and size, and so its stream's lifetime, are those of its latest
    publish.
    """

    __slots__ = ()

    @abc.abstractmethod
    async def start(self, events: BrokerEvents) -> None:
        """Connect (raising BrokerError when the backend is unreachable) and deliver to
        `events` from now on."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections; presence entries of this node go."""

    @abc.abstractmethod
    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        info: ClientInfo | None = None,
        options: PublishOptions = NO_OPTIONS,
        tags: Mapping[str, str] | None = None,
    ) -> StreamPosition:
        """Append to the channel (offset + history) and fan out to subscribed nodes; `tags`
        are kept and delivered with the publication.

        Returns the new publication's position. Raises BrokerError when it cannot be done.
        """

    @abc.abstractmethod
    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Tell every node subscribed to `channel` that `info` joined it (not kept)."""

    @abc.abstractmethod
    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Tell every node subscribed to `channel` that `info` left it (not kept)."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This node wants the channel's publications, joins and leaves."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """This node no longer has local subscribers of the channel."""

    @abc.abstractmethod
    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Kept publications with offset > `since` (all kept when None), oldest first, at
        most `limit` (None: no limit; 0: only the position). Any `since` and `limit` >= 0
        are valid, however large. Keeps nothing for a channel without a stream."""

    @abc.abstractmethod
    async def presence_add(self, channel: str, info: ClientInfo) -> None:
        """Record `info.client` as present in `channel`."""

    @abc.abstractmethod
    async def presence_remove(self, channel: str, client: str) -> None:
        """Forget `client` in `channel` (no error when absent)."""

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is present in `channel`, by client id."""

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Counts of `channel`'s presence (backends may do this without listing everyone)."""
        members = await self.presence(channel)
        users = {m.user for m in members.values() if m.user is not None}
        return PresenceStats(clients=len(members), users=len(users))
