"""The channel endpoint over WebSocket (`/rt/ws`): one session per connection.

Commands are handled in order (the connection's pump); each gets one reply. Publications of
subscribed channels are pushed as the Hub hands them over, after the subscribe reply; a
session that cannot keep up is handled by each channel's slow-consumer policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NoReturn

from rtserve.app.websocket import WebSocketHandler
from rtserve.broker.base import ClientInfo, StreamPosition
from rtserve.realtime.access import (
    Bucket,
    add_user_connection,
    authorize_subscribe,
    connect_claims,
    connect_client,
    remove_user_connection,
    take_address_rate,
    take_rate,
    take_rpc_rate,
    verify_token,
)
from rtserve.realtime.component import hub_of
from rtserve.realtime.context import ChannelContext, RpcContext
from rtserve.realtime.filters import parse_filter
from rtserve.realtime.hub import Hub, call_hook
from rtserve.realtime.outbound import Outbound, PresenceOutbound
from rtserve.realtime.outbox import Outbox
from rtserve.realtime.protocol import (
    MAX_BATCH,
    PING_PUSH,
    ChannelError,
    Command,
    CommandError,
    DisconnectCode,
    ErrorCode,
    SubscribeRequest,
    check_publishable,
    encode_error,
    encode_reply,
    encode_unsubscribed,
    error_json,
    parse_frame,
)
from rtserve.realtime.rules import ChannelRule
from rtserve.server.websocket import OPEN, WebSocketConnection
from rtserve.tokens import TokenClaims

if TYPE_CHECKING:
    from rtserve.app.request import Request

log = logging.getLogger("rtserve.channels")
MAX_BATCH_REPLY = 64 * 1024  # bytes of a batch's replies held before they are sent

_PLAIN_FRAME = attrgetter("plain")  # a publication's frame for connections without deflate


class ChannelSocket(WebSocketHandler):
    """A client of the channel protocol over one WebSocket."""

    def __init__(self, request: Request, path_params: dict[str, Any]) -> None:
        super().__init__(request, path_params)
        self.hub: Hub = hub_of(request)
        self.client: ClientInfo = None  # type: ignore[assignment]  # set by connect
        self.claims: TokenClaims | None = None
        self.subscriptions: dict[str, ChannelRule] = {}
        self._outbox: Outbox = None  # type: ignore[assignment]  # set by on_open
        self._buckets: dict[Any, Bucket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sub_tokens: dict[str, asyncio.TimerHandle | None] = {}  # expiry of each
        self.protocol = 1  # the version `connect` asked for
        self._batch: list[bytes] | None = None  # replies held while a batch runs
        self._batch_size = 0
        self._heartbeat: asyncio.TimerHandle | None = None
        self._diffs: set[str] = set()  # channels subscribed with presence_diff
        # The connection, for the Hub's direct writes of shared frames (it allows them only
        # while this session holds nothing back: see `_hold_check`).
        self.wire: WebSocketConnection | None = None

    # --- connection hooks ------------------------------------------------------------------

    def on_open(self) -> None:
        conn = self.connection
        self._outbox = Outbox(
            conn.offer_frame, _frame_encoder(conn), self.hub.stats, self._hold_check
        )
        self.wire = conn
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.hub.settings.connect_timeout, self._connect_timeout)

    async def on_message(self, message: str | bytes) -> None:
        if not isinstance(message, str):
            self.close(DisconnectCode.BAD_REQUEST, "binary messages are not commands")
            return
        try:
            parsed = parse_frame(message)
        except CommandError as exc:
            self._refused_command(exc)
            return
        if type(parsed) is list:
            await self._run_batch(parsed)
        else:
            assert isinstance(parsed, Command)
            await self._handle(parsed)

    async def _handle(self, command: Command) -> None:
        """Run one command and answer it."""
        try:
            result = await self._run(command)
        except ChannelError as exc:
            self.hub.stats.refused += 1
            self._answer(self._error(command.id, exc))
            if isinstance(exc, _Refused):
                self._flush_batch()
                self.close(exc.close_code, exc.message)
            return
        except Exception:
            log.exception("error handling %s", command.op)
            self._answer(self._error(command.id, ChannelError(ErrorCode.INTERNAL)))
            return
        if result is not None:
            self._answer(encode_reply(command.id, result))

    def _refused_command(self, exc: CommandError) -> None:
        """Answer a command that could not be parsed; one without an id ends the connection."""
        self.hub.stats.refused += 1
        self._answer(self._error(exc.id, exc))
        if exc.code == ErrorCode.BAD_REQUEST and exc.id is None:
            self._flush_batch()
            self.close(DisconnectCode.BAD_REQUEST, exc.message)

    async def _run_batch(self, batch: list[Command | CommandError]) -> None:
        """Several commands of one message (protocol 2, or a batch opening with a protocol 2
        `connect`), in order; their answers go out together, in one array per message."""
        first = batch[0]
        opens_v2 = isinstance(first, Command) and first.op == "connect" and first.protocol == 2
        if self.protocol < 2 and not opens_v2:
            self._refused_command(CommandError(ErrorCode.BAD_REQUEST, "a command is a JSON object"))
            return
        self._batch = []
        self._hold_check()
        try:
            for item in batch:
                if self.closed:
                    break
                if isinstance(item, CommandError):
                    self._refused_command(item)
                else:
                    await self._handle(item)
        finally:
            self._flush_batch()
            self._batch = None
            self._hold_check()

    def _hold_check(self, idle: bool = True) -> None:
        """Direct writes of pushes (the Hub's fast path) only while nothing is held back: no
        publication held or gathered in the outbox, no batch of replies being answered."""
        self.connection.hold_direct(not self._outbox.idle or self._batch is not None)

    def on_close(self, code: int, reason: str) -> None:
        for timer in (self._timer, self._heartbeat, *self._sub_tokens.values()):
            if timer is not None:
                timer.cancel()
        self._timer = self._heartbeat = None
        self._sub_tokens.clear()
        hub, outbox = self.hub, self._outbox
        for channel in list(outbox.gathering):
            hub.unsubscribe(self, channel)
        for channel, rule in self.subscriptions.items():
            hub.unsubscribe(self, channel)
            hub.leave_later(rule, self._context(channel, hub.rule(channel)[1], self.claims))
        self.subscriptions.clear()
        outbox.clear()
        self.wire = None
        if self.client is not None:
            remove_user_connection(hub, self.client.user, self)

    def on_pong(self, data: bytes) -> None:
        pass  # the connection's keepalive is all a session needs of pongs

    def disconnect(self, reason: str) -> None:
        """The app ends this user's connections: close code 4005 (clients do not reconnect)."""
        self.connection.close(DisconnectCode.FORCED, reason or "disconnected by the server")

    def on_drain(self) -> None:
        self._outbox.drained()

    # --- delivery (called by the Hub) -------------------------------------------------------

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
        if self._batch:
            self._flush_batch()  # the replies before: a subscribe's comes before its pushes
        outbox = self._outbox
        if outbox.idle:  # the common case, kept free of a call: offer the shared frame now
            conn = self.connection
            if conn.offer_frame(
                message.plain if conn.deflate is None else message.ws.frame_for(conn)
            ):
                return
        if not outbox.deliver(channel, message, rule) and self.connection.status == OPEN:
            self._slow_consumer(channel)

    def deliver_event(self, channel: str, message: Outbound) -> None:
        if self._batch:
            self._flush_batch()
        if channel in self.subscriptions:
            if self._diffs and channel in self._diffs and isinstance(message, PresenceOutbound):
                message = message.diff(channel)
            # A join or leave that does not fit is not kept: presence can be asked again.
            self.connection.offer_frame(message.ws.frame_for(self.connection))

    def _slow_consumer(self, channel: str) -> None:
        """The channel's policy is disconnect, and a publication found no room."""
        self.hub.stats.slow_disconnected += 1
        log.info("%s slow consumer disconnected on %s", self.client.client, channel)
        self.close(DisconnectCode.SLOW_CONSUMER, "slow consumer")

    def _answer(self, payload: bytes) -> None:
        """A reply to a command: into the batch being answered, if any."""
        batch = self._batch
        if batch is None:
            self._reply(payload)
            return
        batch.append(payload)
        self._batch_size += len(payload)
        if self._batch_size >= MAX_BATCH_REPLY:
            self._flush_batch()  # what a batch holds back stays small

    def _flush_batch(self) -> None:
        """Send the replies of the batch so far, as one JSON array."""
        batch = self._batch
        if batch:
            self._batch = []
            self._batch_size = 0
            self._reply(b"[" + b",".join(batch) + b"]")

    def _reply(self, payload: bytes) -> None:
        """Queue a reply; a client too slow to take even its replies is disconnected."""
        conn = self.connection
        if not conn.offer_frame(self._frame(payload)) and conn.status == OPEN:
            self.hub.stats.slow_disconnected += 1
            self.close(DisconnectCode.SLOW_CONSUMER, "slow consumer")

    def _error(self, id_: int | None, exc: ChannelError) -> bytes:
        """An error reply; with `temporary` from protocol 2 on."""
        temporary = exc.temporary if self.protocol >= 2 else None
        return encode_error(id_, exc.code, exc.message, temporary)

    def _error_json(self, exc: ChannelError) -> dict[str, Any]:
        """The `error` object of a reply, as _error makes it."""
        temporary = exc.temporary if self.protocol >= 2 else None
        return error_json(exc.code, exc.message, temporary)

    def _frame(self, payload: bytes) -> bytes:
        return Outbound(payload).ws.frame_for(self.connection)

    # --- commands --------------------------------------------------------------------------

    async def _run(self, command: Command) -> dict[str, Any] | None:
        op = command.op
        if op == "connect":
            return await self._connect(command)
        if self.client is None:
            raise ChannelError(ErrorCode.NOT_CONNECTED)
        if op == "subscribe":
            await self._subscribe(command)
            return None  # replied inside, before the buffered publications
        if op == "publish":
            return await self._publish(command)
        if op == "unsubscribe":
            return await self._unsubscribe(command)
        if op == "history":
            return await self._history(command)
        if op == "presence":
            return await self._presence(command)
        if op == "presence_stats":
            return await self._presence_stats(command)
        if op == "refresh":
            return self._refresh(command)
        if op == "sub_refresh":
            return self._sub_refresh(command)
        if op == "rpc":
            return await self._rpc(command)
        return {}  # ping

    async def _connect(self, command: Command) -> dict[str, Any] | None:
        if self.client is not None:
            raise ChannelError(ErrorCode.ALREADY_CONNECTED)
        self.protocol = command.protocol or 1
        hub = self.hub
        try:
            claims = connect_claims(hub.settings, command.token)
        except ChannelError as exc:
            expired = exc.code == ErrorCode.TOKEN_EXPIRED
            close_code = DisconnectCode.TOKEN_EXPIRED if expired else DisconnectCode.UNAUTHORIZED
            self._refuse(exc.code, exc.message, close_code)
        try:
            client, data = await connect_client(hub, self.request, claims, command.data)
        except ChannelError as exc:
            self._refuse(exc.code, exc.message, DisconnectCode.UNAUTHORIZED)
        if self.closed:
            raise ChannelError(ErrorCode.NOT_AVAILABLE, "connection closed")
        try:
            add_user_connection(hub, client.user, self)  # on_close gives it back
        except ChannelError as exc:
            self._refuse(exc.code, exc.message, DisconnectCode.CONNECTION_LIMIT)
        self.claims = claims
        self.client = client
        self._schedule_expiry()
        result = {
            "client": client.client,
            "user": client.user,
            "expires": _expires(claims),
            "version": self.protocol,
        }
        if self.protocol >= 2:
            if data is not None:
                result["data"] = data
            result["limits"] = self._limits()
            result["ping"] = hub.settings.heartbeat
            self._schedule_heartbeat()
        if command.subscriptions is None:
            return result
        result["subscriptions"], openings = await self._subscribe_all(command.subscriptions)
        self._answer(encode_reply(command.id, result))
        for opening in openings:
            await self._start_subscription(opening)
        return None

    def _limits(self) -> dict[str, int]:
        """What this connection may send (protocol 2's connect result); 0 is no limit."""
        return {
            "max_message_size": self.connection.options.max_message_size,
            "max_subscriptions": self.hub.settings.max_subscriptions,
            "max_batch": MAX_BATCH,
        }

    def _refuse(self, code: int, message: str, close_code: int) -> NoReturn:
        """Answer the connect with an error, then close the connection."""
        raise _Refused(code, message, close_code)

    async def _subscribe(self, command: Command) -> None:
        channel = command.channel
        assert channel is not None
        opening = await self._open_subscription(
            channel,
            command.since,
            command.token,
            command.presence_diff,
            command.filter,
            command.delta,
        )
        if opening is not None:
            self._answer(encode_reply(command.id, opening.result))
            await self._start_subscription(opening)

    async def _open_subscription(
        self,
        channel: str,
        since: StreamPosition | None,
        token: str | None,
        presence_diff: bool = False,
        raw_filter: Any = None,
        delta: str | None = None,
    ) -> _Opening | None:
        """Subscribe at the Hub (with the tag filter as sent, if any); publications are held
        back until _start_subscription, which comes after the reply (None: the connection
        closed meanwhile)."""
        tag_filter = None if raw_filter is None else parse_filter(raw_filter)
        outbox = self._outbox
        if channel in self.subscriptions or channel in outbox.gathering:
            raise ChannelError(ErrorCode.ALREADY_SUBSCRIBED)
        hub = self.hub
        limit = hub.settings.max_subscriptions
        if limit and len(self.subscriptions) + len(outbox.gathering) >= limit:
            raise ChannelError(ErrorCode.LIMIT_EXCEEDED, f"at most {limit} subscriptions")
        rule, context, sub_claims = await authorize_subscribe(
            hub, channel, self.client, self.claims, self.request, token
        )
        if self.closed:
            return None
        outbox.gather(channel)
        try:
            result, last = await hub.subscribe(self, channel, since, tag_filter, delta=delta)
        except BaseException:
            outbox.forget(channel)
            raise
        if self.closed:
            outbox.forget(channel)
            hub.unsubscribe(self, channel)
            return None
        if sub_claims is not None:
            self._sub_tokens[channel] = self._sub_token_timer(channel, sub_claims)
            if self.protocol >= 2:
                result["expires"] = _expires(sub_claims)
        if presence_diff:
            self._diffs.add(channel)
        return _Opening(channel, rule, context, result, last)

    async def _start_subscription(self, opening: _Opening) -> None:
        """After its reply: the publications held back, then the join."""
        channel, rule = opening.channel, opening.rule
        gathered = self._outbox.gathered(channel, opening.last)
        if self.closed:
            return  # on_close left the Hub
        self.subscriptions[channel] = rule
        for message in gathered:
            self.deliver(channel, message, rule)
        await self.hub.join(rule, opening.context)

    async def _subscribe_all(
        self, requests: list[SubscribeRequest]
    ) -> tuple[dict[str, Any], list[_Opening]]:
        """The subscriptions a `connect` asks for, made in order: each one's result or error
        by channel, and those made (their publications wait for _start_subscription)."""
        answers: dict[str, Any] = {}
        openings: list[_Opening] = []
        for request in requests:
            channel = request.channel
            try:
                opening = await self._open_subscription(
                    channel,
                    request.since,
                    request.token,
                    request.presence_diff,
                    request.filter,
                    request.delta,
                )
            except ChannelError as exc:
                self.hub.stats.refused += 1
                answers[channel] = {"error": self._error_json(exc)}
                continue
            except Exception:
                log.exception("error subscribing to %s in connect", channel)
                answers[channel] = {"error": self._error_json(ChannelError(ErrorCode.INTERNAL))}
                continue
            if opening is None:
                break  # closed
            openings.append(opening)
            answers[channel] = opening.result
        return answers, openings

    async def _unsubscribe(self, command: Command) -> dict[str, Any]:
        channel = command.channel
        assert channel is not None
        rule = self._drop_subscription(channel)
        if rule is None:
            raise ChannelError(ErrorCode.NOT_SUBSCRIBED)
        _, params = self.hub.rule(channel)
        await self.hub.leave(rule, self._context(channel, params, self.claims))
        return {}

    def _drop_subscription(self, channel: str) -> ChannelRule | None:
        """Forget a subscription here and at the Hub; its rule, or None if there was none."""
        rule = self.subscriptions.pop(channel, None)
        if rule is None:
            return None
        self.hub.unsubscribe(self, channel)
        self._diffs.discard(channel)
        timer = self._sub_tokens.pop(channel, None)
        if timer is not None:
            timer.cancel()
        self._outbox.forget(channel)
        return rule

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        """End a subscription from the server side with an `unsubscribe` push."""
        rule = self._drop_subscription(channel)
        if rule is None:
            return
        self._flush_batch()
        self._reply(encode_unsubscribed(channel, code, message))
        self.hub.leave_later(rule, self._context(channel, self.hub.rule(channel)[1], self.claims))

    async def _publish(self, command: Command) -> dict[str, Any]:
        channel = command.channel
        assert channel is not None
        hub = self.hub
        rule, params = hub.rule(channel)
        hub.check_client_publish(rule, command.size)
        if rule.token and not self._token_allows(channel):
            raise ChannelError(ErrorCode.PERMISSION_DENIED, "token does not allow channel")
        take_rate(hub, self._buckets, rule, rule)
        take_address_rate(hub, self.request.client)
        context = self._context(channel, params, self.claims)
        position = await hub.client_publish(
            rule, context, command.data, command.idempotency_key, tags=command.tags
        )
        return {"offset": position.offset, "epoch": position.epoch}

    def _token_allows(self, channel: str) -> bool:
        """The connection's token, or the subscription token of `channel`, allows it."""
        if self.claims is not None and self.claims.allows(channel):
            return True
        return channel in self._sub_tokens

    def _subscribed_rule(self, command: Command) -> tuple[str, ChannelRule]:
        channel = command.channel
        assert channel is not None
        rule = self.subscriptions.get(channel)
        if rule is None:
            raise ChannelError(ErrorCode.NOT_SUBSCRIBED, "subscribe to the channel first")
        return channel, rule

    async def _history(self, command: Command) -> dict[str, Any]:
        channel, rule = self._subscribed_rule(command)
        limit = command.limit if command.limit is not None else rule.history
        tag_filter = self.hub.filter_of(self, channel)
        if command.reverse:
            return await self.hub.history_before(
                channel, before=command.since, limit=limit, tag_filter=tag_filter
            )
        return await self.hub.history(
            channel, since=command.since, limit=limit, tag_filter=tag_filter
        )

    async def _presence(self, command: Command) -> dict[str, Any]:
        channel, _ = self._subscribed_rule(command)
        return await self.hub.presence(channel, by_user=command.by_user)

    async def _presence_stats(self, command: Command) -> dict[str, Any]:
        channel, _ = self._subscribed_rule(command)
        return await self.hub.presence_stats(channel)

    def _refresh(self, command: Command) -> dict[str, Any]:
        assert command.token is not None
        claims = verify_token(self.hub.settings, command.token)
        if claims.user != self.client.user:
            raise ChannelError(ErrorCode.UNAUTHORIZED, "token of another user")
        self.claims = claims
        self._schedule_expiry()
        for channel, rule in list(self.subscriptions.items()):  # the new token decides too
            if rule.token and not self._token_allows(channel):
                self.end_subscription(
                    channel, ErrorCode.PERMISSION_DENIED, "token does not allow channel"
                )
        return {"expires": _expires(claims)}

    def _sub_refresh(self, command: Command) -> dict[str, Any]:
        """Replace the subscription token of a subscription made with one: its expiry, and
        what it allows (the subscription stays, nothing is re-sent)."""
        channel, _ = self._subscribed_rule(command)
        if channel not in self._sub_tokens:
            raise ChannelError(ErrorCode.BAD_REQUEST, "subscribed without a subscription token")
        assert command.token is not None
        claims = verify_token(self.hub.settings, command.token)
        if claims.user != self.client.user:
            raise ChannelError(ErrorCode.PERMISSION_DENIED, "token of another user")
        if not claims.allows(channel):
            raise ChannelError(ErrorCode.PERMISSION_DENIED, "token does not allow channel")
        timer = self._sub_tokens[channel]
        if timer is not None:
            timer.cancel()
        self._sub_tokens[channel] = self._sub_token_timer(channel, claims)
        return {"expires": _expires(claims)}

    async def _rpc(self, command: Command) -> dict[str, Any]:
        """The app's handler of `method`: its return value is the reply's `data`."""
        method = command.method
        assert method is not None
        handler = self.hub.rpc_handlers.get(method)
        if handler is None:
            raise ChannelError(ErrorCode.UNKNOWN_METHOD, f"no rpc method {method!r}")
        take_rpc_rate(self.hub, self._buckets)
        context = RpcContext(method, command.data, self.client, self.claims, self.request)
        data = await call_hook(handler, context)
        try:
            check_publishable(data)
        except ChannelError as exc:  # the app's bug: an internal error, logged
            raise TypeError(f"rpc {method!r} returned {exc.message}") from None
        return {"data": data}

    # --- tokens and timers -----------------------------------------------------------------

    def _schedule_heartbeat(self) -> None:
        interval = self.hub.settings.heartbeat
        if interval > 0 and not self.closed:
            loop = asyncio.get_running_loop()
            self._heartbeat = loop.call_later(interval, self._beat)

    def _beat(self) -> None:
        """A `ping` push (the browser cannot see the WebSocket's own pings)."""
        self._heartbeat = None
        self.connection.offer_frame(self._frame(PING_PUSH))  # a full buffer is alive anyway
        self._schedule_heartbeat()

    def _sub_token_timer(self, channel: str, claims: TokenClaims) -> asyncio.TimerHandle | None:
        """Ends the subscription to `channel` when its subscription token expires."""
        return self._expiry_timer(
            claims,
            lambda: self.end_subscription(
                channel, ErrorCode.TOKEN_EXPIRED, "subscription token expired"
            ),
        )

    def _schedule_expiry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._expiry_timer(self.claims, self._token_expired)

    @staticmethod
    def _expiry_timer(
        claims: TokenClaims | None, callback: Callable[[], None]
    ) -> asyncio.TimerHandle | None:
        if claims is None or claims.expires is None:
            return None
        delay = max(0.0, claims.expires - time.time())
        return asyncio.get_running_loop().call_later(delay, callback)

    def _token_expired(self) -> None:
        self._timer = None
        self.close(DisconnectCode.TOKEN_EXPIRED, "token expired")

    def _connect_timeout(self) -> None:
        self._timer = None
        if self.client is None:
            self.close(DisconnectCode.CONNECT_TIMEOUT, "no connect command in time")

    def _context(
        self, channel: str, params: dict[str, str], claims: TokenClaims | None
    ) -> ChannelContext:
        return ChannelContext(channel, params, self.client, claims, self.request)


def _expires(claims: TokenClaims | None) -> int | None:
    """A token's expiry as whole seconds of unix time (tokens carry whole seconds)."""
    if claims is None or claims.expires is None:
        return None
    return int(claims.expires)


@dataclass(slots=True)
class _Opening:
    """A subscription made at the Hub whose reply is not sent yet."""

    channel: str
    rule: ChannelRule
    context: ChannelContext
    result: dict[str, Any]
    last: int  # the offset the result holds: buffered publications up to it are dropped


class _Refused(ChannelError):
    """A refusal that also ends the connection (after the error reply)."""

    def __init__(self, code: int, message: str, close_code: int) -> None:
        super().__init__(code, message)
        self.close_code = close_code


def _frame_encoder(conn: WebSocketConnection) -> Callable[[Outbound], bytes]:
    """How a publication's shared frame is picked for `conn` (compressed once if it deflates)."""
    if conn.deflate is None:
        return _PLAIN_FRAME

    def deflated(message: Outbound) -> bytes:
        return message.ws.frame_for(conn)

    return deflated
