"""The close handshake's state machine (rtserve.protocol.ws_close): every event in every state,
for both sides, written out here rather than read back from the module's table."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rtserve.protocol.websocket import encode_close
from rtserve.protocol.ws_close import CloseHandshake, CloseState, CloseStep, Tcp

OPEN, SENT, RECEIVED, CLOSED = (
    CloseState.OPEN,
    CloseState.CLOSE_SENT,
    CloseState.CLOSE_RECEIVED,
    CloseState.CLOSED,
)
KEEP, AWAIT, END = Tcp.KEEP, Tcp.AWAIT_CLOSE, Tcp.END

# How each state is reached from OPEN.
REACH: dict[CloseState, Callable[[CloseHandshake], object]] = {
    OPEN: lambda h: None,
    SENT: lambda h: h.close(1000, "bye"),
    RECEIVED: lambda h: h.receive(1001, "away"),
    CLOSED: lambda h: h.lost(),
}
# The events, each with its arguments: ours are 4001/"mine", the peer's 4002/"theirs".
EVENTS: dict[str, Callable[[CloseHandshake], CloseStep]] = {
    "close": lambda h: h.close(4001, "mine"),
    "fail": lambda h: h.fail(4001, "mine"),
    "receive": lambda h: h.receive(4002, "theirs"),
    "lost": lambda h: h.lost(),
}
OURS, ECHO = (4001, "mine"), (4002, "")

# (state, event) -> (next state, close frame sent, TCP), for the server...
SERVER = {
    (OPEN, "close"): (SENT, OURS, AWAIT),
    (OPEN, "fail"): (SENT, OURS, END),
    (OPEN, "receive"): (RECEIVED, ECHO, END),
    (OPEN, "lost"): (CLOSED, None, KEEP),
    (SENT, "close"): (SENT, None, KEEP),
    (SENT, "fail"): (SENT, None, END),
    (SENT, "receive"): (RECEIVED, None, END),
    (SENT, "lost"): (CLOSED, None, KEEP),
    (RECEIVED, "close"): (RECEIVED, None, KEEP),
    (RECEIVED, "fail"): (RECEIVED, None, END),
    (RECEIVED, "receive"): (RECEIVED, None, KEEP),
    (RECEIVED, "lost"): (CLOSED, None, KEEP),
    (CLOSED, "close"): (CLOSED, None, KEEP),
    (CLOSED, "fail"): (CLOSED, None, KEEP),
    (CLOSED, "receive"): (CLOSED, None, KEEP),
    (CLOSED, "lost"): (CLOSED, None, KEEP),
}
# ...and for the client, which waits for the server to end TCP after the handshake (7.1.1).
CLIENT = {
    **SERVER,
    (OPEN, "receive"): (RECEIVED, ECHO, AWAIT),
    (SENT, "receive"): (RECEIVED, None, AWAIT),
}


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@pytest.mark.parametrize(("state", "event"), list(SERVER))
def test_every_event_in_every_state(client: bool, state: CloseState, event: str) -> None:
    handshake = CloseHandshake(client=client)
    REACH[state](handshake)
    assert handshake.state is state
    step = EVENTS[event](handshake)
    expected = (CLIENT if client else SERVER)[state, event]
    assert (handshake.state, step.send, step.tcp) == expected


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
def test_codes_kept(client: bool) -> None:
    """`first` is the close that started the handshake, `sent` and `received` each side's."""
    ours = CloseHandshake(client=client)
    ours.close(1000, "bye")
    ours.receive(1001, "")
    assert (ours.first, ours.sent, ours.received) == ((1000, "bye"), (1000, "bye"), (1001, ""))
    theirs = CloseHandshake(client=client)
    theirs.receive(4000, "done")
    theirs.close(1000, "late")  # too late: nothing is sent
    assert (theirs.first, theirs.sent, theirs.received) == (
        (4000, "done"),
        (4000, ""),
        (4000, "done"),
    )
    lost = CloseHandshake(client=client)
    lost.lost()
    assert (lost.first, lost.sent, lost.received) == (None, None, None)


def test_a_close_without_status_is_answered_with_an_empty_close() -> None:
    """RFC 6455 5.5.1: the echo of a close frame without a code carries none either."""
    step = CloseHandshake(client=False).receive(1005, "")
    assert step.send == (1005, "")
    assert encode_close(*step.send) == b"\x88\x00"


def test_a_code_that_cannot_be_sent_changes_nothing() -> None:
    handshake = CloseHandshake(client=True)
    with pytest.raises(ValueError, match="1006"):
        handshake.close(1006, "")
    assert (handshake.state, handshake.first, handshake.sent) == (OPEN, None, None)
