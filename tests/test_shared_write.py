"""Direct writes of a shared frame (rtserve.server.shared_write, `broadcast()`, the Hub's
fan-out): one `transport.write` per connection that can take the frame now, the full path
(queue, budget, slow-consumer policy, one write per turn) for the others, order kept."""

from __future__ import annotations

import asyncio
from typing import Any

from rtserve import App
from rtserve.app.websocket import WebSocketGroup, broadcast
from rtserve.broker.base import ClientInfo
from rtserve.broker.memory import MemoryBroker
from rtserve.protocol.deflate import DeflateConfig, DeflateParams, PerMessageDeflate
from rtserve.protocol.websocket import encode_text
from rtserve.realtime.filters import parse_filter
from rtserve.realtime.hub import Hub
from rtserve.realtime.outbound import Outbound
from rtserve.realtime.rules import ChannelRule, ChannelRules
from rtserve.realtime.settings import ChannelSettings
from rtserve.server.settings import ServerSettings, WebSocketSettings
from rtserve.server.shared_write import write_shared
from rtserve.server.state import ServerState
from rtserve.server.websocket import BLOCKED, DIRECT, ON_SET, WebSocketConnection


class Transport(asyncio.Transport):
    """Records each write; `stuck` bytes stay in its buffer after every write (a peer that
    does not read), pausing the protocol over the high-water mark as uvloop does."""

    def __init__(self, protocol: WebSocketConnection) -> None:
        super().__init__()
        self.protocol = protocol
        self.writes: list[bytes] = []  # one entry per write or writelines call
        self.buffered = 0
        self.stuck = False
        self.high = 64 * 1024
        self.paused = False
        self.closed = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high if high is not None else self.high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: Any) -> None:
        self.writelines([data])

    def writelines(self, list_of_data: Any) -> None:
        data = b"".join(list_of_data)
        self.writes.append(data)
        if self.stuck:
            self.buffered += len(data)
            if self.buffered > self.high and not self.paused:
                self.paused = True
                self.protocol.pause_writing()

    def drain(self) -> None:
        """The peer read everything."""
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Handler:
    def on_open(self) -> None:
        pass

    def on_message(self, message: str | bytes) -> None:
        pass

    def on_close(self, code: int, reason: str) -> None:
        pass

    def on_drain(self) -> None:
        pass

    def on_pong(self, data: bytes) -> None:
        pass


def open_connection(
    state: ServerState, deflate: PerMessageDeflate | None = None, **options: Any
) -> tuple[WebSocketConnection, Transport]:
    settings = WebSocketSettings(ping_interval=0, compression=False, **options)
    conn = WebSocketConnection(state, Handler(), settings, deflate=deflate)
    transport = Transport(conn)
    conn.connection_made(transport)
    return conn, transport


async def turns(n: int = 2) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def run(scenario: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = ServerState(App(), ServerSettings(access_log=False), loop)
        await scenario(state)

    asyncio.run(main())


def test_one_shared_frame_per_turn_then_the_rest_behind_it_in_one_write() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(state)
        a, b, c, d = (encode_text(x) for x in ("a", "b", "c", "d"))
        assert broadcast([conn], "a") == 1
        assert transport.writes == [] and conn.shared is not None and not conn.shared.written
        await turns(1)
        assert transport.writes == [a] and conn.shared is not None and conn.shared.written
        broadcast([conn], "b")
        broadcast([conn], "c")  # the same turn: queued behind b
        await turns()
        assert transport.writes == [a, b + c]
        broadcast([conn], "d")
        await turns()
        assert transport.writes == [a, b + c, d]
        # Counted as the flush counts: per connection and for the server.
        assert conn.bytes_out == len(a + b + c + d)
        assert state.stats.bytes_sent == len(a + b + c + d)
        assert state.stats.ws_frames_sent == 4

    run(scenario)


def test_a_queued_frame_is_not_overtaken() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(state)
        assert conn.send("reply")
        assert write_shared({"key": conn}, encode_text("push")) == ["key"]
        conn.offer_frame(encode_text("push"))  # what the full path does with it
        await turns()
        assert transport.writes == [encode_text("reply") + encode_text("push")]
        assert write_shared({"key": conn}, encode_text("next")) == []  # taken again
        await turns()
        assert transport.writes[-1] == encode_text("next")

    run(scenario)


def test_a_taken_frame_is_not_overtaken_by_a_reply_a_hold_or_the_close() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(state)
        push, reply = encode_text("push"), encode_text("reply")
        assert write_shared({"key": conn}, push) == []
        assert conn.send("reply")
        await turns()
        assert transport.writes == [push + reply]  # one write, in order
        assert write_shared({"key": conn}, push) == []
        conn.hold_direct(True)
        await turns()
        assert transport.writes[-1] == push
        conn.hold_direct(False)
        assert write_shared({"key": conn}, push) == []
        conn.close(1001, "")
        await turns()
        assert transport.writes[-1].startswith(push + b"\x88")  # then the close frame
        assert conn.direct_after == BLOCKED and conn.shared is None
        assert state.stats.ws_frames_sent == 5

    run(scenario)


def test_a_paused_transport_meets_the_budget_and_the_slow_consumer_policy() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(
            state, max_queued_bytes=256 * 1024, max_message_size=64 * 1024
        )
        transport.stuck = True
        big = "x" * 40000
        broadcast([conn], big)  # taken: 40 kB left in the transport, under high water
        await turns()
        broadcast([conn], big)  # taken again: 80 kB, over 64 kB: paused
        await turns()
        assert transport.paused and conn.direct_after == BLOCKED
        assert len(transport.writes) == 2
        # Paused: the budget path (80 kB buffered + 40 kB queued fits in 256 kB).
        assert broadcast([conn], big) == 1
        await turns()
        assert len(transport.writes) == 3 and conn.direct_after == BLOCKED
        sent = 0
        for _ in range(10):  # 120 kB buffered: the budget refuses, the policy closes
            sent += broadcast([conn], big)
            await turns()
        assert sent == 3
        assert conn.status != 0 and state.stats.ws_slow_closed == 1

    run(scenario)


def test_resume_writing_allows_shared_frames_again() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(state)
        transport.stuck = True
        broadcast([conn], "x" * 70000)  # one frame over high water: taken, then paused
        await turns()
        assert conn.direct_after == BLOCKED
        transport.stuck = False
        transport.drain()
        broadcast([conn], "y")
        assert conn.shared is not None and not conn.shared.written
        await turns()
        assert transport.writes[-1] == encode_text("y")

    run(scenario)


def test_no_shared_frame_taken_with_a_write_delay_deflate_or_a_hold() -> None:
    async def scenario(state: ServerState) -> None:
        delayed, transport = open_connection(state, write_delay=0.01)
        assert delayed.direct_after == BLOCKED
        assert broadcast([delayed], "a") == 1 and delayed.shared is None
        deflate = PerMessageDeflate(DeflateParams(True, True, 15, 15), DeflateConfig())
        deflating, transport = open_connection(state, deflate)
        assert deflating.direct_after == BLOCKED
        text = "compress me " * 100
        assert broadcast([deflating], text) == 1 and deflating.shared is None
        await turns()
        assert len(transport.writes) == 1 and len(transport.writes[0]) < len(text)
        held, transport = open_connection(state)
        held.hold_direct(True)
        assert broadcast([held], "a") == 1 and held.shared is None
        held.hold_direct(False)
        assert broadcast([held], "b") == 1 and held.shared is None  # behind a, this turn
        await turns()
        assert transport.writes == [encode_text("a") + encode_text("b")]

    run(scenario)


class Subscriber:
    """A Hub subscriber; with `wire`, one whose connection the Hub may write to directly."""

    def __init__(self, name: str, wire: WebSocketConnection | None = None) -> None:
        self.client = ClientInfo(name)
        self.got: list[int] = []  # offsets handed over by `deliver` (the full path)
        if wire is not None:
            self.wire = wire

    def deliver(self, channel: str, message: Outbound, rule: ChannelRule) -> None:
        self.got.append(message.offset)

    def deliver_event(self, channel: str, message: Outbound) -> None:
        pass

    def end_subscription(self, channel: str, code: int, message: str) -> None:
        pass


def test_the_hub_writes_to_the_wires_that_allow_it_and_delivers_to_the_others() -> None:
    async def scenario(state: ServerState) -> None:
        rules = ChannelRules()
        rules.add(ChannelRule("c:*", filters=True))
        hub = Hub(rules, MemoryBroker(), ChannelSettings())
        await hub.start()
        (fast, fast_t), (held, held_t) = open_connection(state), open_connection(state)
        held.hold_direct(True)
        a, b, c = Subscriber("a", fast), Subscriber("b", held), Subscriber("c")
        for sub in (a, b, c):
            await hub.subscribe(sub, "c:1")
        await hub.publish("c:1", 1)  # past the subscribers' floors: the full path for all
        assert (a.got, b.got, c.got) == ([1], [1], [1])
        await turns()
        await hub.publish("c:1", 2)
        await turns()
        frame = fast_t.writes[-1]
        assert b'"offset":2' in frame and fast.bytes_out == len(frame)
        assert (a.got, b.got, c.got) == ([1], [1, 2], [1, 2]) and held_t.writes == []
        assert hub.stats.deliveries == 6
        # A filter on the channel: the full path, per subscriber.
        d = Subscriber("d", open_connection(state)[0])
        await hub.subscribe(d, "c:1", tag_filter=parse_filter({"eq": ["k", "v"]}))
        await turns()
        await hub.publish("c:1", 3)
        await hub.publish("c:1", 4, tags={"k": "v"})
        assert (a.got, d.got) == ([1, 3, 4], [4])
        hub.unsubscribe(d, "c:1")
        hub.unsubscribe(a, "c:1")
        await turns()
        writes = len(fast_t.writes)
        await hub.publish("c:1", 5)
        await turns()
        assert len(fast_t.writes) == writes and (b.got, c.got) == ([1, 2, 3, 4, 5],) * 2
        await hub.close()

    run(scenario)


def test_a_target_given_twice_gets_the_message_twice_in_one_write() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(state)
        assert broadcast([conn, conn], "a") == 2  # the second is queued behind the first
        await turns()
        assert transport.writes == [encode_text("a") * 2]
        assert state.stats.ws_frames_sent == 2 and conn.bytes_out == 2 * len(encode_text("a"))

    run(scenario)


# --- prepared lists: a WebSocketGroup's (and a channel's) transports on the fast list ----------


def test_a_group_walks_its_prepared_transports_and_counts_lazily() -> None:
    async def scenario(state: ServerState) -> None:
        opened = [open_connection(state) for _ in range(3)]
        group = WebSocketGroup(conn for conn, _ in opened)
        assert len(group) == 3 and all(conn in group for conn, _ in opened)
        assert all(conn.direct_after == ON_SET for conn, _ in opened)
        a, b = encode_text("a"), encode_text("b")
        assert broadcast(group, "a") == 3
        # Taken on the fast list: no connection marked, their counts already right.
        assert all(conn.shared is None for conn, _ in opened)
        assert [conn.bytes_out for conn, _ in opened] == [len(a)] * 3
        assert all(t.writes == [] for _, t in opened)
        await turns(1)
        assert all(t.writes == [a] for _, t in opened)
        assert broadcast(group, "b") == 3
        await turns(1)
        assert all(t.writes == [a, b] for _, t in opened)
        assert state.stats.ws_frames_sent == 6 and state.stats.bytes_sent == 3 * len(a + b)
        first = opened[0][0]
        group.discard(first)  # off the list: its count settled, then its own
        assert first not in group and first.direct_after == DIRECT
        assert first.bytes_out == len(a + b)
        broadcast(group, "a")
        await turns()
        assert opened[0][1].writes == [a, b] and opened[1][1].writes == [a, b, a]
        assert [conn.bytes_out for conn, _ in opened] == [len(a + b)] + [len(a + b + a)] * 2

    run(scenario)


def test_a_frame_taken_on_the_list_is_not_overtaken_and_a_turn_is_one_write() -> None:
    async def scenario(state: ServerState) -> None:
        (conn, transport), (other, other_t) = open_connection(state), open_connection(state)
        group = WebSocketGroup([conn, other])
        push, reply = encode_text("push"), encode_text("reply")
        broadcast(group, "push")
        assert conn.send("reply")  # takes it off the list, the push queued first
        assert conn.direct_after == BLOCKED
        await turns()
        assert transport.writes == [push + reply] and other_t.writes == [push]
        assert conn.direct_after == ON_SET  # back on the list once its queue is written
        broadcast(group, "push")
        broadcast(group, "b")  # a second publication this turn: behind the first, one write
        broadcast([conn], "c")  # and anything else too
        await turns()
        assert transport.writes[-1] == push + encode_text("b") + encode_text("c")
        assert other_t.writes[-1] == push + encode_text("b")
        broadcast(group, "push")
        conn.hold_direct(True)
        await turns()
        assert transport.writes[-1] == push and conn.direct_after == BLOCKED
        conn.hold_direct(False)
        broadcast(group, "push")
        conn.close(1001, "")
        await turns()
        assert transport.writes[-1].startswith(push + b"\x88")
        assert (
            len(transport.writes) == 4
            and other_t.writes == [push, push + encode_text("b")] + [push] * 2
        )
        assert conn.bytes_out == sum(len(w) for w in transport.writes)
        assert other.bytes_out == sum(len(w) for w in other_t.writes)
        total = sum(len(w) for w in transport.writes + other_t.writes)
        assert state.stats.bytes_sent == total
        assert conn.direct_after == BLOCKED and broadcast(group, "x") == 1

    run(scenario)


def test_a_member_that_joins_after_a_publication_does_not_take_it() -> None:
    async def scenario(state: ServerState) -> None:
        (conn, transport), (late, late_t) = open_connection(state), open_connection(state)
        group = WebSocketGroup([conn])
        broadcast(group, "a")
        group.add(late)
        assert late.direct_after == ON_SET
        late.send("own")  # leaves the list: nothing taken to move
        await turns()
        assert late_t.writes == [encode_text("own")] and late.bytes_out == len(encode_text("own"))
        assert transport.writes == [encode_text("a")]

    run(scenario)


def test_a_paused_member_leaves_the_list_for_the_budget_and_the_policy() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(
            state, max_queued_bytes=256 * 1024, max_message_size=64 * 1024
        )
        group = WebSocketGroup([conn])
        transport.stuck = True
        big = "x" * 40000
        broadcast(group, big)
        await turns()
        broadcast(group, big)  # 80 kB in the transport: paused, off the list
        await turns()
        assert transport.paused and conn.direct_after == BLOCKED
        sent = 0
        for _ in range(10):
            sent += broadcast(group, big)
            await turns()
        assert sent == 4 and conn.status != 0 and state.stats.ws_slow_closed == 1
        transport.stuck = False
        transport.drain()
        assert conn.direct_after == BLOCKED  # closing: never back on the list

    run(scenario)


def test_a_member_of_two_sets_takes_the_per_connection_path() -> None:
    async def scenario(state: ServerState) -> None:
        conn, transport = open_connection(state)
        one, two = WebSocketGroup([conn]), WebSocketGroup()
        assert conn.direct_after == ON_SET
        two.add(conn)
        assert conn.direct_after == DIRECT and not one.wires.fast and not two.wires.fast
        assert broadcast(one, "a") == 1 and broadcast(two, "b") == 1
        await turns()
        assert transport.writes == [encode_text("a") + encode_text("b")]
        one.discard(conn)
        assert conn.direct_after == ON_SET and two.wires.fast == {conn: transport}
        broadcast(two, "c")
        await turns()
        assert transport.writes[-1] == encode_text("c")
        assert conn.bytes_out == len(encode_text("a") + encode_text("b") + encode_text("c"))

    run(scenario)


def test_the_hub_keeps_one_write_per_turn_for_a_subscriber_of_two_channels() -> None:
    async def scenario(state: ServerState) -> None:
        rules = ChannelRules()
        rules.add(ChannelRule("c:*"))
        hub = Hub(rules, MemoryBroker(), ChannelSettings())
        await hub.start()
        (both, both_t), (one, one_t) = open_connection(state), open_connection(state)
        a, b = Subscriber("a", both), Subscriber("b", one)
        for channel in ("c:1", "c:2"):
            await hub.subscribe(a, channel)
        await hub.subscribe(b, "c:1")
        await hub.publish("c:1", 0)  # past the floors
        await hub.publish("c:2", 0)
        await turns()
        assert both.direct_after == DIRECT and one.direct_after == ON_SET
        await hub.publish("c:1", 1)
        await hub.publish("c:2", 2)  # `both` took c:1's frame this turn: the full path
        await turns()
        assert both_t.writes == one_t.writes and b'"c:1"' in both_t.writes[0]
        assert (a.got, b.got) == ([1, 1, 2], [1])
        assert both.bytes_out == len(both_t.writes[0]) and one.bytes_out == len(one_t.writes[0])
        hub.unsubscribe(a, "c:2")
        assert both.direct_after == ON_SET
        await hub.close()

    run(scenario)
