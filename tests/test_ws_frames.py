"""RFC 6455 framing: tables of client streams fed whole, byte by byte and in random splits."""

from __future__ import annotations

import random
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.frames import Opcode as WSOpcode
from websockets.protocol import State
from websockets.uri import parse_uri

from rtserve.errors import RtserveError
from rtserve.protocol.websocket import (
    BinaryMessage,
    CloseCode,
    CloseReceived,
    Event,
    FrameReader,
    Opcode,
    Ping,
    Pong,
    TextMessage,
    WebSocketProtocolError,
    encode_binary,
    encode_client_frame,
    encode_close,
    encode_frame,
    encode_ping,
    encode_pong,
    encode_text,
    mask_payload,
    parse_close_payload,
)

MASK = bytes.fromhex("37fa213d")  # the mask of the RFC 6455 section 5.7 examples
TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION
CLOSE, PING, PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG


def client(opcode: int, payload: bytes = b"", **kw: object) -> bytes:
    return encode_client_frame(opcode, payload, mask=MASK, **kw)  # type: ignore[arg-type]


def run(
    data: bytes, chunks: list[int] | None = None, **options: Any
) -> tuple[list[Event], WebSocketProtocolError | None]:
    """Feed `data` in pieces of the given sizes (None: whole); the events and any error."""
    reader = FrameReader(**options)
    pieces = [data]
    if chunks is not None:
        pieces, pos = [], 0
        for size in chunks:
            pieces.append(data[pos : pos + size])
            pos += size
        pieces.append(data[pos:])
    events: list[Event] = []
    for piece in pieces:
        try:
            events.extend(reader.feed(piece))
        except WebSocketProtocolError as exc:
            events.extend(exc.events)
            with pytest.raises(WebSocketProtocolError) as again:
                reader.feed(b"")
            assert again.value.code == exc.code  # the reader stays dead
            return events, exc
    return events, None


def random_chunks(size: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    chunks = []
    while size > 0:
        chunks.append(rng.randint(1, max(1, min(size, 40))))
        size -= chunks[-1]
    return chunks


def all_splits(data: bytes, **options: Any) -> tuple[list[Event], int | None]:
    """Feed whole, byte by byte and in random splits; all must agree. Events, error code."""
    splits = {"whole": None, "bytes": [1] * len(data)}
    for seed in range(3):
        splits[f"random {seed}"] = random_chunks(len(data), seed)
    results = {}
    for name, chunks in splits.items():
        events, error = run(data, chunks, **options)
        results[name] = (events, error.code if error else None)
    for name, result in results.items():
        assert result == results["whole"], name
    return results["whole"]


def inflate(payload: bytes, max_size: int) -> bytes:
    """A decompress callback for tests: one raw deflate stream per message."""
    data = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff", max_size + 1)
    if len(data) > max_size:
        raise WebSocketProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big")
    return data


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# --- RFC 6455 section 5.7 examples -----------------------------------------------------------

BIG256 = bytes(range(256))
BIG64K = bytes(range(256)) * 256

GOOD = [
    (
        "rfc masked Hello",
        bytes.fromhex("818537fa213d7f9f4d5158"),
        [TextMessage("Hello")],
    ),
    (
        "fragmented Hel+lo",
        client(TEXT, b"Hel", fin=False) + client(CONT, b"lo"),
        [TextMessage("Hello")],
    ),
    ("rfc masked pong Hello", bytes.fromhex("8a8537fa213d7f9f4d5158"), [Pong(b"Hello")]),
    ("ping Hello", client(PING, b"Hello"), [Ping(b"Hello")]),
    ("256 bytes binary", client(BINARY, BIG256), [BinaryMessage(BIG256)]),
    ("64 KiB binary", client(BINARY, BIG64K), [BinaryMessage(BIG64K)]),
    ("empty text", client(TEXT), [TextMessage("")]),
    ("empty binary", client(BINARY), [BinaryMessage(b"")]),
    ("125 bytes", client(BINARY, b"x" * 125), [BinaryMessage(b"x" * 125)]),
    ("126 bytes", client(BINARY, b"x" * 126), [BinaryMessage(b"x" * 126)]),
    ("65535 bytes", client(BINARY, b"x" * 65535), [BinaryMessage(b"x" * 65535)]),
    ("utf-8 text", client(TEXT, "κόσμε €".encode()), [TextMessage("κόσμε €")]),
    (
        "utf-8 split inside a character across fragments",
        client(TEXT, b"\xce", fin=False)
        + client(CONT, b"\xba\xe2", fin=False)
        + client(CONT, b"\x82\xac"),
        [TextMessage("κ€")],
    ),
    (
        "control frames between fragments",
        client(BINARY, b"a", fin=False)
        + client(PING, b"1")
        + client(CONT, b"b", fin=False)
        + client(PONG, b"2")
        + client(CONT, b"c")
        + client(TEXT, b"next"),
        [Ping(b"1"), Pong(b"2"), BinaryMessage(b"abc"), TextMessage("next")],
    ),
    (
        "empty fragments",
        client(TEXT, fin=False) + client(CONT, fin=False) + client(CONT, b"x") + client(TEXT),
        [TextMessage("x"), TextMessage("")],
    ),
    (
        "non-minimal 16-bit length",
        bytes([0x81, 0xFE, 0, 5]) + MASK + mask_payload(b"Hello", MASK),
        [TextMessage("Hello")],
    ),
    (
        "non-minimal 64-bit length on a ping",
        bytes([0x89, 0xFF]) + (5).to_bytes(8, "big") + MASK + mask_payload(b"Hello", MASK),
        [Ping(b"Hello")],
    ),
    ("close without payload", client(CLOSE), [CloseReceived(1005, "")]),
    ("close 1000", client(CLOSE, b"\x03\xe8"), [CloseReceived(1000, "")]),
    (
        "close with reason",
        client(CLOSE, b"\x0f\xa0bye \xe2\x82\xac"),
        [CloseReceived(4000, "bye €")],
    ),
    (
        "nothing after close",
        client(CLOSE, b"\x03\xe8") + client(TEXT, b"ignored") + b"\x00garbage",
        [CloseReceived(1000, "")],
    ),
    ("an incomplete frame is waited for", client(TEXT, b"Hello")[:-1], []),
]


@pytest.mark.parametrize(("name", "data", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_good_streams(name: str, data: bytes, expected: list[Event]) -> None:
    assert all_splits(data) == (expected, None)


def test_rfc_server_examples() -> None:
    assert encode_text("Hello") == bytes.fromhex("810548656c6c6f")
    assert encode_frame(TEXT, b"Hel", fin=False) == bytes.fromhex("010348656c")
    assert encode_frame(CONT, b"lo") == bytes.fromhex("80026c6f")
    assert encode_ping(b"Hello") == bytes.fromhex("890548656c6c6f")
    assert encode_pong(b"Hello") == bytes.fromhex("8a0548656c6c6f")
    assert encode_binary(BIG256) == bytes.fromhex("827e0100") + BIG256
    assert encode_binary(BIG64K) == bytes.fromhex("827f0000000000010000") + BIG64K
    assert client(TEXT, b"Hello") == bytes.fromhex("818537fa213d7f9f4d5158")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_encoded_lengths_read_back_by_websockets(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    for frame in (encode_binary(payload), encode_frame(BINARY, payload)):
        parsed = _websockets_read(frame)
        assert (parsed.opcode, parsed.data, parsed.fin) == (WSOpcode.BINARY, payload, True)


def _websockets_read(data: bytes) -> Frame:
    """One server frame as the websockets library's client reads it."""
    protocol = ClientProtocol(parse_uri("ws://a.test/"), state=State.OPEN, max_size=None)
    protocol.receive_data(data)
    [frame] = protocol.events_received()
    assert isinstance(frame, Frame)
    return frame


@pytest.mark.parametrize("size", [0, 3, 125, 126, 511, 512, 513, 70000])
def test_frames_from_websockets_are_read(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    text = ("é" * size)[:size]
    frames = Frame(WSOpcode.BINARY, payload).serialize(mask=True, extensions=[])
    frames += Frame(WSOpcode.TEXT, text.encode()).serialize(mask=True, extensions=[])
    events, error = all_splits(frames, max_frame_size=1 << 20)
    assert error is None
    assert events == [BinaryMessage(payload), TextMessage(text)]


# --- violations ------------------------------------------------------------------------------

PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009

BAD = [
    ("rfc unmasked Hello", bytes.fromhex("810548656c6c6f"), PROTOCOL_ERROR),
    ("unmasked ping", encode_ping(b"x"), PROTOCOL_ERROR),
    ("rsv1 without extension", client(TEXT, b"x", rsv1=True), PROTOCOL_ERROR),
    ("rsv2", bytes([0xA1]) + client(TEXT, b"x")[1:], PROTOCOL_ERROR),
    ("rsv3", bytes([0x92]) + client(BINARY, b"x")[1:], PROTOCOL_ERROR),
    ("rsv3 on ping", bytes([0x99]) + client(PING, b"x")[1:], PROTOCOL_ERROR),
    ("fragmented ping", client(PING, b"x", fin=False), PROTOCOL_ERROR),
    ("fragmented close", client(CLOSE, b"\x03\xe8", fin=False), PROTOCOL_ERROR),
    ("ping of 126 bytes", client(PING, b"x" * 126), PROTOCOL_ERROR),
    ("pong of 126 bytes", client(PONG, b"x" * 126), PROTOCOL_ERROR),
    ("close of 126 bytes", client(CLOSE, b"\x03\xe8" + b"x" * 124), PROTOCOL_ERROR),
    ("continuation without a start", client(CONT, b"x"), PROTOCOL_ERROR),
    (
        "continuation after a finished message",
        client(TEXT, b"a") + client(CONT, b"b"),
        PROTOCOL_ERROR,
    ),
    (
        "text inside a fragmented message",
        client(TEXT, b"a", fin=False) + client(TEXT, b"b"),
        PROTOCOL_ERROR,
    ),
    (
        "binary inside a fragmented message",
        client(BINARY, b"a", fin=False) + client(BINARY, b"b"),
        PROTOCOL_ERROR,
    ),
    (
        "64-bit length with the high bit",
        bytes([0x82, 0xFF, 0x80]) + bytes(7) + MASK,
        PROTOCOL_ERROR,
    ),
    (
        "64-bit length, high bit, on a fragment",
        bytes([0x02, 0xFF, 0xFF]) + bytes(7),
        PROTOCOL_ERROR,
    ),
    ("close payload of 1 byte", client(CLOSE, b"\x03"), PROTOCOL_ERROR),
    ("invalid utf-8", client(TEXT, b"\xff"), INVALID_DATA),
    ("overlong utf-8", client(TEXT, b"\xc0\xaf"), INVALID_DATA),
    ("utf-8 surrogate", client(TEXT, b"\xed\xa0\x80"), INVALID_DATA),
    ("utf-8 beyond U+10FFFF", client(TEXT, b"\xf4\x90\x80\x80"), INVALID_DATA),
    ("truncated utf-8 at the end", client(TEXT, b"a\xce"), INVALID_DATA),
    (
        "truncated utf-8 at the end of fragments",
        client(TEXT, b"a", fin=False) + client(CONT, b"\xe2\x82"),
        INVALID_DATA,
    ),
    ("invalid utf-8 in a close reason", client(CLOSE, b"\x03\xe8\xff"), INVALID_DATA),
    (
        "frame too big (header only)",
        bytes([0x82, 0xFF]) + ((1 << 20) + 1).to_bytes(8, "big"),
        TOO_BIG,
    ),
    ("16-bit frame too big (header only)", bytes([0x82, 0xFE, 0xFF, 0xFF]), TOO_BIG),
]
BAD += [
    (f"opcode {op}", client(op, b"x"), PROTOCOL_ERROR) for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
]
BAD += [
    (f"close code {code}", client(CLOSE, code.to_bytes(2, "big")), PROTOCOL_ERROR)
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
]


@pytest.mark.parametrize(("name", "data", "code"), BAD, ids=[b[0] for b in BAD])
def test_violations(name: str, data: bytes, code: int) -> None:
    _, error = all_splits(data, max_frame_size=60000, max_message_size=60000)
    assert error == code


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_close_codes_allowed(code: int) -> None:
    assert all_splits(client(CLOSE, code.to_bytes(2, "big") + b"ok")) == (
        [CloseReceived(code, "ok")],
        None,
    )


def test_violation_reason_and_codes() -> None:
    with pytest.raises(WebSocketProtocolError) as info:
        FrameReader().feed(encode_text("x"))
    assert (info.value.code, info.value.reason) == (1002, "client frame not masked")
    assert isinstance(info.value, RtserveError)


def test_events_before_a_violation_are_kept() -> None:
    reader = FrameReader()
    with pytest.raises(WebSocketProtocolError) as info:
        reader.feed(client(TEXT, b"ok") + client(PING) + client(CONT, b"x"))
    assert info.value.events == [TextMessage("ok"), Ping(b"")]


def test_size_limits_come_from_headers() -> None:
    reader = FrameReader(max_frame_size=100, max_message_size=150)
    head = client(BINARY, b"x" * 101)[:8]  # no payload yet
    with pytest.raises(WebSocketProtocolError) as info:
        reader.feed(head)
    assert (info.value.code, info.value.reason) == (1009, "frame too big")

    reader = FrameReader(max_frame_size=100, max_message_size=150)
    assert reader.feed(client(BINARY, b"x" * 100, fin=False) + client(PING)) == [Ping(b"")]
    with pytest.raises(WebSocketProtocolError) as info:
        reader.feed(client(CONT, b"x" * 51)[:2])
    assert (info.value.code, info.value.reason) == (1009, "message too big")

    reader = FrameReader(max_frame_size=100, max_message_size=50)
    with pytest.raises(WebSocketProtocolError) as info:
        reader.feed(client(TEXT, b"x" * 51)[:2])
    assert info.value.code == 1009

    reader = FrameReader(max_frame_size=100, max_message_size=150)
    data = client(TEXT, b"x" * 100, fin=False) + client(CONT, b"x" * 50)
    assert reader.feed(data) == [TextMessage("x" * 150)]


def test_invalid_utf8_fails_at_the_first_bad_fragment() -> None:
    # Autobahn 6.4.1: "κόσμε" then U+110000 (invalid), sent as fragments; the message must
    # fail when the second fragment arrives, not after the last one.
    valid = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
    bad = b"\xf4\x90\x80\x80"
    assert valid.decode() == "\u03ba\u1f79\u03c3\u03bc\u03b5"
    reader = FrameReader()
    assert reader.feed(client(TEXT, valid, fin=False)) == []
    with pytest.raises(WebSocketProtocolError) as info:
        reader.feed(client(CONT, bad, fin=False))
    assert info.value.code == 1007

    # Autobahn 6.4.2: the invalid sequence starts in the first fragment.
    reader = FrameReader()
    assert reader.feed(client(TEXT, valid + b"\xf4", fin=False)) == []
    with pytest.raises(WebSocketProtocolError):
        reader.feed(client(CONT, b"\x90", fin=False))

    # The whole thing in one unfinished fragment fails at once.
    with pytest.raises(WebSocketProtocolError) as info:
        FrameReader().feed(client(TEXT, valid + bad, fin=False))
    assert info.value.code == 1007


# --- compression (RSV1) ----------------------------------------------------------------------


def test_compressed_messages() -> None:
    text = "compressible " * 20
    data = client(TEXT, deflate(text.encode()), rsv1=True)
    assert all_splits(data, decompress=inflate) == ([TextMessage(text)], None)

    payload = deflate(b"\x00\xff" * 300)
    fragmented = (
        client(BINARY, payload[:5], fin=False, rsv1=True)
        + client(PING, b"p")
        + client(CONT, payload[5:10], fin=False)
        + client(CONT, payload[10:])
        + client(TEXT, b"plain")
    )
    assert all_splits(fragmented, decompress=inflate) == (
        [Ping(b"p"), BinaryMessage(b"\x00\xff" * 300), TextMessage("plain")],
        None,
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (
            client(TEXT, deflate(b"x"), fin=False, rsv1=True) + client(CONT, b"", rsv1=True),
            PROTOCOL_ERROR,
        ),
        (client(PING, b"", rsv1=True), PROTOCOL_ERROR),
        (bytes([0xE1]) + client(TEXT, deflate(b"x"))[1:], PROTOCOL_ERROR),  # RSV1 + RSV2
        (client(TEXT, deflate(b"\xff\xfe"), rsv1=True), INVALID_DATA),
        (client(BINARY, deflate(b"\x00" * 2000), rsv1=True), TOO_BIG),
    ],
)
def test_compressed_violations(data: bytes, code: int) -> None:
    _, error = all_splits(data, decompress=inflate, max_message_size=1000)
    assert error == code


def test_decompress_gets_the_message_limit_and_its_errors_become_close_codes() -> None:
    calls: list[tuple[bytes, int]] = []

    class DeflateLikeError(RtserveError):
        def __init__(self, code: int, reason: str) -> None:
            self.code, self.reason = code, reason

    def failing(payload: bytes, max_size: int) -> bytes:
        calls.append((payload, max_size))
        raise DeflateLikeError(1007, "invalid compressed data")

    reader = FrameReader(max_message_size=777, decompress=failing)
    with pytest.raises(WebSocketProtocolError) as info:
        reader.feed(client(BINARY, b"ab", fin=False, rsv1=True) + client(CONT, b"cd"))
    assert (info.value.code, info.value.reason) == (1007, "invalid compressed data")
    assert calls == [(b"abcd", 777)]


def test_room_holds_back_whole_messages_before_inflating_them() -> None:
    """With `room`, a feed stops once its messages hold that many bytes, before inflating the
    next one; `feed(b"", room)` goes on, and the events are those of one unbounded feed."""
    inflated: list[int] = []

    def counting_inflate(payload: bytes, max_size: int) -> bytes:
        data = inflate(payload, max_size)
        inflated.append(len(data))
        return data

    stream = (
        client(TEXT, b"a" * 40)
        + client(BINARY, deflate(b"b" * 100), rsv1=True)
        + client(PING, b"p")
        + client(TEXT, deflate(b"c" * 100), fin=False, rsv1=True)
        + client(CONT, b"")
        + client(BINARY, b"d" * 10)
    )
    reader = FrameReader(decompress=counting_inflate)
    # control frames and fragments go on; the final frame of the third message waits
    assert reader.feed(stream, 50) == [
        TextMessage("a" * 40),
        BinaryMessage(b"b" * 100),
        Ping(b"p"),
    ]
    assert reader.held_back and inflated == [100]  # the third message is not inflated yet
    assert reader.feed(b"", 0) == [] and reader.held_back  # no room: nothing more
    assert reader.feed(b"", 1) == [TextMessage("c" * 100)]
    assert reader.held_back and inflated == [100, 100]
    assert reader.feed(b"", 1) == [BinaryMessage(b"d" * 10)]
    assert not reader.held_back
    # a frame that is not complete is waited for, not held back
    assert reader.feed(client(TEXT, b"e" * 10)[:-1], 0) == [] and not reader.held_back


# --- encoding --------------------------------------------------------------------------------


def test_encode_close() -> None:
    assert encode_close() == b"\x88\x02\x03\xe8"
    assert encode_close(CloseCode.GOING_AWAY, "bye") == b"\x88\x05\x03\xe9bye"
    assert encode_close(1005) == b"\x88\x00"
    assert encode_close(1005, "dropped") == b"\x88\x00"
    assert encode_close(4001, "x") == b"\x88\x03\x0f\xa1x"
    long_ascii = encode_close(1000, "a" * 200)
    assert long_ascii[1] == 125 and long_ascii.endswith(b"a" * 123)
    two_bytes = encode_close(1000, "é" * 100)  # 200 bytes: cut to 122, not inside a character
    assert two_bytes[1] == 124
    assert parse_close_payload(two_bytes[2:]) == (1000, "é" * 61)
    three_bytes = encode_close(1000, "€" * 50)  # 150 bytes: cut to 123 = 41 characters
    assert parse_close_payload(three_bytes[2:]) == (1000, "€" * 41)
    for code in (999, 1004, 1006, 1015, 2000, 5000):
        with pytest.raises(ValueError):
            encode_close(code)


def test_encode_control_frame_limits() -> None:
    assert encode_ping(b"x" * 125)[:2] == b"\x89\x7d"
    with pytest.raises(ValueError):
        encode_ping(b"x" * 126)
    with pytest.raises(ValueError):
        encode_frame(CLOSE, b"x" * 200)


def test_encode_flags() -> None:
    assert encode_frame(TEXT, b"x", rsv1=True) == b"\xc1\x01x"
    assert encode_frame(BINARY, b"", fin=False) == b"\x02\x00"
    assert encode_client_frame(BINARY, b"", mask=MASK) == b"\x82\x80" + MASK
    frame = encode_client_frame(TEXT, b"abc")
    assert FrameReader().feed(frame) == [TextMessage("abc")]  # a random mask by default


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
@settings(max_examples=200, deadline=None)
def test_mask_payload(data: bytes, mask: bytes) -> None:
    masked = mask_payload(data, mask)
    assert masked == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert mask_payload(masked, mask) == data


# --- properties ------------------------------------------------------------------------------

messages = st.lists(
    st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=0, max_size=6
)
controls = st.lists(st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=125)), max_size=3)


@st.composite
def streams(draw: st.DrawFn, masked: bool = True) -> tuple[bytes, list[Event]]:
    """Random messages in random fragments with control frames between; expected events.
    Client frames (masked), or server frames with `masked=False`."""

    def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
        if masked:
            return encode_client_frame(opcode, payload, fin=fin, mask=mask)
        return encode_frame(opcode, payload, fin=fin)

    data = bytearray()
    expected: list[Event] = []
    for message in draw(messages):
        payload = message.encode() if isinstance(message, str) else message
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = (TEXT if isinstance(message, str) else BINARY) if i == 0 else CONT
            mask = draw(st.binary(min_size=4, max_size=4))
            data += frame(opcode, piece, fin=i == len(pieces) - 1, mask=mask)
            if i < len(pieces) - 1:
                for op, body in draw(controls):
                    data += frame(op, body)
                    expected.append(Ping(body) if op == PING else Pong(body))
        expected.append(
            TextMessage(message) if isinstance(message, str) else BinaryMessage(message)
        )
    return bytes(data), expected


@given(streams(), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_in_any_split(stream: tuple[bytes, list[Event]], rng: random.Random) -> None:
    data, expected = stream
    assert run(data) == (expected, None)
    chunks = [rng.randint(1, 50) for _ in range(len(data) // 10 + 1)]
    assert run(data, chunks) == (expected, None)


@pytest.mark.parametrize("masked", [True, False], ids=["server", "client"])
@given(data=st.data(), split=st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_either_side_any_split_gives_the_same_events(
    masked: bool, data: st.DataObject, split: random.Random
) -> None:
    """The one reader of both sides: a valid stream of client frames (masked=True) or server
    frames (masked=False) gives the same events fed whole, in random pieces, or byte by byte;
    the other side's reader refuses it (1002) unless it is empty."""
    stream, expected = data.draw(streams(masked))
    assert run(stream, masked=masked) == (expected, None)
    chunks = [split.randint(1, 40) for _ in range(len(stream) // 10 + 1)]
    assert run(stream, chunks, masked=masked) == (expected, None)
    assert run(stream, [1] * len(stream), masked=masked) == (expected, None)
    if stream:
        _, failure = run(stream, masked=not masked)
        assert failure is not None and failure.code == 1002


@pytest.mark.parametrize("masked", [True, False], ids=["server", "client"])
@given(data=st.data(), room=st.integers(1, 400), rng=st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_room_gives_the_same_events(
    masked: bool, data: st.DataObject, room: int, rng: random.Random
) -> None:
    """Fed in random pieces with a bound on each call (and `feed(b"", room)` while held
    back), either side's reader yields the events of one unbounded feed; no call returns
    messages of `room` bytes or more before its last."""
    stream, expected = data.draw(streams(masked))
    reader = FrameReader(masked=masked)
    events: list[Event] = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 60)
        got = reader.feed(stream[pos : pos + step], room)
        pos += step
        for _ in range(len(stream)):  # each call with room takes at least one message
            sizes = [len(e.data) for e in got if isinstance(e, TextMessage | BinaryMessage)]
            assert sum(sizes[:-1]) < room
            events += got
            if not reader.held_back:
                break
            got = reader.feed(b"", room)
    assert events == expected


@given(
    streams(),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_streams_fail_only_with_close_codes(
    stream: tuple[bytes, list[Event]], edits: list[tuple[int, int]], rng: random.Random
) -> None:
    data = bytearray(stream[0] + client(CLOSE, b"\x03\xe8"))
    for where, value in edits:
        data[where % len(data)] = value
    whole, whole_error = run(bytes(data), max_frame_size=64, max_message_size=128)
    chunks = [rng.randint(1, 30) for _ in range(len(data) // 5 + 1)]
    split, split_error = run(bytes(data), chunks, max_frame_size=64, max_message_size=128)
    assert whole == split  # the same events (those before a violation included)
    code = whole_error.code if whole_error else None
    assert code == (split_error.code if split_error else None)
    assert code in (None, 1002, 1007, 1009)
