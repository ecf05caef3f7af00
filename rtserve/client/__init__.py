"""An asyncio client of rtserve's channel protocol (rtserve.realtime.protocol), for services
and tests.

    async with Client("ws://127.0.0.1:8000/rt/ws", token=token) as client:
        sub = await client.subscribe("chat:lobby")
        offset, epoch = await client.publish("chat:lobby", {"text": "hi"})
        async for pub in sub:               # Publication(channel, offset, data, info)
            ...

Commands are matched to replies by id; a refusal raises `ClientError(code, message)`. Each
`Subscription` keeps its last position (offset, epoch) and drops any publication at or below
it, so nothing is seen twice; a live push out of sequence (an offset jump: the server skipped
some; or one falling back: a new epoch) makes the subscription again from its position (see
Subscription).

With `reconnect=True` (the default), a connection that ends without `close()` is opened again
with exponential backoff and jitter; `connect` is sent again, carrying every subscription with
`since` = its last position (one round trip), so the publications missed meanwhile arrive
first. When the server cannot give them (`recovered: false`), the subscription's iterator raises
`Unrecovered` once, at the point of the gap; iterating again continues from the new position.
Commands in flight when the connection drops raise `Disconnected` (a publish may or may not have
landed); commands issued while reconnecting wait for the new connection (up to
`request_timeout`). Close codes that retrying cannot fix (4000, 4001, 4003, 4005, and 4002
without `get_token`) and a refused `connect` stop the client: pending calls and every
subscription's iterator then raise `Disconnected` or the `ClientError`.

Every queue is bounded: the WebSocket keeps at most 64 messages before it stops reading, and a
subscription at most `max_queue` publications. A subscription whose consumer falls behind stops
queueing; once its consumer has caught up halfway, it is made again with `since` (unsubscribe,
subscribe), so the publications it skipped come from the channel's history — or `Unrecovered`
says they cannot. Join, leave and presence digest pushes go to the subscription's
`on_presence` callback.
"""

from __future__ import annotations

from rtserve.client.connection import Client
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
    Unrecovered,
)
from rtserve.client.subscription import Subscription

__all__ = [
    "Client",
    "ClientError",
    "ClientInfo",
    "Disconnected",
    "History",
    "Join",
    "Leave",
    "Position",
    "PresenceDiff",
    "PresenceDigest",
    "PresenceEvent",
    "PresenceStats",
    "Publication",
    "Subscription",
    "Unrecovered",
]
