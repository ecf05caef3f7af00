"""Client: one connection to a channel endpoint, with its commands, reconnects and
subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from rtserve.client.messages import (
    ClientError,
    ClientInfo,
    Disconnected,
    History,
    Join,
    Leave,
    Position,
    PresenceDiff,
    PresenceDigest,
    PresenceEvent,
    PresenceStats,
    Publication,
    grouped_clients,
    to_position,
)
from rtserve.client.subscription import END, Subscription
from rtserve.client.ws import ClientWebSocket, ConnectionClosed, InvalidHandshake, connect
from rtserve.protocol.ws_client import HeadersLike
from rtserve.realtime.protocol import PROTOCOL_VERSION, DisconnectCode, ErrorCode

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
        self.connect_data: Any = None  # what the app's on_connect gave back (ConnectResult.data)
        self.limits: dict[str, int] = {}  # max_message_size, max_subscriptions, ...
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
        self._stop(END, Disconnected(1000, "client closed"))

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
        presence_diff: bool = False,
        filter: Mapping[str, Any] | None = None,
        delta: bool = False,
    ) -> Subscription:
        """Subscribe to `channel`: from now on, or from `since` (missed publications first;
        Unrecovered from the iterator when the server cannot give them).

        recover: after a reconnect or an overflow, ask for the publications missed (False:
            start again from the stream's top; the loss is counted in `gaps`, not raised).
        fill_gaps: fill offset jumps from the history (False: accept them, for `conflate`).
        token: the channel's subscription token, when its rule asks for one.
        on_presence: called (synchronously) with each Join, Leave and PresenceDigest, or with
            `presence_diff=True` each PresenceDiff instead.
        filter: a tag filter (docs/protocol.md, e.g. `{"eq": ["region", "eu"]}`): only the
            publications whose tags it matches are sent, live and recovered; offsets then jump
            over the others, which is no gap.
        delta: ask for fossil deltas (a channel whose rule has `delta: fossil` sends each
            publication as a delta from the one before; the data handed over is the same).
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
            presence_diff=presence_diff,
            tag_filter=filter,
            delta=delta,
        )
        self._subs[channel] = sub
        try:
            ws = await self._wait_live()
            await self._subscribe_on(ws, sub, to_position(since), resumed=False)
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
        sub._finish(END)
        if self._live and self._ws is not None:
            with contextlib.suppress(Disconnected):
                try:
                    await self._request_on(self._ws, {"op": "unsubscribe", "channel": channel})
                except ClientError as exc:
                    if exc.code != ErrorCode.NOT_SUBSCRIBED:
                        raise

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Position:
        """Publish `data` (any JSON value) with `tags` (a small map of strings subscription
        filters match); returns its (offset, epoch).

        With `idempotency_key`, publishing again with the same key (after a lost reply, say)
        lands once and returns the first position.
        """
        command: dict[str, Any] = {"op": "publish", "channel": channel, "data": data}
        if idempotency_key is not None:
            command["idempotency_key"] = idempotency_key
        if tags:
            command["tags"] = dict(tags)
        result = await self._request(command)
        return Position(int(result["offset"]), str(result["epoch"]))

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: Position | tuple[int, str] | None = None,
        reverse: bool = False,
    ) -> History:
        """Kept publications after `since` (without: the newest `limit`), oldest first; with
        `reverse`, the newest first, below `since` (to page backwards)."""
        command: dict[str, Any] = {"op": "history", "channel": channel}
        if reverse:
            command["reverse"] = True
        if limit is not None:
            command["limit"] = limit
        position = to_position(since)
        if position is not None:
            command["since"] = {"offset": position.offset, "epoch": position.epoch}
        result = await self._request(command)
        pubs = [Publication.from_json(channel, p) for p in result.get("publications") or ()]
        return History(pubs, Position(int(result["offset"]), str(result["epoch"])))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        result = await self._request({"op": "presence", "channel": channel})
        clients = result.get("clients") or {}
        return {str(k): ClientInfo.from_json(v) for k, v in clients.items()}

    async def presence_by_user(self, channel: str) -> dict[str | None, dict[str, ClientInfo]]:
        """Who is in `channel`, grouped by user (None: the anonymous clients)."""
        result = await self._request({"op": "presence", "channel": channel, "group": "user"})
        grouped: dict[str | None, dict[str, ClientInfo]] = {}
        for info in grouped_clients(result):
            grouped.setdefault(info.user, {})[info.client] = info
        return grouped

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

    async def sub_refresh(self, channel: str, token: str) -> float | None:
        """Replace the subscription token of `channel` before it expires, without subscribing
        again; it is also the one used when subscribing again. Returns the new expiry."""
        sub = self._subs.get(channel)
        result = await self._request({"op": "sub_refresh", "channel": channel, "token": token})
        expires = result.get("expires")
        if sub is not None and self._subs.get(channel) is sub:
            sub.token = token
            sub.expires = float(expires) if expires is not None else None
        return float(expires) if expires is not None else None

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Call the app's `@app.rpc(method)` handler with `data`; what it returned."""
        command: dict[str, Any] = {"op": "rpc", "method": method}
        if data is not None:
            command["data"] = data
        result = await self._request(command)
        return result.get("data")

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
        command = {"op": "subscribe", **_subscription_fields(sub, since)}
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
            command: dict[str, Any] = {"op": "connect", "protocol": PROTOCOL_VERSION}
            if self.token is not None:
                command["token"] = self.token
            if self.data is not None:
                command["data"] = self.data
            # Every subscription is made again in the connect itself: one round trip.
            subs = [s for s in self._subs.values() if s.position is not None]
            asked = {s.channel: s.position if s.recover else None for s in subs}
            if subs:
                command["subscriptions"] = [_subscription_fields(s, asked[s.channel]) for s in subs]
                for sub in subs:
                    sub._subscribing = True
            try:
                result = await self._request_on(ws, command)
            except BaseException:
                for sub in subs:
                    sub._subscribe_failed()
                raise
            self.client_id = result.get("client")
            self.user = result.get("user")
            expires = result.get("expires")
            self.expires = float(expires) if expires is not None else None
            self.version = result.get("version")
            self.connect_data = result.get("data")
            limits = result.get("limits")
            self.limits = dict(limits) if isinstance(limits, dict) else {}
            answers = result.get("subscriptions")
            answers = answers if isinstance(answers, dict) else {}
            again = []  # not answered in the connect (a server of version 1), or 112
            for sub in subs:
                answer = answers.get(sub.channel)
                since = asked[sub.channel]
                error = answer.get("error") if isinstance(answer, dict) else None
                if not isinstance(answer, dict) or (
                    isinstance(error, dict) and since is not None and error.get("code") == 112
                ):
                    sub._subscribe_failed()
                    again.append(sub)
                elif isinstance(error, dict):
                    sub._subscribe_failed()
                    refusal = _client_error(error)
                    log.warning("%s: subscribing again was refused: %s", sub.channel, refusal)
                    self._end_subscription(sub, refusal)
                elif self._subs.get(sub.channel) is sub:
                    sub._subscribed(answer, since, resumed=True)
            outcomes = await asyncio.gather(
                *(
                    self._subscribe_on(ws, s, s.position if s.recover else None, resumed=True)
                    for s in again
                ),
                return_exceptions=True,
            )
            for sub, outcome in zip(again, outcomes, strict=True):
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
        for one in message if isinstance(message, list) else [message]:  # a batch's answers
            self._dispatch_one(one, text)

    def _dispatch_one(self, message: Any, text: str) -> None:
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
            future.set_exception(_client_error(error))
        else:
            result = message.get("result")
            future.set_result(result if isinstance(result, dict) else {})

    def _push(self, message: dict[str, Any]) -> None:
        kind = message["push"]
        if kind == "ping":
            return  # the heartbeat for browsers; this client has the WebSocket's pings
        channel = message["channel"]
        sub = self._subs.get(channel)
        if sub is None:
            return  # a push that crossed our unsubscribe
        if kind == "pub":
            if "delta" in message and not sub._data_of_delta(message):
                return
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
        elif kind == "presence_diff":
            joins = grouped_clients(message.get("joins") or {})
            leaves = grouped_clients(message.get("leaves") or {})
            sub._presence(PresenceDiff(channel, joins, leaves))
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


def _client_error(error: dict[str, Any]) -> ClientError:
    """The ClientError of a reply's `error` object."""
    return ClientError(
        int(error.get("code", 0)), str(error.get("message", "")), error.get("temporary") is True
    )


def _subscription_fields(sub: Subscription, since: Position | None) -> dict[str, Any]:
    """What a subscribe asks: {channel, token?, since?, presence_diff?, filter?} (a command's,
    or one in a connect)."""
    fields: dict[str, Any] = {"channel": sub.channel}
    if sub.token is not None:
        fields["token"] = sub.token
    if sub.presence_diff:
        fields["presence_diff"] = True
    if sub.tag_filter is not None:
        fields["filter"] = sub.tag_filter
    if sub.delta:
        fields["delta"] = "fossil"
    if since is not None:
        fields["since"] = {"offset": since.offset, "epoch": since.epoch}
    return fields
