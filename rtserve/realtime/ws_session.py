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
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NoReturn

from rtserve.app.websocket import WebSocketHandler
from rtserve.broker.base import ClientInfo
from rtserve.realtime.access import (
    Bucket,
    add_user_connection,
    authorize_subscribe,
    connect_claims,
    remove_user_connection,
    run_on_connect,
    take_address_rate,
    take_rate,
    verify_token,
)
from rtserve.realtime.context import ChannelContext
from rtserve.realtime.hub import Hub, Outbound
from rtserve.realtime.outbox import Outbox
from rtserve.realtime.protocol import (
    PROTOCOL_VERSION,
    ChannelError,
    Command,
    CommandError,
    DisconnectCode,
    ErrorCode,
    encode_error,
    encode_reply,
    encode_unsubscribed,
    parse_command,
)
from rtserve.realtime.rules import ChannelRule
from rtserve.server.websocket import OPEN, WebSocketConnection
from rtserve.tokens import TokenClaims

if TYPE_CHECKING:
    from rtserve.app.request import Request

log = logging.getLogger("rtserve.channels")

_PLAIN_FRAME = attrgetter("plain")  # a publication's frame for connections without deflate


class ChannelSocket(WebSocketHandler):
    """A client of the channel protocol over one WebSocket."""

    def __init__(self, request: Request, path_params: dict[str, Any]) -> None:
        super().__init__(request, path_params)
        hub = request.app.hub
        assert hub is not None
        self.hub: Hub = hub
        self.client: ClientInfo = None  # type: ignore[assignment]  # set by connect
        self.claims: TokenClaims | None = None
        self.subscriptions: dict[str, ChannelRule] = {}
        self._outbox: Outbox = None  # type: ignore[assignment]  # set by on_open
        self._buckets: dict[Any, Bucket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sub_tokens: dict[str, asyncio.TimerHandle | None] = {}  # expiry of each

    # --- connection hooks ------------------------------------------------------------------

    def on_open(self) -> None:
        conn = self.connection
        self._outbox = Outbox(conn.offer_frame, _frame_encoder(conn), self.hub.stats)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.hub.settings.connect_timeout, self._connect_timeout)

    async def on_message(self, message: str | bytes) -> None:
        if not isinstance(message, str):
            self.close(DisconnectCode.BAD_REQUEST, "binary messages are not commands")
            return
        try:
            command = parse_command(message)
        except CommandError as exc:
            self.hub.stats.refused += 1
            self._reply(encode_error(exc.id, exc.code, exc.message))
            if exc.code == ErrorCode.BAD_REQUEST and exc.id is None:
                self.close(DisconnectCode.BAD_REQUEST, exc.message)
            return
        try:
            result = await self._run(command)
        except ChannelError as exc:
            self.hub.stats.refused += 1
            self._reply(encode_error(command.id, exc.code, exc.message))
            if isinstance(exc, _Refused):
                self.close(exc.close_code, exc.message)
            return
        except Exception:
            log.exception("error handling %s", command.op)
            self._reply(encode_error(command.id, ErrorCode.INTERNAL, "internal error"))
            return
        if result is not None:
            self._reply(encode_reply(command.id, result))

    def on_close(self, code: int, reason: str) -> None:
        for timer in (self._timer, *self._sub_tokens.values()):
            if timer is not None:
                timer.cancel()
        self._timer = None
        self._sub_tokens.clear()
        hub, outbox = self.hub, self._outbox
        for channel in list(outbox.gathering):
            hub.unsubscribe(self, channel)
        for channel, rule in self.subscriptions.items():
            hub.unsubscribe(self, channel)
            hub.leave_later(rule, self._context(channel, hub.rule(channel)[1], self.claims))
        self.subscriptions.clear()
        outbox.clear()
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
        if channel in self.subscriptions:
            # A join or leave that does not fit is not kept: presence can be asked again.
            self.connection.offer_frame(message.ws.frame_for(self.connection))

    def _slow_consumer(self, channel: str) -> None:
        """The channel's policy is disconnect, and a publication found no room."""
        self.hub.stats.slow_disconnected += 1
        log.info("%s slow consumer disconnected on %s", self.client.client, channel)
        self.close(DisconnectCode.SLOW_CONSUMER, "slow consumer")

    def _reply(self, payload: bytes) -> None:
        """Queue a reply; a client too slow to take even its replies is disconnected."""
        conn = self.connection
        if not conn.offer_frame(self._frame(payload)) and conn.status == OPEN:
            self.hub.stats.slow_disconnected += 1
            self.close(DisconnectCode.SLOW_CONSUMER, "slow consumer")

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
        return {}  # ping

    async def _connect(self, command: Command) -> dict[str, Any]:
        if self.client is not None:
            raise ChannelError(ErrorCode.ALREADY_CONNECTED)
        hub = self.hub
        try:
            claims = connect_claims(hub.settings, command.token)
        except ChannelError as exc:
            expired = exc.code == ErrorCode.TOKEN_EXPIRED
            close_code = DisconnectCode.TOKEN_EXPIRED if expired else DisconnectCode.UNAUTHORIZED
            self._refuse(exc.code, exc.message, close_code)
        try:
            client = await run_on_connect(hub, self.request, claims, command.data)
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
        return {
            "client": client.client,
            "user": client.user,
            "expires": _expires(claims),
            "version": PROTOCOL_VERSION,
        }

    def _refuse(self, code: int, message: str, close_code: int) -> NoReturn:
        """Answer the connect with an error, then close the connection."""
        raise _Refused(code, message, close_code)

    async def _subscribe(self, command: Command) -> None:
        channel = command.channel
        assert channel is not None
        outbox = self._outbox
        if channel in self.subscriptions or channel in outbox.gathering:
            raise ChannelError(ErrorCode.ALREADY_SUBSCRIBED)
        hub = self.hub
        limit = hub.settings.max_subscriptions
        if limit and len(self.subscriptions) + len(outbox.gathering) >= limit:
            raise ChannelError(ErrorCode.LIMIT_EXCEEDED, f"at most {limit} subscriptions")
        rule, context, sub_claims = await authorize_subscribe(
            hub, channel, self.client, self.claims, self.request, command.token
        )
        if self.closed:
            return
        outbox.gather(channel)
        try:
            result, last = await hub.subscribe(self, channel, command.since)
        except BaseException:
            outbox.forget(channel)
            raise
        if self.closed:
            outbox.forget(channel)
            hub.unsubscribe(self, channel)
            return
        self.subscriptions[channel] = rule
        if sub_claims is not None:
            self._sub_tokens[channel] = self._expiry_timer(
                sub_claims,
                lambda: self.end_subscription(
                    channel, ErrorCode.TOKEN_EXPIRED, "subscription token expired"
                ),
            )
        self._reply(encode_reply(command.id, result))
        for message in outbox.gathered(channel, last):
            self.deliver(channel, message, rule)
        await hub.join(rule, context)

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
        position = await hub.client_publish(rule, context, command.data, command.idempotency_key)
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
        return await self.hub.history(channel, since=command.since, limit=limit)

    async def _presence(self, command: Command) -> dict[str, Any]:
        channel, _ = self._subscribed_rule(command)
        return await self.hub.presence(channel)

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

    # --- tokens and timers -----------------------------------------------------------------

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
