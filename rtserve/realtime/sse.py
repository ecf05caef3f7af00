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
from rtserve.realtime.hub import Hub
from rtserve.realtime.outbound import Outbound, sse_event
from rtserve.realtime.outbox import Outbox
from rtserve.realtime.protocol import ChannelError, DisconnectCode, ErrorCode, check_delta
from rtserve.realtime.rules import ChannelRule
from rtserve.realtime.sse_shared import BLOCKED, DIRECT, SharedEvent
from rtserve.server.exchange import ClientDisconnected

if TYPE_CHECKING:
    from rtserve.app.request import Request
    from rtserve.server.transport import ChunkWire
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
    await stream.start(cors)
    return None  # the stream goes on without its handler


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
    """One EventSource client: a Hub subscriber writing to a streamed HTTP response.

    Once started it runs without a Task: deliveries write (at the end of the loop tick), the
    hub's `sse_heartbeat` pings, the exchange's close and drain and the server's shutdown call
    back, and whatever ends it (`_end`) finishes the response. On a chunked HTTP/1.1 stream
    with nothing queued or held back, a channel's fan-out hands it the publication's shared
    chunk instead of `deliver` (`sse_shared`).
    """

    kind = "sse"  # how the admin interface counts it among ServerState.long_lived
    takes_shared_events = True  # the Hub offers it shared chunks (`sse_shared.share_event`)
    # 10,000 idle streams are 10,000 of these: no per-instance __dict__
    __slots__ = (
        "__weakref__",
        "_counted",
        "_done",
        "_drain",
        "_expiry",
        "_last_word",
        "_limit",
        "_out",
        "_out_bytes",
        "_outbox",
        "_preamble",
        "_retry",
        "_running",
        "_slow",
        "channels",
        "claims",
        "client",
        "direct_after",
        "ended",
        "exchange",
        "hub",
        "request",
        "shared",
        "wire",
    )

    def __init__(self, hub: Hub, request: Request) -> None:
        self.hub = hub
        self.request = request
        self.exchange = request.exchange
        self.client: ClientInfo = None  # type: ignore[assignment]  # set by open
        self.claims: TokenClaims | None = None
        # Each channel subscribed: its rule and the context its join and leave are told.
        self.channels: dict[str, tuple[ChannelRule, ChannelContext]] = {}
        self.ended = False
        self._preamble: list[bytes] | None = []  # None once streaming
        # What a slow client is owed; let go of while streaming with nothing held back (an
        # idle stream need not keep it, nor its bound method, a cycle), made again on need.
        self._outbox: Outbox | None = Outbox(self._offer, _EVENT, hub.stats)
        # Written at the end of this loop tick, in one piece (None: nothing queued; an idle
        # stream keeps no list).
        self._out: list[bytes] | None = None
        # What waits to be sent while `_out` is not empty: the transport's buffer when the
        # tick's first event was queued (nothing else writes to it before the flush), plus
        # the events queued since; so a delivery need not ask the transport again.
        self._out_bytes = 0
        self._last_word: bytes | None = None  # an `error` event to end with
        self._slow = False
        self._counted = False
        self._running = False  # started, driven by callbacks
        self._done = False  # finished: the response ended and everything let go
        self._drain: asyncio.Future[None] | None = None  # held back: the client is behind
        self._retry: asyncio.TimerHandle | None = None  # held back: a message over the room
        self._expiry: asyncio.TimerHandle | None = None  # the token's
        settings = request.settings
        # Bytes the connection may have waiting to be sent before a publication is held back
        # (at least the point where writing pauses, so that draining has something to await).
        self._limit = max(settings.websocket.max_queued_bytes, settings.limits.write_buffer_high)
        # Shared chunks taken without `_out` (`sse_shared.share_event`): only through `wire`
        # (a chunked HTTP/1.1 body's connection) and while `_direct_check` finds nothing in
        # the way. `direct_after` is DIRECT when one may be taken now, the turn of the last
        # one taken (one per turn: what follows in that turn is queued behind it), or
        # BLOCKED; `shared` is the last one taken.
        self.direct_after = BLOCKED
        self.shared: SharedEvent | None = None
        self.wire: ChunkWire | None = None

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
        assert outbox is not None  # kept until streaming
        outbox.gather(channel)
        try:
            result, last = await hub.subscribe(self, channel, since, tag_filter, delta=delta)
        except BaseException:
            outbox.forget(channel)
            raise
        self.channels[channel] = (rule, context)
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

    async def start(self, cors: list[tuple[str, str]]) -> None:
        """Send the head and what was gathered, join the channels, and leave the stream to
        its callbacks (the exchange is deferred: its handler returns now)."""
        hub, exchange = self.hub, self.exchange
        exchange.defer()
        self.request.forget_parsed()  # read already: an idle stream need not keep it
        watch_shutdown(self.request, self)
        if self.claims is not None and self.claims.expires is not None:
            delay = max(0.0, self.claims.expires - time.time())
            self._expiry = exchange.state.loop.call_later(delay, self._token_expired)
        try:
            headers = _HEADERS + [(n.lower().encode(), v.encode("latin-1")) for n, v in cors]
            exchange.start(200, headers)
            preamble, self._preamble = self._preamble or [], None
            exchange.write(b"".join(preamble) or PING)
            self.wire = exchange.chunk_wire()
            for rule, context in list(self.channels.values()):
                await hub.join(rule, context)
        except ClientDisconnected:
            self.ended = True
        except BaseException:
            self.ended = True
            self._finish()
            raise
        self._running = True
        # In the server's context: a copy of the handler's would be kept as long as the stream.
        exchange.wait_disconnected().add_done_callback(
            self._client_left, context=exchange.state.context
        )
        hub.sse_heartbeat.add(self, hub.settings.sse_heartbeat)
        if self.ended or exchange.disconnected:
            self._finish()
        else:
            self._pump()  # what was held back while joining

    def _pump(self) -> None:
        """Offer what the outbox holds back; while some is left, look again once the client
        has taken some (or soon, if the connection is not behind)."""
        if not self._running or self.ended:
            return
        outbox = self._outbox
        if outbox is not None:
            outbox.drained()
            if outbox.pending:
                self._wait_for_room()
                return
            if outbox.idle:
                self._outbox = None
        self._direct_check()

    def _wait_for_room(self) -> None:
        """Call `_pump` again once the client has taken some (or soon, if the connection is
        not behind)."""
        exchange = self.exchange
        if exchange.writing_paused:
            if self._drain is None:
                self._drain = asyncio.ensure_future(exchange.drain())
                self._drain.add_done_callback(self._drained)
        elif self._retry is None:  # a message bigger than the room left
            self._retry = exchange.state.loop.call_later(0.01, self._retried)

    def _drained(self, drain: asyncio.Future[None]) -> None:
        self._drain = None
        if not drain.cancelled() and drain.exception() is not None:
            self._end()  # the client left while behind
        else:
            self._pump()

    def _retried(self) -> None:
        self._retry = None
        self._pump()

    def _client_left(self, _: asyncio.Future[None]) -> None:
        self._end()

    def beat(self) -> None:
        """The heartbeat: a ping, unless something is held back or there is no room."""
        if not self.ended and not self._holding() and self._room(len(PING)):
            self._queue(PING)

    def _finish(self) -> None:
        """End the response (with the last word, if any, or cut short for a slow client) and
        let go of everything (once)."""
        if self._done:
            return
        self._done = self.ended = True
        exchange = self.exchange
        self._block()
        self.flush()
        self._out = None  # a flush still scheduled finds nothing
        exchange.wait_disconnected().remove_done_callback(self._client_left)
        self.hub.sse_heartbeat.discard(self)
        if self._drain is not None:
            self._drain.remove_done_callback(self._drained)
        for pending in (self._drain, self._retry, self._expiry):
            if pending is not None:
                pending.cancel()
        self._drain = self._retry = self._expiry = None
        unwatch_shutdown(self.request, self)
        self._close()
        if not exchange.started:
            return  # failed before the head went out: the handler's error is the answer
        if not exchange.closed:
            last_word = self._last_word
            if last_word is not None and self._room(len(last_word)):
                with contextlib.suppress(ClientDisconnected):
                    exchange.write(last_word)
            if self._slow:  # what is queued is not worth waiting for: drop it all
                exchange.abort()
        exchange.end()

    def _holding(self) -> bool:
        """Publications are held back for the client."""
        outbox = self._outbox
        return outbox is not None and outbox.pending > 0

    def _room(self, size: int) -> bool:
        exchange = self.exchange
        if exchange.closed:
            return False
        queued = self._out_bytes if self._out is not None else exchange.buffered()
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
        # _room and _queue, inlined: this runs once per delivery to every stream. Whether the
        # connection is closed is asked for the tick's first event only (one closing later in
        # the tick makes the flush find it so).
        if self.direct_after != BLOCKED:
            self._block()
        size = len(data)
        out = self._out
        if out is None:
            exchange = self.exchange
            if exchange.closed:
                return False
            queued = exchange.buffered()
            if queued and queued + size > self._limit:
                return False
            self._out = [data]
            exchange.state.schedule_flush(self)
        else:
            queued = self._out_bytes
            if queued + size > self._limit:
                return False
            out.append(data)
        self._out_bytes = queued + size
        return True

    def _queue(self, data: bytes) -> None:
        """Write `data` with whatever else this loop tick brings (a fan-out of several
        publications at once costs one system call, as on /rt/ws)."""
        if self.direct_after != BLOCKED:
            self._block()
        out = self._out
        if out is None:
            self._out = [data]
            self._out_bytes = self.exchange.buffered() + len(data)
            self.exchange.state.schedule_flush(self)
        else:
            out.append(data)
            self._out_bytes += len(data)

    def flush(self) -> None:
        """Write what was queued, in one piece (ServerState.schedule_flush calls it)."""
        out = self._out
        if out is None:
            return
        self._out = None
        self._out_bytes = 0
        try:  # noqa: SIM105 (suppress() would cost a context manager per flush)
            self.exchange.write(out[0] if len(out) == 1 else b"".join(out))
        except ClientDisconnected:
            pass  # the connection's close ends the stream
        if self.direct_after == BLOCKED:
            self._direct_check()

    def _direct_check(self) -> None:
        """Take shared chunks directly when nothing stands in their way: streaming chunked on
        HTTP/1.1, not ended, nothing queued for this tick's write, nothing held back."""
        outbox = self._outbox
        if (
            self.wire is not None
            and self._running
            and not self.ended
            and self._out is None
            and (outbox is None or outbox.idle)
        ):
            if self.direct_after == BLOCKED:
                self.direct_after = DIRECT
        else:
            self._block()

    def _block(self) -> None:
        """Take no shared chunk directly from now on; the one taken this turn, if it is not
        written yet, goes first in this tick's queue (whatever is queued next goes after it)."""
        self.direct_after = BLOCKED
        shared = self.shared
        if shared is not None:
            self.shared = None
            wire = self.wire
            if not shared.written and wire is not None:
                shared.move(wire.transport)
                wire.bytes_out -= len(shared.frame)  # the flush counts it
                event = shared.event
                self.exchange.response_bytes -= len(event)
                self._queue(event)

    def _close(self) -> None:
        """Leave every channel and give back the user's connection (once)."""
        hub, outbox = self.hub, self._outbox
        if outbox is not None:
            for channel in list(outbox.gathering):
                hub.unsubscribe(self, channel)
            outbox.clear()
            self._outbox = None
        for channel, (rule, context) in self.channels.items():
            hub.unsubscribe(self, channel)
            if self._preamble is None:  # joined
                hub.leave_later(rule, context)
        self.channels.clear()
        if self._counted:
            self._counted = False
            remove_user_connection(hub, self.client.user, self)

    def _end(self, last_word: bytes | None = None) -> None:
        """End the stream: from the loop, not inside whatever called (a Hub delivering, the
        users' set being walked)."""
        if self.ended:
            return
        self.ended = True
        self._block()  # nothing more is taken directly; what was, is written first
        self._last_word = last_word
        if self._running:
            self.exchange.state.loop.call_soon(self._finish)

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
        if (outbox is None or outbox.idle) and self._offer(message.sse_built or message.sse):
            return  # the common case, kept free of a call: room, nothing held or gathered
        if outbox is None:
            outbox = self._outbox = Outbox(self._offer, _EVENT, self.hub.stats)
        if not outbox.deliver(channel, message, rule):
            self._slow_consumer(channel)
        elif outbox.pending and self._drain is None and self._retry is None:
            self._pump()  # arrange to offer what is held once there is room

    def _slow_consumer(self, channel: str) -> None:
        self.hub.stats.slow_disconnected += 1
        log.info("%s slow SSE consumer disconnected on %s", self.client.client, channel)
        self._slow = True
        self._end()

    def deliver_event(self, channel: str, message: Outbound) -> None:
        # A join or leave that does not fit is not kept: presence can be asked again.
        if self._preamble is None and not self.ended and not self._holding():
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
