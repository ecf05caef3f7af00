"""One subscriber's slow-consumer buffer, shared by every channel transport (sans-I/O).

The transport hands over two callables: `offer(data) -> bool` queues bytes on its connection
now, or refuses them with nothing else happening; `encode(message)` picks its bytes of an
`Outbound` (the frame or event every subscriber shares: nothing is copied). It calls
`drained()` when its connection has room again. A refusal is handled by the channel rule's
`slow_consumer` policy:

- `disconnect`: `deliver` returns False; the transport ends the connection;
- `drop_oldest`: the message is held; past `max_pending` held, the oldest one is let go
  (counted in `HubStats.dropped`);
- `conflate`: held under (channel, conflation key), replacing an older one of the same key,
  which moves behind the others (counted in `HubStats.conflated`); bounded as `drop_oldest`.

What is held goes out in the order it was held, before anything newer. Publications that
arrive while a subscribe is being answered are gathered instead (`gather`), and handed back
by `gathered` once the reply is out: the ones past the offset that reply stood at.

`idle` (nothing held, nothing gathered) lets a transport offer a publication itself on its
hot path, without the call; `deliver` after a refused offer is correct too (it offers again).
`on_idle(idle)`, if given, is called each time `idle` changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

from rtserve.realtime.hub import HubStats
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.rules import ChannelRule

HeldKey = tuple[str, Any]  # (channel, offset), or (channel, conflation key) for conflate


class Outbox:
    """The messages one subscriber could not take yet, and the policy that bounds them."""

    __slots__ = ("_encode", "_gathering", "_held", "_offer", "_on_idle", "_stats", "idle")

    def __init__(
        self,
        offer: Callable[[bytes], bool],
        encode: Callable[[Outbound], bytes],
        stats: HubStats,
        on_idle: Callable[[bool], None] | None = None,
    ) -> None:
        self._offer = offer
        self._encode = encode
        self._stats = stats
        self._on_idle = on_idle
        # Both made on first need: most connections never hold anything back.
        self._held: OrderedDict[HeldKey, bytes] | None = None
        self._gathering: dict[str, list[Outbound]] | None = None
        self.idle = True  # nothing held, nothing gathered (read-only)

    @property
    def pending(self) -> int:
        """How many messages are held back (at most the largest `max_pending` seen)."""
        held = self._held
        return 0 if held is None else len(held)

    @property
    def gathering(self) -> Collection[str]:
        """The channels whose subscribe is being answered."""
        return () if self._gathering is None else self._gathering.keys()

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> bool:
        """Offer a publication, or gather or hold it; False: the policy says disconnect."""
        gathering = self._gathering
        if gathering is not None:
            gathered = gathering.get(channel)
            if gathered is not None:
                gathered.append(message)
                return True
        data = self._encode(message)
        if not self._held and self._offer(data):
            return True  # the common case: room, and nothing held back
        return self._refused(channel, message, rule, data)

    def drained(self) -> None:
        """The connection has room again: offer what is held, oldest first, while it fits."""
        held = self._held
        if not held:
            return
        offer = self._offer
        while held:
            key = next(iter(held))
            if not offer(held[key]):
                return
            del held[key]
        self._settle()

    def gather(self, channel: str) -> None:
        """A subscribe to `channel` is being answered: keep its publications until `gathered`."""
        if self._gathering is None:
            self._gathering = {}
        self._gathering[channel] = []
        self._set_idle(False)

    def gathered(self, channel: str, last: int) -> list[Outbound]:
        """Stop gathering `channel`; its publications past offset `last`, in order."""
        gathering = self._gathering
        if gathering is None:
            return []
        messages = gathering.pop(channel, [])
        if not gathering:
            self._gathering = None
            self._settle()
        return [message for message in messages if message.offset > last]

    def forget(self, channel: str) -> None:
        """Let go of what is held or gathered for `channel` (its subscription ended or failed)."""
        gathering = self._gathering
        if gathering is not None and gathering.pop(channel, None) is not None and not gathering:
            self._gathering = None
        held = self._held
        if held:
            for key in [key for key in held if key[0] == channel]:
                del held[key]
        self._settle()

    def clear(self) -> None:
        """The connection is gone: let go of everything held and gathered, and of its offer
        (a transport's bound method: kept, it would be a cycle for the garbage collector)."""
        self._held = None
        self._gathering = None
        self._offer = _refuse
        self._set_idle(True)
        self._on_idle = None  # it is its owner's: no cycle left once cleared

    def _refused(self, channel: str, message: Outbound, rule: ChannelRule, data: bytes) -> bool:
        """`data` did not fit, or others are held before it."""
        disconnect = rule.slow_consumer == "disconnect"
        if self._held:
            self.drained()
            if self._held and not disconnect:
                self._hold(channel, message, rule, data)  # behind what is held, in order
                return True
            # Nothing held any more, or this channel holds nothing (disconnect): try it now.
            if self._offer(data):
                return True
        if disconnect:
            return False
        self._hold(channel, message, rule, data)
        return True

    def _hold(self, channel: str, message: Outbound, rule: ChannelRule, data: bytes) -> None:
        if message.whole is not None:  # a delta: held in full, as it may be dropped or replaced
            data = self._encode(message.whole)
        held = self._held
        if held is None:
            held = self._held = OrderedDict()
        self._set_idle(False)
        key: HeldKey
        if rule.slow_consumer == "conflate":
            key = (channel, message.key)
            if key in held:
                self._stats.conflated += 1
                held.move_to_end(key)  # so what is held stays in offset order
        else:
            key = (channel, message.offset)
        held[key] = data
        if len(held) > rule.max_pending:
            held.popitem(last=False)
            self._stats.dropped += 1

    def _settle(self) -> None:
        self._set_idle(not self._held and self._gathering is None)

    def _set_idle(self, idle: bool) -> None:
        if idle is not self.idle:
            self.idle = idle
            if self._on_idle is not None:
                self._on_idle(idle)


def _refuse(data: bytes) -> bool:
    """The offer of a connection that is gone."""
    return False
