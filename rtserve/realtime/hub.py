"""The Hub: one per App, between the local subscribers of channels and the Broker.

Subscribers are client sessions of any transport. The Hub keeps, per channel with local
subscribers, the set of them, subscribes this node to the channel at the broker while that
set is not empty, and hands each publication the broker delivers to every local subscriber
encoded once (`Outbound`). Recovery, presence and join/leave are done here on top of the
broker's history and presence, so every backend behaves the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from rtserve.broker.base import (
    Broker,
    BrokerError,
    ClientInfo,
    Publication,
    StreamPosition,
)
from rtserve.histogram import Histogram
from rtserve.realtime.context import ChannelContext, ConnectContext, RpcContext
from rtserve.realtime.deadlines import DeadlineWheel, Heartbeat
from rtserve.realtime.delta import DeltaStream
from rtserve.realtime.filters import (
    FilterGroups,
    TagFilter,
    check_filter_allowed,
    check_tags,
    keeps,
)
from rtserve.realtime.outbound import Outbound, PresenceOutbound
from rtserve.realtime.protocol import (
    ChannelError,
    ErrorCode,
    encode_join,
    encode_leave,
    encode_presence_digest,
    encode_publication,
    presence_by_user,
    publication_json,
)
from rtserve.realtime.rules import ChannelRule, ChannelRules
from rtserve.realtime.settings import ChannelSettings
from rtserve.realtime.sse_shared import share_event
from rtserve.server.shared_write import turn_now
from rtserve.server.wire_set import WireSet

log = logging.getLogger("rtserve.channels")

# Seconds `Hub.close` waits for the leaves (and broker unsubscribes) of the clients that just
# went, before it cancels what is left and closes the broker.
CLOSE_TIMEOUT = 2.0
# The broker channel that carries commands to every node (disconnect a user). The space keeps
# it out of reach of clients: no channel name they may give contains one.
CONTROL_CHANNEL = "rtserve control"


class Subscriber(Protocol):
    """A client session as the Hub sees it, whatever its transport."""

    client: ClientInfo

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
        """A publication of a subscribed channel (apply the rule's slow-consumer policy)."""

    def deliver_event(self, channel: str, message: Outbound) -> None:
        """A join, leave or presence push."""

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        """The server ends a subscription (tell the client, leave the channel)."""


class UserConnection(Protocol):
    """A live connection of a known user (a /rt/ws session, an SSE stream)."""

    def disconnect(self, reason: str) -> None:
        """End it for good (close code 4005): the client is not to reconnect by itself."""


@dataclass(slots=True)
class HubStats:
    """Counters of the channel layer (read by the stats endpoint)."""

    publications: int = 0  # accepted by the broker from this node
    client_publications: int = 0
    deliveries: int = 0  # publication pushes handed to local subscribers
    deltas: int = 0  # of those, fossil deltas (subscribers of `delta` rules, in step)
    subscriptions: int = 0  # subscribe commands that succeeded
    dropped: int = 0  # slow consumer, policy drop_oldest
    conflated: int = 0  # slow consumer, policy conflate
    slow_disconnected: int = 0  # slow consumer, policy disconnect
    rate_limited: int = 0
    refused: int = 0  # commands answered with an error


class _Local:
    """The local side of one channel."""

    __slots__ = (
        "delta",
        "epoch",
        "floors",
        "groups",
        "joins",
        "leaves",
        "params",
        "publications",
        "rule",
        "shared_turn",
        "streams",
        "subscribers",
        "wires",
    )

    def __init__(self, rule: ChannelRule, params: dict[str, str]) -> None:
        self.epoch: str | None = None  # of the stream the subscribers were given
        self.rule = rule
        self.params = params
        self.subscribers: dict[Subscriber, None] = {}
        # Those with a `wire` (a /rt/ws session's connection), for the direct-write fast path
        # (the transports of those on it prepared).
        self.wires: WireSet[Subscriber] = WireSet()
        # The SSE streams, for the same fast path with a shared chunk (`sse_shared`).
        self.streams: dict[Any, None] = {}
        self.shared_turn: int | None = None  # the loop turn of the last `_fan_out`
        self.groups: FilterGroups[Subscriber] = FilterGroups()  # the same, by tag filter
        self.joins: list[ClientInfo] = []
        self.leaves: list[ClientInfo] = []
        self.publications = 0  # delivered here since the channel got its first local subscriber
        # Subscribers whose subscribe result ran ahead of the publications still on their way
        # from the broker (a networked broker delivers after publish returns): the offset up
        # to which they have everything already.
        self.floors: dict[Subscriber, int] = {}
        self.delta = DeltaStream() if rule.delta else None  # its subscribers asking for deltas


@contextlib.contextmanager
def _broker_errors() -> Iterator[None]:
    """A BrokerError becomes ChannelError 115 (the client is told, nothing is dropped); what
    failed, which may name the broker's address or scripts, goes to the log only."""
    try:
        yield
    except BrokerError as exc:
        log.warning("broker failed: %s", exc)
        raise ChannelError(ErrorCode.BROKER_UNAVAILABLE) from None


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async hook."""
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Hub:
    """Channels of one App: subscribe, publish, history, presence, over one Broker."""

    def __init__(self, rules: ChannelRules, broker: Broker, settings: ChannelSettings) -> None:
        self.rules = rules
        self.broker = broker
        self.settings = settings
        self.stats = HubStats()
        # Seconds each broker publish from this node took, failures included.
        self.publish_latency = Histogram()
        self.on_connect: Callable[[ConnectContext], Any] | None = None
        self.rpc_handlers: dict[str, Callable[[RpcContext], Any]] = {}  # by method
        self.loop: asyncio.AbstractEventLoop | None = None
        self.users: dict[str, set[UserConnection]] = {}  # open connections per user
        # Publish rate buckets of HTTP clients (per token user or address), bounded LRU.
        self.http_buckets: OrderedDict[Any, Any] = OrderedDict()
        self._local: dict[str, _Local] = {}
        self._node: set[str] = set()  # channels this node is subscribed to at the broker
        self._node_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._digest: set[str] = set()  # channels with batched joins/leaves to send
        self._digest_task: asyncio.Task[None] | None = None
        self.poll_deadlines = DeadlineWheel()  # the timeouts of the long polls waiting
        self.sse_heartbeat = Heartbeat()  # the pings of the SSE streams
        self._after_delivery: list[Callable[[], object]] = []

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.broker.start(self)
        await self.broker.subscribe(CONTROL_CHANNEL)
        self._digest_task = self.loop.create_task(self._run_digests())

    async def close(self) -> None:
        if self._digest_task is not None:
            self._digest_task.cancel()
            self._digest_task = None
        if self._tasks:  # the other nodes learn the leaves of this node's last clients
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        await self.broker.close()
        self._node.clear()
        self.loop = None

    @property
    def running(self) -> bool:
        return self.loop is not None

    def rule(self, channel: str) -> tuple[ChannelRule, dict[str, str]]:
        """The rule of `channel` and its pattern's parameters; ChannelError 102 for none."""
        found = self.rules.match(channel)
        if found is None:
            raise ChannelError(ErrorCode.UNKNOWN_CHANNEL, f"no channel rule matches {channel!r}")
        return found

    def subscriber_count(self, channel: str) -> int:
        local = self._local.get(channel)
        return 0 if local is None else len(local.subscribers)

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers, and how many each has."""
        return {name: len(local.subscribers) for name, local in self._local.items()}

    def channel_figures(self) -> dict[str, tuple[int, int]]:
        """Channels with local subscribers: (subscribers, publications delivered here since
        the channel got its first local subscriber)."""
        return {
            name: (len(local.subscribers), local.publications)
            for name, local in self._local.items()
        }

    # --- publishing ------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        info: ClientInfo | None = None,
        idempotency_key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> StreamPosition:
        """Publish `data` with `tags` to `channel` through the broker; returns its offset and
        epoch.

        Raises ChannelError: 107 for tags that are not a small map of strings, 102 for a
        channel without a rule, 115 when the broker failed.
        """
        if self.loop is None:
            raise ChannelError(ErrorCode.NOT_AVAILABLE, "the hub is not running")
        tags = check_tags(tags)
        rule, _ = self.rule(channel)
        started = time.perf_counter()
        try:
            with _broker_errors():
                position = await self.broker.publish(
                    channel,
                    data,
                    info=info,
                    options=rule.publish_options_for(idempotency_key),
                    tags=tags,
                )
        finally:
            self.publish_latency.observe(time.perf_counter() - started)
        self.stats.publications += 1
        return position

    def check_client_publish(self, rule: ChannelRule, size: int) -> None:
        """Whether clients may publish `size` bytes of data under `rule` (ChannelError if not)."""
        if rule.publish != "clients":
            raise ChannelError(ErrorCode.PERMISSION_DENIED, "clients may not publish here")
        if size > rule.max_message_size:
            raise ChannelError(
                ErrorCode.TOO_LARGE, f"data is {size} bytes; at most {rule.max_message_size}"
            )

    async def client_publish(
        self,
        rule: ChannelRule,
        ctx: ChannelContext,
        data: Any,
        idempotency_key: str | None = None,
        scope: tuple[str, ...] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> StreamPosition:
        """A client's publish that passed `check_client_publish` (and the caller's token and
        rate checks): `on_publish` may refuse or replace the data, then it is published.

        Its idempotency key is the publisher's own, within `scope`: by default the token's
        user, or the connection without one; the server's keys are another scope again.
        """
        tags = check_tags(tags)  # before on_publish sees the publication
        if idempotency_key is not None:
            if scope is None:
                user = ctx.token_user
                scope = ("user", user) if user is not None else ("client", ctx.client.client)
            idempotency_key = json.dumps([*scope, idempotency_key], separators=(",", ":"))
        if rule.on_publish is not None:
            ctx.data = data
            replaced = await call_hook(rule.on_publish, ctx)
            if replaced is not None:
                data = replaced
        position = await self.publish(
            ctx.channel, data, info=ctx.client, idempotency_key=idempotency_key, tags=tags
        )
        self.stats.client_publications += 1
        return position

    # --- what the broker delivers (BrokerEvents) --------------------------------------------

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None:
        local = self._local.get(channel)
        if local is None:
            if channel == CONTROL_CHANNEL:
                self._control(publication.data)
            return
        if epoch != local.epoch and local.epoch is not None:
            self._epoch_changed(channel, local)
            return
        rule = local.rule
        key = None
        if rule.slow_consumer == "conflate" and rule.conflate_key is not None:
            data = publication.data
            key = data.get(rule.conflate_key) if isinstance(data, dict) else None
        message = Outbound(
            encode_publication(channel, publication),
            publication.offset,
            key,
            channel=channel,
            epoch=epoch,
            publication=publication,
        )
        local.publications += 1
        floors = local.floors
        delta = local.delta
        unfiltered = not floors and not local.groups.filtered
        try:
            if (local.wires or local.streams) and unfiltered and (delta is None or not delta.bases):
                self.stats.deliveries += len(local.subscribers)
                self._fan_out(channel, message, rule, local)
            else:
                self._deliver_each(channel, publication, message, rule, local)
        finally:  # a delivery that raised must not keep the others' work waiting
            if self._after_delivery:
                self._run_after_delivery()

    def _deliver_each(
        self,
        channel: str,
        publication: Publication,
        message: Outbound,
        rule: ChannelRule,
        local: _Local,
    ) -> None:
        """`on_publication` subscriber by subscriber: by tag filter, past each new one's
        floor, as a delta to those in step."""
        floors, delta = local.floors, local.delta
        if local.groups.filtered:  # one evaluation (or lookup) per distinct filter
            subscribers = tuple(local.groups.matching(publication.tags))
        else:
            subscribers = tuple(local.subscribers)
        if floors:  # new subscribers whose subscribe result already held this publication
            offset = publication.offset
            subscribers = tuple(sub for sub in subscribers if floors.get(sub, 0) < offset)
            if offset >= max(floors.values()):
                floors.clear()  # what follows is past every floor
        self.stats.deliveries += len(subscribers)
        if delta is not None and delta.bases:
            self._deliver_deltas(channel, publication, message, subscribers, rule, delta)
        else:
            for subscriber in subscribers:
                subscriber.deliver(channel, message, rule)

    def after_delivery(self, callback: Callable[[], object]) -> None:
        """Call `callback` once the publication being delivered (from a subscriber's
        `deliver`) has reached every local subscriber: work that can wait for the last one."""
        self._after_delivery.append(callback)

    def _run_after_delivery(self) -> None:
        callbacks, self._after_delivery = self._after_delivery, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one failing must not keep the others from running
                log.exception("a callback after a delivery failed")

    def _fan_out(self, channel: str, message: Outbound, rule: ChannelRule, local: _Local) -> None:
        """`on_publication` to every subscriber (no filter, delta or floor in the way): the
        shared frame straight to each connection that can take it now, the shared SSE chunk to
        each stream that can, `deliver` for the others (held back, paused, deflate, ...)."""
        turn = turn_now()
        if turn is None or turn == local.shared_turn:
            # Not the turn's first publication here: a connection takes one shared frame per
            # turn, so they all queue this one behind it (one write each, still).
            for subscriber in tuple(local.subscribers):
                subscriber.deliver(channel, message, rule)
            return
        local.shared_turn = turn
        wires = local.wires
        others, _ = wires.write(message.plain)
        streams = local.streams
        if streams:
            others.extend(share_event(streams, message))
        if len(wires) + len(streams) < len(local.subscribers):
            others.extend(
                sub for sub in local.subscribers if sub not in wires and sub not in streams
            )
        for subscriber in others:
            subscriber.deliver(channel, message, rule)

    def _deliver_deltas(
        self,
        channel: str,
        publication: Publication,
        message: Outbound,
        subscribers: tuple[Subscriber, ...],
        rule: ChannelRule,
        delta: DeltaStream,
    ) -> None:
        """`on_publication` on a channel with delta subscribers: each gets the delta when it
        is in step, the whole text when not, `message` when it did not ask for deltas."""
        full_payload, patch_payload = delta.advance(channel, publication)
        offset = publication.offset
        epoch, key = message.epoch, message.key
        full = Outbound(
            full_payload, offset, key, channel=channel, epoch=epoch, publication=publication
        )
        patch = full
        if patch_payload is not None:
            patch = Outbound(
                patch_payload, offset, key, channel=channel, epoch=epoch, publication=publication
            )
            patch.whole = full
        bases = delta.bases
        previous = offset - 1
        in_step = 0
        for subscriber in subscribers:
            base = bases.get(subscriber)
            if base is None:
                subscriber.deliver(channel, message, rule)
            elif base == previous:
                bases[subscriber] = offset
                in_step += 1
                subscriber.deliver(channel, patch, rule)
            else:
                bases[subscriber] = offset
                subscriber.deliver(channel, full, rule)
        if patch is not full:
            self.stats.deltas += in_step

    def _epoch_changed(self, channel: str, local: _Local, keep: Subscriber | None = None) -> None:
        """The broker lost the channel's stream: offsets restart, so every subscription (but
        `keep`'s, made on the new stream) ends with code 112 and its client subscribes again,
        learning `recovered: false`."""
        log.warning("channel %s restarted with a new epoch; ending its subscriptions", channel)
        local.floors.clear()  # offsets of the old stream
        for subscriber in tuple(local.subscribers):
            if subscriber is not keep:
                subscriber.end_subscription(channel, ErrorCode.UNRECOVERABLE, "epoch changed")

    async def disconnect_user(self, user: str, reason: str = "") -> None:
        """End every live connection of `user` on every node of the broker (WebSocket close
        4005, SSE `event: error` 4005). ChannelError 115 when the broker fails."""
        command = {"disconnect": user, "reason": reason}
        with _broker_errors():
            await self.broker.publish(CONTROL_CHANNEL, command)

    def _control(self, command: Any) -> None:
        """A command from a node (this one included), through the broker."""
        if not isinstance(command, dict) or not isinstance(command.get("disconnect"), str):
            log.warning("ignoring a malformed control command: %r", command)
            return
        reason = command.get("reason")
        for connection in list(self.users.get(command["disconnect"], ())):
            connection.disconnect(reason if isinstance(reason, str) else "")

    def on_gap(self, channel: str) -> None:
        local = self._local.get(channel)
        if local is None:
            return
        log.warning("channel %s missed publications; ending its subscriptions", channel)
        for subscriber in tuple(local.subscribers):
            subscriber.end_subscription(channel, ErrorCode.UNRECOVERABLE, "publications lost")

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._presence_event(channel, info, joined=True)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._presence_event(channel, info, joined=False)

    def _presence_event(self, channel: str, info: ClientInfo, *, joined: bool) -> None:
        local = self._local.get(channel)
        if local is None or not local.rule.join_leave:
            return
        if len(local.subscribers) > local.rule.presence_digest:
            (local.joins if joined else local.leaves).append(info)
            self._digest.add(channel)
            return
        if joined:
            message = PresenceOutbound(encode_join(channel, info), "join", [info], [])
        else:
            message = PresenceOutbound(encode_leave(channel, info), "leave", [], [info])
        for subscriber in tuple(local.subscribers):
            if subscriber.client.client != info.client:
                subscriber.deliver_event(channel, message)

    async def _run_digests(self) -> None:
        """Every interval: one `presence` push per big channel with the joins and leaves."""
        while True:
            await asyncio.sleep(self.settings.presence_digest_interval)
            channels, self._digest = self._digest, set()
            for channel in channels:
                local = self._local.get(channel)
                if local is None or not (local.joins or local.leaves):
                    continue
                joins, leaves = local.joins, local.leaves
                local.joins, local.leaves = [], []
                count = len(local.subscribers)
                if local.rule.presence:
                    with contextlib.suppress(BrokerError):  # else the local count stands in
                        count = (await self.broker.presence_stats(channel)).clients
                    local = self._local.get(channel)
                    if local is None:
                        continue
                message = PresenceOutbound(
                    encode_presence_digest(channel, count, joins, leaves), "presence", joins, leaves
                )
                for subscriber in tuple(local.subscribers):
                    subscriber.deliver_event(channel, message)

    # --- subscribing -----------------------------------------------------------------------

    async def subscribe(
        self,
        subscriber: Subscriber,
        channel: str,
        since: StreamPosition | None = None,
        tag_filter: TagFilter | None = None,
        *,
        delta: str | None = None,
    ) -> tuple[dict[str, Any], int]:
        """Add a local subscriber; returns the subscribe result and the last offset it holds.

        Publications delivered to `subscriber` for `channel` from now on may repeat what the
        result holds: the subscriber skips offsets up to the returned one. With `since`, the
        result holds the missed publications and `recovered`, or `recovered: false`. With
        `tag_filter`, only the publications it matches are delivered or recovered (whether
        recovery is possible is judged on the whole stream, so skipped offsets are no gap);
        ChannelError 103 or 118 when the channel's rule forbids the filter. With
        `delta` (a format) on a channel whose rule has it, its pushes are delta publications
        and the result says `delta`.
        """
        rule, params = self.rule(channel)
        check_filter_allowed(rule, tag_filter)
        local = self._local.get(channel)
        if local is None:
            local = self._local[channel] = _Local(rule, params)
        if rule.max_subscribers and len(local.subscribers) >= rule.max_subscribers:
            raise ChannelError(ErrorCode.LIMIT_EXCEEDED, "channel is full")
        groups = local.groups
        if (
            tag_filter is not None
            and rule.max_filters
            and tag_filter.key not in groups
            and len(groups) - (None in groups) >= rule.max_filters
        ):
            raise ChannelError(
                ErrorCode.LIMIT_EXCEEDED,
                f"this channel holds {rule.max_filters} distinct filters; use one of theirs",
            )
        local.subscribers[subscriber] = None
        wire = getattr(subscriber, "wire", None)
        if wire is not None:
            local.wires.add(subscriber, wire)
        elif getattr(subscriber, "takes_shared_events", False):
            local.streams[subscriber] = None
        groups.add(subscriber, tag_filter)
        wants_delta = local.delta is not None and delta == rule.delta
        if wants_delta:
            assert local.delta is not None
            local.delta.out_of_step(subscriber)
        try:
            await self._sync_node(channel)
            if since is None:
                history = await self.broker.history(channel, limit=0)
            else:
                history = await self.broker.history(channel, since=since.offset)
        except BaseException as exc:
            self._remove(subscriber, channel)
            if isinstance(exc, BrokerError):
                log.warning("broker failed: %s", exc)
                raise ChannelError(ErrorCode.BROKER_UNAVAILABLE) from None
            raise
        position = history.position
        if local.epoch != position.epoch:
            if local.epoch is not None:  # the stream restarted before any publication said so
                self._epoch_changed(channel, local, keep=subscriber)
            local.epoch = position.epoch
        result: dict[str, Any] = {
            "channel": channel,
            "offset": position.offset,
            "epoch": position.epoch,
        }
        last = position.offset
        if since is not None:
            pubs = history.publications
            recovered = position.epoch == since.epoch and (
                since.offset == position.offset
                or (
                    since.offset < position.offset
                    and bool(pubs)
                    and pubs[0].offset == since.offset + 1
                )
            )
            result["recovered"] = recovered
            if recovered:
                result["publications"] = [
                    publication_json(p) for p in pubs if keeps(tag_filter, p.tags)
                ]
                if pubs:
                    last = max(last, pubs[-1].offset)
        if self._local.get(channel) is local and subscriber in local.subscribers:
            local.floors[subscriber] = last
            if wants_delta:  # what was handed over while subscribing may be skipped
                assert local.delta is not None
                local.delta.out_of_step(subscriber)
                result["delta"] = rule.delta
        self.stats.subscriptions += 1
        return result, last

    def unsubscribe(self, subscriber: Subscriber, channel: str) -> bool:
        """Remove a local subscriber (the broker side follows in the background)."""
        return self._remove(subscriber, channel)

    def _remove(self, subscriber: Subscriber, channel: str) -> bool:
        local = self._local.get(channel)
        if local is None or local.subscribers.pop(subscriber, 0) is not None:
            return False
        local.floors.pop(subscriber, None)
        local.wires.remove(subscriber)
        local.streams.pop(subscriber, None)
        local.groups.remove(subscriber)
        if local.delta is not None:
            local.delta.bases.pop(subscriber, None)
        if not local.subscribers:
            del self._local[channel]
            if channel in self._node and self.loop is not None:
                self._spawn(self._sync_node(channel))
        return True

    def filter_of(self, subscriber: Subscriber, channel: str) -> TagFilter | None:
        """The tag filter `subscriber` subscribed to `channel` with (None: none, or not
        subscribed)."""
        local = self._local.get(channel)
        return None if local is None else local.groups.filter_of(subscriber)

    async def _sync_node(self, channel: str) -> None:
        """Make the broker subscription of this node match whether anyone local listens."""
        entry = self._node_locks.get(channel)
        if entry is None:
            entry = self._node_locks[channel] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                want = channel in self._local
                if want and channel not in self._node:
                    await self.broker.subscribe(channel)
                    self._node.add(channel)
                elif not want and channel in self._node:
                    self._node.discard(channel)
                    await self.broker.unsubscribe(channel)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._node_locks[channel]

    def _spawn(self, coro: Any) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("channel background task failed: %r", task.exception())

    # --- reading: history and presence -----------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        tag_filter: TagFilter | None = None,
    ) -> dict[str, Any]:
        """The kept publications after `since` (the first `limit` of them), or without `since`
        the newest `limit`, oldest first; and the stream's position. With `tag_filter`, those
        of them it matches (so fewer than `limit`, and the position still the stream's).

        ChannelError 108 when the channel keeps no history, 112 when `since` is of another
        epoch or older than what is kept, 115 when the broker fails.
        """
        rule, _ = self.rule(channel)
        if not rule.history:
            raise ChannelError(ErrorCode.NOT_AVAILABLE, "this channel keeps no history")
        with _broker_errors():
            if since is None and limit:  # the newest `limit`: find where they start
                top = (await self.broker.history(channel, limit=0)).position.offset
                history = await self.broker.history(channel, since=max(0, top - limit))
            else:
                start = None if since is None else since.offset
                # With `since`, limit 0 still reads the first one after it: that is what
                # shows the history holds what follows `since`.
                read = 1 if since is not None and limit == 0 else limit
                history = await self.broker.history(channel, since=start, limit=read)
        position = history.position
        pubs = history.publications
        if since is not None:
            if since.epoch != position.epoch:
                raise ChannelError(ErrorCode.UNRECOVERABLE, "epoch changed")
            trimmed = not pubs or pubs[0].offset > since.offset + 1
            if since.offset < position.offset and trimmed:
                raise ChannelError(ErrorCode.UNRECOVERABLE, "history no longer holds that offset")
        if limit == 0:
            pubs = []
        return {
            "publications": [publication_json(p) for p in pubs if keeps(tag_filter, p.tags)],
            "offset": position.offset,
            "epoch": position.epoch,
        }

    async def history_before(
        self,
        channel: str,
        *,
        before: StreamPosition | None = None,
        limit: int,
        tag_filter: TagFilter | None = None,
    ) -> dict[str, Any]:
        """`history` backwards: the newest `limit` kept publications below `before.offset`
        (without `before`: of all), newest first; and the stream's position. Paging back past
        what is kept ends in fewer (or no) publications. ChannelError 108, 112 (`before` of
        another epoch), 115 as `history`."""
        if before is None:
            newest = await self.history(channel, limit=limit, tag_filter=tag_filter)
            newest["publications"].reverse()
            return newest
        rule, _ = self.rule(channel)
        if not rule.history:
            raise ChannelError(ErrorCode.NOT_AVAILABLE, "this channel keeps no history")
        end = before.offset - 1  # the newest offset wanted
        with _broker_errors():
            history = await self.broker.history(channel, since=max(0, end - limit), limit=limit)
            top = history.position.offset
            if end > top:  # `before` is above the stream's top: the newest are wanted
                end = top
                history = await self.broker.history(channel, since=max(0, end - limit), limit=limit)
        position = history.position
        if before.epoch != position.epoch:
            raise ChannelError(ErrorCode.UNRECOVERABLE, "epoch changed")
        pubs = history.publications if limit else []
        pubs = [p for p in pubs if p.offset <= end and keeps(tag_filter, p.tags)]
        return {
            "publications": [publication_json(p) for p in reversed(pubs)],
            "offset": position.offset,
            "epoch": position.epoch,
        }

    async def presence(self, channel: str, *, by_user: bool = False) -> dict[str, Any]:
        """Who is in `channel`: `{"clients": {id: info}}`, or with `by_user` grouped as
        `{"users": {user: {id: info}}, "anonymous": {id: info}}` (108 without presence)."""
        self._presence_rule(channel)
        with _broker_errors():
            members = await self.broker.presence(channel)
        if by_user:
            return presence_by_user(members.values())
        return {"clients": {cid: info.to_json() for cid, info in members.items()}}

    async def presence_stats(self, channel: str) -> dict[str, Any]:
        """How many clients and distinct users are in `channel` (108 without presence)."""
        self._presence_rule(channel)
        with _broker_errors():
            stats = await self.broker.presence_stats(channel)
        return {"clients": stats.clients, "users": stats.users}

    def _presence_rule(self, channel: str) -> None:
        if not self.rule(channel)[0].presence:
            raise ChannelError(ErrorCode.NOT_AVAILABLE, "this channel keeps no presence")

    # --- presence --------------------------------------------------------------------------

    async def join(self, rule: ChannelRule, ctx: ChannelContext) -> None:
        """A subscriber joined: record presence, tell the others, call `on_join` (as the rule
        says). Failures are logged, not raised: the subscription stands either way."""
        info = ctx.client
        try:
            if rule.presence:
                await self.broker.presence_add(ctx.channel, info)
            if rule.join_leave:
                await self.broker.publish_join(ctx.channel, info)
        except BrokerError as exc:
            log.warning("join of %s to %s not recorded: %s", info.client, ctx.channel, exc)
        await self._observe(rule.on_join, ctx)

    async def leave(self, rule: ChannelRule, ctx: ChannelContext) -> None:
        """A subscriber left (unsubscribed or disconnected): the reverse of `join`."""
        info = ctx.client
        try:
            if rule.presence:
                await self.broker.presence_remove(ctx.channel, info.client)
            if rule.join_leave:
                await self.broker.publish_leave(ctx.channel, info)
        except BrokerError as exc:
            log.warning("leave of %s from %s not recorded: %s", info.client, ctx.channel, exc)
        await self._observe(rule.on_leave, ctx)

    def leave_later(self, rule: ChannelRule, ctx: ChannelContext) -> None:
        """`leave` in the background (a closing connection cannot wait for it)."""
        if self.loop is not None and (rule.presence or rule.join_leave or rule.on_leave):
            self._spawn(self.leave(rule, ctx))

    async def _observe(self, hook: Callable[..., Any] | None, ctx: ChannelContext) -> None:
        if hook is None:
            return
        try:
            await call_hook(hook, ctx)
        except Exception:
            log.exception("error in the %s hook of %s", hook.__name__, ctx.channel)
