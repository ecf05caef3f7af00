"""RFC 6455 framing for both sides, sans-I/O: bytes in, events out.

`FrameReader.feed(data)` parses frames incrementally (any split of the input yields the
same events) and returns the events it completes: `TextMessage`, `BinaryMessage`, `Ping`,
`Pong`, `CloseReceived`. Fragments are assembled into whole messages; control frames that
arrive between fragments are returned at once, in wire order. After a `CloseReceived` the
reader ignores whatever follows (the peer must send nothing more).

`feed(data, room)` bounds what one call hands over: once the messages it returned hold `room`
bytes (inflated size), it stops before the next whole message, before inflating it, and keeps
the rest of the input; `held_back` then says so, and `feed(b"", room)` goes on when the caller
has room again. Control frames behind a held-back message wait with it.

Every violation raises `WebSocketProtocolError`, whose `code` and `reason` are the close frame
to send before closing; the reader is dead afterwards (each later `feed` raises again).
`exc.events` holds the events the failing call completed before the violation. Codes:

- 1002 bad framing: a frame masked when it must not be or not masked when it must (the
  server's reader, `masked=True`, reads client frames: masked; the client's, `masked=False`,
  server frames: unmasked; RFC 6455 5.1), RSV bits not negotiated (RSV1 only on the first frame
  of a data message and only with `decompress`), an unknown opcode, a fragmented or
  over-125-byte control frame, a continuation without a start, a data frame inside an open
  fragmented message, a 64-bit length with the high bit set, a bad close payload (1 byte, or
  a code not allowed on the wire). Non-minimal length encodings are accepted (RFC 6455 5.2).
- 1007 invalid UTF-8 in a text message or a close reason. Uncompressed text is checked
  fragment by fragment, so a message fails with the first frame that cannot be valid (the
  granularity is the frame); compressed text is checked after decompression.
- 1009 a frame over `max_frame_size` or a message over `max_message_size`, known from the
  frame header before its payload arrives. For a compressed message the limit bounds its wire
  bytes here and its decompressed size in `decompress(payload, max_message_size)`.

The encoders build unmasked server frames; `encode_client_frame` and `mask_payload` build
masked frames for clients and tests. Local misuse (a control frame over 125 bytes, a
close code not allowed on the wire) raises ValueError.
"""

from __future__ import annotations

import codecs
import enum
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from rtserve.errors import RtserveError


class Opcode(enum.IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


class WebSocketProtocolError(RtserveError):
    """The peer broke RFC 6455; `code` and `reason` are the close frame to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = int(code)
        self.reason = reason
        self.events: list[Event] = []  # completed by the failing feed() before the violation
        super().__init__(f"{self.code} {reason}")


# --- events -------------------------------------------------------------------------------


@dataclass(slots=True)
class TextMessage:
    data: str


@dataclass(slots=True)
class BinaryMessage:
    data: bytes


@dataclass(slots=True)
class Ping:
    data: bytes


@dataclass(slots=True)
class Pong:
    data: bytes


@dataclass(slots=True)
class CloseReceived:
    code: int  # 1005 (NO_STATUS) when the close frame had no payload
    reason: str


Event = TextMessage | BinaryMessage | Ping | Pong | CloseReceived


# --- masking ------------------------------------------------------------------------------

# _XOR[k] maps each byte b to b ^ k: four bytes.translate() calls unmask a long payload.
_XOR: Final = tuple(bytes(b ^ k for b in range(256)) for k in range(256))
_BIG_PAYLOAD: Final = 512  # from here on, translate() beats one big-integer XOR


def mask_payload(data: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR `data` with the 4-byte `mask` repeated (masking and unmasking are the same)."""
    n = len(data)
    if n < _BIG_PAYLOAD:
        if not n:
            return b""
        key = int.from_bytes((mask * ((n >> 2) + 1))[:n], "big")
        return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")
    out = bytearray(data)
    out[0::4] = data[0::4].translate(_XOR[mask[0]])
    out[1::4] = data[1::4].translate(_XOR[mask[1]])
    out[2::4] = data[2::4].translate(_XOR[mask[2]])
    out[3::4] = data[3::4].translate(_XOR[mask[3]])
    return bytes(out)


# --- close payloads -----------------------------------------------------------------------


def _close_code_allowed(code: int) -> bool:
    """Whether `code` may appear in a close frame (RFC 6455 7.4; 1012-1014 from IANA)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close_payload(payload: bytes | bytearray) -> tuple[int, str]:
    """The (code, reason) of a close frame; (1005, "") for an empty payload."""
    if not payload:
        return int(CloseCode.NO_STATUS), ""
    if len(payload) == 1:
        raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "close payload of 1 byte")
    code = (payload[0] << 8) | payload[1]
    if not _close_code_allowed(code):
        raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketProtocolError(
            CloseCode.INVALID_DATA, "invalid UTF-8 in close reason"
        ) from None
    return code, reason


# --- reading ------------------------------------------------------------------------------

UNBOUNDED: Final = 1 << 62  # `feed`'s default room: no bound
_DATA_START: Final = (Opcode.TEXT, Opcode.BINARY)
_CONTROL_OPCODES: Final = (Opcode.CLOSE, Opcode.PING, Opcode.PONG)
_Decoder = codecs.getincrementaldecoder("utf-8")


class FrameReader:
    """Incremental parser of one side's incoming frames (see the module docstring).

    masked: True on the server (client frames are masked), False on the client (server frames
        are not); a frame the other way round is a 1002 violation.
    max_frame_size: payload bytes of one frame (1009 beyond).
    max_message_size: payload bytes of one message, across its fragments (1009 beyond).
    decompress: given when permessage-deflate was negotiated; called as
        `decompress(payload, max_message_size)` on the assembled payload of an RSV1 message.
        It raises WebSocketProtocolError, or an RtserveError with `code` and `reason` (like
        `deflate.DeflateError`), which the reader turns into its WebSocketProtocolError.
    """

    __slots__ = (
        "_buf",
        "_chunks",
        "_closed",
        "_compressed",
        "_decoder",
        "_decoding",
        "_error",
        "_held_back",
        "_mask_bit",
        "_msg_opcode",
        "_msg_size",
        "decompress",
        "max_frame_size",
        "max_message_size",
    )

    def __init__(
        self,
        *,
        max_frame_size: int = 1024 * 1024,
        max_message_size: int = 1024 * 1024,
        decompress: Callable[[bytes, int], bytes] | None = None,
        masked: bool = True,
    ) -> None:
        self._mask_bit = 0x80 if masked else 0  # the MASK bit every incoming frame must have
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.decompress = decompress
        self._buf = bytearray()  # bytes of an incomplete frame, or held back for room
        self._held_back = False
        self._error: tuple[int, str] | None = None
        self._closed = False
        # The fragmented message in progress: its opcode (0 when none) and wire size so far;
        # its payload accumulates in _chunks, one buffer (not a list of fragments: thousands
        # of tiny or empty fragments must cost what their bytes cost, no more); uncompressed
        # text is also checked fragment by fragment (to fail early) by the decoder.
        self._msg_opcode = 0
        self._msg_size = 0
        self._compressed = False
        self._decoding = False
        self._decoder: codecs.IncrementalDecoder | None = None  # made when first needed
        self._chunks = bytearray()

    @property
    def held_back(self) -> bool:
        """The last `feed` stopped for room before a whole message it has buffered."""
        return self._held_back

    def feed(self, data: bytes, room: int = UNBOUNDED) -> list[Event]:
        """Parse `data`; return the events it completes. Raises WebSocketProtocolError.

        Messages are returned while those returned so far hold fewer than `room` bytes (their
        inflated size); the rest stays buffered (`held_back`) for a later `feed(b"", room)`.
        """
        if self._error is not None:
            raise WebSocketProtocolError(*self._error)
        self._held_back = False
        if self._closed:
            return []
        buf = self._buf
        view: bytes | bytearray
        if buf:
            buf += data
            view = buf
        else:
            view = data  # the usual case: parse the caller's bytes without copying them
        size = len(view)
        events: list[Event] = []
        pos = 0
        mask_bit = self._mask_bit
        head = 6 if mask_bit else 2  # header bytes of a short frame, its masking key included
        try:
            while size - pos >= 2:
                b0 = view[pos]
                b1 = view[pos + 1]
                length = b1 & 0x7F
                if length < 126:
                    start = pos + head
                elif length == 126:
                    if size - pos < 4:
                        break
                    length = (view[pos + 2] << 8) | view[pos + 3]
                    start = pos + head + 2
                else:
                    if size - pos < 10:
                        break
                    length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "invalid length")
                    start = pos + head + 8
                if (b0 == 0x81 or b0 == 0x82) and b1 & 0x80 == mask_bit and not self._msg_opcode:
                    # The common case: a whole uncompressed message in one frame.
                    if length > self.max_frame_size or length > self.max_message_size:
                        self._too_big(length)
                    end = start + length
                    if end > size:
                        break
                    if room <= 0:
                        self._held_back = True
                        break
                    room -= length
                else:
                    self._check_header(b0, b1, length)
                    end = start + length
                    if end > size:
                        break
                    if room <= 0 and b0 & 0x88 == 0x80:  # a message's final frame
                        self._held_back = True
                        break
                if mask_bit:
                    payload = mask_payload(view[start:end], view[start - 4 : start])
                else:
                    payload = bytes(view[start:end])
                pos = end
                if b0 == 0x81:
                    try:
                        events.append(TextMessage(payload.decode("utf-8")))
                    except UnicodeDecodeError:
                        raise WebSocketProtocolError(
                            CloseCode.INVALID_DATA, "invalid UTF-8"
                        ) from None
                elif b0 == 0x82:
                    events.append(BinaryMessage(payload))
                elif b0 & 0x08:
                    self._control_frame(b0 & 0x0F, payload, events)
                    if self._closed:
                        pos = size
                        break
                else:
                    room -= self._data_frame(b0, payload, events)
        except WebSocketProtocolError as exc:
            self._error = (exc.code, exc.reason)  # not exc: its traceback would hold self
            exc.events = events
            buf.clear()
            self._chunks.clear()
            raise
        if view is buf:
            if pos:
                del buf[:pos]
        elif pos < size:
            buf += memoryview(data)[pos:]
        return events

    def _too_big(self, length: int) -> None:
        if length > self.max_frame_size:
            raise WebSocketProtocolError(CloseCode.MESSAGE_TOO_BIG, "frame too big")
        raise WebSocketProtocolError(CloseCode.MESSAGE_TOO_BIG, "message too big")

    def _check_header(self, b0: int, b1: int, length: int) -> None:
        """Validate any header but that of a whole uncompressed message in one frame."""
        opcode = b0 & 0x0F
        if b1 & 0x80 != self._mask_bit:
            raise WebSocketProtocolError(
                CloseCode.PROTOCOL_ERROR,
                "client frame not masked" if self._mask_bit else "server frame masked",
            )
        if opcode in _CONTROL_OPCODES:
            if b0 & 0x70:
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
            if not b0 & 0x80:
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "control frame too long")
            if length > self.max_frame_size:
                self._too_big(length)
            return
        if opcode == Opcode.CONTINUATION:
            if not self._msg_opcode:
                raise WebSocketProtocolError(
                    CloseCode.PROTOCOL_ERROR, "continuation frame without a message"
                )
            if b0 & 0x70:
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        elif opcode in _DATA_START:
            if self._msg_opcode:
                raise WebSocketProtocolError(
                    CloseCode.PROTOCOL_ERROR, "new message inside a fragmented message"
                )
            if b0 & 0x70 and (b0 & 0x70 != 0x40 or self.decompress is None):
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        else:
            raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        size = self._msg_size if opcode == Opcode.CONTINUATION else 0
        if length > self.max_frame_size or size + length > self.max_message_size:
            self._too_big(length)

    def _control_frame(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == Opcode.PING:
            events.append(Ping(payload))
        elif opcode == Opcode.PONG:
            events.append(Pong(payload))
        else:
            events.append(CloseReceived(*parse_close_payload(payload)))
            self._closed = True

    def _data_frame(self, b0: int, payload: bytes, events: list[Event]) -> int:
        """A fragment of a message, or a compressed message (validated by _check_header);
        returns the size of the message it completed (0 when none)."""
        opcode = b0 & 0x0F
        if opcode:  # the first frame of a message
            self._msg_opcode = opcode
            self._msg_size = 0
            self._compressed = bool(b0 & 0x40)
            self._decoding = opcode == Opcode.TEXT and not self._compressed
            if self._decoding:
                if self._decoder is None:
                    self._decoder = _Decoder()
                else:
                    self._decoder.reset()
        self._msg_size += len(payload)
        if self._decoding:
            assert self._decoder is not None
            try:
                self._decoder.decode(payload, b0 >= 0x80)  # validation only
            except UnicodeDecodeError:
                raise WebSocketProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8") from None
        self._chunks += payload
        if not b0 & 0x80:
            return 0
        opcode, self._msg_opcode = self._msg_opcode, 0
        data = bytes(self._chunks)
        self._chunks.clear()
        if self._decoding:
            events.append(TextMessage(data.decode("utf-8")))  # valid: checked above
            return len(data)
        if self._compressed:
            assert self.decompress is not None  # RSV1 is refused without it
            try:
                data = self.decompress(data, self.max_message_size)
            except WebSocketProtocolError:
                raise
            except RtserveError as exc:  # deflate.DeflateError: a close code and reason
                code = getattr(exc, "code", CloseCode.INVALID_DATA)
                reason = getattr(exc, "reason", "invalid compressed data")
                raise WebSocketProtocolError(code, reason) from exc
        if opcode == Opcode.BINARY:
            events.append(BinaryMessage(data))
            return len(data)
        try:
            events.append(TextMessage(data.decode("utf-8")))
        except UnicodeDecodeError:
            raise WebSocketProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8") from None
        return len(data)


# --- writing ------------------------------------------------------------------------------

_HEAD16: Final = struct.Struct("!BBH").pack
_HEAD64: Final = struct.Struct("!BBQ").pack
# Ready-made heads of short whole text and binary messages, indexed by payload length.
_TEXT_HEADS: Final = tuple(bytes((0x81, n)) for n in range(126))
_BINARY_HEADS: Final = tuple(bytes((0x82, n)) for n in range(126))


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked (server) frame."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if opcode >= 8:
        raise ValueError("control frame payload over 125 bytes")
    if n < 0x10000:
        return _HEAD16(b0, 126, n) + payload
    return _HEAD64(b0, 127, n) + payload


def encode_text(text: str) -> bytes:
    """A whole text message in one frame."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return _TEXT_HEADS[n] + payload
    return encode_frame(Opcode.TEXT, payload)


def encode_binary(data: bytes) -> bytes:
    """A whole binary message in one frame."""
    n = len(data)
    if n < 126:
        return _BINARY_HEADS[n] + data
    return encode_frame(Opcode.BINARY, data)


def close_payload(code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
    """The payload of a close frame; the reason is cut to 123 bytes of UTF-8 on a character
    boundary.

    Code 1005 (NO_STATUS) gives an empty payload; other codes not allowed on the wire
    (1004, 1006, 1015, ...) raise ValueError.
    """
    if code == CloseCode.NO_STATUS:
        return b""
    if not _close_code_allowed(code):
        raise ValueError(f"close code {code} cannot be sent")
    data = reason.encode("utf-8")
    if len(data) > 123:
        data = data[:123].decode("utf-8", "ignore").encode("utf-8")
    return int(code).to_bytes(2, "big") + data


def encode_close(code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
    """An unmasked (server) close frame of `close_payload(code, reason)`."""
    return encode_frame(Opcode.CLOSE, close_payload(code, reason))


def encode_ping(data: bytes = b"") -> bytes:
    return encode_frame(Opcode.PING, data)


def encode_pong(data: bytes = b"") -> bytes:
    return encode_frame(Opcode.PONG, data)


def encode_client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """One masked (client) frame, as given: no checks, so tests can build bad frames too.

    `mask` defaults to 4 random bytes.
    """
    if mask is None:
        mask = os.urandom(4)
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 0x10000:
        head = _HEAD16(b0, 0xFE, n)
    else:
        head = _HEAD64(b0, 0xFF, n)
    return head + mask + mask_payload(payload, mask)
