"""An asyncio client of rtserve's channel protocol (rtserve.realtime.protocol), for services
and tests.

    async with Client("ws://127.0.0.1:8000/rt/ws", token=token) as client:
        sub = await client.subscribe("chat:lobby")
        offset, epoch = await client.publish("chat:lobby", {"text": "hi"})
        async for pub in sub:               # Publication(channel, offset, data, info)
            ...

Commands are matched to replies by id; a refusal raises `ClientError(code, message)`. Each
`Subscription` keeps its last position (offset, epoch) and drops any publication at or below
it, so nothing is seen twice; a live push out of sequence (an offset jump: the server skipped
some; or one falling back: a new epoch) makes the subscription again from its position (see
Subscription).

With `reconnect=True` (the default), a connection that ends without `close()` is opened again
with exponential backoff and jitter; `connect` is sent again and every subscription is made
again with `since` = its last position, so the publications missed meanwhile arrive first. When
the server cannot give them (`recovered: false`), the subscription's iterator raises
`Unrecovered` once, at the point of the gap; iterating again continues from the new position.
Commands in flight when the connection drops raise `Disconnected` (a publish may or may not have
landed); commands issued while reconnecting wait for the new connection (up to
`request_timeout`). Close codes that retrying cannot fix (4000, 4001, 4003, 4005, and 4002
without `get_token`) and a refused `connect` stop the client: pending calls and every
subscription's iterator then raise `Disconnected` or the `ClientError`.

Every queue is bounded: the WebSocket keeps at most 64 messages before it stops reading, and a
subscription at most `max_queue` publications. A subscription whose consumer falls behind stops
queueing; once its consumer has caught up halfway, it is made again with `since` (unsubscribe,
subscribe), so the publications it skipped come from the channel's history — or `Unrecovered`
says they cannot. Join, leave and presence digest pushes go to the subscription's
`on_presence` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rtserve.errors import RtserveError
from rtserve.protocol.ws_client import (
    ClientWebSocket,
    ConnectionClosed,
    HeadersLike,
    InvalidHandshake,
    connect,
)
from rtserve.realtime.protocol import DisconnectCode, ErrorCode

__all__ = [
    "Client",
    "ClientError",
    "ClientInfo",
    "Disconnected",
    "History",
    "Join",
    "Leave",
    "Position",
    "PresenceDigest",
    "PresenceEvent",
    "PresenceStats",
    "Publication",
    "Subscription",
    "Unrecovered",
]

log = logging.getLogger("rtserve.client")

# Close codes after which connecting again cannot help.
_FINAL_CODES = frozenset(
    {
        DisconnectCode.BAD_REQUEST,
        DisconnectCode.UNAUTHORIZED,
        DisconnectCode.CONNECTION_LIMIT,
        DisconnectCode.FORCED,
    }
)


# --- errors ---------------------------------------------------------------------------------


class ClientError(RtserveError):
    """The server refused a command: `code` (rtserve.realtime.protocol.ErrorCode, or an app's
    own from 1000) and `message`."""

    def __init__(self, code: int, message: str) -> None:
        self.code = int(code)
        self.message = message
        super().__init__(f"{self.code} {message}")


class Disconnected(RtserveError):
    """The connection ended: `code` and `reason` of its close (1006 without a close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = int(code)
        self.reason = reason
        super().__init__(f"disconnected: {self.code} {reason}".rstrip())


class Unrecovered(RtserveError):
    """Publications of `channel` after `since` were lost: the stream went on from `position`
    (the server could not recover them, or its stream started a new epoch)."""

    def __init__(self, channel: str, since: Position | None, position: Position) -> None:
        self.channel = channel
        self.since = since
        self.position = position
        super().__init__(f"{channel}: publications after {since} could not be recovered")


# --- values ---------------------------------------------------------------------------------


class Position(NamedTuple):
    """A place in a channel's stream."""

    offset: int
    epoch: str


class PresenceStats(NamedTuple):
    clients: int
    users: int


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a client is, as presence and publications show it."""

    client: str
    user: str | None = None
    info: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, value: Any) -> ClientInfo:
        if not isinstance(value, dict):
            raise TypeError(f"client info is an object, not {value!r}")
        return cls(str(value.get("client")), value.get("user"), value.get("info"))


@dataclass(frozen=True, slots=True)
class Publication:
    channel: str
    offset: int
    data: Any
    info: ClientInfo | None = None

    @classmethod
    def from_json(cls, channel: str, value: dict[str, Any]) -> Publication:
        info = value.get("info")
        return cls(
            channel,
            int(value["offset"]),
            value.get("data"),
            ClientInfo.from_json(info) if info is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Join:
    channel: str
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class Leave:
    channel: str
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class PresenceDigest:
    """Joins and leaves of an interval, for channels too big for one push each."""

    channel: str
    count: int
    joins: list[ClientInfo] = field(default_factory=list)
    leaves: list[ClientInfo] = field(default_factory=list)


PresenceEvent = Join | Leave | PresenceDigest


@dataclass(frozen=True, slots=True)
class History:
    publications: list[Publication]
    position: Position


def _position(value: Position | tuple[int, str] | None) -> Position | None:
    return None if value is None else Position(int(value[0]), str(value[1]))


# --- subscriptions --------------------------------------------------------------------------

_END = object()  # StopAsyncIteration: the subscription was ended by unsubscribe() or close()


class Subscription:
    """One channel subscribed by a Client; async-iterable over its publications.

    position: the last position seen (None until subscribed).
    recovered: the `recovered` of the last subscribe that gave `since` (None before one).
    gaps: how many times publications were lost (each is also raised as Unrecovered, except
        with `recover=False`, which asks for no missed publications and only counts them).
    duplicates: publications dropped because their offset was not above `position`.
    skipped: publications the server skipped (offset jumps) that `fill_gaps=False` accepted.

    A live push whose offset jumps ahead (the server skipped publications for a slow client)
    or falls back (pushes carry no epoch, so that is how a new epoch of the stream shows) makes
    the subscription again from `position`, as after an overflow; the history fills the gap, or
    Unrecovered says it cannot. `fill_gaps=False` (for channels with the `conflate` policy, whose
    skips are wanted) accepts jumps and just drops what falls back.
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        *,
        recover: bool,
        fill_gaps: bool,
        token: str | None,
        max_queue: int,
        on_presence: Callable[[PresenceEvent], Any] | None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.recover = recover
        self.fill_gaps = fill_gaps
        self.token = token
        self.max_queue = max(1, max_queue)
        self.on_presence = on_presence
        self.position: Position | None = None
        self.recovered: bool | None = None
        self.gaps = 0
        self.duplicates = 0
        self.skipped = 0
        self._queue: deque[Publication | Unrecovered] = deque()
        self._subscribing = False  # a subscribe is waiting for its reply
        self._early: list[tuple[Publication, str | None]] = []  # pushes meanwhile
        self._early_lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._end: object | BaseException | None = None
        self._overflow = False  # publications are being skipped: make it again when drained
        self._resyncing = False

    def __repr__(self) -> str:
        return f"<Subscription {self.channel} at {self.position}>"

    @property
    def ended(self) -> bool:
        return self._end is not None

    async def unsubscribe(self) -> None:
        await self.client.unsubscribe(self.channel)

    # --- iteration -------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Publication:
        while True:
            if self._queue:
                item = self._queue.popleft()
                if self._overflow and len(self._queue) <= self.max_queue // 2:
                    self.client._resync(self)
                if isinstance(item, Unrecovered):
                    raise item
                return item
            end = self._end
            if end is _END:
                raise StopAsyncIteration
            if isinstance(end, BaseException):
                raise end
            if self._waiter is not None:
                raise RuntimeError("this subscription is already being iterated by another task")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- what the Client hands over --------------------------------------------------------

    def _publication(self, pub: Publication, epoch: str | None = None) -> None:
        """A `pub` push; kept aside while a subscribe is waiting for its reply."""
        if self._subscribing or self.position is None:
            if len(self._early) < self.max_queue:
                self._early.append((pub, epoch))
            else:
                self._early_lost = True
            return
        self._deliver(pub, epoch, live=True)

    def _deliver(self, pub: Publication, epoch: str | None = None, *, live: bool = False) -> None:
        position = self.position
        assert position is not None
        if epoch is not None and epoch != position.epoch:
            # A new life of the stream: its offsets start again.
            since, position = position, Position(pub.offset - 1, epoch)
            self._gap(since, position, report=True)
        if pub.offset <= position.offset:
            self.duplicates += 1
            if live and self.fill_gaps and not self._overflow:
                self._make_again()  # maybe a new epoch: subscribing with since tells
            return
        if self._overflow:
            return  # fetched again when the subscription is made again
        if live and pub.offset > position.offset + 1:
            if self.fill_gaps:
                self._make_again()
                return
            self.skipped += pub.offset - position.offset - 1
        if len(self._queue) >= self.max_queue:
            self._overflow = True
            log.info("%s: consumer behind from offset %d", self.channel, pub.offset)
            return
        self.position = Position(pub.offset, position.epoch)
        self._queue.append(pub)
        self._wake()

    def _make_again(self) -> None:
        """Stop queueing and subscribe again from `position`."""
        log.info(
            "%s: offsets out of sequence after %s; subscribing again", self.channel, self.position
        )
        self._overflow = True
        self.client._resync(self)

    def _presence(self, event: PresenceEvent) -> None:
        if self.on_presence is None:
            return
        try:
            self.on_presence(event)
        except Exception:
            log.exception("on_presence of %s failed", self.channel)

    def _gap(self, since: Position | None, position: Position, *, report: bool) -> None:
        self.gaps += 1
        self.position = position
        if report:
            self._queue.append(Unrecovered(self.channel, since, position))
            self._wake()

    def _subscribed(self, result: dict[str, Any], since: Position | None, resumed: bool) -> None:
        """Apply a subscribe result (`resumed`: made again after a reconnect or an overflow)."""
        top = Position(int(result["offset"]), str(result["epoch"]))
        self._subscribing = False
        self._overflow = False
        if since is not None:
            self.recovered = bool(result.get("recovered"))
            if self.recovered and since.epoch == top.epoch:
                if self.position is None or self.position.epoch != since.epoch:
                    self.position = since
                for value in result.get("publications") or ():
                    self._deliver(Publication.from_json(self.channel, value))
            else:
                self._gap(since, top, report=True)
        elif resumed and self.position is not None:
            self._gap(self.position, top, report=False)  # recover=False: counted only
        if self.position is None:
            self.position = top
        elif top.offset > self.position.offset and not self._overflow:
            self.position = top  # (the same epoch: a gap above moved it to `top`)
        early, self._early = self._early, []
        for pub, epoch in early:
            self._deliver(pub, epoch)
        if self._early_lost:
            self._early_lost = False
            self._overflow = True
        if self._overflow and len(self._queue) <= self.max_queue // 2:
            self.client._resync(self)  # nobody may pop to trigger it

    def _subscribe_failed(self) -> None:
        self._subscribing = False
        self._early.clear()
        self._early_lost = False

    def _finish(self, end: object | BaseException) -> None:
        if self._end is None:
            self._end = end
            self._wake()


# --- the client -----------------------------------------------------------------------------


class Client:
    """A connection to a channel endpoint (`ws://host:port/rt/ws`); see the module docstring.

    token: sent with connect; `get_token` (async) is called for a fresh one before every
        connect instead (and makes 4002 "token expired" a reason to reconnect).
    data: sent with connect (the app's on_connect sees it).
    reconnect, backoff_min, backoff_max: reconnect after an unexpected close, waiting
        backoff_min * 2**attempt (at most backoff_max), times a random 0.5-1.
    request_timeout: seconds a command waits for its reply (and for a connection).
    ping_interval, ping_timeout: WebSocket pings that find a dead connection (0: none).
    max_queue: publications each subscription keeps for its consumer (its default).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: Callable[[], Awaitable[str]] | None = None,
        data: Any = None,
        reconnect: bool = True,
        backoff_min: float = 0.25,
        backoff_max: float = 10.0,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        max_queue: int = 1024,
        max_message_size: int = 16 * 1024 * 1024,
        headers: HeadersLike | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.get_token = get_token
        self.data = data
        self.reconnect = reconnect
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_queue = max_queue
        self.max_message_size = max_message_size
        self.headers = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        # From the last connect result:
        self.client_id: str | None = None
        self.user: str | None = None
        self.expires: float | None = None
        self.version: int | None = None
        self.reconnects = 0
        self._subs: dict[str, Subscription] = {}
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._ws: ClientWebSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live = False  # connected: connect answered and subscriptions made
        self._ready = asyncio.Event()  # set when live or stopped
        self._closing = False
        self._final: BaseException | None = None

    @property
    def connected(self) -> bool:
        return self._live

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        return self._subs

    # --- life ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the WebSocket and send connect; raises ClientError when it is refused,
        InvalidHandshake, OSError or TimeoutError when the server cannot be reached."""
        if self._supervisor is not None or self._closing:
            raise RuntimeError("a Client connects once")
        await self._open()
        self._supervisor = asyncio.create_task(self._supervise())

    async def close(self) -> None:
        """Close the connection and end every subscription (their iterators stop)."""
        if self._closing:
            return
        self._closing = True
        self._live = False
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            tasks.append(self._reader)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._stop(_END, Disconnected(1000, "client closed"))

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- commands --------------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        since: Position | tuple[int, str] | None = None,
        recover: bool = True,
        fill_gaps: bool = True,
        token: str | None = None,
        max_queue: int | None = None,
        on_presence: Callable[[PresenceEvent], Any] | None = None,
    ) -> Subscription:
        """Subscribe to `channel`: from now on, or from `since` (missed publications first;
        Unrecovered from the iterator when the server cannot give them).

        recover: after a reconnect or an overflow, ask for the publications missed (False:
            start again from the stream's top; the loss is counted in `gaps`, not raised).
        fill_gaps: fill offset jumps from the history (False: accept them, for `conflate`).
        token: the channel's subscription token, when its rule asks for one.
        on_presence: called (synchronously) with each Join, Leave and PresenceDigest.
        """
        if channel in self._subs:
            raise ValueError(f"already subscribed to {channel!r}")
        sub = Subscription(
            self,
            channel,
            recover=recover,
            fill_gaps=fill_gaps,
            token=token,
            max_queue=max_queue if max_queue is not None else self.max_queue,
            on_presence=on_presence,
        )
        self._subs[channel] = sub
        try:
            ws = await self._wait_live()
            await self._subscribe_on(ws, sub, _position(since), resumed=False)
        except BaseException:
            if self._subs.get(channel) is sub:
                del self._subs[channel]
            raise
        return sub

    async def unsubscribe(self, channel: str) -> None:
        """End the subscription to `channel` (its iterator stops after what it holds)."""
        sub = self._subs.pop(channel, None)
        if sub is None:
            return
        sub._finish(_END)
        if self._live and self._ws is not None:
            with contextlib.suppress(Disconnected):
                try:
                    await self._request_on(self._ws, {"op": "unsubscribe", "channel": channel})
                except ClientError as exc:
                    if exc.code != ErrorCode.NOT_SUBSCRIBED:
                        raise

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> Position:
        """Publish `data` (any JSON value); returns its (offset, epoch).

        With `idempotency_key`, publishing again with the same key (after a lost reply, say)
        lands once and returns the first position.
        """
        command: dict[str, Any] = {"op": "publish", "channel": channel, "data": data}
        if idempotency_key is not None:
            command["idempotency_key"] = idempotency_key
        result = await self._request(command)
        return Position(int(result["offset"]), str(result["epoch"]))

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: Position | tuple[int, str] | None = None,
    ) -> History:
        command: dict[str, Any] = {"op": "history", "channel": channel}
        if limit is not None:
            command["limit"] = limit
        position = _position(since)
        if position is not None:
            command["since"] = {"offset": position.offset, "epoch": position.epoch}
        result = await self._request(command)
        pubs = [Publication.from_json(channel, p) for p in result.get("publications") or ()]
        return History(pubs, Position(int(result["offset"]), str(result["epoch"])))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        result = await self._request({"op": "presence", "channel": channel})
        clients = result.get("clients") or {}
        return {str(k): ClientInfo.from_json(v) for k, v in clients.items()}

    async def presence_stats(self, channel: str) -> PresenceStats:
        result = await self._request({"op": "presence_stats", "channel": channel})
        return PresenceStats(int(result["clients"]), int(result["users"]))

    async def refresh(self, token: str) -> float | None:
        """Send a fresh token; it is also the one used when reconnecting. Returns expires."""
        result = await self._request({"op": "refresh", "token": token})
        self.token = token
        expires = result.get("expires")
        self.expires = float(expires) if expires is not None else None
        return self.expires

    async def ping(self) -> None:
        """A round trip of the protocol's ping command."""
        await self._request({"op": "ping"})

    # --- requests --------------------------------------------------------------------------

    async def _wait_live(self) -> ClientWebSocket:
        try:
            async with asyncio.timeout(self.request_timeout):
                while True:
                    if self._final is not None:
                        raise self._final
                    if self._closing:
                        raise Disconnected(1000, "client closed")
                    if self._live and self._ws is not None:
                        return self._ws
                    if self._supervisor is None:
                        raise RuntimeError("connect() first")
                    self._ready.clear()
                    await self._ready.wait()
        except TimeoutError:
            raise TimeoutError(f"not connected within {self.request_timeout} s") from None

    async def _request(self, command: dict[str, Any]) -> dict[str, Any]:
        return await self._request_on(await self._wait_live(), command)

    async def _request_on(self, ws: ClientWebSocket, command: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        id_ = self._next_id
        text = json.dumps({"id": id_, **command}, separators=(",", ":"), ensure_ascii=False)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        try:
            try:
                await ws.send(text)
            except ConnectionClosed as exc:
                raise Disconnected(exc.code, exc.reason) from None
            async with asyncio.timeout(self.request_timeout):
                return await future
        except TimeoutError:
            raise TimeoutError(
                f"no reply to {command['op']} within {self.request_timeout} s"
            ) from None
        finally:
            self._pending.pop(id_, None)

    async def _subscribe_on(
        self, ws: ClientWebSocket, sub: Subscription, since: Position | None, *, resumed: bool
    ) -> None:
        command: dict[str, Any] = {"op": "subscribe", "channel": sub.channel}
        if sub.token is not None:
            command["token"] = sub.token
        if since is not None:
            command["since"] = {"offset": since.offset, "epoch": since.epoch}
        sub._subscribing = True
        try:
            try:
                result = await self._request_on(ws, command)
            except ClientError as exc:
                if since is None or exc.code != ErrorCode.UNRECOVERABLE:
                    raise
                del command["since"]  # refused rather than answered recovered: false
                result = await self._request_on(ws, command)
                result["recovered"] = False
        except BaseException:
            sub._subscribe_failed()
            raise
        if self._subs.get(sub.channel) is sub:
            sub._subscribed(result, since, resumed)

    # --- the connection --------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, send connect and make every subscription again; raises when it fails."""
        if self.get_token is not None:
            self.token = await self.get_token()
        ws = await connect(
            self.url,
            headers=self.headers,
            open_timeout=self.open_timeout,
            max_message_size=self.max_message_size,
        )
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws))
        try:
            command: dict[str, Any] = {"op": "connect"}
            if self.token is not None:
                command["token"] = self.token
            if self.data is not None:
                command["data"] = self.data
            result = await self._request_on(ws, command)
            self.client_id = result.get("client")
            self.user = result.get("user")
            expires = result.get("expires")
            self.expires = float(expires) if expires is not None else None
            self.version = result.get("version")
            subs = [s for s in self._subs.values() if s.position is not None]
            outcomes = await asyncio.gather(
                *(
                    self._subscribe_on(ws, s, s.position if s.recover else None, resumed=True)
                    for s in subs
                ),
                return_exceptions=True,
            )
            for sub, outcome in zip(subs, outcomes, strict=True):
                if isinstance(outcome, ClientError):
                    log.warning("%s: subscribing again was refused: %s", sub.channel, outcome)
                    self._end_subscription(sub, outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            ws.abort()
            raise
        self._live = True
        self._ready.set()
        for sub in subs:  # out of sequence already (not made again while not live)
            if sub._overflow and len(sub._queue) <= sub.max_queue // 2:
                self._resync(sub)

    async def _supervise(self) -> None:
        """Wait for the connection to end; reconnect (or stop) when it was not close()."""
        while True:
            assert self._reader is not None and self._ws is not None
            await self._reader
            ws = self._ws
            code = ws.close_code if ws.close_code is not None else 1006
            if self._closing:
                return
            log.info("connection to %s ended: %d %s", self.url, code, ws.close_reason)
            final = code in _FINAL_CODES or (
                code == DisconnectCode.TOKEN_EXPIRED and self.get_token is None
            )
            if not self.reconnect or final:
                self._stop(Disconnected(code, ws.close_reason))
                return
            attempt = 0
            while True:
                delay = min(self.backoff_max, self.backoff_min * 2**attempt)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                try:
                    await self._open()
                except ClientError as exc:  # connect refused
                    if exc.code == ErrorCode.TOKEN_EXPIRED and self.get_token is not None:
                        attempt += 1
                        continue
                    self._stop(exc)
                    return
                except InvalidHandshake as exc:
                    status = exc.status or 0
                    if 400 <= status < 500 and status not in (408, 429):
                        self._stop(exc)  # refused for good (a missing route, auth)
                        return
                    log.info("reconnecting to %s failed: %s", self.url, exc)
                    attempt += 1
                    continue
                except (OSError, TimeoutError, Disconnected) as exc:
                    log.info("reconnecting to %s failed: %s", self.url, exc)
                    attempt += 1
                    continue
                except Exception:
                    log.exception("reconnecting to %s failed", self.url)
                    attempt += 1
                    continue
                self.reconnects += 1
                break

    async def _read(self, ws: ClientWebSocket) -> None:
        keepalive = None
        if self.ping_interval > 0:
            keepalive = asyncio.create_task(self._keepalive(ws))
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    log.warning("binary message from %s ignored", self.url)
                    continue
                self._dispatch(message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("reading from %s failed", self.url)
            ws.abort()
        finally:
            if keepalive is not None:
                keepalive.cancel()
            self._live = False
            code = ws.close_code if ws.close_code is not None else 1006
            error = Disconnected(code, ws.close_reason)
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)

    def _dispatch(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            log.warning("not JSON from %s: %.200s", self.url, text)
            return
        if not isinstance(message, dict):
            log.warning("not an object from %s: %.200s", self.url, text)
            return
        if "push" in message:
            try:
                self._push(message)
            except (KeyError, TypeError, ValueError):
                log.warning("bad push from %s: %.200s", self.url, text)
            return
        id_ = message.get("id")
        future = self._pending.pop(id_, None) if type(id_) is int else None
        if future is None:
            if "error" in message:
                log.warning("error from %s for no command: %.200s", self.url, text)
            else:
                log.warning("reply from %s to no command: %.200s", self.url, text)
            return
        if future.done():
            return  # its caller gave up (timeout, cancelled)
        error = message.get("error")
        if error is not None:
            if not isinstance(error, dict):
                error = {"message": str(error)}
            future.set_exception(
                ClientError(int(error.get("code", 0)), str(error.get("message", "")))
            )
        else:
            result = message.get("result")
            future.set_result(result if isinstance(result, dict) else {})

    def _push(self, message: dict[str, Any]) -> None:
        kind = message["push"]
        channel = message["channel"]
        sub = self._subs.get(channel)
        if sub is None:
            return  # a push that crossed our unsubscribe
        if kind == "pub":
            epoch = message.get("epoch")  # not sent by rtserve today; honoured when present
            sub._publication(Publication.from_json(channel, message), epoch)
        elif kind == "join":
            sub._presence(Join(channel, ClientInfo.from_json(message["info"])))
        elif kind == "leave":
            sub._presence(Leave(channel, ClientInfo.from_json(message["info"])))
        elif kind == "presence":
            sub._presence(
                PresenceDigest(
                    channel,
                    int(message.get("count", 0)),
                    [ClientInfo.from_json(i) for i in message.get("joins") or ()],
                    [ClientInfo.from_json(i) for i in message.get("leaves") or ()],
                )
            )
        elif kind == "unsubscribe":
            code = int(message.get("code", 0))
            reason = str(message.get("message", "unsubscribed by the server"))
            log.info("%s: unsubscribed by the server: %d %s", channel, code, reason)
            self._end_subscription(sub, ClientError(code, reason))
        else:
            log.warning("unknown push %r from %s", kind, self.url)

    def _end_subscription(self, sub: Subscription, end: object | BaseException) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        sub._finish(end)

    def _stop(
        self, end: object | BaseException, pending_error: BaseException | None = None
    ) -> None:
        """No more connections: end every subscription and wake whoever waits."""
        self._live = False
        if isinstance(end, BaseException):
            self._final = end
            log.warning("client of %s stopped: %s", self.url, end)
        for sub in list(self._subs.values()):
            sub._finish(end)
        self._subs.clear()
        error = pending_error or (end if isinstance(end, BaseException) else None)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done() and error is not None:
                future.set_exception(error)
        self._ready.set()

    def _resync(self, sub: Subscription) -> None:
        """Make an overflowed subscription again from its position (from its iterator)."""
        if sub._resyncing or not self._live or self._closing:
            return  # a reconnect makes it again anyway
        sub._resyncing = True
        self._spawn(self._resync_task(sub))

    async def _resync_task(self, sub: Subscription) -> None:
        try:
            ws = self._ws
            if ws is None or not self._live:
                return
            try:
                await self._request_on(ws, {"op": "unsubscribe", "channel": sub.channel})
            except ClientError as exc:
                if exc.code != ErrorCode.NOT_SUBSCRIBED:
                    raise
            since = sub.position if sub.recover else None
            await self._subscribe_on(ws, sub, since, resumed=True)
        except Disconnected:
            pass  # the reconnect makes it again
        except ClientError as exc:
            self._end_subscription(sub, exc)
        except TimeoutError:
            log.warning("%s: no answer while subscribing again; reconnecting", sub.channel)
            if self._ws is not None:
                self._ws.abort()
        finally:
            sub._resyncing = False
            if sub._overflow and len(sub._queue) <= sub.max_queue // 2:
                self._resync(sub)  # behind again, and nobody may pop to notice

    async def _keepalive(self, ws: ClientWebSocket) -> None:
        while not ws.closed:
            await asyncio.sleep(self.ping_interval)
            try:
                await asyncio.wait_for(ws.ping(), self.ping_timeout)
            except ConnectionClosed:
                return
            except TimeoutError:
                log.warning(
                    "no pong from %s within %s s; reconnecting", self.url, self.ping_timeout
                )
                ws.abort()
                return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
