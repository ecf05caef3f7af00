"""WebSocket handlers, the upgrade from HTTP, and `broadcast`.

Subclass `WebSocketHandler`, route it with `app.websocket(path, **options)`, and override
`on_open`, `on_message(message)` and `on_close(code, reason)` (each sync or async). Messages of
one connection reach `on_message` in order. `send(message)` queues one (`await` it to wait for
room in the outbound buffer); `broadcast(handlers, message)` encodes a message once (and
compresses it once) for any number of connections; to a `WebSocketGroup` (a set of handlers
that keeps their transports ready) it touches only the transports of those that can take it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Coroutine, Iterable, Iterator, Mapping, MutableSet, Sequence
from typing import TYPE_CHECKING, Any

from rtserve.errors import HTTPError
from rtserve.protocol.deflate import (
    DeflateConfig,
    PerMessageDeflate,
    compress_for_broadcast,
    negotiate,
)
from rtserve.protocol.websocket import CloseCode, Opcode, encode_frame
from rtserve.protocol.ws_handshake import (
    HandshakeError,
    HandshakeRequest,
    check_origin,
    choose_subprotocol,
    parse_request,
    response_101,
)
from rtserve.server.settings import WebSocketSettings
from rtserve.server.shared_write import NO_TURN, SharedFrame, this_turn
from rtserve.server.websocket import SendResult, WebSocketConnection
from rtserve.server.wire_set import WireSet

if TYPE_CHECKING:
    from rtserve.app.request import Request

WS_OPTIONS = {f.name for f in dataclasses.fields(WebSocketSettings)}
BROADCAST_CONFIG = DeflateConfig()
# Shared frames use the default window: right for every client that did not ask for less.
BROADCAST_WINDOW_BITS = BROADCAST_CONFIG.server_max_window_bits


class WebSocketHandler:
    """One WebSocket connection as the app sees it; subclass and override the `on_*` hooks."""

    def __init__(self, request: Request, path_params: dict[str, Any]) -> None:
        self.request = request
        self.app = request.app
        self.path_params = path_params
        self.connection: WebSocketConnection = None  # type: ignore[assignment]  # set at upgrade

    # --- hooks -----------------------------------------------------------------------------

    def prepare(self) -> Any:
        """Before the upgrade is answered (may be async): raise HTTPError to refuse it with
        that status (401, 403, ...); `self.request` is the upgrade request. The place for
        checking who is connecting, before any WebSocket exists."""
        return None

    def on_open(self) -> Any:
        """The connection is open; may be async."""
        return None

    def on_message(self, message: str | bytes) -> Any:
        """A whole message arrived (str for text, bytes for binary); may be async."""
        return None

    def on_close(self, code: int, reason: str) -> Any:
        """The connection is closed (code 1006 when it ended without a close frame)."""
        return None

    def on_pong(self, data: bytes) -> None:
        """A pong arrived: the answer to `ping(data)` (or to the server's keepalive ping, with
        empty data). Sync; for measuring round trips, say."""

    def on_drain(self) -> None:
        """The outbound buffer went down after filling up: `connection.offer_frame` fits again."""

    # --- actions ---------------------------------------------------------------------------

    def send(self, message: str | bytes) -> SendResult:
        """Queue a message; the result is false if the connection is closing or the message
        was dropped. `await self.send(...)` also waits until the outbound buffer is below its
        high-water mark (flow control for streaming to one client)."""
        connection = self.connection
        return SendResult(connection, connection.send(message))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.connection.close(code, reason)

    def ping(self, data: bytes = b"") -> None:
        self.connection.ping(data)

    @property
    def subprotocol(self) -> str | None:
        return self.connection.subprotocol

    @property
    def closed(self) -> bool:
        return self.connection.status != 0  # not OPEN

    @property
    def close_code(self) -> int:
        return self.connection.close_code


class WebSocketRoute:
    """A WebSocket route's own options: its overrides of `server.websocket` and the
    subprotocols it speaks, in order of preference. The settings they make are resolved once
    per server settings and shared by all the route's connections."""

    __slots__ = ("_resolved", "overrides", "subprotocols")

    def __init__(
        self, overrides: Mapping[str, Any] | None = None, subprotocols: Sequence[str] = ()
    ) -> None:
        self.overrides = dict(overrides or {})
        unknown = set(self.overrides) - WS_OPTIONS
        if unknown:
            raise TypeError(f"unknown WebSocket option(s): {', '.join(sorted(unknown))}")
        if isinstance(subprotocols, str):
            raise TypeError(f"subprotocols is a list of names, not the string {subprotocols!r}")
        self.subprotocols = tuple(subprotocols)
        # (the base settings, the route's settings, its deflate config) of the last base.
        self._resolved: tuple[WebSocketSettings, WebSocketSettings, DeflateConfig] | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> WebSocketRoute:
        """The route of `app.websocket(path, **options)`: overrides, and `subprotocols`."""
        overrides = {k: v for k, v in options.items() if k != "subprotocols"}
        return cls(overrides, options.get("subprotocols") or ())

    def settings(self, base: WebSocketSettings) -> WebSocketSettings:
        """The server's WebSocket settings `base` with this route's overrides."""
        return self._resolve(base)[1]

    def deflate_config(self, base: WebSocketSettings) -> DeflateConfig:
        """The permessage-deflate config of this route's settings over `base`."""
        return self._resolve(base)[2]

    def _resolve(
        self, base: WebSocketSettings
    ) -> tuple[WebSocketSettings, WebSocketSettings, DeflateConfig]:
        resolved = self._resolved
        if resolved is None or resolved[0] is not base:
            options = dataclasses.replace(base, **self.overrides)
            config = DeflateConfig(min_size=options.compression_min_size)
            resolved = self._resolved = (base, options, config)
        return resolved


def settings_contradictions(
    base: WebSocketSettings, routes: Iterable[tuple[str, WebSocketRoute]]
) -> list[str]:
    """`WebSocketSettings.contradictions()` of the server's settings ("server.websocket: ...")
    and of each route (path, options) whose overrides make its own ("route /path: ...")."""
    found = [f"server.websocket: {problem}" for problem in base.contradictions()]
    for path, route in routes:
        problems = route.settings(base).contradictions()
        if problems != base.contradictions():
            found += [f"route {path}: {problem}" for problem in problems]
    return found


def checked_handshake(request: Request, options: WebSocketSettings) -> HandshakeRequest:
    """The opening handshake of `request`, valid (RFC 6455) and from an allowed origin.

    Raises HTTPError (400, 403, 405, 426) when the request cannot be upgraded.
    """
    head = request.exchange.head
    if not head.upgrade:
        raise HTTPError(
            426,
            "this route speaks WebSocket",
            headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
        )
    try:
        handshake = parse_request(head.method, head.version, head.headers)
    except HandshakeError as exc:
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in exc.headers}
        raise HTTPError(exc.status, exc.reason, headers=headers) from None
    if not check_origin(handshake.origin, handshake.host, options.origins, request.scheme):
        raise HTTPError(403, "origin not allowed")
    return handshake


def accept_websocket(
    request: Request,
    handler_class: type[WebSocketHandler],
    params: dict[str, Any],
    route: WebSocketRoute,
) -> Coroutine[Any, Any, None] | None:
    """Validate the opening handshake, run the handler's `prepare`, answer 101 and hand the
    socket to the handler; a coroutine that does the rest when `prepare` is async.

    Raises HTTPError (400, 403, 405, 426, or prepare's) when the request cannot be upgraded.
    """
    base = request.settings.websocket
    options = route.settings(base)
    handshake = checked_handshake(request, options)
    subprotocol = choose_subprotocol(handshake.subprotocols, route.subprotocols)
    deflate = None
    extensions = None
    if options.compression and handshake.extensions:
        config = route.deflate_config(base)
        negotiated = negotiate(handshake.extensions, config)
        if negotiated is not None:
            deflate_params, extensions = negotiated
            deflate = PerMessageDeflate(deflate_params, config)
    handler = handler_class(request, params)
    prepared = handler.prepare()
    upgrade = (handler, options, deflate, subprotocol, handshake.key, extensions)
    if inspect.isawaitable(prepared):
        return _upgrade_when(prepared, *upgrade)
    _upgrade(*upgrade)
    return None


async def _upgrade_when(prepared: Awaitable[Any], *upgrade: Any) -> None:
    await prepared
    _upgrade(*upgrade)


def _upgrade(
    handler: WebSocketHandler,
    options: WebSocketSettings,
    deflate: PerMessageDeflate | None,
    subprotocol: str | None,
    key: str,
    extensions: str | None,
) -> None:
    """Answer 101 and hand the socket to `handler` (unless the client left meanwhile)."""
    exchange = handler.request.exchange
    if exchange.closed:
        return
    connection = WebSocketConnection(
        exchange.state,
        handler,
        options,
        deflate=deflate,
        subprotocol=subprotocol,
        peer=exchange.peer,
    )
    handler.connection = connection
    response = response_101(key, subprotocol=subprotocol, extensions=extensions)
    exchange.upgrade(response, connection)


class SharedMessage:
    """One message encoded once for many connections: the plain frame, and the frame
    compressed once (no context takeover) for every connection that negotiated deflate."""

    __slots__ = ("_opcode", "_payload", "_plain", "_shared")

    def __init__(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._opcode, self._payload = Opcode.TEXT, message.encode("utf-8")
        else:
            self._opcode, self._payload = Opcode.BINARY, bytes(message)
        self._plain: bytes | None = None
        self._shared: bytes | None = None

    @classmethod
    def text(cls, payload: bytes) -> SharedMessage:
        """A text message from its UTF-8 bytes (no decoding round trip)."""
        shared = cls.__new__(cls)
        shared._opcode, shared._payload = Opcode.TEXT, payload
        shared._plain = shared._shared = None
        return shared

    def frame_for(self, conn: WebSocketConnection) -> bytes:
        """The frame to hand to `conn`."""
        deflate = conn.deflate
        if deflate is not None and deflate.should_compress(len(self._payload)):
            if not deflate.params.accepts_broadcast(BROADCAST_WINDOW_BITS):
                # The client asked for a smaller window: compress for it alone.
                return encode_frame(self._opcode, deflate.compress(self._payload), rsv1=True)
            if self._shared is None:
                compressed = compress_for_broadcast(self._payload, BROADCAST_CONFIG)
                self._shared = encode_frame(self._opcode, compressed, rsv1=True)
            return self._shared
        return self.plain_frame()

    def plain_frame(self) -> bytes:
        """The uncompressed frame (for connections without deflate)."""
        plain = self._plain
        if plain is None:
            plain = self._plain = encode_frame(self._opcode, self._payload)
        return plain


def broadcast(
    targets: Iterable[WebSocketHandler | WebSocketConnection], message: str | bytes
) -> int:
    """Send `message` to every target, encoding (and compressing) it once; returns deliveries.

    Connections over their outbound budget are handled by their slow-consumer policy.
    """
    shared = SharedMessage(message)
    plain = shared.plain_frame()
    if isinstance(targets, WebSocketGroup):
        return _broadcast_group(targets, shared, plain)
    loop_turn = this_turn()
    turn = NO_TURN if loop_turn is None else loop_turn.current()
    frame = SharedFrame(plain)  # as shared_write.write_shared: taken without a queue each
    transports = frame.transports
    size = len(plain)
    sent = 0
    last = None
    for target in targets:
        conn = target.connection if isinstance(target, WebSocketHandler) else target
        if conn.direct_after < turn:
            conn.direct_after = turn
            conn.shared = frame
            conn.bytes_counted += size
            transports.append(conn.transport)
            last = conn
        elif conn.send_frame(plain if conn.deflate is None else shared.frame_for(conn)):
            sent += 1
    if last is not None:
        assert loop_turn is not None
        frame.stats = last.state.stats
        loop_turn.frames.append(frame)
    return sent + len(frame.transports)  # each taken frame is written, or queued if moved


Target = WebSocketHandler | WebSocketConnection


def _broadcast_group(group: WebSocketGroup, shared: SharedMessage, plain: bytes) -> int:
    """`broadcast` to a group: its prepared transports, then the others one by one."""
    others, sent = group.wires.write(plain)
    for target in others:
        conn = target.connection if isinstance(target, WebSocketHandler) else target
        if conn.send_frame(plain if conn.deflate is None else shared.frame_for(conn)):
            sent += 1
    return sent


class WebSocketGroup(MutableSet[Target]):
    """A set of handlers (or connections) to `broadcast` to: it keeps the transports of the
    members that can take a shared frame now in one list, so a broadcast walks that list and
    touches the others only (`rtserve.server.wire_set`). Add a handler once it is open."""

    def __init__(self, members: Iterable[Target] = ()) -> None:
        self.wires: WireSet[Target] = WireSet()
        for member in members:
            self.add(member)

    def add(self, value: Target) -> None:
        conn = value.connection if isinstance(value, WebSocketHandler) else value
        self.wires.add(value, conn)

    def discard(self, value: Target) -> None:
        self.wires.remove(value)

    def __contains__(self, value: object) -> bool:
        return value in self.wires

    def __iter__(self) -> Iterator[Target]:
        return iter(list(self.wires))

    def __len__(self) -> int:
        return len(self.wires)
