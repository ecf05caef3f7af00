"""RedisBroker: channels on Redis, for many workers and many machines.

Every node (server process) connects to the same Redis. A publication is one Lua script that
gives the channel's next offset, keeps it in the channel's stream (its history) and PUBLISHes
it, so offsets, history and fan-out agree however many nodes publish at once. Each node has
one pub/sub connection on which it subscribes to the channels its clients listen to; a reader
task hands what arrives to the Hub in order.

Key layout (``P`` is the ``prefix``, ``C`` the channel name; ``{C}`` is a Redis Cluster hash
tag, so every key of one channel lives in one slot and the scripts may touch them together):

=========================  ======  ===========================================================
key                        type    what
=========================  ======  ===========================================================
``P:{C}:meta``             hash    ``epoch``, ``offset`` (last given out), ``ttl`` (history TTL
                                   of the latest publication, ms); made by the first
                                   publication (never by a subscribe or read), expires
                                   ``meta_ttl`` after the last publication (the history TTL
                                   when that is longer). Gone: the next publication starts a
                                   new epoch at offset 1.
``P:{C}:stream``           stream  history: entry id ``<offset>-0``, fields ``p`` (the
                                   payload, JSON ``{"d": data, "i": client info, "t":
                                   tags}``, ``i`` and ``t`` when there are some) and ``t``
                                   (Redis time of the publication, ms); ``MAXLEN =
                                   history_size``; expires with its history TTL (or the meta);
                                   deleted when the channel publishes with history_size 0 and
                                   when a new epoch starts.
``P:{C}:idem:<key>``       string  ``<offset>:<epoch>`` of a publication with an idempotency
                                   key; expires after ``idempotency_ttl``.
``P:{C}:pres``             hash    presence: client id -> JSON ``ClientInfo``.
``P:{C}:pres:exp``         zset    presence: client id -> expiry (Redis time, ms). Both
                                   presence keys expire with their last member.
``P:epoch-seed``           string  random; with the channel and the time window (``meta_ttl``)
                                   it makes the epoch of a new stream, which every node and
                                   every read before the first publication agree on. The one
                                   key without a TTL (one per prefix; lost with the data set,
                                   which then starts new epochs).
``P:{C}:pub``              pubsub  the channel's pub/sub name (not a key). Messages are JSON:
                                   ``{"o": offset, "e": epoch, "p": payload}`` for a
                                   publication, ``{"j": info}`` / ``{"l": info}`` for a join /
                                   leave.
=========================  ======  ===========================================================

Times (publication time, presence expiry) come from Redis (``TIME`` inside the scripts), so
the nodes' clocks need not agree. Needs Redis >= 5 (streams, scripts that write after
``TIME``).

Presence: each node refreshes the expiry of its own present clients every
``presence_ttl / 3`` seconds; reading presence first drops the members whose expiry passed,
so the clients of a node that died disappear after ``presence_ttl``. ``close()`` removes
this node's entries at once.

Faults: ``start()`` raises BrokerError when Redis cannot be reached; every later operation
turns a Redis failure (connection lost, timeout, refused script) into BrokerError, never a
silent drop. Commands have a ``timeout`` (connect and read). When the pub/sub connection is
lost (or does not answer a PING within ``ping_interval``) the reader (PubSubReader, in
redis_pubsub.py) logs a warning, reconnects with exponential backoff and jitter, subscribes
again to every channel and then catches up: for each channel it reads the stream after the last
offset it delivered and delivers what was missed, in order and without repeats (a new epoch's
publications when the epoch changed, which makes the Hub end those subscriptions). Publications
that the stream did not keep (history_size 0, or trimmed) cannot be caught up; they are logged,
counted in ``stats.lost``, and the node is told (``BrokerEvents.on_gap``): the Hub ends those
subscriptions with code 112, so their clients resubscribe and learn ``recovered: false``.

Redis Cluster: RedisClusterBroker (rtserve/broker/redis_cluster.py) is this class on a
cluster client: the hash tags put every key of a channel in one slot, so the scripts run
unchanged on the slot's shard; fan-out is sharded pub/sub (``SPUBLISH`` inside the script,
one ``SSUBSCRIBE`` connection per shard master, each a PubSubReader), and the seed is
read once per node and passed to the scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from rtserve.broker import redis_scripts as scripts
from rtserve.broker.base import (
    NO_OPTIONS,
    Broker,
    BrokerError,
    BrokerEvents,
    ClientInfo,
    HistoryResult,
    PresenceStats,
    PublishOptions,
    StreamPosition,
    stream_lifetime,
)
from rtserve.broker.redis_codec import dumps, payload, publication_of
from rtserve.broker.redis_pubsub import PubSubReader, RedisBrokerStats

__all__ = ["RedisBroker", "RedisBrokerStats"]

# The largest `since` and `limit` sent to the scripts: Lua numbers are doubles, and Redis
# refuses larger stream ids and counts. Above them: "after everything" and "no limit".
MAX_OFFSET = 2**53 - 1
MAX_LIMIT = 2**31 - 1

log = logging.getLogger("rtserve.broker")


def _safe_url(url: str) -> str:
    """`url` without password and query (for messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid Redis URL>"


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, at least 1 when positive (0 stays 0)."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


class RedisBroker(Broker):
    """The Broker on Redis: offsets, history, idempotency, presence and fan-out shared by
    every node connected to the same Redis.

    url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` for TLS.
    prefix: first part of every key (no braces). meta_ttl: seconds a channel's stream is kept
    after its last publication (its history TTL when longer); every node of a prefix must
    have the same, as new epochs are made from it. presence_ttl: seconds a present client
    of a node that stopped refreshing it stays listed. node_id: this node's name (the Redis
    client name shows it).
    timeout: seconds to connect, and to wait for an answer of Redis, before BrokerError.
    ping_interval: seconds of silence on the pub/sub connection before a PING checks it.
    reconnect_delay: (first, largest) pause in seconds between reconnection attempts.
    pool_size: connections for commands; more commands at once wait (up to `timeout`) for one.
    """

    __slots__ = (
        "_client",
        "_closed",
        "_events",
        "_heartbeat",
        "_history",
        "_meta_ttl",
        "_node_id",
        "_ping_interval",
        "_pool_size",
        "_prefix",
        "_presence",
        "_presence_add",
        "_presence_remove",
        "_presence_stats",
        "_presence_ttl",
        "_present",
        "_publish",
        "_reader",
        "_reconnect_delay",
        "_renew",
        "_timeout",
        "_url",
        "stats",
    )

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "rtserve",
        meta_ttl: float = 86400.0,
        presence_ttl: float = 60.0,
        node_id: str | None = None,
        timeout: float = 5.0,
        ping_interval: float = 10.0,
        reconnect_delay: tuple[float, float] = (0.1, 5.0),
        pool_size: int = 64,
    ) -> None:
        if meta_ttl <= 0:
            raise ValueError("meta_ttl must be > 0")
        if presence_ttl <= 0:
            raise ValueError("presence_ttl must be > 0")
        if timeout <= 0 or ping_interval <= 0:
            raise ValueError("timeout and ping_interval must be > 0")
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("prefix must be non-empty and without braces")
        if not 0 < reconnect_delay[0] <= reconnect_delay[1]:
            raise ValueError("reconnect_delay must be (first, largest) with 0 < first <= largest")
        if pool_size < 1:
            raise ValueError("pool_size must be 1 or more")
        self._pool_size = pool_size
        self._url = url
        self._prefix = prefix
        self._meta_ttl = meta_ttl
        self._presence_ttl = presence_ttl
        node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._node_id = "-".join(node_id.split())  # Redis client names have no spaces
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._reconnect_delay = reconnect_delay
        self.stats = RedisBrokerStats()
        self._events: BrokerEvents | None = None
        self._closed = False
        self._client: aioredis.Redis | None = None
        self._reader: PubSubReader | None = None  # the pub/sub connection (not under Cluster)
        self._heartbeat: asyncio.Task[None] | None = None
        self._present: dict[tuple[str, str], str] = {}  # this node's presence: info JSON
        self._publish: Any = None
        self._history: Any = None
        self._presence_add: Any = None
        self._presence_remove: Any = None
        self._presence: Any = None
        self._presence_stats: Any = None
        self._renew: Any = None

    @property
    def node_id(self) -> str:
        return self._node_id

    # --- names ----------------------------------------------------------------------------

    def _key(self, channel: str, name: str) -> str:
        return f"{self._prefix}:{{{channel}}}:{name}"

    @property
    def _seed_key(self) -> str:
        return f"{self._prefix}:epoch-seed"

    def _pubsub_name(self, channel: str) -> bytes:
        return self._key(channel, "pub").encode()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        """Connect to Redis (BrokerError when it cannot be reached) and deliver to `events`
        from now on (a second call replaces `events`)."""
        if self._closed:
            raise BrokerError("broker is closed")
        if self._client is not None:
            self._events = events
            if self._reader is not None:
                self._reader.deliver_to(events)
            return
        where = _safe_url(self._url)
        options: dict[str, Any] = {
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),  # a publish is never repeated behind our back
            "client_name": f"rtserve:{self._node_id}",
        }
        try:
            # A pool that waits for a free connection: a burst of subscribes (thousands of
            # clients reconnecting at once) queues for `timeout` instead of failing at once.
            pool = BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._pool_size,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                **options,
            )
            client = aioredis.Redis.from_pool(pool)  # closes the pool when it closes
            sub_pool = ConnectionPool.from_url(
                self._url, socket_timeout=None, **{**options, "client_name": self._sub_name}
            )
        except (ValueError, RedisError) as exc:
            raise BrokerError(f"bad Redis URL {where}: {exc}") from None
        try:
            await asyncio.wait_for(client.ping(), self._timeout)
            conn = sub_pool.make_connection()  # type: ignore[no-untyped-call]
            await asyncio.wait_for(conn.connect(), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            await client.aclose()
            await sub_pool.disconnect()
            raise BrokerError(
                f"cannot reach Redis at {where}: {str(exc) or type(exc).__name__}"
            ) from None
        self._client = client
        self._register_scripts(client)
        self._events = events
        self._reader = PubSubReader(
            sub_pool,
            self,
            self.stats,
            where=where,
            timeout=self._timeout,
            ping_interval=self._ping_interval,
            reconnect_delay=self._reconnect_delay,
        )
        self._reader.start(events, conn)
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._run_heartbeat(), name="rtserve-redis-heartbeat"
        )

    def _register_scripts(self, client: Any) -> None:
        """The scripts (redis_scripts), called through `client` (a Redis or RedisCluster)."""
        self._publish = client.register_script(scripts.PUBLISH)
        self._history = client.register_script(scripts.HISTORY)
        self._presence_add = client.register_script(scripts.PRESENCE_ADD)
        self._presence_remove = client.register_script(scripts.PRESENCE_REMOVE)
        self._presence = client.register_script(scripts.PRESENCE)
        self._presence_stats = client.register_script(scripts.PRESENCE_STATS)
        self._renew = client.register_script(scripts.RENEW)

    @property
    def _sub_name(self) -> str:
        return f"rtserve:{self._node_id}:sub"

    async def close(self) -> None:
        """Stop delivering, remove this node's presence entries, release the connections."""
        if self._closed:
            return
        self._closed = True
        self._events = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
            self._heartbeat = None
        await self._close_readers()
        client, self._client = self._client, None
        if client is not None:
            if self._present:
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        for channel, member in self._present:
                            pipe.hdel(self._key(channel, "pres"), member)
                            pipe.zrem(self._key(channel, "pres:exp"), member)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    log.warning("could not remove this node's presence from Redis: %s", exc)
            await client.aclose()
        self._present.clear()

    async def _close_readers(self) -> None:
        """Stop the pub/sub reading (RedisClusterBroker has one reader per shard)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    def _redis(self) -> aioredis.Redis:
        if self._client is None or self._events is None:
            raise BrokerError("broker is closed" if self._closed else "broker is not started")
        return self._client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """A Redis failure becomes BrokerError naming what failed."""
        try:
            yield
        except (TimeoutError, RedisError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BrokerError(f"Redis {what} failed: {reason}") from None

    # --- publishing -----------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        info: ClientInfo | None = None,
        options: PublishOptions = NO_OPTIONS,
        tags: Mapping[str, str] | None = None,
    ) -> StreamPosition:
        """Give the next offset, keep it in the stream and PUBLISH it, in one script.

        Delivery to subscribed nodes (this one included) follows through pub/sub. A repeat of
        `options.idempotency_key` within `idempotency_ttl` returns the first position.
        """
        self._redis()
        keys, args = self._publish_call(channel, payload(data, info, tags), options)
        with self._errors("publish"):
            offset, epoch, _ = await self._run_publish(channel, keys, args)
        return StreamPosition(int(offset), epoch.decode())

    async def _run_publish(self, channel: str, keys: list[str], args: list[Any]) -> Any:
        """The publish script's reply (Redis errors raised as they are)."""
        return await self._publish(keys=keys, args=args)

    def _publish_call(
        self, channel: str, payload: str, options: PublishOptions
    ) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of the publish script (redis_scripts.PUBLISH)."""
        key = options.idempotency_key
        idem_ttl = _ms(options.idempotency_ttl) if key is not None else 0
        meta = self._key(channel, "meta")
        idem = self._key(channel, f"idem:{key}") if idem_ttl else meta
        keys = [meta, self._key(channel, "stream"), idem, self._seed_key]
        args = [
            payload,
            secrets.token_hex(8),
            max(0, options.history_size),
            _ms(options.history_ttl),
            _ms(stream_lifetime(self._meta_ttl, options)),
            idem_ttl,
            self._pubsub_name(channel),
            channel,
            _ms(self._meta_ttl),
        ]
        return keys, args

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Tell every node subscribed to `channel` that `info` joined it (not kept)."""
        self._redis()
        with self._errors("publish of a join"):
            await self._announce(channel, dumps({"j": info.to_json()}))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Tell every node subscribed to `channel` that `info` left it (not kept)."""
        self._redis()
        with self._errors("publish of a leave"):
            await self._announce(channel, dumps({"l": info.to_json()}))

    async def _announce(self, channel: str, message: str) -> None:
        """Send `message` to the nodes subscribed to `channel`, keeping nothing."""
        await self._redis().publish(self._pubsub_name(channel), message)

    # --- history --------------------------------------------------------------------------

    def _history_call(
        self, channel: str, since: int | None, limit: int | None, apply_ttl: bool
    ) -> tuple[list[str], list[Any]]:
        """The KEYS and ARGV of the history script (redis_scripts.HISTORY)."""
        keys = [self._key(channel, "meta"), self._key(channel, "stream"), self._seed_key]
        args = [
            -1 if since is None or since < 0 else min(since, MAX_OFFSET),
            -1 if limit is None or limit > MAX_LIMIT else max(0, limit),
            secrets.token_hex(8),
            _ms(self._meta_ttl),
            1 if apply_ttl else 0,
            channel,
        ]
        return keys, args

    @staticmethod
    def _history_result(reply: list[Any]) -> HistoryResult:
        position = StreamPosition(int(reply[1]), reply[0].decode())
        publications = [
            publication_of(int(reply[i]), reply[i + 1]) for i in range(2, len(reply) - 1, 2)
        ]
        return HistoryResult(publications, position)

    async def _read(
        self, channel: str, since: int | None, limit: int | None, *, apply_ttl: bool
    ) -> HistoryResult:
        keys, args = self._history_call(channel, since, limit, apply_ttl)
        with self._errors("history"):
            reply = await self._history(keys=keys, args=args)
        return self._history_result(reply)

    async def read_streams(self, reads: list[tuple[str, int | None]]) -> list[HistoryResult]:
        """All kept publications after `since` of each (channel, since), in one round trip
        (for catching up; the history TTL is not applied)."""
        client = self._redis()
        with self._errors("history"):
            async with client.pipeline(transaction=False) as pipe:
                for channel, since in reads:
                    keys, args = self._history_call(channel, since, None, False)
                    await self._history(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
        return [self._history_result(reply) for reply in replies]

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Kept publications with offset > `since`, oldest first, at most `limit`.

        A channel without a stream is at offset 0 of the epoch its first publication will
        start (nothing is written for it).
        """
        self._redis()
        return await self._read(channel, since, limit, apply_ttl=True)

    # --- subscriptions: the pub/sub reader, and the stream reads it asks for -------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe this node to `channel`; returns once Redis confirmed the SUBSCRIBE."""
        self._redis()
        assert self._reader is not None
        await self._reader.subscribe(channel, self._pubsub_name(channel))

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe this node from `channel` (no error when not subscribed); nothing of it
        is delivered from now on."""
        self._redis()
        assert self._reader is not None
        await self._reader.unsubscribe(channel, self._pubsub_name(channel))

    async def stream_position(self, channel: str) -> tuple[int, str | None]:
        """The channel's (offset, epoch) as Redis has it now, without creating it."""
        client = self._redis()
        with self._errors("subscribe"):
            epoch, offset = await client.hmget(self._key(channel, "meta"), ["epoch", "offset"])
        if epoch is None:
            return 0, None
        return int(offset or 0), epoch.decode() if isinstance(epoch, bytes) else str(epoch)

    async def renew_epoch(self, channel: str, epoch: str) -> tuple[int, str]:
        """Start a new epoch of `channel` unless it left `epoch` already; its (offset, epoch)."""
        keys = [self._key(channel, "meta"), self._key(channel, "stream")]
        args = [epoch, secrets.token_hex(4), _ms(self._meta_ttl)]
        offset, new = await self._renew(keys=keys, args=args)
        return int(offset), new.decode() if isinstance(new, bytes) else str(new)

    # --- presence -------------------------------------------------------------------------

    def _presence_keys(self, channel: str) -> list[str]:
        return [self._key(channel, "pres"), self._key(channel, "pres:exp")]

    async def presence_add(self, channel: str, info: ClientInfo) -> None:
        """Record `info.client` as present in `channel`; this node keeps it fresh."""
        self._redis()
        value = dumps(info.to_json())
        args = [info.client, value, _ms(self._presence_ttl)]
        with self._errors("presence add"):
            await self._presence_add(keys=self._presence_keys(channel), args=args)
        self._present[(channel, info.client)] = value

    async def presence_remove(self, channel: str, client: str) -> None:
        """Forget `client` in `channel` (no error when absent)."""
        self._redis()
        self._present.pop((channel, client), None)
        with self._errors("presence remove"):
            await self._presence_remove(keys=self._presence_keys(channel), args=[client])

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is present in `channel` (members whose node stopped refreshing are dropped)."""
        self._redis()
        with self._errors("presence"):
            reply = await self._presence(keys=self._presence_keys(channel))
        members: dict[str, ClientInfo] = {}
        for i in range(0, len(reply) - 1, 2):
            try:
                info = ClientInfo.from_json(json.loads(reply[i + 1]))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("ignoring a malformed presence entry in %r", channel)
                continue
            members[reply[i].decode()] = info
        return members

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Clients present in `channel` and distinct users among them, counted in Redis."""
        self._redis()
        with self._errors("presence stats"):
            clients, users = await self._presence_stats(keys=self._presence_keys(channel))
        return PresenceStats(clients=int(clients), users=int(users))

    async def _run_heartbeat(self) -> None:
        """Every presence_ttl / 3: refresh the expiry of this node's present clients."""
        ttl = _ms(self._presence_ttl)
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            client = self._client
            if client is None or not self._present:
                continue
            entries = list(self._present.items())
            try:
                for i in range(0, len(entries), 500):
                    async with client.pipeline(transaction=False) as pipe:
                        for (channel, member), value in entries[i : i + 500]:
                            await self._presence_add(
                                keys=self._presence_keys(channel),
                                args=[member, value, ttl],
                                client=pipe,
                            )
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("refreshing presence in Redis failed: %s", exc)
                continue
            # A client removed while the refresh ran was just written back: remove it again.
            gone = [entry for entry, _ in entries if entry not in self._present]
            with contextlib.suppress(RedisError, OSError):
                for channel, member in gone:
                    await self._presence_remove(keys=self._presence_keys(channel), args=[member])


def from_url(url: str) -> RedisBroker:
    """The broker a Redis URL names (see rtserve.broker.url): `?prefix=NAME` is the key
    prefix (default `rtserve`); the rest of the URL goes to redis-py."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), None) or "rtserve"
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return RedisBroker(urlunsplit(parts._replace(query=rest)), prefix=prefix)
