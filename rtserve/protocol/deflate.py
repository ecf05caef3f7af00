"""permessage-deflate (RFC 7692) for the server side, sans-I/O.

Contract:

- `negotiate(header_values, config)` reads the client's `Sec-WebSocket-Extensions` values and
  returns the accepted `DeflateParams` with the exact response header value, or None (the
  connection then runs without compression). It never raises on client input.
- `PerMessageDeflate(params, config)` compresses and decompresses whole message payloads:
  `compress` returns the payload of a message with RSV1 set (raw DEFLATE, sync-flushed, the
  trailing `00 00 ff ff` removed); `decompress` undoes it, bounded by `max_size`. Framing,
  RSV1 and fragment reassembly belong to the caller.
- `compress_for_broadcast(payload, config)` compresses once for every connection whose
  `params.accepts_broadcast(window_bits)` is true (see "Broadcast" below).
- Errors: `DeflateError(code, reason)`, where `code` is the close code to fail the
  connection with: 1009 when a message inflates beyond `max_size` (zlib stops after
  `max_size + 1` bytes, so a decompression bomb costs no more than that), 1007 when the data
  does not inflate. RFC 7692 only says to "_Fail the WebSocket Connection_"; 1007
  ("data within a message not consistent with its type") is the closest RFC 6455 code.
- Only the standard library's zlib; no global mutable state; objects are acyclic.

Negotiation (RFC 7692 section 7). Offers are taken in order, across all header values; the
first acceptable `permessage-deflate` offer wins. An offer is refused (and the next one tried)
when it has an unknown or repeated parameter, a `*_no_context_takeover` with a value, a
`server_max_window_bits` without a value, or window bits other than the strings "8".."15"
(quoted values are unquoted first). Syntactically broken list elements are skipped without
hiding the elements after them. The response holds, in this order:

- `server_no_context_takeover` when offered, or when `config.server_no_context_takeover`;
- `client_no_context_takeover` when offered, or when `config.client_no_context_takeover`;
- `server_max_window_bits=M` when offered (M = min(offered, config)) or when the config
  limits it below 15 (M = config);
- `client_max_window_bits=N` only when offered, N = min(offered or 15, config). A client that
  did not offer it may use 15 bits whatever the config says.

Window bits 8: zlib refuses an 8-bit window for raw deflate (zlib issue 171), so the
compressor runs with 9. That is still correct for a peer that asked for 8: zlib never emits
a distance beyond `2**wbits - 262`, i.e. 250 bytes with 9 bits, inside an 8-bit window.
`DeflateConfig.client_max_window_bits` cannot be 8 because zlib-based clients (the
`websockets` library among them) fail a handshake that demands it; a client that offers 8
itself is answered with 8 and inflated with an 8-bit window.

Broadcast. With `server_no_context_takeover` every message is an independent deflate stream
(no back-reference before its own start, ended by a sync flush, never a final block), so one
compressed payload decodes on any client decompressor, fresh or carrying context. The only
per-connection difference is the window: a payload deflated with W bits (9 when W is 8)
references at most `2**W - 262` bytes back, valid for a peer whose window is at least W. The
rule: compress once with `config.server_max_window_bits` (the value every connection gets
unless its client asked for less); a connection takes the shared payload when
`params.accepts_broadcast(window_bits)`; the rare connection that asked for a smaller
window, or that uses server context takeover, gets its own `compress`.

Memory per connection (measured with tracemalloc, CPython 3.11, zlib 1.2.13; 15-bit windows,
memLevel 5 unless stated). A deflate compressor costs ~150 KiB (~262 KiB at memLevel 8, ~24 KiB
at 9 bits); an inflater ~7 KiB plus a window of `2**bits` bytes allocated on its first output
(~39 KiB at 15 bits). `PerMessageDeflate` creates both lazily and keeps them only when context
takeover requires it; see its docstring for the per-mode numbers.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from rtserve.protocol.websocket import WebSocketProtocolError

__all__ = [
    "DeflateConfig",
    "DeflateError",
    "DeflateParams",
    "PerMessageDeflate",
    "compress_for_broadcast",
    "negotiate",
    "parse_extensions",
]

EXTENSION_NAME: Final = "permessage-deflate"

_TAIL: Final = b"\x00\x00\xff\xff"
# An empty stored block with BFINAL set: inflates to nothing and ends the stream, but only
# when the inflater stands at a block boundary (used to detect truncated messages).
_FINAL_EMPTY_BLOCK: Final = b"\x01\x00\x00\xff\xff"
_WINDOW_BITS: Final = {str(bits): bits for bits in range(8, 16)}


class DeflateError(WebSocketProtocolError):
    """A compressed message cannot be accepted; fail the connection with close `code`."""


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What one connection negotiated. Window bits are 8..15 as agreed on the wire."""

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int
    client_max_window_bits: int

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            if not 8 <= getattr(self, name) <= 15:
                raise ValueError(f"{name} must be between 8 and 15")

    def accepts_broadcast(self, window_bits: int) -> bool:
        """Whether a `compress_for_broadcast` payload made with `window_bits` is valid here."""
        if not self.server_no_context_takeover:
            return False
        return _zlib_bits(window_bits) <= _zlib_bits(self.server_max_window_bits)


@dataclass(frozen=True, slots=True)
class DeflateConfig:
    """The server's compression policy.

    enabled: negotiate permessage-deflate at all.
    server_max_window_bits: the largest window our compressor uses (8..15; 8 runs as 9).
    client_max_window_bits: the window we ask clients to limit themselves to (9..15); only
        possible when the client offered `client_max_window_bits`.
    server_no_context_takeover: compress each message on its own. rtserve's default: broadcast
        payloads are compressed once and shared, which is only valid without server context
        takeover, and no compressor stays allocated between messages.
    client_no_context_takeover: ask clients to do the same, so that no inflater (~39 KiB)
        stays allocated between messages. Off by default: clients keep their context (a
        better ratio upstream) unless they offer otherwise.
    compress_level, mem_level: zlib's `level` (0..9) and `memLevel` (1..9).
    min_size: messages smaller than this are sent uncompressed (`should_compress`).
    """

    enabled: bool = True
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = False
    compress_level: int = 6
    mem_level: int = 5
    min_size: int = 256

    def __post_init__(self) -> None:
        if not 8 <= self.server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be between 8 and 15")
        if not 9 <= self.client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be between 9 and 15 (zlib cannot do 8)")
        if not 0 <= self.compress_level <= 9:
            raise ValueError("compress_level must be between 0 and 9")
        if not 1 <= self.mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        if self.min_size < 0:
            raise ValueError("min_size must not be negative")


# --- negotiation ---------------------------------------------------------------------------

Param = tuple[str, str | None]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_extensions(value: str) -> list[tuple[str, list[Param]] | None]:
    """Split one `Sec-WebSocket-Extensions` value into `(name, [(param, value|None)])`.

    Grammar of RFC 6455 section 9.1; a quoted value is unescaped and must then be a token.
    A broken list element becomes None and parsing resumes after the next comma outside quotes.
    Empty list elements are skipped.
    """
    elements: list[tuple[str, list[Param]] | None] = []
    pos, end = 0, len(value)
    while pos < end:
        pos = _skip_ows(value, pos)
        if pos < end and value[pos] == ",":
            pos += 1
            continue
        if pos == end:
            break
        element, pos = _parse_element(value, pos)
        if element is None:
            pos = _next_comma(value, pos)
        elements.append(element)
        pos += 1  # the comma, or past the end
    return elements


def _skip_ows(value: str, pos: int) -> int:
    end = len(value)
    while pos < end and value[pos] in " \t":
        pos += 1
    return pos


def _next_comma(value: str, pos: int) -> int:
    """The position of the next comma outside a quoted string, or the end of `value`."""
    quoted = False
    end = len(value)
    while pos < end:
        char = value[pos]
        if quoted:
            if char == "\\":
                pos += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ",":
            return pos
        pos += 1
    return end


def _parse_element(value: str, pos: int) -> tuple[tuple[str, list[Param]] | None, int]:
    """One extension at `pos`; returns it (None if broken) and the position of `,` or the end."""
    match = _TOKEN.match(value, pos)
    if match is None:
        return None, pos
    name, pos = match.group(), match.end()
    params: list[Param] = []
    end = len(value)
    while True:
        pos = _skip_ows(value, pos)
        if pos == end or value[pos] == ",":
            return (name, params), pos
        if value[pos] != ";":
            return None, pos
        pos = _skip_ows(value, pos + 1)
        match = _TOKEN.match(value, pos)
        if match is None:
            return None, pos
        param, pos = match.group(), match.end()
        pos = _skip_ows(value, pos)
        if pos == end or value[pos] != "=":
            params.append((param, None))
            continue
        pos = _skip_ows(value, pos + 1)
        match = _TOKEN.match(value, pos)
        if match is not None:
            params.append((param, match.group()))
            pos = match.end()
            continue
        match = _QUOTED.match(value, pos)
        if match is None:
            return None, pos
        unquoted = _QUOTED_PAIR.sub(r"\1", match.group(1))
        if _TOKEN.fullmatch(unquoted) is None:
            return None, match.end()
        params.append((param, unquoted))
        pos = match.end()


def negotiate(
    offers: Sequence[str | bytes], config: DeflateConfig
) -> tuple[DeflateParams, str] | None:
    """Accept the first acceptable permessage-deflate offer; None when there is none.

    `offers` are the values of every `Sec-WebSocket-Extensions` request header, in order
    (bytes are read as latin-1). Returns the negotiated params and the response header value.
    """
    if not config.enabled:
        return None
    for header in offers:
        text = header.decode("latin-1") if isinstance(header, bytes) else header
        for element in parse_extensions(text):
            if element is None or element[0] != EXTENSION_NAME:
                continue
            accepted = _accept(element[1], config)
            if accepted is not None:
                return accepted
    return None


def _accept(params: list[Param], config: DeflateConfig) -> tuple[DeflateParams, str] | None:
    """The answer to one offer, or None if the offer is invalid."""
    seen: set[str] = set()
    server_nct = client_nct = False
    server_bits: int | None = None
    client_bits: int | None = None
    client_bits_offered = False
    for name, value in params:
        if name in seen:
            return None
        seen.add(name)
        if name == "server_no_context_takeover" or name == "client_no_context_takeover":
            if value is not None:
                return None
            if name == "server_no_context_takeover":
                server_nct = True
            else:
                client_nct = True
        elif name == "server_max_window_bits":
            server_bits = _WINDOW_BITS.get(value) if value is not None else None
            if server_bits is None:
                return None
        elif name == "client_max_window_bits":
            client_bits_offered = True
            if value is not None:
                client_bits = _WINDOW_BITS.get(value)
                if client_bits is None:
                    return None
        else:
            return None

    response = [EXTENSION_NAME]
    server_nct = server_nct or config.server_no_context_takeover
    if server_nct:
        response.append("server_no_context_takeover")
    client_nct = client_nct or config.client_no_context_takeover
    if client_nct:
        response.append("client_no_context_takeover")
    if server_bits is not None:
        server_bits = min(server_bits, config.server_max_window_bits)
    elif config.server_max_window_bits < 15:
        server_bits = config.server_max_window_bits
    if server_bits is not None:
        response.append(f"server_max_window_bits={server_bits}")
    if client_bits_offered:
        client_bits = min(client_bits or 15, config.client_max_window_bits)
        response.append(f"client_max_window_bits={client_bits}")
    negotiated = DeflateParams(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits or 15,
        client_max_window_bits=client_bits or 15,
    )
    return negotiated, "; ".join(response)


# --- compression ---------------------------------------------------------------------------


def _zlib_bits(window_bits: int) -> int:
    """The window zlib's deflate really uses: it cannot do 8 bits raw, and 9 is valid for 8."""
    return 9 if window_bits == 8 else window_bits


def _compressor(level: int, window_bits: int, mem_level: int) -> zlib._Compress:
    return zlib.compressobj(level, zlib.DEFLATED, -_zlib_bits(window_bits), mem_level)


def _flush_message(compressor: zlib._Compress, payload: bytes) -> bytes:
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    # A sync flush always ends with an empty stored block, 00 00 ff ff; RFC 7692 drops it.
    return data[:-4]


def compress_for_broadcast(
    payload: bytes, config: DeflateConfig, window_bits: int | None = None
) -> bytes:
    """Compress once for every connection with `params.accepts_broadcast(window_bits)`.

    `window_bits` defaults to `config.server_max_window_bits`, the window every connection
    negotiates unless its client asked for a smaller one.
    """
    bits = config.server_max_window_bits if window_bits is None else window_bits
    if not 8 <= bits <= 15:
        raise ValueError("window_bits must be between 8 and 15")
    return _flush_message(_compressor(config.compress_level, bits, config.mem_level), payload)


class PerMessageDeflate:
    """One connection's permessage-deflate state (server side).

    Memory per connection, measured with tracemalloc (CPython 3.11, zlib 1.2.13, defaults:
    15-bit windows, memLevel 5), for one 16 KiB message; "peak" counts zlib's state plus the
    buffers of the call, not the caller's payloads:

    - server_no_context_takeover (rtserve's default): idle 0; `compress` peaks at ~187 KiB
      (~150 KiB of it the compressor), all released when it returns. Context takeover keeps
      the compressor from the first message on: ~150 KiB idle (~262 KiB at memLevel 8).
    - client_no_context_takeover: idle 0; `decompress` peaks at ~84 KiB (7 KiB of inflate
      state, its 32 KiB window, the input copy and the output), released when it returns.
      Client context takeover (what browsers offer) keeps the inflater from the first
      received message on: ~39 KiB idle, or ~7 KiB plus `2**client_max_window_bits` bytes.

    So the default config with a browser costs ~39 KiB per connection that has sent a
    message, and 0 with `DeflateConfig.client_no_context_takeover`; sharing broadcast payloads
    costs nothing per connection. Creating a compressor per message costs CPU (zlib zeroes
    its hash table): ~6 us against ~2 us for a 300-byte message, the price of shared payloads
    and of no idle memory.

    Limitations: messages are whole (the caller joins fragments first). A client that ends
    a message with a final (BFINAL) block resets the stream: its inflater is dropped, so a
    later message that refers back across it fails with 1007. A truncated message is detected
    only without client context takeover (the inflater is checked to stand at a block end);
    with context takeover it leaves the stream misaligned and usually fails a later message.
    """

    __slots__ = ("_compressor", "_decompressor", "_level", "_mem_level", "_min_size", "params")

    def __init__(self, params: DeflateParams, config: DeflateConfig) -> None:
        self.params = params
        self._level = config.compress_level
        self._mem_level = config.mem_level
        self._min_size = config.min_size
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def __repr__(self) -> str:
        return f"<PerMessageDeflate {self.params}>"

    def should_compress(self, size: int) -> bool:
        """Whether a message of `size` bytes is worth compressing (`size >= min_size`)."""
        return size >= self._min_size

    def compress(self, payload: bytes) -> bytes:
        """The payload of a compressed message (RSV1 set) carrying `payload`."""
        compressor = self._compressor
        if compressor is None:
            compressor = _compressor(
                self._level, self.params.server_max_window_bits, self._mem_level
            )
            if not self.params.server_no_context_takeover:
                self._compressor = compressor
        return _flush_message(compressor, payload)

    def decompress(self, payload: bytes, max_size: int) -> bytes:
        """The message carried by a compressed message's payload.

        Raises DeflateError(1009) if it would inflate beyond `max_size` bytes (zlib stops
        after `max_size + 1`), DeflateError(1007) if the data does not inflate.
        """
        per_message = self.params.client_no_context_takeover
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = zlib.decompressobj(wbits=-self.params.client_max_window_bits)
            if not per_message:
                self._decompressor = decompressor
        try:
            data = decompressor.decompress(payload + _TAIL, max_size + 1)
            if len(data) > max_size:
                self._decompressor = None
                raise DeflateError(1009, "message too big")
            if decompressor.eof:
                self._decompressor = None  # a final block ended the stream
            elif per_message and (
                decompressor.decompress(_FINAL_EMPTY_BLOCK, 1) or not decompressor.eof
            ):
                raise DeflateError(1007, "truncated compressed message")
        except zlib.error as exc:
            self._decompressor = None
            raise DeflateError(1007, "invalid compressed data") from exc
        return data
