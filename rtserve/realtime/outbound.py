"""A push encoded once for every local subscriber of a channel: its JSON, its WebSocket frame,
its Server-Sent Event and its long-poll answer, each built once (on first use) and shared."""

from __future__ import annotations

from typing import Any

from rtserve.app.response import dump_json
from rtserve.app.websocket import SharedMessage
from rtserve.broker.base import ClientInfo, Publication
from rtserve.realtime.protocol import encode_presence_diff, publication_json

__all__ = ["Outbound", "PresenceOutbound", "sse_event"]


class Outbound:
    """One push encoded once for every local subscriber: JSON bytes and the shared frame.

    `sse` is the same push as a Server-Sent Event, built on first use and then shared too
    (`sse_built`: it, or None before the first use, read without a property call);
    `publication` is what a `pub` push carries (for long polls), and `poll_answer` the whole
    answer of every long poll this publication alone releases. A delta push has `whole`, the
    same publication in full, which is what a subscriber's outbox holds back instead (a held
    push may be dropped or conflated: the next one must not depend on it).
    """

    __slots__ = (
        "_poll",
        "channel",
        "epoch",
        "event",
        "key",
        "offset",
        "payload",
        "plain",
        "poll_release",
        "publication",
        "sse_built",
        "whole",
        "ws",
    )

    def __init__(
        self,
        payload: bytes,
        offset: int = 0,
        key: Any = None,
        *,
        event: str = "pub",
        channel: str | None = None,
        epoch: str | None = None,
        publication: Publication | None = None,
    ) -> None:
        self.payload = payload
        self.offset = offset
        self.key = key  # what conflation keeps the latest of
        self.event = event
        self.channel = channel
        self.epoch = epoch
        self.publication = publication
        self.whole: Outbound | None = None
        self.sse_built: bytes | None = None
        self._poll: bytes | None = None
        self.poll_release: Any = None  # the long polls it releases (realtime/poll.py's)
        self.ws = SharedMessage.text(payload)
        self.plain = self.ws.plain_frame()  # the frame for connections without deflate

    @property
    def sse(self) -> bytes:
        """`id: CHANNEL:OFFSET:EPOCH` (publications only), `event:` and `data:` lines."""
        sse = self.sse_built
        if sse is None:
            sse = self.sse_built = sse_event(
                self.event, self.payload, self.channel, self.epoch, self.offset
            )
        return sse

    @property
    def poll_answer(self) -> bytes:
        """`{"channels": {CHANNEL: {publications: [this one], offset, epoch, recovered}}}`:
        built once, then the very bytes of every poll of this channel waiting at the offset
        before it."""
        answer = self._poll
        if answer is None:
            assert self.publication is not None and self.channel is not None
            position = {
                "publications": [publication_json(self.publication)],
                "offset": self.offset,
                "epoch": self.epoch,
                "recovered": True,
            }
            answer = self._poll = dump_json({"channels": {self.channel: position}})
        return answer


class PresenceOutbound(Outbound):
    """A join, leave or digest push that also knows who came and went, for the sessions that
    asked for `presence_diff` pushes instead (built on first use, then shared)."""

    __slots__ = ("_diff", "joins", "leaves")

    def __init__(
        self, payload: bytes, event: str, joins: list[ClientInfo], leaves: list[ClientInfo]
    ) -> None:
        super().__init__(payload, event=event)
        self.joins = joins
        self.leaves = leaves
        self._diff: Outbound | None = None

    def diff(self, channel: str) -> Outbound:
        """The same event as a `presence_diff` push (grouped by user)."""
        diff = self._diff
        if diff is None:
            payload = encode_presence_diff(channel, self.joins, self.leaves)
            diff = self._diff = Outbound(payload, event="presence_diff")
        return diff


def sse_event(
    event: str,
    payload: bytes,
    channel: str | None = None,
    epoch: str | None = None,
    offset: int = 0,
) -> bytes:
    """One Server-Sent Event; with a channel and epoch it has the id `CHANNEL:OFFSET:EPOCH`."""
    head = b""
    if channel is not None and epoch is not None:
        head = f"id: {channel}:{offset}:{epoch}\n".encode()
    return b"%sevent: %s\ndata: %s\n\n" % (head, event.encode(), payload)
