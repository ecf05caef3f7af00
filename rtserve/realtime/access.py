"""The checks every client transport makes (WebSocket, SSE, long polling, HTTP publish).

Verifying a token, running `on_connect`, counting a user's connections, authorising a
subscribe (token channels, `on_subscribe`), the client publish rate; and, for the HTTP
transports, errors as JSON with a fitting status and CORS headers.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from rtserve.app.response import JSONResponse
from rtserve.broker.base import ClientInfo, StreamPosition
from rtserve.realtime.context import ChannelContext, ConnectContext, ConnectResult
from rtserve.realtime.filters import TagFilter, parse_filter
from rtserve.realtime.hub import UserConnection, call_hook
from rtserve.realtime.protocol import (
    CHANNEL_NAME,
    ChannelError,
    ErrorCode,
    check_publishable,
    error_json,
)
from rtserve.realtime.rules import ChannelRule
from rtserve.tokens import TokenClaims, TokenError, TokenExpired, verify

if TYPE_CHECKING:
    from rtserve.app.request import Request
    from rtserve.realtime.hub import Hub
    from rtserve.realtime.settings import ChannelSettings

# The HTTP status of an error's code (docs/protocol.md's table); any other code is 400.
HTTP_STATUS: dict[int, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNKNOWN_CHANNEL: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.LIMIT_EXCEEDED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.BROKER_UNAVAILABLE: 503,
    ErrorCode.NOT_AVAILABLE: 503,
}
MAX_HTTP_BUCKETS = 10000  # rate buckets of HTTP publishers kept (least recently used go)

# --- tokens and connecting ------------------------------------------------------------------


def verify_token(settings: ChannelSettings, token: str) -> TokenClaims:
    """The claims of `token`; ChannelError 109 when expired, 101 when not acceptable."""
    keys = settings.secrets()
    try:
        if not keys:
            raise TokenError("this server accepts no tokens")
        return verify(keys, token)
    except TokenExpired:
        raise ChannelError(ErrorCode.TOKEN_EXPIRED) from None
    except TokenError as exc:
        raise ChannelError(ErrorCode.UNAUTHORIZED, str(exc)) from None


def connect_claims(settings: ChannelSettings, token: str | None) -> TokenClaims | None:
    """The claims of a connection's token, or None without one (101 when one is required)."""
    if token is not None:
        return verify_token(settings, token)
    if settings.require_token:
        raise ChannelError(ErrorCode.UNAUTHORIZED, "a token is required")
    return None


async def run_on_connect(
    hub: Hub, request: Request | None, claims: TokenClaims | None, data: Any = None
) -> ClientInfo:
    """Who a new client is: its token's user and info, as the app's `on_connect` may change
    them (or refuse with ChannelError); a new client id."""
    client, _ = await connect_client(hub, request, claims, data)
    return client


async def connect_client(
    hub: Hub, request: Request | None, claims: TokenClaims | None, data: Any = None
) -> tuple[ClientInfo, Any]:
    """run_on_connect, and the `data` the app's `on_connect` gives back for the client."""
    user = claims.user if claims is not None else None
    info = claims.info if claims is not None else None
    reply = None
    if hub.on_connect is not None:
        result = await call_hook(hub.on_connect, ConnectContext(request, claims, data))
        if isinstance(result, ConnectResult):
            user = result.user if result.user is not None else user
            info = result.info if result.info is not None else info
            reply = result.data
            if reply is not None:
                try:
                    check_publishable(reply)
                except ChannelError as exc:  # the app's bug: an internal error, logged
                    raise TypeError(f"on_connect's ConnectResult.data: {exc.message}") from None
        elif result is not None:
            raise TypeError(f"on_connect returned {result!r}; return a ConnectResult or None")
    return ClientInfo(secrets.token_hex(8), user, info), reply


def add_user_connection(hub: Hub, user: str | None, connection: UserConnection) -> None:
    """One more open connection of `user` (ChannelError 106 over the limit)."""
    if user is None:
        return
    open_ = hub.users.setdefault(user, set())
    limit = hub.settings.max_connections_per_user
    if limit and len(open_) >= limit:
        if not open_:
            del hub.users[user]
        raise ChannelError(ErrorCode.LIMIT_EXCEEDED, "too many connections for this user")
    open_.add(connection)


def remove_user_connection(hub: Hub, user: str | None, connection: UserConnection) -> None:
    if user is None:
        return
    open_ = hub.users.get(user)
    if open_ is not None:
        open_.discard(connection)
        if not open_:
            del hub.users[user]


# --- subscribing and publishing ----------------------------------------------------------


async def authorize_subscribe(
    hub: Hub,
    channel: str,
    client: ClientInfo,
    claims: TokenClaims | None,
    request: Request | None,
    token: str | None = None,
) -> tuple[ChannelRule, ChannelContext, TokenClaims | None]:
    """May `client` subscribe to `channel`? Its rule, the hooks' context, and the claims of
    the subscription `token` when one was given (ChannelError 102, 103, 101/109 if not)."""
    rule, params = hub.rule(channel)
    sub_claims = None
    if rule.token:
        if token is not None:
            claims = sub_claims = verify_token(hub.settings, token)
            if claims.user != client.user:
                raise ChannelError(ErrorCode.PERMISSION_DENIED, "token of another user")
        if claims is None or not claims.allows(channel):
            raise ChannelError(ErrorCode.PERMISSION_DENIED, "token does not allow channel")
    context = ChannelContext(channel, params, client, claims, request)
    if rule.on_subscribe is not None:
        await call_hook(rule.on_subscribe, context)
    return rule, context, sub_claims


class Bucket:
    """Token bucket for one client's publish rate under one rule."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now

    def take(self, rate: float, burst: int, now: float) -> bool:
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def take_rate(hub: Hub, buckets: dict[Any, Bucket], key: Any, rule: ChannelRule) -> None:
    """One publication under `rule` from the client of `key` (ChannelError 111 over the rate).

    An OrderedDict of buckets is kept to MAX_HTTP_BUCKETS, least recently used first out.
    """
    _take(hub, buckets, key, rule.publish_rate, rule.publish_burst)


def take_rpc_rate(hub: Hub, buckets: dict[Any, Bucket]) -> None:
    """One `rpc` call of the connection whose buckets these are (ChannelError 111 over the
    settings' `rpc_rate`)."""
    settings = hub.settings
    _take(hub, buckets, "rpc", settings.rpc_rate, settings.rpc_burst)


def take_address_rate(hub: Hub, address: str) -> None:
    """One client publication from `address`, whatever its connection and channel
    (ChannelError 111 over `publish_rate_per_ip`)."""
    settings = hub.settings
    if settings.publish_rate_per_ip > 0:
        burst = settings.publish_burst_per_ip or math.ceil(settings.publish_rate_per_ip)
        _take(hub, hub.http_buckets, ("ip", address), settings.publish_rate_per_ip, burst)


def _take(hub: Hub, buckets: dict[Any, Bucket], key: Any, rate: float, burst: int) -> None:
    if rate <= 0:
        return
    now = time.monotonic()
    burst = max(burst, 1)
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = Bucket(burst, now)
        if isinstance(buckets, OrderedDict) and len(buckets) > MAX_HTTP_BUCKETS:
            buckets.popitem(last=False)
    elif isinstance(buckets, OrderedDict):
        buckets.move_to_end(key)
    if not bucket.take(rate, burst, now):
        hub.stats.rate_limited += 1
        raise ChannelError(ErrorCode.RATE_LIMITED)


def http_buckets(hub: Hub) -> OrderedDict[Any, Bucket]:
    """The rate buckets of a hub's HTTP publishers (per token user, or per client address)."""
    buckets: OrderedDict[Any, Bucket] = hub.http_buckets
    return buckets


# --- HTTP helpers ---------------------------------------------------------------------------


def http_error(exc: ChannelError, headers: list[tuple[str, str]] | None = None) -> JSONResponse:
    """`{"error": {"code", "message", "temporary", "channel"?}}` with the status that fits the
    code; `channel` when the refusal is of one channel of the request, `temporary` as in a
    protocol 2 session (the same request may pass later)."""
    status = HTTP_STATUS.get(exc.code, 400)
    error = error_json(exc.code, exc.message, exc.temporary)
    if exc.channel is not None:
        error["channel"] = exc.channel
    return JSONResponse({"error": error}, status=status, headers=headers)


@contextlib.contextmanager
def refusing(channel: str) -> Iterator[None]:
    """Name `channel` in a ChannelError raised within (see `http_error`)."""
    try:
        yield
    except ChannelError as exc:
        exc.channel = channel
        raise


def cors_headers(request: Request, settings: ChannelSettings) -> list[tuple[str, str]]:
    """Access-Control-Allow-Origin for a listed Origin (or any, with `*` listed)."""
    allowed = settings.cors_origins
    if not allowed:
        return []
    origin = request.headers.get("origin")
    if origin is None or (origin not in allowed and "*" not in allowed):
        return []
    return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None (101 for another scheme)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ChannelError(ErrorCode.UNAUTHORIZED, "send Authorization: Bearer <token>")
    return given.strip()


def channel_names(request: Request, *, max_channels: int = 64) -> list[str]:
    """The `channel` query parameters, checked (107 when missing, bad or too many)."""
    names = request.query.getall("channel")
    if not names:
        raise ChannelError(ErrorCode.BAD_REQUEST, "give at least one channel=")
    if len(names) > max_channels:
        raise ChannelError(ErrorCode.BAD_REQUEST, f"at most {max_channels} channels")
    for name in names:
        if not CHANNEL_NAME.match(name):
            raise ChannelError(ErrorCode.BAD_REQUEST, f"not a valid channel name: {name[:40]!r}")
    if len(set(names)) != len(names):
        raise ChannelError(ErrorCode.BAD_REQUEST, "a channel is given twice")
    return names


def parse_position_id(value: str) -> tuple[str, StreamPosition]:
    """`CHANNEL:OFFSET:EPOCH` (an SSE event id, a `since` parameter) -> (channel, position)."""
    channel, _, rest = value.strip().rpartition(":")
    channel, _, offset = channel.rpartition(":")
    epoch = rest
    if not channel or not offset.isdigit() or not epoch:
        raise ChannelError(ErrorCode.BAD_REQUEST, "a position is CHANNEL:OFFSET:EPOCH")
    return channel, StreamPosition(int(offset), epoch)


def positions(request: Request, channels: list[str]) -> dict[str, StreamPosition]:
    """The `since` query parameters, by channel (107 for one of a channel not asked for)."""
    out: dict[str, StreamPosition] = {}
    for value in request.query.getall("since"):
        channel, position = parse_position_id(value)
        if channel not in channels:
            raise ChannelError(ErrorCode.BAD_REQUEST, f"since= of a channel not asked: {channel}")
        out[channel] = position
    return out


def tag_filters(request: Request, channels: list[str]) -> dict[str, TagFilter]:
    """The `filter=CHANNEL:JSON` query parameters, by channel, each checked (107 for one of a
    channel not asked for or given twice, 118 for a bad filter)."""
    out: dict[str, TagFilter] = {}
    for value in request.query.getall("filter"):
        channel, colon, text = value.partition(":{")  # a channel name holds no `{`
        if not colon or channel not in channels or channel in out:
            raise ChannelError(
                ErrorCode.BAD_REQUEST, "filter= is CHANNEL:JSON, once per channel asked for"
            )
        with refusing(channel):
            out[channel] = parse_filter("{" + text)
    return out


def connect_data(request: Request) -> Any:
    """The `data` query parameter (JSON, what a WebSocket `connect` carries as `data`) for
    `on_connect`; None without one (107 when it is not JSON)."""
    value = request.query.get("data")
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise ChannelError(ErrorCode.BAD_REQUEST, "data is not JSON") from None


async def http_client(
    hub: Hub, request: Request, token: str | None
) -> tuple[ClientInfo, TokenClaims | None]:
    """Connect an HTTP client: its token (or anonymous when allowed), then `on_connect` with
    the `data` query parameter."""
    claims = connect_claims(hub.settings, token)
    data = connect_data(request)
    return await run_on_connect(hub, request, claims, data), claims


# --- long-lived HTTP answers and server shutdown ---------------------------------------------


class Stoppable(Protocol):
    def stop(self) -> None:
        """End now: the server is shutting down."""


def watch_shutdown(request: Request, item: Stoppable) -> None:
    """Call `item.stop()` when the server serving `request` shuts down (or now, if it is)."""
    state = request.exchange.state
    if state.shutting_down:
        item.stop()
    else:
        state.long_lived.add(item)


def unwatch_shutdown(request: Request, item: Stoppable) -> None:
    """`item` ended by itself: forget it."""
    request.exchange.state.long_lived.discard(item)
