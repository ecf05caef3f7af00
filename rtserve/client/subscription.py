"""Subscription: one channel subscribed by a Client, async-iterable over its
publications, keeping its position and queue."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rtserve.client.delta import DeltaText
from rtserve.client.messages import Position, PresenceEvent, Publication, Unrecovered
from rtserve.protocol.fossil import DeltaError

if TYPE_CHECKING:
    from rtserve.client.connection import Client

log = logging.getLogger("rtserve.client")

END = object()  # StopAsyncIteration: the subscription was ended by unsubscribe() or close()


class Subscription:
    """One channel subscribed by a Client; async-iterable over its publications.

    position: the last position seen (None until subscribed).
    recovered: the `recovered` of the last subscribe that gave `since` (None before one).
    gaps: how many times publications were lost (each is also raised as Unrecovered, except
        with `recover=False`, which asks for no missed publications and only counts them).
    duplicates: publications dropped because their offset was not above `position`.
    skipped: publications the server skipped (offset jumps) that `fill_gaps=False` accepted.
    tag_filter: the subscription's filter over publication tags: the server sends only what
        it matches, so offsets jump over the rest and a jump is no gap.
    delta_errors: times a delta publication did not apply (checksum, or not following the
        offset held): each made the subscription again from `position`, recovering.
    expires: when the subscription token expires (unix seconds; None without one): the server
        ends the subscription then (ClientError 109) unless `refresh(token)` extended it.

    A live push whose offset jumps ahead (the server skipped publications for a slow client)
    or falls back (pushes carry no epoch, so that is how a new epoch of the stream shows) makes
    the subscription again from `position`, as after an overflow; the history fills the gap, or
    Unrecovered says it cannot. `fill_gaps=False` (for channels with the `conflate` policy, whose
    skips are wanted) accepts jumps and just drops what falls back.
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        *,
        recover: bool,
        fill_gaps: bool,
        token: str | None,
        max_queue: int,
        on_presence: Callable[[PresenceEvent], Any] | None,
        presence_diff: bool = False,
        tag_filter: Mapping[str, Any] | None = None,
        delta: bool = False,
    ) -> None:
        self.client = client
        self.channel = channel
        self.recover = recover
        self.fill_gaps = fill_gaps
        self.token = token
        self.max_queue = max(1, max_queue)
        self.on_presence = on_presence
        self.presence_diff = presence_diff
        self.tag_filter = tag_filter  # offsets jump over what it leaves out: no gap
        self.delta = delta  # asks for fossil deltas (each push says whether it is one)
        self._text = DeltaText()
        self.delta_errors = 0  # times a delta did not apply (and the subscription was made again)
        self.position: Position | None = None
        self.expires: float | None = None
        self.recovered: bool | None = None
        self.gaps = 0
        self.duplicates = 0
        self.skipped = 0
        self._queue: deque[Publication | Unrecovered] = deque()
        self._subscribing = False  # a subscribe is waiting for its reply
        self._early: list[tuple[Publication, str | None]] = []  # pushes meanwhile
        self._early_lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._end: object | BaseException | None = None
        self._overflow = False  # publications are being skipped: make it again when drained
        self._resyncing = False

    def __repr__(self) -> str:
        return f"<Subscription {self.channel} at {self.position}>"

    @property
    def ended(self) -> bool:
        return self._end is not None

    async def unsubscribe(self) -> None:
        await self.client.unsubscribe(self.channel)

    async def refresh(self, token: str) -> float | None:
        """Replace the subscription token (`sub_refresh`): Client.sub_refresh."""
        return await self.client.sub_refresh(self.channel, token)

    # --- iteration -------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Publication:
        while True:
            if self._queue:
                item = self._queue.popleft()
                if self._overflow and len(self._queue) <= self.max_queue // 2:
                    self.client._resync(self)
                if isinstance(item, Unrecovered):
                    raise item
                return item
            end = self._end
            if end is END:
                raise StopAsyncIteration
            if isinstance(end, BaseException):
                raise end
            if self._waiter is not None:
                raise RuntimeError("this subscription is already being iterated by another task")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- what the Client hands over --------------------------------------------------------

    def _publication(self, pub: Publication, epoch: str | None = None) -> None:
        """A `pub` push; kept aside while a subscribe is waiting for its reply."""
        if self._subscribing or self.position is None:
            if len(self._early) < self.max_queue:
                self._early.append((pub, epoch))
            else:
                self._early_lost = True
            return
        self._deliver(pub, epoch, live=True)

    def _deliver(self, pub: Publication, epoch: str | None = None, *, live: bool = False) -> None:
        position = self.position
        assert position is not None
        if epoch is not None and epoch != position.epoch:
            # A new life of the stream: its offsets start again.
            since, position = position, Position(pub.offset - 1, epoch)
            self._gap(since, position, report=True)
        if pub.offset <= position.offset:
            self.duplicates += 1
            if live and self.fill_gaps and not self._overflow:
                self._make_again()  # maybe a new epoch: subscribing with since tells
            return
        if self._overflow:
            return  # fetched again when the subscription is made again
        if live and pub.offset > position.offset + 1 and self.tag_filter is None:
            if self.fill_gaps:
                self._make_again()
                return
            self.skipped += pub.offset - position.offset - 1
        if len(self._queue) >= self.max_queue:
            self._overflow = True
            log.info("%s: consumer behind from offset %d", self.channel, pub.offset)
            return
        self.position = Position(pub.offset, position.epoch)
        self._queue.append(pub)
        self._wake()

    def _data_of_delta(self, push: dict[str, Any]) -> bool:
        """Put the data of a `pub` push with `delta` in its `data`; False when it does not
        apply, and the subscription is made again from `position` (recovering)."""
        try:
            push["data"] = self._text.data(push, self.client.max_message_size)
        except (DeltaError, ValueError) as exc:
            if not self._overflow:  # the first of a run: those that follow fail alike
                self.delta_errors += 1
                log.warning("%s: %s", self.channel, exc)
                self._make_again()
            return False
        return True

    def _make_again(self) -> None:
        """Stop queueing and subscribe again from `position`."""
        log.info(
            "%s: offsets out of sequence after %s; subscribing again", self.channel, self.position
        )
        self._overflow = True
        self.client._resync(self)

    def _presence(self, event: PresenceEvent) -> None:
        if self.on_presence is None:
            return
        try:
            self.on_presence(event)
        except Exception:
            log.exception("on_presence of %s failed", self.channel)

    def _gap(self, since: Position | None, position: Position, *, report: bool) -> None:
        self.gaps += 1
        self.position = position
        if report:
            self._queue.append(Unrecovered(self.channel, since, position))
            self._wake()

    def _subscribed(self, result: dict[str, Any], since: Position | None, resumed: bool) -> None:
        """Apply a subscribe result (`resumed`: made again after a reconnect or an overflow)."""
        top = Position(int(result["offset"]), str(result["epoch"]))
        self._text.reset()
        expires = result.get("expires")
        self.expires = float(expires) if expires is not None else None
        self._subscribing = False
        self._overflow = False
        if since is not None:
            self.recovered = bool(result.get("recovered"))
            if self.recovered and since.epoch == top.epoch:
                if self.position is None or self.position.epoch != since.epoch:
                    self.position = since
                for value in result.get("publications") or ():
                    self._deliver(Publication.from_json(self.channel, value))
            else:
                self._gap(since, top, report=True)
        elif resumed and self.position is not None:
            self._gap(self.position, top, report=False)  # recover=False: counted only
        if self.position is None:
            self.position = top
        elif top.offset > self.position.offset and not self._overflow:
            self.position = top  # (the same epoch: a gap above moved it to `top`)
        early, self._early = self._early, []
        for pub, epoch in early:
            self._deliver(pub, epoch)
        if self._early_lost:
            self._early_lost = False
            self._overflow = True
        if self._overflow and len(self._queue) <= self.max_queue // 2:
            self.client._resync(self)  # nobody may pop to trigger it

    def _subscribe_failed(self) -> None:
        self._subscribing = False
        self._early.clear()
        self._early_lost = False

    def _finish(self, end: object | BaseException) -> None:
        if self._end is None:
            self._end = end
            self._wake()
