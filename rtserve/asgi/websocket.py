"""One ASGI `websocket` cycle: the opening handshake decided by the hosted app, then the
messages both ways over rtserve's WebSocket core (`WebSocketConnection`).

The handshake is checked (RFC 6455, origins) before the app sees it. The app's
`websocket.accept` answers 101 with its subprotocol and headers, `websocket.close` before it
403, and the `websocket.http.response` extension any other answer. Inbound messages wait for
the app's `receive()`: the connection hands over the next one only when the app took the last,
so a client that sends faster than the app reads is held by the connection's own bounds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from rtserve.asgi.http import ASGIProtocolError, HTTPCycle
from rtserve.asgi.types import ASGIApp, Message, Scope
from rtserve.protocol.deflate import PerMessageDeflate, negotiate
from rtserve.protocol.websocket import CloseCode
from rtserve.protocol.ws_handshake import HandshakeRequest, response_101
from rtserve.server.exchange import ClientDisconnected, Exchange
from rtserve.server.websocket import OPEN, WebSocketConnection

if TYPE_CHECKING:
    from rtserve.app.websocket import WebSocketRoute

CONNECTING, ACCEPTED, DENIED = range(3)


class WebSocketCycle:
    """receive/send of one WebSocket for the hosted app, and the `WebSocketApp` its
    connection calls once accepted."""

    __slots__ = (
        "_closed",
        "_connect_sent",
        "_connection",
        "_denial",
        "_exchange",
        "_handshake",
        "_inbox",
        "_phase",
        "_route",
        "_waiter",
    )

    def __init__(self, exchange: Exchange, handshake: HandshakeRequest, route: WebSocketRoute):
        self._exchange = exchange
        self._handshake = handshake
        self._route = route
        self._phase = CONNECTING
        self._connect_sent = False
        self._connection: WebSocketConnection | None = None
        self._denial: HTTPCycle | None = None
        # Messages not yet received by the app, each with the future that tells the
        # connection it was taken (at most one: the connection waits for it).
        self._inbox: deque[tuple[Message, asyncio.Future[None] | None]] = deque()
        self._closed: Message | None = None  # the websocket.disconnect, once closed
        self._waiter: asyncio.Future[None] | None = None

    # --- the app's side --------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            if self._inbox:
                message, taken = self._inbox.popleft()
                if taken is not None and not taken.done():
                    taken.set_result(None)
                return message
            if self._closed is not None:
                return self._closed
            if self._phase != ACCEPTED:
                # Nothing can arrive before the accept: wait for the client to leave.
                await self._exchange.wait_disconnected()
                self._closed = _disconnect(CloseCode.ABNORMAL, "")
                continue
            self._waiter = self._exchange.state.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            connection = self._connection
            if connection is None:
                raise ASGIProtocolError("websocket.send before websocket.accept")
            if connection.status != OPEN:
                raise ClientDisconnected("the WebSocket is closed")
            text = message.get("text")
            connection.send((message.get("bytes") or b"") if text is None else text)
            if connection.queued_bytes > connection.high_water:
                await connection.wait_writable()
        elif kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            if self._phase == ACCEPTED:
                assert self._connection is not None
                code = message.get("code") or CloseCode.NORMAL
                self._connection.close(code, message.get("reason") or "")
            elif self._phase == CONNECTING:
                self._phase = DENIED
                self._exchange.respond(403, [], b"")
            else:
                raise ASGIProtocolError("websocket.close after the handshake was denied")
        elif kind.startswith("websocket.http.response."):
            if self._phase == ACCEPTED:
                raise ASGIProtocolError(f"{kind} after websocket.accept")
            self._phase = DENIED
            if self._denial is None:
                self._denial = HTTPCycle(self._exchange)
            await self._denial.send({**message, "type": kind.removeprefix("websocket.")})
        else:
            raise ASGIProtocolError(f"unexpected ASGI message {kind!r} in a websocket cycle")

    def _accept(self, message: Message) -> None:
        if self._phase != CONNECTING:
            raise ASGIProtocolError("websocket.accept out of turn")
        exchange = self._exchange
        if exchange.closed:
            raise ClientDisconnected("client left before the accept")
        self._phase = ACCEPTED
        handshake = self._handshake
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in handshake.subprotocols:
            raise ASGIProtocolError(f"subprotocol {subprotocol!r} was not offered")
        base = exchange.state.settings.websocket
        options = self._route.settings(base)
        deflate = extensions = None
        if options.compression and handshake.extensions:
            negotiated = negotiate(handshake.extensions, self._route.deflate_config(base))
            if negotiated is not None:
                params, extensions = negotiated
                deflate = PerMessageDeflate(params, self._route.deflate_config(base))
        connection = WebSocketConnection(
            exchange.state,
            self,
            options,
            deflate=deflate,
            subprotocol=subprotocol,
            peer=exchange.peer,
        )
        self._connection = connection
        headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
        response = response_101(
            handshake.key, subprotocol=subprotocol, extensions=extensions, headers=headers
        )
        exchange.upgrade(response, connection)

    def finish(self, failed: bool) -> None:
        """The app returned (or raised, `failed`): close what it left open."""
        for _, taken in self._inbox:
            if taken is not None and not taken.done():
                taken.set_result(None)
        self._inbox.clear()
        connection = self._connection
        if connection is not None:
            if connection.status == OPEN:
                code = CloseCode.INTERNAL_ERROR if failed else CloseCode.NORMAL
                connection.close(code, "")
            return
        if self._denial is not None:
            self._denial.finish()
        elif self._phase == CONNECTING and not failed and not self._exchange.closed:
            raise ASGIProtocolError("the ASGI app returned without accepting or closing")

    # --- the connection's side (WebSocketApp) ------------------------------------------------

    def on_open(self) -> None:
        return None

    def on_message(self, message: str | bytes) -> asyncio.Future[None] | None:
        if type(message) is str:
            event: Message = {"type": "websocket.receive", "text": message}
        else:
            event = {"type": "websocket.receive", "bytes": message}
        waiter = self._waiter
        if waiter is not None and not waiter.done() and not self._inbox:
            self._inbox.append((event, None))
            waiter.set_result(None)
            return None
        taken = self._exchange.state.loop.create_future()
        self._inbox.append((event, taken))
        return taken

    def on_close(self, code: int, reason: str) -> None:
        self._closed = _disconnect(code, reason)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_drain(self) -> None:
        return None

    def on_pong(self, data: bytes) -> None:
        return None


def _disconnect(code: int, reason: str) -> Message:
    return {"type": "websocket.disconnect", "code": code, "reason": reason}


async def serve_websocket(
    app: ASGIApp, scope: Scope, exchange: Exchange, handshake: HandshakeRequest, route: Any
) -> None:
    """Run `app` on one WebSocket, from its opening handshake to its close."""
    cycle = WebSocketCycle(exchange, handshake, route)
    try:
        await app(scope, cycle.receive, cycle.send)
    except ClientDisconnected:
        cycle.finish(failed=False)  # a send after the client left: nothing to log
    except BaseException:
        cycle.finish(failed=True)
        raise
    else:
        cycle.finish(failed=False)
