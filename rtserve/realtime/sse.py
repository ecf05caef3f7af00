"""`GET {prefix}/sse`: the channels as a Server-Sent Events stream (EventSource).

`?channel=A&channel=B&token=T&since=A:OFFSET:EPOCH&filter=A:JSON&data=JSON` (`filter`: a tag
filter of the channel). The client is connected and each channel subscribed with the rules
of `/rt/ws` before anything is streamed, so a refusal is a plain JSON error (401, 403, 404,
...). Then, per channel, an `event: subscribed` with the subscribe result, the recovered
publications, and the live ones, each `id: CHANNEL:OFFSET:EPOCH` / `event: pub` / `data: <the
pub push JSON>`, built once per publication for every stream. `Last-Event-ID` (what
EventSource sends when it reconnects) resumes its channel like `since`. A `: ping` comment
goes out every `sse_heartbeat` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from rtserve.app.response import Response, dump_json
from rtserve.broker.base import ClientInfo, StreamPosition
from rtserve.realtime.access import (
    add_user_connection,
    authorize_subscribe,
    channel_names,
    connect_claims,
    connect_data,
    cors_headers,
    http_client,
    http_error,
    parse_position_id,
    positions,
    refusing,
    remove_user_connection,
    run_on_connect,
    tag_filters,
    unwatch_shutdown,
    watch_shutdown,
)
from rtserve.realtime.component import hub_of
from rtserve.realtime.context import ChannelContext
from rtserve.realtime.filters import TagFilter, check_filter_allowed
from rtserve.realtime.hub import Hub, Outbound, sse_event
from rtserve.realtime.outbox import Outbox
from rtserve.realtime.protocol import ChannelError, DisconnectCode, ErrorCode, check_delta
from rtserve.realtime.rules import ChannelRule
from rtserve.server.exchange import ClientDisconnected

if TYPE_CHECKING:
    from rtserve.app.request import Request
    from rtserve.tokens import TokenClaims

log = logging.getLogger("rtserve.channels")

PING = b": ping\n\n"
MAX_PREAMBLE = 10000  # events kept while the channels are subscribed, before streaming
_EVENT = attrgetter("sse")  # a publication's event, built once for every stream
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def sse_endpoint(request: Request) -> Response | None:
    hub = hub_of(request)
    cors = cors_headers(request, hub.settings)
    if request.method == "HEAD":  # no body, so no stream: the head of one
        return Response(b"", 200, headers=[(n.decode(), v.decode()) for n, v in _HEADERS] + cors)
    try:
        if request.query.get("probe") is not None:
            await probe(hub, request)
            return Response(b"", 204, headers=cors)
        stream = SSEStream(hub, request)
        await stream.open()
    except ChannelError as exc:
        hub.stats.refused += 1
        return http_error(exc, cors)
    await stream.run(cors)
    return None  # answered through the exchange


async def probe(hub: Hub, request: Request) -> None:
    """What the stream would answer, without one: ChannelError where it would be refused
    (an EventSource cannot read a refusal, so rtserve.js asks this way). Nothing is
    subscribed and nobody is told of a join; the app's `on_connect` and `on_subscribe` run."""
    client, claims = await http_client(hub, request, request.query.get("token"))
    channels = channel_names(request)
    positions(request, channels)
    filters = tag_filters(request, channels)
    delta_format(request)
    for channel in channels:
        with refusing(channel):
            rule, _, _ = await authorize_subscribe(hub, channel, client, claims, request)
            check_filter_allowed(rule, filters.get(channel))


def delta_format(request: Request) -> str | None:
    """The `delta` query parameter: the delta format the stream's subscriptions ask for
    (ChannelError 107 for one there is not)."""
    delta = request.query.get("delta")
    return None if delta is None else check_delta(delta)


class SSEStream:
    """One EventSource client: a Hub subscriber writing to a streamed HTTP response."""

    kind = "sse"  # how the admin interface counts it among ServerState.long_lived
    # 10,000 idle streams are 10,000 of these: no per-instance __dict__
    __slots__ = (
        "__weakref__",
        "_counted",
        "_last_word",
        "_limit",
        "_out",
        "_out_bytes",
        "_outbox",
        "_preamble",
        "_slow",
        "_wake",
        "claims",
        "client",
        "contexts",
        "ended",
        "exchange",
        "hub",
        "request",
        "rules",
    )

    def __init__(self, hub: Hub, request: Request) -> None:
        self.hub = hub
        self.request = request
        self.exchange = request.exchange
        self.client: ClientInfo = None  # type: ignore[assignment]  # set by open
        self.claims: TokenClaims | None = None
        self.rules: dict[str, ChannelRule] = {}
        self.contexts: dict[str, ChannelContext] = {}
        self.ended = False
        self._preamble: list[bytes] | None = []  # None once streaming
        self._outbox = Outbox(self._offer, _EVENT, hub.stats)  # what a slow client is owed
        self._out: list[bytes] = []  # written at the end of this loop tick, in one piece
        self._out_bytes = 0
        self._last_word: bytes | None = None  # an `error` event to end with
        self._slow = False
        self._counted = False
        self._wake: asyncio.Future[None] | None = None
        settings = request.settings
        # Bytes the connection may have waiting to be sent before a publication is held back
        # (at least the point where writing pauses, so that draining has something to await).
        self._limit = max(settings.websocket.max_queued_bytes, settings.limits.write_buffer_high)

    # --- connecting and subscribing (before the response starts) ---------------------------

    async def open(self) -> None:
        """Connect and subscribe every channel, or raise ChannelError with nothing left over."""
        hub, request = self.hub, self.request
        try:
            self.claims = connect_claims(hub.settings, request.query.get("token"))
            data = connect_data(request)
            self.client = await run_on_connect(hub, request, self.claims, data)
            add_user_connection(hub, self.client.user, self)
            self._counted = True
            channels = channel_names(request)
            delta = delta_format(request)
            since = positions(request, channels)
            filters = tag_filters(request, channels)
            last_id = request.headers.get("last-event-id")
            if last_id:
                channel, position = parse_position_id(last_id)
                if channel in channels:
                    since[channel] = position
            for channel in channels:
                with refusing(channel):
                    await self._subscribe(channel, since.get(channel), filters.get(channel), delta)
        except BaseException:
            self._close()
            raise

    async def _subscribe(
        self,
        channel: str,
        since: StreamPosition | None,
        tag_filter: TagFilter | None,
        delta: str | None = None,
    ) -> None:
        hub = self.hub
        rule, context, _ = await authorize_subscribe(
            hub, channel, self.client, self.claims, self.request
        )
        outbox = self._outbox
        outbox.gather(channel)
        try:
            result, last = await hub.subscribe(self, channel, since, tag_filter, delta=delta)
        except BaseException:
            outbox.forget(channel)
            raise
        self.rules[channel] = rule
        self.contexts[channel] = context
        preamble = self._preamble
        assert preamble is not None
        epoch = result["epoch"]
        publications = result.pop("publications", [])
        # The id of `subscribed` is where the client stands before the recovered publications:
        # a reconnect right after it must not skip them.
        at = since.offset if since is not None and result.get("recovered") else result["offset"]
        preamble.append(sse_event("subscribed", dump_json(result), channel, epoch, at))
        for pub in publications:
            payload = dump_json({"push": "pub", "channel": channel, **pub})
            preamble.append(sse_event("pub", payload, channel, epoch, pub["offset"]))
        for message in outbox.gathered(channel, last):
            self.deliver(channel, message, rule)

    # --- streaming -------------------------------------------------------------------------

    async def run(self, cors: list[tuple[str, str]]) -> None:
        hub, exchange = self.hub, self.exchange
        loop = asyncio.get_running_loop()
        disconnected = exchange.wait_disconnected()
        watch_shutdown(self.request, self)
        timer = None
        if self.claims is not None and self.claims.expires is not None:
            delay = max(0.0, self.claims.expires - time.time())
            timer = loop.call_later(delay, self._token_expired)
        drain: asyncio.Future[None] | None = None
        outbox = self._outbox
        try:
            headers = _HEADERS + [(n.lower().encode(), v.encode("latin-1")) for n, v in cors]
            exchange.start(200, headers)
            preamble, self._preamble = self._preamble or [], None
            exchange.write(b"".join(preamble) or PING)
            for channel, rule in list(self.rules.items()):
                await hub.join(rule, self.contexts[channel])
            heartbeat = hub.settings.sse_heartbeat
            next_ping = loop.time() + heartbeat
            # One future is all an idle stream waits on (asyncio.wait would build a set, a
            # waiter and a callback per future each time): what can end the wait wakes it.
            disconnected.add_done_callback(self._woken)
            while not self.ended and not disconnected.done():
                outbox.drained()
                wake = self._wake = loop.create_future()
                at = next_ping
                if outbox.pending:
                    if exchange.writing_paused:  # wait for the client to take most of it
                        if drain is None:
                            drain = asyncio.ensure_future(exchange.drain())
                            drain.add_done_callback(self._woken)
                    else:  # a message bigger than the room left: look again soon
                        at = min(at, loop.time() + 0.01)
                alarm = loop.call_at(at, self._wakeup)
                try:
                    await wake
                finally:
                    alarm.cancel()
                if drain is not None and drain.done():
                    with contextlib.suppress(Exception):
                        drain.result()
                    drain = None
                if loop.time() >= next_ping:
                    next_ping = loop.time() + heartbeat
                    if not outbox.pending and self._room(len(PING)):
                        self._queue(PING)
            self.flush()
            if not exchange.closed:
                if self._last_word is not None and self._room(len(self._last_word)):
                    exchange.write(self._last_word)
                if self._slow:  # what is queued is not worth waiting for: drop it all
                    exchange.abort()
                exchange.end()
        except ClientDisconnected:
            pass
        finally:
            self.ended = True
            self._out.clear()  # a flush still scheduled finds nothing
            disconnected.remove_done_callback(self._woken)
            if drain is not None:
                drain.remove_done_callback(self._woken)
                drain.cancel()
            if timer is not None:
                timer.cancel()
            unwatch_shutdown(self.request, self)
            self._close()

    def _room(self, size: int) -> bool:
        exchange = self.exchange
        if exchange.closed:
            return False
        queued = exchange.buffered() + self._out_bytes
        return queued == 0 or queued + size <= self._limit

    def _offer(self, data: bytes) -> bool:
        """The outbox's seam: keep `data` in the preamble (up to MAX_PREAMBLE events) before
        streaming, write it once streaming if the connection has room; False: neither."""
        preamble = self._preamble
        if preamble is not None:
            if len(preamble) >= MAX_PREAMBLE:
                return False
            preamble.append(data)
            return True
        if not self._room(len(data)):
            return False
        self._queue(data)
        return True

    def _queue(self, data: bytes) -> None:
        """Write `data` with whatever else this loop tick brings (a fan-out of several
        publications at once costs one system call, as on /rt/ws)."""
        out = self._out
        if not out:
            self.exchange.state.schedule_flush(self)
        out.append(data)
        self._out_bytes += len(data)

    def flush(self) -> None:
        """Write what was queued, in one piece (ServerState.schedule_flush calls it)."""
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_bytes = 0
        try:  # noqa: SIM105 (suppress() would cost a context manager per flush)
            self.exchange.write(data)
        except ClientDisconnected:
            pass  # the run loop sees the disconnect and ends

    def _close(self) -> None:
        """Leave every channel and give back the user's connection (once)."""
        hub, outbox = self.hub, self._outbox
        for channel in list(outbox.gathering):
            hub.unsubscribe(self, channel)
        for channel, rule in self.rules.items():
            hub.unsubscribe(self, channel)
            if self._preamble is None:  # joined
                hub.leave_later(rule, self.contexts[channel])
        self.rules.clear()
        outbox.clear()
        if self._counted:
            self._counted = False
            remove_user_connection(hub, self.client.user, self)

    def _end(self, last_word: bytes | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self._last_word = last_word
        self._wakeup()

    def _woken(self, _: object) -> None:
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def stop(self) -> None:
        """The server shuts down: end the stream."""
        self._end()

    def _token_expired(self) -> None:
        self._end(_error_event(ErrorCode.TOKEN_EXPIRED, "token expired"))

    def disconnect(self, reason: str) -> None:
        """The app ends this user's connections: `event: error` with code 4005, then the end."""
        self._end(_error_event(DisconnectCode.FORCED, reason or "disconnected by the server"))

    # --- what the Hub hands over -----------------------------------------------------------

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
        if self.ended:
            return
        outbox = self._outbox
        if outbox.idle and self._offer(message.sse):
            return  # the common case, kept free of a call: room, nothing held or gathered
        if not outbox.deliver(channel, message, rule):
            self._slow_consumer(channel)
        elif outbox.pending:
            self._wakeup()  # the loop waits for the client to take what is held

    def _slow_consumer(self, channel: str) -> None:
        self.hub.stats.slow_disconnected += 1
        log.info("%s slow SSE consumer disconnected on %s", self.client.client, channel)
        self._slow = True
        self._end()

    def deliver_event(self, channel: str, message: Outbound) -> None:
        # A join or leave that does not fit is not kept: presence can be asked again.
        if self._preamble is None and not self.ended and not self._outbox.pending:
            data = message.sse
            if self._room(len(data)):
                self._queue(data)

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        """The server ends a subscription (its stream restarted): the whole stream ends with
        an `error` event, and EventSource reconnects to learn `recovered: false`."""
        self._end(_error_event(code, message, channel))


def _error_event(code: int, message: str, channel: str | None = None) -> bytes:
    body: dict[str, Any] = {"code": int(code), "message": message}
    if channel is not None:
        body["channel"] = channel
    return sse_event("error", dump_json(body))
