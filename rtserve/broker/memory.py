"""MemoryBroker: the embedded default broker, for one process and no services.

Each channel that was published to has a stream: an epoch, the last offset given out and,
when the channel keeps history, its latest publications. Subscribing and reading keep
nothing. A stream lives `meta_ttl` seconds after its last publication (or its history's TTL,
when longer); once it is gone the next publication starts a new epoch at offset 1. Expired
streams and idempotency keys are swept lazily by the calls that touch them, so many one-off
channels do not make memory grow.

A reload hands the streams to the next process: `freeze()` refuses publications from then on,
`export_state()` gives the streams and idempotency keys as JSON-able data (times as ages, so
another process's clock reads them), `import_state()` takes them into a broker not serving yet.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from rtserve.broker.base import (
    NO_OPTIONS,
    Broker,
    BrokerError,
    BrokerEvents,
    ClientInfo,
    HistoryResult,
    PresenceStats,
    Publication,
    PublishOptions,
    StreamPosition,
    empty_epoch,
    stream_lifetime,
)

__all__ = ["MemoryBroker"]

log = logging.getLogger("rtserve.broker")


class _Stream:
    """One life of a channel's stream.

    `history` holds (publication, time added) with consecutive offsets ending at `offset`
    (publishing with history_size 0 empties it), which `history()` relies on to find `since`.
    """

    __slots__ = ("epoch", "history", "history_ttl", "lifetime", "offset", "touched")

    def __init__(self, epoch: str, lifetime: float, now: float) -> None:
        self.epoch = epoch
        self.offset = 0
        self.history: deque[tuple[Publication, float]] = deque()
        self.history_ttl = 0.0
        self.lifetime = lifetime  # seconds it is kept after `touched`
        self.touched = now

    def prune(self, now: float) -> None:
        """Drop publications older than `history_ttl` (oldest are on the left)."""
        if self.history_ttl > 0:
            history, ttl = self.history, self.history_ttl
            while history and now - history[0][1] >= ttl:
                history.popleft()


class MemoryBroker(Broker):
    """The Broker for one process: offsets, history, idempotency and presence in memory.

    meta_ttl: seconds a channel's stream (epoch, offset, history) is kept after its last
    publication (longer for a history with a longer TTL). clock: a monotonic clock in
    seconds (tests inject their own).
    """

    __slots__ = (
        "_clock",
        "_closed",
        "_events",
        "_expiry",
        "_frozen",
        "_idempotency",
        "_idempotency_expiry",
        "_meta_ttl",
        "_presence",
        "_seed",
        "_streams",
        "_subscriptions",
    )

    def __init__(
        self, *, meta_ttl: float = 86400.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if meta_ttl <= 0:
            raise ValueError("meta_ttl must be > 0")
        self._meta_ttl = meta_ttl
        self._clock = clock
        self._events: BrokerEvents | None = None
        self._closed = False
        self._frozen = False
        self._streams: dict[str, _Stream] = {}
        # Channels by stream lifetime (one queue per lifetime: a few, one per rule), each in
        # the order of their last publication, so expired ones lead their queue.
        self._expiry: dict[float, OrderedDict[str, None]] = {}
        self._seed = secrets.token_hex(8)  # new epochs for every life of this broker
        self._subscriptions: set[str] = set()
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._idempotency: dict[tuple[str, str], tuple[StreamPosition, float]] = {}
        # (expires at, channel, key); an entry whose key was stored again later is stale.
        self._idempotency_expiry: list[tuple[float, str, str]] = []

    async def start(self, events: BrokerEvents) -> None:
        """Deliver to `events` from now on (a second call replaces it)."""
        if self._closed:
            raise BrokerError("broker is closed")
        self._events = events

    async def close(self) -> None:
        """Stop delivering and forget this node's subscriptions and presence."""
        self._closed = True
        self._events = None
        self._subscriptions.clear()
        self._presence.clear()

    def _sink(self) -> BrokerEvents:
        if self._events is None:
            raise BrokerError("broker is closed" if self._closed else "broker is not started")
        return self._events

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        info: ClientInfo | None = None,
        options: PublishOptions = NO_OPTIONS,
        tags: Mapping[str, str] | None = None,
    ) -> StreamPosition:
        """Give the next offset, keep it in history (tags included) and deliver it before
        returning.

        A repeat of `options.idempotency_key` within `idempotency_ttl` returns the first
        position and does nothing else.
        """
        events = self._sink()
        if self._frozen:
            raise BrokerError("the server is reloading: publish again in a moment")
        now = self._clock()
        self._sweep(now)
        key = options.idempotency_key
        if key is not None:
            seen = self._idempotency.get((channel, key))
            if seen is not None and now < seen[1]:
                return seen[0]

        stream = self._touch(channel, stream_lifetime(self._meta_ttl, options), now)
        stream.offset += 1
        publication = Publication(stream.offset, data, info, tags or None)
        self._keep(stream, publication, options, now)
        position = StreamPosition(stream.offset, stream.epoch)

        if key is not None and options.idempotency_ttl > 0:
            expires = now + options.idempotency_ttl
            self._idempotency[(channel, key)] = (position, expires)
            heapq.heappush(self._idempotency_expiry, (expires, channel, key))

        if channel in self._subscriptions:
            try:
                events.on_publication(channel, publication, stream.epoch)
            except Exception:
                # The publication is made; like a networked broker, a failing receiver on
                # this node must not turn it into a failed publish (joins and leaves alike).
                log.exception("delivering a publication of %r failed", channel)
        return position

    def _empty_epoch(self, channel: str, now: float) -> str:
        return empty_epoch(self._seed, channel, int(now * 1000), int(self._meta_ttl * 1000))

    def _touch(self, channel: str, lifetime: float, now: float) -> _Stream:
        """The channel's stream (started now when it has none), kept `lifetime` from now."""
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(
                self._empty_epoch(channel, now), lifetime, now
            )
        else:
            queue = self._expiry[stream.lifetime]
            del queue[channel]
            if not queue and stream.lifetime != lifetime:
                del self._expiry[stream.lifetime]
            stream.lifetime, stream.touched = lifetime, now
        self._expiry.setdefault(lifetime, OrderedDict())[channel] = None
        return stream

    @staticmethod
    def _keep(
        stream: _Stream, publication: Publication, options: PublishOptions, now: float
    ) -> None:
        size = options.history_size
        if size <= 0:
            stream.history.clear()
            return
        if stream.history.maxlen != size:
            stream.history = deque(stream.history, maxlen=size)
        stream.history_ttl = options.history_ttl
        stream.prune(now)
        stream.history.append((publication, now))

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Deliver a join to this node when it subscribed to `channel`."""
        events = self._sink()
        if channel in self._subscriptions:
            try:
                events.on_join(channel, info)
            except Exception:
                log.exception("delivering a join of %r failed", channel)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Deliver a leave to this node when it subscribed to `channel`."""
        events = self._sink()
        if channel in self._subscriptions:
            try:
                events.on_leave(channel, info)
            except Exception:
                log.exception("delivering a leave of %r failed", channel)

    async def subscribe(self, channel: str) -> None:
        """Deliver `channel`'s publications, joins and leaves to this node."""
        self._sink()
        self._subscriptions.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering `channel` to this node (no error when not subscribed)."""
        self._sink()
        self._subscriptions.discard(channel)

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Kept publications with offset > `since`, oldest first, at most `limit`.

        A channel without a stream is at offset 0 of the epoch its first publication will
        start (nothing is kept for it).
        """
        self._sink()
        now = self._clock()
        self._sweep(now)
        stream = self._streams.get(channel)
        if stream is None:
            return HistoryResult([], StreamPosition(0, self._empty_epoch(channel, now)))
        position = StreamPosition(stream.offset, stream.epoch)
        stream.prune(now)
        history = stream.history
        if not history or limit == 0:
            return HistoryResult([], position)
        first = history[0][0].offset
        skip = 0 if since is None or since < first else since - first + 1
        take = len(history) - skip
        if take <= 0:
            return HistoryResult([], position)
        # Recovery asks for the newest few, so walk from the right.
        publications = [publication for publication, _ in islice(reversed(history), take)]
        publications.reverse()
        if limit is not None and limit < take:
            del publications[limit:]
        return HistoryResult(publications, position)

    def _sweep(self, now: float) -> None:
        """Forget expired streams and idempotency keys (cost: what expired, plus one per
        stream lifetime)."""
        streams = self._streams
        for lifetime, queue in list(self._expiry.items()):
            while queue:
                channel = next(iter(queue))
                if now - streams[channel].touched < lifetime:
                    break
                del queue[channel]
                del streams[channel]
            if not queue:
                del self._expiry[lifetime]
        expiry, seen = self._idempotency_expiry, self._idempotency
        while expiry and expiry[0][0] <= now:
            expires, channel, key = heapq.heappop(expiry)
            entry = seen.get((channel, key))
            if entry is not None and entry[1] == expires:
                del seen[(channel, key)]

    async def presence_add(self, channel: str, info: ClientInfo) -> None:
        """Record `info.client` as present in `channel` (replacing an earlier entry)."""
        self._sink()
        self._presence.setdefault(channel, {})[info.client] = info

    async def presence_remove(self, channel: str, client: str) -> None:
        """Forget `client` in `channel` (no error when absent)."""
        self._sink()
        members = self._presence.get(channel)
        if members is not None:
            members.pop(client, None)
            if not members:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """A copy of who is present in `channel`, by client id."""
        self._sink()
        return dict(self._presence.get(channel, {}))

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Clients present in `channel`, and distinct users among them, without copying."""
        self._sink()
        members = self._presence.get(channel)
        if not members:
            return PresenceStats()
        users = {m.user for m in members.values() if m.user is not None}
        return PresenceStats(clients=len(members), users=len(users))

    # --- handing the streams over to the next process ---------------------------------------

    def freeze(self, frozen: bool = True) -> None:
        """Refuse publications (BrokerError) while `frozen`, so an export stays whole."""
        self._frozen = frozen

    def export_state(self) -> dict[str, Any]:
        """The streams (epoch, offset, history, lifetime), the idempotency keys and the seed
        of the epochs of streams not started yet, as JSON-able data (times as ages)."""
        now = self._clock()
        self._sweep(now)
        streams = []
        for channel, stream in self._streams.items():
            stream.prune(now)
            streams.append(
                {
                    "channel": channel,
                    "epoch": stream.epoch,
                    "offset": stream.offset,
                    "size": stream.history.maxlen or 0,
                    "ttl": stream.history_ttl,
                    "lifetime": stream.lifetime,
                    "age": now - stream.touched,
                    "history": [
                        [
                            p.offset,
                            p.data,
                            p.info.to_json() if p.info else None,
                            now - added,
                            dict(p.tags) if p.tags else None,
                        ]
                        for p, added in stream.history
                    ],
                }
            )
        keys = [
            [channel, key, position.offset, position.epoch, expires - now]
            for (channel, key), (position, expires) in self._idempotency.items()
        ]
        return {"version": 2, "seed": self._seed, "streams": streams, "idempotency": keys}

    def import_state(self, state: Mapping[str, Any]) -> int:
        """Take over what `export_state` gave (replacing this broker's streams); the number
        of streams. ValueError, with nothing changed, when `state` is not such data."""
        now = self._clock()
        try:
            if state["version"] != 2:
                raise ValueError(f"unknown version {state['version']!r}")
            seed = str(state["seed"])
            streams: dict[str, _Stream] = {}
            for item in sorted(state["streams"], key=lambda item: -float(item["age"])):
                stream = _Stream(
                    str(item["epoch"]), float(item["lifetime"]), now - float(item["age"])
                )
                stream.offset = int(item["offset"])
                stream.history_ttl = float(item["ttl"])
                stream.history = deque(
                    (
                        (
                            Publication(
                                int(o),
                                data,
                                ClientInfo.from_json(info) if info else None,
                                dict(tags[0]) if tags and tags[0] else None,
                            ),
                            now - float(age),
                        )
                        for o, data, info, age, *tags in item["history"]
                    ),
                    maxlen=int(item["size"]) or None,
                )
                streams[str(item["channel"])] = stream
            seen: dict[tuple[str, str], tuple[StreamPosition, float]] = {}
            for channel, key, offset, epoch, left in state["idempotency"]:
                seen[(str(channel), str(key))] = (
                    StreamPosition(int(offset), str(epoch)),
                    now + float(left),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a memory broker's state: {exc!r}") from None
        self._seed = seed
        self._streams = streams
        self._expiry = {}
        for channel, stream in streams.items():  # oldest touched first: expired ones lead
            self._expiry.setdefault(stream.lifetime, OrderedDict())[channel] = None
        self._idempotency = seen
        self._idempotency_expiry = [(expires, c, k) for (c, k), (_, expires) in seen.items()]
        heapq.heapify(self._idempotency_expiry)
        return len(streams)


def from_url(url: str) -> MemoryBroker:
    """The broker `broker: memory` names (see rtserve.broker.url)."""
    return MemoryBroker()
