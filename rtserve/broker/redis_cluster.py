"""RedisClusterBroker: RedisBroker's channels on a Redis Cluster (Redis >= 7), for more
publications, history and presence than one Redis carries.

Everything RedisBroker does (rtserve/broker/redis.py, whose docstring has the key layout) is
reused; what changes:

- Commands and the Lua scripts go through redis-py's cluster client, routed by the channel's
  hash tag ``{C}``: every key of a channel (meta, stream, idempotency keys, presence) lives on
  the channel's shard, and the scripts run there unchanged.
- The epoch seed ``P:epoch-seed`` lives in another slot, which a script may not touch: each
  node reads it once at start (``SET NX GET``, so the first node makes it and every node
  agrees) and passes it to the scripts.
- Fan-out is sharded pub/sub: the publish script ``SPUBLISH``es on ``P:{C}:pub`` (same slot),
  and each shard master this node listens to has one pub/sub connection (a PubSubReader of
  redis_pubsub.py, RedisBroker's reader, with ``SSUBSCRIBE``) holding only the channels with
  subscribers here. redis-py's asyncio cluster pub/sub is not used: its reader has no
  catch-up from the streams after a loss, which PubSubReader has.
- Topology changes: when a shard connection is lost (its master failed over) or Redis
  unsubscribes it from a channel (the slot migrated), the broker refreshes the slot map and
  hands the channels whose slot now has another master to that master's reader, and each
  reader subscribes again and catches up from the streams as RedisBroker does after an outage
  (exactly the missed offsets, once; a gap, ``on_gap``, when the stream did not keep them).

- Durability: replication is asynchronous, so a master may fail over to a replica that
  lacks its last publications, and the new master gives their offsets again. A publication
  is acknowledged only once ``wait_replicas`` replicas hold it (``WAIT`` on the connection
  that ran the script; fewer within half the timeout is a BrokerError, as the publication
  may be lost: a shard without a live replica refuses publishes, ``wait=0`` is for those).
  What no WAIT can rule out (a publication this node delivered whose publish failed, then
  lost) is caught when a shard reader catches up after the failover: a stream that no longer
  holds the publication the reader delivered last starts a new epoch and is signalled as a
  gap (PubSubReader._catch_up).

URL: ``redis+cluster://[[user]:password@]host:port[,host:port...][?prefix=NAME][&wait=N]``
(any nodes of the cluster; ``rediss+cluster://`` for TLS; ``wait``: ``wait_replicas``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from rtserve.broker import redis_scripts as scripts
from rtserve.broker.base import BrokerError, BrokerEvents, HistoryResult, PublishOptions
from rtserve.broker.redis import RedisBroker, _ms
from rtserve.broker.redis_pubsub import SHARDED, PubSubReader

__all__ = ["RedisClusterBroker", "from_url"]

log = logging.getLogger("rtserve.broker")

Address = tuple[str, int]


# Errors of a publish script that did not run (the slot moved or is moving, the node lacks
# the script, the cluster is reconfiguring): the publish is tried again, at most
# PUBLISH_ATTEMPTS times, after refreshing what was stale.
NOT_RUN = (AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError)
PUBLISH_ATTEMPTS = 3


class _WaitingCluster(RedisCluster):
    """RedisCluster whose commands wait, up to `wait` seconds, for one of `limit` places
    instead of failing at once when a node's connections are all in use (a burst of
    subscribes queues as on RedisBroker's BlockingConnectionPool)."""

    def __init__(self, *, limit: int, wait: float, **kwargs: Any) -> None:
        super().__init__(max_connections=limit, **kwargs)
        self._places = asyncio.Semaphore(limit)
        self._wait = wait

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """Hold one of the places (TimeoutError after `wait` seconds)."""
        async with asyncio.timeout(self._wait):
            await self._places.acquire()
        try:
            yield
        finally:
            self._places.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.place():
            return await super().execute_command(*args, **kwargs)


class RedisClusterBroker(RedisBroker):
    """The Broker on a Redis Cluster (see the module docstring).

    nodes: (host, port) of some nodes of the cluster (the others are discovered).
    tls, username, password: how to connect to every node.
    wait_replicas: replicas of the channel's shard that must hold a publication before it
    is acknowledged (0: at once, as Redis replicates asynchronously). The other options
    are RedisBroker's.
    """

    __slots__ = ("_nodes", "_password", "_readers", "_seed", "_tls", "_username", "_wait_replicas")

    def __init__(
        self,
        nodes: list[Address],
        *,
        tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        wait_replicas: int = 1,
        **options: Any,
    ) -> None:
        if not nodes:
            raise ValueError("a Redis Cluster broker needs at least one node")
        if wait_replicas < 0:
            raise ValueError("wait_replicas must be 0 or more")
        hosts = ",".join(f"{host}:{port}" for host, port in nodes)
        super().__init__(f"{'rediss' if tls else 'redis'}+cluster://{hosts}", **options)
        self._nodes = list(nodes)
        self._tls = tls
        self._username = username
        self._password = password
        self._seed = ""
        self._wait_replicas = wait_replicas
        self._readers: dict[Address, PubSubReader] = {}  # by shard master

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        """Connect to the cluster (BrokerError when no node answers), read the epoch seed
        and load the scripts; deliver to `events` from now on."""
        if self._closed:
            raise BrokerError("broker is closed")
        if self._client is not None:
            self._events = events
            for reader in self._readers.values():
                reader.deliver_to(events)
            return
        client = _WaitingCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._nodes],
            username=self._username,
            password=self._password,
            ssl=self._tls,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),  # a publish is never repeated behind our back
            client_name=f"rtserve:{self._node_id}",
            limit=self._pool_size,
            wait=self._timeout,
        )
        try:
            await asyncio.wait_for(client.initialize(), self._timeout)
            new = secrets.token_hex(8)
            seed = await client.set(self._seed_key, new, nx=True, get=True)
            self._seed = seed.decode() if isinstance(seed, bytes) else new
            await self._load_scripts(client)
        except (TimeoutError, RedisError, OSError) as exc:
            await client.aclose()
            raise BrokerError(
                f"cannot reach the Redis Cluster at {self._url}: {str(exc) or type(exc).__name__}"
            ) from None
        self._client = client  # type: ignore[assignment]
        self._register_scripts(client)
        self._events = events
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.create_task(self._run_heartbeat(), name="rtserve-redis-heartbeat")

    @staticmethod
    async def _load_scripts(client: RedisCluster) -> None:
        """Every script on every master (a pipeline does not load a missing one itself)."""
        for text in (
            scripts.PUBLISH,
            scripts.HISTORY,
            scripts.PRESENCE_ADD,
            scripts.PRESENCE_REMOVE,
            scripts.PRESENCE,
            scripts.PRESENCE_STATS,
            scripts.RENEW,
        ):
            await client.script_load(text)

    async def _close_readers(self) -> None:
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.close()

    # --- the scripts' arguments: the seed read at start, sharded fan-out -------------------

    def _publish_call(
        self, channel: str, payload: str, options: PublishOptions
    ) -> tuple[list[str], list[Any]]:
        keys, args = super()._publish_call(channel, payload, options)
        return keys[:3], [*args, self._seed, "SPUBLISH"]

    async def _run_publish(self, channel: str, keys: list[str], args: list[Any]) -> Any:
        """The script, then ``WAIT`` on the same connection of the channel's master (WAIT
        counts the replicas that acknowledged that connection's last write)."""
        if not self._wait_replicas:
            return await super()._run_publish(channel, keys, args)
        client: Any = self._redis()
        wait_ms = _ms(self._timeout / 2)  # answered before the command read times out
        wanted = self._wait_replicas
        reply: Any = None
        for _ in range(PUBLISH_ATTEMPTS):
            node = client.get_node_from_key(keys[0])
            commands = [("EVALSHA", self._publish.sha, len(keys), *keys, *args)]
            reply, acked = await self._on_node(node, [*commands, ("WAIT", wanted, wait_ms)])
            if isinstance(reply, NoScriptError):
                await self._load_scripts(client)
                continue
            if isinstance(reply, NOT_RUN):
                await asyncio.wait_for(client.nodes_manager.initialize(), self._timeout)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acked, Exception):
                raise acked
            if int(acked) < wanted:
                raise BrokerError(
                    f"Redis publish to {channel!r}: {acked} of {wanted} replica(s) "
                    f"acknowledged it within {wait_ms} ms, so a failover may lose it (it may "
                    "be delivered all the same; a shard without a replica needs ?wait=0)"
                )
            return reply
        raise BrokerError(f"Redis publish to {channel!r}: its slot kept moving ({reply})")

    async def _on_node(self, node: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """`commands` sent at once on one connection of `node`: their replies, an error reply
        as its exception. A lost connection refreshes the slot map (its master may have failed
        over) and is raised."""
        client: Any = self._client
        async with client.place():
            return await self._on_connection(node, commands)

    async def _on_connection(self, node: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        connection = node.acquire_connection()
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException as exc:
            await connection.disconnect()  # replies may be left unread on it
            client: Any = self._client
            if isinstance(exc, (TimeoutError, RedisError, OSError)) and client is not None:
                with contextlib.suppress(TimeoutError, RedisError, OSError):
                    await asyncio.wait_for(client.nodes_manager.initialize(), self._timeout)
            raise
        finally:
            node.release(connection)

    def _history_call(
        self, channel: str, since: int | None, limit: int | None, apply_ttl: bool
    ) -> tuple[list[str], list[Any]]:
        keys, args = super()._history_call(channel, since, limit, apply_ttl)
        return keys[:2], [*args, self._seed]

    async def read_streams(self, reads: list[tuple[str, int | None]]) -> list[HistoryResult]:
        """RedisBroker.read_streams, one script call per channel (on its shard) at once."""
        return list(
            await asyncio.gather(
                *(self._read(channel, since, None, apply_ttl=False) for channel, since in reads)
            )
        )

    async def _announce(self, channel: str, message: str) -> None:
        name = self._pubsub_name(channel)
        client: Any = self._redis()
        node = client.get_node_from_key(name)
        await client.execute_command("SPUBLISH", name, message, target_nodes=node)

    # --- subscriptions: one reader per shard master ---------------------------------------

    def _master_of(self, channel: str) -> Address:
        client: Any = self._redis()
        node = client.get_node_from_key(self._pubsub_name(channel))
        return (node.host, node.port)

    def _reader_at(self, address: Address) -> PubSubReader:
        """The pub/sub reader of the shard master at `address` (started on first use)."""
        reader = self._readers.get(address)
        if reader is None:
            host, port = address
            auth = ""
            if self._password is not None:
                user = quote(self._username or "", safe="")
                auth = f"{user}:{quote(self._password, safe='')}@"
            url = f"{'rediss' if self._tls else 'redis'}://{auth}{host}:{port}/0"
            pool = ConnectionPool.from_url(
                url,
                socket_timeout=None,
                socket_connect_timeout=self._timeout,
                client_name=self._sub_name,
            )
            reader = self._readers[address] = PubSubReader(
                pool,
                self,
                self.stats,
                where=f"{host}:{port}",
                timeout=self._timeout,
                ping_interval=self._ping_interval,
                reconnect_delay=self._reconnect_delay,
                commands=SHARDED,
                still_wanted=self._still_wanted,
            )
            reader.start(self._events)
        return reader

    def _holder(self, name: bytes) -> PubSubReader | None:
        return next((reader for reader in self._readers.values() if reader.holds(name)), None)

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the channel's shard; returns once its master confirmed."""
        self._redis()
        name = self._pubsub_name(channel)
        reader = self._holder(name)
        if reader is None:
            with self._errors("subscribe"):
                reader = self._reader_at(self._master_of(channel))
        await reader.subscribe(channel, name)

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe from the channel (no error when not subscribed)."""
        self._redis()
        name = self._pubsub_name(channel)
        reader = self._holder(name)
        if reader is not None:
            await reader.unsubscribe(channel, name)

    async def _still_wanted(self, reader: PubSubReader) -> bool:
        """Before a shard reader reconnects (its master failed over, or a slot moved): hand
        its channels that moved on; False (the reader ends) when none is left on it."""
        await self._rehome(reader)
        if reader.idle():
            address = next((a for a, r in self._readers.items() if r is reader), None)
            if address is not None:
                del self._readers[address]
            return False
        return True

    async def _rehome(self, reader: PubSubReader) -> None:
        """Refresh the slot map; hand `reader`'s channels whose slot has another master now
        to that master's reader, which subscribes again and catches up."""
        client: Any = self._client
        if client is None:
            return
        try:
            await asyncio.wait_for(client.nodes_manager.initialize(), self._timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("refreshing the Redis Cluster slot map failed: %s", exc)
            return
        try:
            await self._load_scripts(client)  # a promoted replica has none
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("loading the scripts on the Redis Cluster masters failed: %s", exc)
        targets: dict[int, PubSubReader] = {}
        for name, channel in reader.channels():
            target = self._reader_at(self._master_of(channel))
            if target is not reader:
                reader.hand_over(name, target)
                targets[id(target)] = target
        for target in targets.values():  # a reconnection of these channels, on another master
            self.stats.reconnects += 1
            await target.restart()


def from_url(url: str) -> RedisClusterBroker:
    """The broker a ``redis+cluster://`` URL names (see the module docstring)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes: list[Address] = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Redis Cluster node is host:port, not {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    wait = query.get("wait") or "1"
    if not wait.isdigit():
        raise ValueError(f"wait is a number of replicas (0 or more), not {wait!r}")
    return RedisClusterBroker(
        nodes,
        tls=parts.scheme.startswith("rediss"),
        username=unquote(username) or None,
        password=unquote(password) if userinfo else None,
        prefix=query.get("prefix") or "rtserve",
        wait_replicas=int(wait),
    )
