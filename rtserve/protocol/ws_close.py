"""The WebSocket close handshake (RFC 6455 5.5.1, 7.1), sans-I/O, for both sides.

Everything that decides the closing of a connection lives in this file: the states, what each
event moves them to, and what the connection must do then. The asyncio layers (the server's
WebSocketConnection, the client's ClientWebSocket) feed it events and carry out its steps.

States: OPEN -> CLOSE_SENT (we sent a close frame: theirs is awaited) or CLOSE_RECEIVED (theirs
came: the handshake is over once we answered) -> CLOSED (the TCP connection is gone).

Events: `close(code, reason)` (we close), `fail(code, reason)` (the peer broke the protocol, or
a policy: send a close frame and drop the connection without waiting for an answer),
`receive(code, reason)` (a close frame arrived, as parsed by the frame reader), `lost()`.

Each returns a `CloseStep`: the close frame to send (`send`: its code and reason, or None), and
what to do with the TCP connection (`tcp`). RFC 6455 7.1.1: the server ends the TCP connection
once the handshake is over, the client waits for it to (and aborts after its close_timeout).
A received close is answered with its own code and no reason (7.4.1; 1005 "no status" with an
empty close frame); the codes a close frame may carry are checked by the frame reader on the
way in and by `encode_close` on the way out (7.4: 1004-1006 and 1015 never travel).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from rtserve.protocol.websocket import CloseCode, close_payload


class CloseState(enum.Enum):
    OPEN = "open"
    CLOSE_SENT = "close sent"  # ours went out; theirs is awaited
    CLOSE_RECEIVED = "close received"  # theirs came (and was answered): the handshake is over
    CLOSED = "closed"  # the TCP connection is gone


class CloseEvent(enum.Enum):
    CLOSE = "close"
    FAIL = "fail"
    RECEIVE = "receive"
    LOST = "lost"


class Reply(enum.Enum):
    NONE = "none"
    OURS = "ours"  # a close frame with the code and reason given to close() or fail()
    ECHO = "echo"  # the code of the close frame received, without its reason


class Tcp(enum.Enum):
    KEEP = "keep"  # nothing changes
    AWAIT_CLOSE = "await close"  # wait for the peer (its close frame, or its end of TCP)
    END = "end"  # end the TCP connection now


@dataclass(frozen=True, slots=True)
class CloseStep:
    """What the connection does after an event: send `send` (code, reason) as a close frame
    when given, then act on `tcp`."""

    send: tuple[int, str] | None
    tcp: Tcp


_S, _E, _R, _T = CloseState, CloseEvent, Reply, Tcp

# (state, event) -> (next state, reply, what happens to TCP), the same for both sides but
# for a close frame received: the server then ends the TCP connection, the client waits
# for the server to (RFC 6455 7.1.1). Events after CLOSED change nothing.
_COMMON: Final[dict[tuple[CloseState, CloseEvent], tuple[CloseState, Reply, Tcp]]] = {
    (_S.OPEN, _E.CLOSE): (_S.CLOSE_SENT, _R.OURS, _T.AWAIT_CLOSE),
    (_S.OPEN, _E.FAIL): (_S.CLOSE_SENT, _R.OURS, _T.END),
    (_S.CLOSE_SENT, _E.CLOSE): (_S.CLOSE_SENT, _R.NONE, _T.KEEP),
    (_S.CLOSE_SENT, _E.FAIL): (_S.CLOSE_SENT, _R.NONE, _T.END),
    (_S.CLOSE_RECEIVED, _E.CLOSE): (_S.CLOSE_RECEIVED, _R.NONE, _T.KEEP),
    (_S.CLOSE_RECEIVED, _E.FAIL): (_S.CLOSE_RECEIVED, _R.NONE, _T.END),
    (_S.CLOSE_RECEIVED, _E.RECEIVE): (_S.CLOSE_RECEIVED, _R.NONE, _T.KEEP),
    **{(state, _E.LOST): (_S.CLOSED, _R.NONE, _T.KEEP) for state in CloseState},
    **{(_S.CLOSED, event): (_S.CLOSED, _R.NONE, _T.KEEP) for event in CloseEvent},
}
SERVER_TRANSITIONS: Final = {
    **_COMMON,
    (_S.OPEN, _E.RECEIVE): (_S.CLOSE_RECEIVED, _R.ECHO, _T.END),
    (_S.CLOSE_SENT, _E.RECEIVE): (_S.CLOSE_RECEIVED, _R.NONE, _T.END),
}
CLIENT_TRANSITIONS: Final = {
    **_COMMON,
    (_S.OPEN, _E.RECEIVE): (_S.CLOSE_RECEIVED, _R.ECHO, _T.AWAIT_CLOSE),
    (_S.CLOSE_SENT, _E.RECEIVE): (_S.CLOSE_RECEIVED, _R.NONE, _T.AWAIT_CLOSE),
}


class CloseHandshake:
    """The close handshake of one connection; `client` picks the side (see the module).

    `sent` and `received` are the (code, reason) of the close frames sent and received, None
    until there is one; `first` is the one that started the handshake (None while OPEN).
    """

    __slots__ = ("_table", "first", "received", "sent", "state")

    def __init__(self, *, client: bool) -> None:
        self._table = CLIENT_TRANSITIONS if client else SERVER_TRANSITIONS
        self.state = CloseState.OPEN
        self.sent: tuple[int, str] | None = None
        self.received: tuple[int, str] | None = None
        self.first: tuple[int, str] | None = None

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> CloseStep:
        """We close: with OPEN, send (code, reason) and await the peer's answer. ValueError
        (and no change) for a code a close frame cannot carry."""
        if self.state is CloseState.OPEN:
            close_payload(code, reason)
        return self._step(CloseEvent.CLOSE, (int(code), reason))

    def fail(self, code: int, reason: str) -> CloseStep:
        """Fail the connection (RFC 6455 7.1.7): the close frame if none was sent, then end."""
        return self._step(CloseEvent.FAIL, (int(code), reason))

    def receive(self, code: int, reason: str) -> CloseStep:
        """The peer's close frame (1005 for one without a code)."""
        return self._step(CloseEvent.RECEIVE, (int(code), reason))

    def lost(self) -> CloseStep:
        """The TCP connection is gone."""
        return self._step(CloseEvent.LOST, None)

    def _step(self, event: CloseEvent, close: tuple[int, str] | None) -> CloseStep:
        state, reply, tcp = self._table[self.state, event]
        if event is CloseEvent.RECEIVE and self.state is not CloseState.CLOSED:
            assert close is not None
            if self.received is None:
                self.received = close
        send: tuple[int, str] | None = None
        if reply is Reply.OURS:
            send = close
        elif reply is Reply.ECHO:
            assert close is not None
            send = (close[0], "")
        if send is not None:
            self.sent = send
        if self.first is None and self.state is CloseState.OPEN and close is not None:
            self.first = close
        self.state = state
        return CloseStep(send, tcp)
